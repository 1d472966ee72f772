"""The operator's console: the responder, the line editor, the screen, stdio."""
