"""The responder contract, and the responders that ship (echo, pair)."""
