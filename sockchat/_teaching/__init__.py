"""Teaching mode (``--trace``): what TCP did, in the tutorial's words."""
