"""The one place sockchat's version is written (setup.cfg reads it from here)."""

__version__ = "0.2.0.dev0"
