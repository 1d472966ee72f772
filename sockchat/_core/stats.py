"""What the server counts for ``--metrics``, with no I/O and no dependencies.

The server adds to a ``ServerStats`` with plain integer arithmetic as it
goes; nothing here formats, locks or allocates on a turn.  At scrape time
the Prometheus collector (``sockchat._operations.prometheus``) reads it.

Every label value comes from a short, fixed set (reasons and codes that
the server or its responder chose), and past ``MAX_LABEL_VALUES`` distinct
values the rest are counted as ``other``: never a peer address, a
conversation id or a client's text.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Protocol

from attrs import define, field

from sockchat._core.reports import Ended

__all__ = [
    "LATENCY_BOUNDS",
    "MAX_LABEL_VALUES",
    "Health",
    "LatencyHistogram",
    "ServerStats",
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


class Counting(Protocol):
    """What an open conversation's engine counts (``ServerConversation``)."""

    @property
    def answers(self) -> int: ...

    @property
    def bytes_in(self) -> int: ...

    @property
    def bytes_out(self) -> int: ...

    @property
    def held(self) -> int: ...


def _no_conversations() -> Iterable[Counting]:
    return ()


@define(slots=True, eq=False)
class ServerStats:
    """Counters for one server (its TCP and web doors share them).

    Nothing is counted here on a turn: each conversation's engine counts its
    own answers and bytes, and ``fold`` adds them in when it ends.  What the
    open ones have done so far is read from them when scraped (``live``).
    """

    #: The engines of the conversations open now (``ServerConversation``).
    live: Callable[[], Iterable[Counting]] = _no_conversations
    #: The responder's kind, the label of the latency of answers given at
    #: once (they took 0 s).
    kind: str = "responder"
    #: Conversations started.
    started: int = 0
    #: Conversations ended, by the code of their bye (``connection-lost``
    #: when the client went without one).
    ended_by: dict[str, int] = field(factory=dict)
    #: Lines refused with an ``!error`` notice, by its code.
    refused_lines: dict[str, int] = field(factory=dict)
    #: Connections refused before a conversation began, by the bye's code.
    refused_connections: dict[str, int] = field(factory=dict)
    #: Answers, bytes read and bytes written, of conversations that ended.
    answered_ended: int = 0
    bytes_in_ended: int = 0
    bytes_out_ended: int = 0
    #: Answers that came later (a Deferred), whose latency was observed.
    answered_later: int = 0
    _later: dict[str, LatencyHistogram] = field(factory=dict)

    @property
    def open(self) -> int:
        return sum(1 for _ in self.live())

    @property
    def answered(self) -> int:
        """Lines the responder answered."""
        return self.answered_ended + sum(e.answers for e in self.live())

    @property
    def bytes_in(self) -> int:
        """Bytes read from clients."""
        return self.bytes_in_ended + sum(e.bytes_in for e in self.live())

    @property
    def bytes_out(self) -> int:
        """Bytes written to clients."""
        return self.bytes_out_ended + sum(e.bytes_out for e in self.live())

    def output_held(self) -> int:
        """Bytes of memory the engines count as held for clients now."""
        return sum(e.held for e in self.live())

    def fold(self, ended: Ended) -> None:
        """A conversation ended: keep what it counted."""
        self.answered_ended += ended.answers
        self.bytes_in_ended += ended.bytes_in
        self.bytes_out_ended += ended.bytes_out
        _count(self.ended_by, ended.code)

    def ended(self, reason: str) -> None:
        """A conversation ended, for *reason* (with nothing else to fold)."""
        _count(self.ended_by, reason)

    def refused_line(self, code: str) -> None:
        _count(self.refused_lines, code)

    def refused_connection(self, code: str) -> None:
        _count(self.refused_connections, code)

    def observe_later(self, kind: str, seconds: float) -> None:
        """An answer given later, by a responder of *kind*, took *seconds*."""
        self.answered_later += 1
        histogram = self._later.get(kind)
        if histogram is None:
            if len(self._later) >= MAX_LABEL_VALUES:
                kind = OTHER
            histogram = self._later.setdefault(kind, LatencyHistogram())
        histogram.observe(seconds)

    @property
    def latency(self) -> dict[str, LatencyHistogram]:
        """Answer latency by responder kind; answers given at once took 0 s."""
        result = {
            kind: LatencyHistogram(h.bounds, list(h.counts), h.total)
            for kind, h in self._later.items()
        }
        at_once = self.answered - self.answered_later
        if at_once > 0:
            histogram = result.setdefault(self.kind, LatencyHistogram())
            histogram.counts[0] += at_once
        return result


@define(slots=True, eq=False)
class Health:
    """Whether the server accepts conversations: what ``/healthz`` says."""

    accepting: bool = True
    #: Why not, when not: a few words for the 503's body.
    why: str = ""

    def shutting_down(self) -> None:
        self.accepting = False
        self.why = "shutting down"
