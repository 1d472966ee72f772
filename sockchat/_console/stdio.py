"""Terminal helpers: put stdin and stdout back, take what was typed.

Twisted's ``StandardIO`` makes fds 0 and 1 non-blocking.  On a terminal they
share one open file with the shell, so a program that exits without undoing
that leaves the shell's next commands failing with EAGAIN.

In the terminal's line mode a half-typed line is held by the terminal and
cannot be read; ``take_typed`` leaves line mode for a moment to take it.

``TerminalMode`` takes the terminal out of line mode for as long as a
program edits the line itself (the operator console), and puts it back.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import termios
from typing import Any

from attrs import field, frozen

__all__ = [
    "PASTE_OFF",
    "PASTE_ON",
    "BlockingModes",
    "TerminalMode",
    "discard_typed",
    "take_typed",
]

#: Ask the terminal to mark what is pasted (bracketed paste), and stop.
PASTE_ON = "\x1b[?2004h"
PASTE_OFF = "\x1b[?2004l"


@frozen
class BlockingModes:
    flags: tuple[tuple[int, int], ...]

    @classmethod
    def save(cls, *fds: int) -> BlockingModes:
        saved = []
        for fd in fds:
            with contextlib.suppress(OSError):  # a closed fd: nothing to restore
                saved.append((fd, fcntl.fcntl(fd, fcntl.F_GETFL)))
        return cls(tuple(saved))

    def restore(self) -> None:
        for fd, flags in self.flags:
            with contextlib.suppress(OSError):
                now = fcntl.fcntl(fd, fcntl.F_GETFL)
                was = flags & os.O_NONBLOCK
                fcntl.fcntl(fd, fcntl.F_SETFL, (now & ~os.O_NONBLOCK) | was)


def take_typed(fd: int, *, flush: bool = False) -> bytes:
    """Take what was typed at terminal *fd* and not yet read: a half-typed
    line, and any whole lines behind it.

    Leaving line mode makes the half-typed line readable; line mode comes
    back at once, with nothing left in it.  With *flush*, the terminal's
    input is then flushed too, so that nothing typed reaches the shell
    after the program exits.  Not a terminal: ``b""``.
    """
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        return b""
    now = list(saved)
    now[3] &= ~termios.ICANON
    now[6] = list(saved[6])
    now[6][termios.VMIN] = 0
    now[6][termios.VTIME] = 0
    typed = b""
    try:
        termios.tcsetattr(fd, termios.TCSANOW, now)
        while True:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                break
            if not chunk:
                break
            typed += chunk
    except OSError:
        pass  # the terminal went away: nothing left to take
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSANOW, saved)
            if flush:
                termios.tcflush(fd, termios.TCIFLUSH)
    return typed


def discard_typed(fd: int) -> None:
    """Drop terminal input not read, so that the shell does not run it."""
    if os.isatty(fd):
        with contextlib.suppress(termios.error):
            termios.tcflush(fd, termios.TCIFLUSH)


@frozen
class TerminalMode:
    """A terminal's settings, saved, to go key by key and come back.

    ``keys`` turns off line mode (ICANON), echo (ECHO), the extended keys
    (IEXTEN: Ctrl-V, Ctrl-O) and CR-to-NL (ICRNL), so that each key reaches
    the program as it is pressed and Enter is a CR, told apart from the
    pasted LF of a CR LF.  Signals stay (ISIG): Ctrl-C is still SIGINT,
    Ctrl-Z still stops the program.  ``restore`` puts every setting back.
    """

    fd: int
    saved: list[Any] = field(converter=list)

    @classmethod
    def save(cls, fd: int) -> TerminalMode | None:
        """*fd*'s settings; None if it is not a terminal."""
        try:
            return cls(fd, termios.tcgetattr(fd))
        except (termios.error, OSError):
            return None

    def keys(self) -> None:
        now = list(self.saved)
        now[0] &= ~termios.ICRNL
        now[3] &= ~(termios.ICANON | termios.ECHO | termios.IEXTEN)
        now[6] = list(self.saved[6])
        now[6][termios.VMIN] = 1
        now[6][termios.VTIME] = 0
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(self.fd, termios.TCSANOW, now)

    def restore(self, *, flush: bool = False) -> None:
        """Put the saved settings back; with *flush*, drop what was typed
        and not read, so that the shell does not run it."""
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(self.fd, termios.TCSANOW, self.saved)
            if flush:
                termios.tcflush(self.fd, termios.TCIFLUSH)
