"""The core: every rule of a conversation, with no I/O and no Twisted."""
