"""The doors: Twisted protocols and factories that carry bytes to and from the core."""
