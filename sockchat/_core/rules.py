"""The rules of one conversation, each stated once, with no I/O.

- **The turn rule** (``MOVES``): who may speak.  The client speaks first
  (or, when the responder speaks first, listens first); after each line
  the server owes exactly one answer; ``q`` or a bye ends it from either
  side.
- **The flow rule** (``FLOW``): when the server stops handling a client's
  lines, stops reading it, and starts again.  Memory is bounded by what it
  costs (``cost``): the lines that wait and the output the client has not
  read, each at its real size, past ``max_output``.
- **The idle rule** (``idle_verdict``): when a client that says nothing is
  let go.

The conversation engine (``sockchat._core.engine``) follows these tables
and decides nothing they do not say: it turns what happened (bytes came,
the responder answered, the output filled) into the events of their rows,
looks the move up, and carries it out.  ``tests/core/test_rules.py``
drives every pair of every table through the engine with real inputs.
"""

from __future__ import annotations

import enum
import sys

__all__ = [
    "FLOW",
    "ITEM_OVERHEAD",
    "MOVES",
    "TRANSPORT_BUFFER",
    "Event",
    "Flow",
    "FlowAction",
    "FlowEvent",
    "Idle",
    "Phase",
    "Turn",
    "cost",
    "idle_deadline",
    "idle_verdict",
]


# -- The turn rule -----------------------------------------------------------


class Phase(enum.IntEnum):
    STARTING = 0  # connected; the welcome is not sent yet
    OPEN = 1
    CLOSING = 2  # the close is asked for; the connection is not lost yet
    CLOSED = 3


class Turn(enum.IntEnum):
    CLIENT = 0  # the client may send a line
    SERVER = 1  # the server owes an answer


class Event(enum.IntEnum):
    """What moves the phase or the turn (the rows of ``MOVES``)."""

    START = 0  # the welcome: the client speaks first
    START_LISTEN = 1  # the welcome: the server speaks first
    LINE = 2  # a line in turn, delivered
    ANSWER = 3  # the answer to the line delivered
    FAIL = 4  # no answer: the turn goes back
    BYE = 5  # the conversation ends (quit, answered q, idle, end...)
    LOST = 6  # the connection is gone


#: The legal moves: (phase, turn, event) -> (phase, turn).  A triple missing
#: here changes nothing: the input came too late (an answer after the
#: close) or cannot happen.  A line out of turn is refused and moves
#: nothing: that is why ``(OPEN, SERVER, LINE)`` is missing.
MOVES: dict[tuple[Phase, Turn, Event], tuple[Phase, Turn]] = {
    (Phase.STARTING, Turn.CLIENT, Event.START): (Phase.OPEN, Turn.CLIENT),
    (Phase.STARTING, Turn.CLIENT, Event.START_LISTEN): (Phase.OPEN, Turn.SERVER),
    (Phase.STARTING, Turn.CLIENT, Event.BYE): (Phase.CLOSING, Turn.CLIENT),
    (Phase.STARTING, Turn.CLIENT, Event.LOST): (Phase.CLOSED, Turn.CLIENT),
    (Phase.OPEN, Turn.CLIENT, Event.LINE): (Phase.OPEN, Turn.SERVER),
    (Phase.OPEN, Turn.SERVER, Event.ANSWER): (Phase.OPEN, Turn.CLIENT),
    (Phase.OPEN, Turn.SERVER, Event.FAIL): (Phase.OPEN, Turn.CLIENT),
    (Phase.OPEN, Turn.CLIENT, Event.BYE): (Phase.CLOSING, Turn.CLIENT),
    (Phase.OPEN, Turn.SERVER, Event.BYE): (Phase.CLOSING, Turn.SERVER),
    (Phase.OPEN, Turn.CLIENT, Event.LOST): (Phase.CLOSED, Turn.CLIENT),
    (Phase.OPEN, Turn.SERVER, Event.LOST): (Phase.CLOSED, Turn.SERVER),
    (Phase.CLOSING, Turn.CLIENT, Event.LOST): (Phase.CLOSED, Turn.CLIENT),
    (Phase.CLOSING, Turn.SERVER, Event.LOST): (Phase.CLOSED, Turn.SERVER),
}


# -- The flow rule -----------------------------------------------------------

#: What one held item costs beyond its own size: its slot in the list that
#: holds it, and the allocator's rounding.  Measured with tracemalloc for
#: queued ``bytes`` (33 bytes of header, 8 of list slot, rounded to 16).
ITEM_OVERHEAD = 24

#: Where a stream door's transport says its output is full
#: (``OUTPUT_FULL``), and the most it reads at once.  Twisted counts bytes,
#: not the objects it keeps them in (about 56 bytes for each write), so a
#: small figure bounds what a client that never reads costs before the
#: engine's own count (``cost``) takes over.
TRANSPORT_BUFFER = 4 * 1024


def cost(item: object) -> int:
    """What holding *item* (a line waiting, a piece of output) costs in
    memory, in bytes."""
    return sys.getsizeof(item) + ITEM_OVERHEAD


class Flow(enum.IntEnum):
    """Whether the client's lines are handled, and whether it is read.

    Outside ``FLOWING``, what the lines waiting cost is counted; from
    ``HOLDING`` on, so is the output written since the client stopped
    reading.  Once the conversation is closing, the flow does not move.
    """

    #: Lines are handled as they come; nothing is counted.
    FLOWING = 0
    #: Lines wait their turn (a raw message that came before the answer to
    #: the last one; lines held back, now handled one by one), counted.
    QUEUED = 1
    #: The lines queued reached the bound: reading is paused.  They are
    #: still handled, each in its turn; reading resumes once none waits.
    BACKLOGGED = 2
    #: The client is not reading its output: its lines are held back.
    HOLDING = 3
    #: Holding, and what is held reached the bound: reading is paused too.
    STOPPED = 4


class FlowEvent(enum.IntEnum):
    """What moves the flow (the rows of ``FLOW``)."""

    #: The door's output holds all it should (its transport paused it):
    #: the client is not reading.  What is written meanwhile is counted.
    OUTPUT_FULL = 0
    #: The same, on a WebSocket: its pongs are written where they cannot
    #: be counted, so reading stops at once.
    OUTPUT_FULL_UNCOUNTED = 1
    #: The door's output was sent, and what waits is within the bound.
    OUTPUT_DRAINED = 2
    #: The door's output was sent, but the lines waiting are past the bound.
    OUTPUT_DRAINED_OVER_BOUND = 3
    #: A raw message came before the answer to the last one: it waits.
    LINE_WAITS = 4
    #: What is counted passed ``max_output``.
    OVER_BOUND = 5
    #: No line waits any more.
    CAUGHT_UP = 6


class FlowAction(enum.IntEnum):
    """What the door does to its reading, as the flow moves."""

    NONE = 0
    PAUSE = 1
    RESUME = 2


#: The flow's moves: (flow, event) -> (flow, what the door does).  A pair
#: missing here changes nothing: the event cannot happen in that state
#: (nothing is counted while FLOWING, so it is never over the bound) or is
#: already taken into account (a full output while HOLDING).
FLOW: dict[tuple[Flow, FlowEvent], tuple[Flow, FlowAction]] = {
    (Flow.FLOWING, FlowEvent.OUTPUT_FULL): (Flow.HOLDING, FlowAction.NONE),
    (Flow.FLOWING, FlowEvent.OUTPUT_FULL_UNCOUNTED): (Flow.STOPPED, FlowAction.PAUSE),
    (Flow.FLOWING, FlowEvent.LINE_WAITS): (Flow.QUEUED, FlowAction.NONE),
    (Flow.QUEUED, FlowEvent.OUTPUT_FULL): (Flow.HOLDING, FlowAction.NONE),
    (Flow.QUEUED, FlowEvent.OUTPUT_FULL_UNCOUNTED): (Flow.STOPPED, FlowAction.PAUSE),
    (Flow.QUEUED, FlowEvent.OVER_BOUND): (Flow.BACKLOGGED, FlowAction.PAUSE),
    (Flow.QUEUED, FlowEvent.CAUGHT_UP): (Flow.FLOWING, FlowAction.NONE),
    (Flow.BACKLOGGED, FlowEvent.OUTPUT_FULL): (Flow.STOPPED, FlowAction.NONE),
    (Flow.BACKLOGGED, FlowEvent.OUTPUT_FULL_UNCOUNTED): (Flow.STOPPED, FlowAction.NONE),
    (Flow.BACKLOGGED, FlowEvent.CAUGHT_UP): (Flow.FLOWING, FlowAction.RESUME),
    (Flow.HOLDING, FlowEvent.OVER_BOUND): (Flow.STOPPED, FlowAction.PAUSE),
    (Flow.HOLDING, FlowEvent.OUTPUT_DRAINED): (Flow.QUEUED, FlowAction.NONE),
    (Flow.STOPPED, FlowEvent.OUTPUT_DRAINED): (Flow.QUEUED, FlowAction.RESUME),
    (Flow.STOPPED, FlowEvent.OUTPUT_DRAINED_OVER_BOUND): (
        Flow.BACKLOGGED,
        FlowAction.NONE,
    ),
}


# -- The idle rule -----------------------------------------------------------


class Idle(enum.Enum):
    """What the idle rule says of a conversation at a given time."""

    #: No idle rule applies: no timeout, or the conversation is closing.
    NEVER = "never"
    #: The server owes the answer: waiting for it is not idling, and the
    #: client's idle clock starts again.
    WAITING = "waiting"
    #: The client's turn, and its time is not up.
    NOT_YET = "not-yet"
    #: The client's turn, and it said nothing for ``idle_timeout``: bye.
    IDLE = "idle"


def idle_verdict(
    phase: Phase, turn: Turn, since: float, idle_timeout: float | None, now: float
) -> Idle:
    """The idle rule: is a client idle at *now*?

    *since* is when its idle clock last started: at the welcome, at each
    line that came from it (a refused one too: it said something), and at
    each answer or failure that gave it its turn back.  A client is idle
    when, in its turn, it said nothing for *idle_timeout* seconds.  The
    engine starts the clock in one place (``_start_idle_clock``).
    """
    if idle_timeout is None or phase > Phase.OPEN:
        return Idle.NEVER
    if turn is Turn.SERVER:
        return Idle.WAITING
    if now < since + idle_timeout:
        return Idle.NOT_YET
    return Idle.IDLE


def idle_deadline(
    phase: Phase, since: float, idle_timeout: float | None
) -> float | None:
    """When the idle rule may next say ``IDLE`` (ask ``idle_verdict`` then);
    None: never."""
    if idle_timeout is None or phase > Phase.OPEN:
        return None
    return since + idle_timeout
