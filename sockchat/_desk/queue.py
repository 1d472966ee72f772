"""What the desk needs from the operators' queue: ``IDeskQueue``.

The desk is an operator of the queue that clients' lines wait in.  This is
exactly what it uses, and nothing more: ``sockchat._desk.brokered`` makes
it of the broker's ``operators`` queue (``IBroker``: the memory broker in
one process, Redis across instances), and the desk's model and pages know
nothing of the broker:

- **read**: every open conversation, every line that waits for an answer
  with the time it was queued, who holds which conversation, who is online
  (``snapshot``); a conversation's history (``history``);
- **act**: take a given line (``take``), answer it, signed ``by`` an
  operator (``answer``), hand a conversation back to the queue
  (``hand_back``), end it (``end``); say an operator is online or not;
- **hear** what changes (``subscribe``): one event per change, below.

Holding is by conversation.  Taking a line makes its operator the holder
of its conversation, and the conversation's next lines are queued already
held by that operator (``Queued.holder``) until it is handed back or ends;
nobody else may take them.  A line is answered at most once: an answer to
a line that was answered, dropped or is held by another fails with
``Refused``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

from attrs import frozen
from twisted.internet.defer import Deferred
from zope.interface import Interface

__all__ = [
    "HISTORY_CHARS",
    "HISTORY_ITEMS",
    "Answered",
    "Client",
    "Closed",
    "DeskEvent",
    "Dropped",
    "HandedBack",
    "IDeskQueue",
    "Line",
    "Online",
    "Opened",
    "Operator",
    "Queued",
    "Refused",
    "Said",
    "Snapshot",
    "Spoken",
    "Taken",
    "Who",
]

#: What a conversation's history keeps at most: its last items, up to this
#: many characters of text in all (its latest item is always kept whole).
HISTORY_ITEMS = 500
HISTORY_CHARS = 64 * 1024


class Refused(Exception):
    """The queue cannot do that now; ``str()`` says why, in one line."""


class Who(enum.Enum):
    """Who said an item of a conversation's history."""

    CLIENT = "client"
    OPERATOR = "operator"
    BOT = "bot"
    #: What the server told the client (its welcome, a goodbye).
    NOTICE = "notice"


@frozen
class Operator:
    """An operator: the login name, and the name others see."""

    name: str
    display: str


@frozen
class Client:
    """An open conversation, as the desk names it."""

    #: Unique among the queue's conversations (``5``; ``i2/5`` across
    #: instances).
    key: str
    #: How a person calls it: ``client 5 (127.0.0.1:50312)``.
    label: str
    peer: str
    since: float


@frozen
class Line:
    """A client line that waits for its answer."""

    #: The queue's id for it.
    entry: str
    #: Its conversation's ``Client.key``.
    conversation: str
    text: str
    #: When it was queued, on the queue's clock.
    since: float


@frozen
class Said:
    """One item of a conversation's history."""

    conversation: str
    #: Its place in the conversation's history, counted from 1.
    n: int
    who: Who
    #: The operator's or the bot's display name; empty for the client.
    by: str
    text: str
    at: float


@frozen
class Snapshot:
    """Everything the desk shows, at one moment."""

    clients: Sequence[Client]
    #: Lines waiting for an answer, held or not, oldest first.
    lines: Sequence[Line]
    #: Conversations held, and by whom.
    holders: Sequence[tuple[str, Operator]]
    operators: Sequence[Operator]


# The events: one per change, in the order they happened.


@frozen
class Opened:
    client: Client


@frozen
class Closed:
    conversation: str
    #: The conversation's end (``sockchat.Reason``), e.g. ``quit``.
    reason: str


@frozen
class Queued:
    line: Line
    #: Who holds its conversation already, if anyone.
    holder: Operator | None


@frozen
class Taken:
    entry: str
    conversation: str
    by: Operator


@frozen
class Answered:
    entry: str
    conversation: str
    by: Operator


@frozen
class Dropped:
    """A line will not be answered: its client left, or it timed out."""

    entry: str
    conversation: str
    why: str


@frozen
class HandedBack:
    """A conversation is nobody's again; its waiting line, if any, too."""

    conversation: str
    by: Operator


@frozen
class Spoken:
    said: Said


@frozen
class Online:
    """The operators online now, every desk's."""

    operators: Sequence[Operator]


DeskEvent = (
    Opened | Closed | Queued | Taken | Answered | Dropped | HandedBack | Spoken | Online
)


class IDeskQueue(Interface):
    """The operators' queue, as the desk uses it.

    Every method that changes something returns a ``Deferred`` that fires
    once it is done (after its events were delivered), or fails with
    ``Refused`` when it cannot be.
    """

    def start() -> Deferred[None]:
        """Begin: what ``snapshot`` gives is known once this has fired."""

    def stop() -> Deferred[None]:
        """End: what this desk's operators hold goes back to the queue."""

    def snapshot() -> Deferred[Snapshot]:
        """Everything open and waiting now."""

    def history(conversation: str) -> Deferred[Sequence[Said]]:
        """The conversation's history so far (at most ``HISTORY_ITEMS``
        items, ``HISTORY_CHARS`` characters), oldest first."""

    def take(entry: str, by: Operator) -> Deferred[None]:
        """*by* takes this line, and holds its conversation from now on."""

    def answer(entry: str, text: str, by: Operator) -> Deferred[None]:
        """Answer this line, held by *by*, with *text*: once."""

    def hand_back(conversation: str, by: Operator) -> Deferred[None]:
        """*by* lets go of the conversation; its waiting line is anyone's."""

    def end(conversation: str, by: Operator) -> Deferred[None]:
        """End the conversation: the client is told goodbye."""

    def online(operator: Operator) -> Deferred[None]:
        """*operator* is at a desk."""

    def offline(operator: Operator) -> Deferred[None]:
        """*operator* left every desk."""

    def subscribe(observer: Callable[[DeskEvent], None]) -> Callable[[], None]:
        """Call *observer* with every event from now on; returns what
        stops that."""
