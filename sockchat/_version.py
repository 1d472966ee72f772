"""The one place sockchat's version is written (setup.cfg reads it from here)."""

__version__ = "0.2.0.dev0"
"""sockchat's version, as `PEP 440 <https://peps.python.org/pep-0440/>`_ spells it."""
