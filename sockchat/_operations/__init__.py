"""Running sockchat: services, metrics, transcript files."""
