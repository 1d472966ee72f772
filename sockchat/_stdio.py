"""Terminal helpers: put stdin and stdout back, take what was typed.

Twisted's ``StandardIO`` makes fds 0 and 1 non-blocking.  On a terminal they
share one open file with the shell, so a program that exits without undoing
that leaves the shell's next commands failing with EAGAIN.

In the terminal's line mode a half-typed line is held by the terminal and
cannot be read; ``take_typed`` leaves line mode for a moment to take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import termios

from attrs import frozen

__all__ = ["BlockingModes", "discard_typed", "take_typed"]


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
