"""One alarm that the reactor does not poll: a ``timerfd`` on Linux.

While any ``callLater`` is pending, Twisted's reactor works at every pass:
it works out how long it may sleep (``ReactorBase.timeout``: the clock,
``min``, ``max``), looks at its heap in ``runUntilCurrent``, and gives
``epoll_wait`` a timeout, which arms and disarms a kernel timer at every
sleep.  sockchat's idle watch keeps one call pending for as long as any
conversation is open, so every turn paid for it: about 5 µs a turn at
C=1, measured (docs/performance.md, "What is left at C=1").

``Alarm(clock, fire)`` calls *fire* once the delay given to ``set`` has
passed (``set`` again moves it; ``cancel`` stops it).  On Linux, with a
reactor that watches file descriptors as its clock, it is a ``timerfd``
(``CLOCK_MONOTONIC``) in the reactor's set: armed by ``set``, readable
when it is due, and no work at all for the reactor's passes in between.
Python 3.11 has no ``os.timerfd_create`` (3.13 has), so the two calls go
through ``ctypes``; this module is the one place that does.  Anywhere
else (a test's ``Clock``, another platform, a C library without
``timerfd``), it is the ``callLater`` it always was.

The descriptor is made at the first ``set`` and closed by ``cancel``, so
an idle server holds none.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorFDSet, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["Alarm", "timerfd_available"]

log = Logger(namespace="sockchat.server")

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _load() -> tuple[Any, Any] | None:
    """libc's ``timerfd_create`` and ``timerfd_settime``, or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        create = libc.timerfd_create
        settime = libc.timerfd_settime
    except (OSError, AttributeError):  # pragma: no cover (no timerfd in libc)
        return None
    create.argtypes = [ctypes.c_int, ctypes.c_int]
    create.restype = ctypes.c_int
    settime.argtypes = [
        ctypes.c_int,
        ctypes.c_int,
        ctypes.POINTER(_Itimerspec),
        ctypes.c_void_p,
    ]
    settime.restype = ctypes.c_int
    return create, settime


_TIMERFD = _load()


def timerfd_available() -> bool:
    """Whether this process can make a ``timerfd`` (Linux, through libc)."""
    return _TIMERFD is not None


class _TimerDescriptor:
    """The ``timerfd`` as the reactor reads it (``IReadDescriptor``)."""

    __slots__ = ("_fd", "_fire")

    def __init__(self, fd: int, fire: Callable[[], None]) -> None:
        self._fd = fd
        self._fire = fire

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "sockchat idle alarm"

    def doRead(self) -> None:
        try:
            os.read(self._fd, 8)  # the count of expiries; one is enough
        except BlockingIOError:  # already read, or set again meanwhile
            return
        self._fire()

    def connectionLost(self, reason: Failure) -> None:
        """The reactor is shutting down (``disconnectAll``): nothing to do;
        ``Alarm.cancel`` or the process's end closes the descriptor."""


class Alarm:
    """Call *fire* once, when the delay last given to ``set`` has passed."""

    __slots__ = ("_call", "_clock", "_fd", "_fire", "_reader", "_set_fd")

    def __init__(self, clock: IReactorTime, fire: Callable[[], None]) -> None:
        self._clock = clock
        self._fire = fire
        self._call: IDelayedCall | None = None
        self._fd = -1
        self._reader: _TimerDescriptor | None = None
        #: Whether this alarm uses a timerfd: on Linux, with a reactor that
        #: watches descriptors as the clock (a test's Clock does not).
        self._set_fd = _TIMERFD is not None and IReactorFDSet.providedBy(clock)

    @property
    def uses_timerfd(self) -> bool:
        """Whether ``set`` arms a ``timerfd`` rather than a ``callLater``."""
        return self._set_fd

    def set(self, delay: float) -> None:
        """Fire after *delay* seconds (at once, on the next pass, if it is
        not positive), instead of when it was set for before."""
        if self._set_fd:
            try:
                self._arm(max(delay, 1e-6))
                return
            except OSError as e:
                # Out of descriptors, say: the pending call still works.
                log.warn(
                    "the idle alarm could not use a timerfd ({why}); using a "
                    "reactor timer instead",
                    why=e.strerror or str(e),
                )
                self._close()
                self._set_fd = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self._clock.callLater(max(delay, 0.0), self._called)

    def cancel(self) -> None:
        """Do not fire; give back the descriptor, if it has one."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._close()

    def _called(self) -> None:
        self._call = None
        self._fire()

    def _arm(self, delay: float) -> None:
        assert _TIMERFD is not None
        create, settime = _TIMERFD
        if self._fd < 0:
            fd = create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
            if fd < 0:
                errno = ctypes.get_errno()
                raise OSError(errno, os.strerror(errno))
            self._fd = fd
            self._reader = _TimerDescriptor(fd, self._fire)
            self._clock.addReader(self._reader)  # type: ignore[attr-defined]  # IReactorFDSet, checked
        seconds = int(delay)
        when = _Itimerspec(
            _Timespec(0, 0), _Timespec(seconds, int((delay - seconds) * 1e9))
        )
        if settime(self._fd, 0, ctypes.byref(when), None) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))

    def _close(self) -> None:
        if self._reader is not None:
            self._clock.removeReader(self._reader)  # type: ignore[attr-defined]  # IReactorFDSet
            self._reader = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
