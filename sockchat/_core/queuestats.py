"""What an instance counts of the operators' queue, for ``--metrics``.

With no I/O: the instance's side of the queue (``QueueResponder``) says
when a line of one of its clients starts and stops waiting for an
operator, when a conversation gets its first answer from a person, and how
many operators the last census found; the Prometheus collector reads it
when scraped.  Each instance counts its own clients' lines: summed over
the instances, the depth is the shared queue's; their oldest, its oldest.
"""

from __future__ import annotations

from attrs import define, field

from sockchat._core.stats import LatencyHistogram

__all__ = ["FIRST_ANSWER_BOUNDS", "QueueStats"]

#: Upper bounds, in seconds, of the time-to-first-answer buckets: people
#: answer in seconds to minutes.
FIRST_ANSWER_BOUNDS: tuple[float, ...] = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
)


@define(eq=False)
class QueueStats:
    """The operators' queue as one instance sees it."""

    #: Since when each of its conversations' lines has waited, by conversation.
    waiting: dict[int, float] = field(factory=dict)
    #: Operators online at the last census (None before the first).
    online: int | None = None
    #: Seconds from a conversation's first line queued for the operators to
    #: its first answer from one.
    first_answer: LatencyHistogram = field(
        factory=lambda: LatencyHistogram(FIRST_ANSWER_BOUNDS)
    )

    def depth(self) -> int:
        return len(self.waiting)

    def oldest(self, now: float) -> float:
        """Seconds the oldest line has waited (0 when none waits)."""
        return max(0.0, now - min(self.waiting.values())) if self.waiting else 0.0
