"""Ctrl-C and SIGTERM stop twistd cleanly at any moment, from the start.

twistd makes the service (``makeService`` binds the ports and logs
"listening"), starts logging (which prints the lines logged so far), starts
the services, and only then runs the reactor, which installs its signal
handlers.  Until that moment Python's own SIGINT handler is in place: it
raises ``KeyboardInterrupt`` wherever the program is, so a Ctrl-C just after
"listening" ended twistd with a traceback, or, when it struck inside a log
observer (which catches every exception: ``Unable to format event``), was
lost, and the server went on running.

``StopSignals`` catches SIGINT and SIGTERM from ``makeService`` on.  The
handler only asks the reactor to stop (``callFromThread``, which is safe
in a signal handler and is what Twisted's own handlers do); a request made
before the reactor runs is carried out as soon as it does, once the
services have started, so every client already connected hears its
goodbye.  The stop itself goes through ``reactor.sigInt`` or ``sigTerm``:
the same log line, and twistd exits with the signal, as it always has.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from twisted.internet.interfaces import IReactorCore, IReactorThreads

__all__ = ["StopSignals"]

#: The signals that stop the server.
STOPPING = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """SIGINT and SIGTERM stop *reactor* once, whenever they come."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._stopping = False

    def install(self) -> None:
        """Catch the signals now, and again once the reactor has installed
        its own: Twisted replaces a SIGTERM handler (it leaves SIGINT's),
        and one handler for both is what keeps a stop from being asked
        twice."""
        for number in STOPPING:
            signal.signal(number, self._caught)
        core = IReactorCore(self._reactor)
        core.addSystemEventTrigger("during", "startup", self._reinstall)
        core.addSystemEventTrigger("before", "shutdown", self._shutting_down)

    def _reinstall(self) -> None:
        for number in STOPPING:
            signal.signal(number, self._caught)

    def _caught(self, number: int, frame: FrameType | None) -> None:
        # In a signal handler: no logging, no exception; only a request
        # that the reactor carries out in its own time.
        IReactorThreads(self._reactor).callFromThread(self._stop, number)

    def _shutting_down(self) -> None:
        self._stopping = True

    def _stop(self, number: int) -> None:
        if self._stopping:  # a second Ctrl-C, or a stop already under way
            return
        self._stopping = True
        if number == signal.SIGTERM:
            self._reactor.sigTerm(number)
        else:
            self._reactor.sigInt(number)
