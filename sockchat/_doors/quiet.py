"""Log lines that any client can cause at will, kept few: one per kind of
event per window, the rest counted."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

__all__ = ["LOG_WINDOW", "LogLimiter"]

#: Seconds over which events that any client can cause at will (a refused
#: connection, a probe that says nothing) are logged once, then counted.
LOG_WINDOW = 60.0


class LogLimiter:
    """At most one log line per kind of event per ``LOG_WINDOW``.

    The first event of a kind is logged; the next ones in the window are
    counted, and the first one after it is logged with that count.  So a
    loop of refused connections, or of port probes, cannot grow the log
    faster than a line a minute.
    """

    __slots__ = ("_clock", "_counts", "_since")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._since: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def admit(self, kind: str) -> int | None:
        """None: say nothing; else log it, with this many held back before."""
        now = self._clock.seconds()
        since = self._since.get(kind)
        if since is not None and now - since < LOG_WINDOW:
            self._counts[kind] = self._counts.get(kind, 0) + 1
            return None
        self._since[kind] = now
        return self._counts.pop(kind, 0)
