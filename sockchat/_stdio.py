"""Put stdin and stdout back the way they were.

Twisted's ``StandardIO`` makes fds 0 and 1 non-blocking.  On a terminal they
share one open file with the shell, so a program that exits without undoing
that leaves the shell's next commands failing with EAGAIN.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from attrs import frozen

__all__ = ["BlockingModes"]


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
