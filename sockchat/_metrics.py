"""What the server counts for ``--metrics``, with no I/O and no dependencies.

The server adds to a ``ServerStats`` with plain integer arithmetic as it
goes; nothing here formats, locks or allocates on a turn.  At scrape time
the Prometheus collector (``sockchat._prometheus``) reads it.

Every label value comes from a short, fixed set (reasons and codes that
the server or its responder chose), and past ``MAX_LABEL_VALUES`` distinct
values the rest are counted as ``other``: never a peer address, a
conversation id or a client's text.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from attrs import define, field

__all__ = [
    "LATENCY_BOUNDS",
    "MAX_LABEL_VALUES",
    "Health",
    "LatencyHistogram",
    "ServerStats",
    "unsent_bytes",
]

#: Upper bounds, in seconds, of the answer latency buckets.  A bot answers
#: in microseconds; a person typing at the console takes seconds.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.0001,
    0.001,
    0.01,
    0.1,
    0.5,
    1.0,
    5.0,
    30.0,
    120.0,
)

#: Distinct values one label may take; past it, ``OTHER``.
MAX_LABEL_VALUES = 32
#: The label value that stands for any value past ``MAX_LABEL_VALUES``.
OTHER = "other"


def _count(counts: dict[str, int], key: str) -> None:
    if key not in counts and len(counts) >= MAX_LABEL_VALUES:
        key = OTHER
    counts[key] = counts.get(key, 0) + 1


@define(slots=True, eq=False)
class LatencyHistogram:
    """Answer times in fixed buckets (Prometheus's ``le``: at most the bound)."""

    bounds: tuple[float, ...] = LATENCY_BOUNDS
    #: One count per bound, then one for anything longer.
    counts: list[int] = field()
    #: Seconds, all observations added up.
    total: float = 0.0

    @counts.default
    def _no_counts(self) -> list[int]:
        return [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        """Count one answer that took *seconds*."""
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus wants them, ``+Inf`` last."""
        pairs = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            pairs.append((repr(bound), running))
        pairs.append(("+Inf", running + self.counts[-1]))
        return pairs


def _nothing_held() -> int:
    return 0


@define(slots=True, eq=False)
class ServerStats:
    """Counters for one server (its TCP and web doors share them).

    The server changes the integer fields directly, and calls ``ended``,
    ``refused_line`` and ``refused_connection`` for the labelled ones.
    """

    #: Conversations started, and still open.
    started: int = 0
    open: int = 0
    #: Conversations ended, by the code of their bye (``connection-lost``
    #: when the client went without one).
    ended_by: dict[str, int] = field(factory=dict)
    #: Lines the responder answered.
    answered: int = 0
    #: Lines refused with an ``!error`` notice, by its code.
    refused_lines: dict[str, int] = field(factory=dict)
    #: Connections refused before a conversation began, by the bye's code.
    refused_connections: dict[str, int] = field(factory=dict)
    #: Bytes read from clients, and written to them.
    bytes_in: int = 0
    bytes_out: int = 0
    #: Answer latency, by responder kind.
    latency: dict[str, LatencyHistogram] = field(factory=dict)
    #: Bytes written to clients and not yet sent: read when scraped.
    output_held: Callable[[], int] = _nothing_held

    def ended(self, reason: str) -> None:
        """A conversation ended, for *reason*."""
        self.open -= 1
        _count(self.ended_by, reason)

    def refused_line(self, code: str) -> None:
        _count(self.refused_lines, code)

    def refused_connection(self, code: str) -> None:
        _count(self.refused_connections, code)

    def latency_for(self, kind: str) -> LatencyHistogram:
        """The histogram for responders of *kind* (made when first asked)."""
        histogram = self.latency.get(kind)
        if histogram is None:
            if len(self.latency) >= MAX_LABEL_VALUES:
                kind = OTHER
            histogram = self.latency.setdefault(kind, LatencyHistogram())
        return histogram


@define(slots=True, eq=False)
class Health:
    """Whether the server accepts conversations: what ``/healthz`` says."""

    accepting: bool = True
    #: Why not, when not: a few words for the 503's body.
    why: str = ""

    def shutting_down(self) -> None:
        self.accepting = False
        self.why = "shutting down"


def unsent_bytes(transports: Iterable[Any]) -> int:
    """Bytes the transports hold, written and not yet sent to their peers.

    Reads Twisted's buffers (``FileDescriptor``'s ``dataBuffer``, ``offset``
    and ``_tempDataLen``) down each chain of wrapped transports (TLS,
    WebSocket); a transport without them counts as holding nothing.
    """
    total = 0
    for transport in transports:
        seen = 0
        while transport is not None and seen < 8:  # chains are short; no cycles
            seen += 1
            buffered = getattr(transport, "dataBuffer", None)
            if isinstance(buffered, bytes):
                total += len(buffered) - int(getattr(transport, "offset", 0))
                total += int(getattr(transport, "_tempDataLen", 0))
            transport = getattr(transport, "transport", None)
    return total
