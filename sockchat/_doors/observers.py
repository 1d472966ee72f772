"""The hooks a door calls as its conversation goes, for whoever watches it.

A feature that watches conversations (the metrics, teaching mode's trace)
is an observer attached to the factory (``ChatServerFactory.observe``), or
to the client's protocol; it never subclasses a door.  The contract is a
``typing.Protocol``, ``ConversationObserver`` (and ``ClientObserver`` for
the client): our own code attaches observers, and mypy checks them
against it.  Each hook does nothing by default: an observer that
subclasses the protocol overrides only the hooks it needs.

Each hook is called in the order things happened, with the time ``now``
from the factory's clock:

1. ``connected``: the connection (its transport, both addresses), before
   anything else; on the web door, then ``upgraded``: the HTTP request
   that made it a WebSocket (both come once the upgrade is done).
2. ``started``: the conversation began (its id and peer), before its
   welcome is written and before its first read.
3. For each input: ``read`` (its bytes) or ``frame_in`` (a WebSocket text
   message, or a piece of one); the engine's reports
   (``sockchat._core.reports``: the turn's moves, lines refused, the flow's
   moves) as it decides; ``wrote`` for each write (a WebSocket's text
   message as UTF-8); then ``handled``, once all the input caused is done.
4. ``peer_closed`` when the peer closed its sending half (a FIN);
   ``closing`` when this side begins the close (the ``Reason``);
   ``aborting`` if the close did not finish within the grace and the
   connection is aborted.
5. ``lost``: how the connection went (``Loss``), last.

The hooks of every turn (``read``, ``frame_in``, ``wrote``, the turn's
moves, ``handled``) are called only on observers whose ``every_turn`` is
true, and the engine then takes its long path.  With none, the usual turn
pays one check for them.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Protocol

from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import ITransport
from twisted.python.failure import Failure

from sockchat._core.engine import Reason
from sockchat._core.reports import Ended, EngineReport, LineRefused
from sockchat._core.stats import ServerStats
from sockchat._core.turns import ClientTurn
from sockchat._responders.contract import ConversationInfo

if TYPE_CHECKING:
    from twisted.web.server import Request
    from twisted.web.websocket import WebSocketTransport

__all__ = [
    "ClientObserver",
    "ConversationObserver",
    "Loss",
    "Metrics",
    "loss_of",
]


class Loss(enum.Enum):
    """How a connection was lost, as Twisted tells it."""

    #: ``ConnectionDone``: closed cleanly, by either side (a FIN each way).
    DONE = "done"
    #: ``ConnectionLost``: not cleanly.  A reset (ECONNRESET) is the usual
    #: cause; Twisted does not keep the error number.
    LOST = "lost"
    #: ``ConnectionAborted``: this side aborted it (``abortConnection``).
    ABORTED = "aborted"
    #: Anything else: a TLS error, say (the ``Failure`` says which).
    ERROR = "error"


def loss_of(reason: Failure) -> Loss:
    """How the connection that ended with *reason* was lost."""
    if reason.check(ConnectionDone):
        return Loss.DONE
    if reason.check(ConnectionAborted):
        return Loss.ABORTED
    if reason.check(ConnectionLost):
        return Loss.LOST
    return Loss.ERROR


class ConversationObserver(Protocol):
    """Watches the server's side of conversations: the hooks a door calls."""

    #: Hear every turn: ``read``, ``frame_in``, ``wrote``, ``handled`` and
    #: the turn's moves.
    every_turn: bool = False

    def connected(self, transport: ITransport, now: float) -> None:
        """The connection is made: *transport*'s ``getHost`` and
        ``getPeer`` are its two ends (for TLS, before its handshake)."""
        return None

    def upgraded(
        self, request: Request, socket: WebSocketTransport, now: float
    ) -> None:
        """The web door: *request* was upgraded to the WebSocket *socket*."""
        return None

    def started(self, info: ConversationInfo, now: float) -> None:
        """The conversation began; its welcome follows."""
        return None

    def read(self, data: bytes, now: float) -> None:
        """A read brought *data* (every turn)."""
        return None

    def frame_in(self, text: str | None, size: int, final: bool, now: float) -> None:
        """A WebSocket text message, or a piece of it (*final*: its end),
        of *size* bytes; *text* None: a binary one (every turn)."""
        return None

    def reported(self, report: EngineReport) -> None:
        """The engine decided *report* (its turn's moves: every turn)."""
        return None

    def wrote(self, data: bytes, now: float) -> None:
        """*data* was written to the client (every turn)."""
        return None

    def handled(self, now: float) -> None:
        """All that the last input caused is done (every turn)."""
        return None

    def answered_later(self, seconds: float) -> None:
        """The responder's answer came later, after *seconds*."""
        return None

    def peer_closed(self, now: float) -> None:
        """The client closed its sending half: it will send nothing more."""
        return None

    def closing(self, reason: Reason, now: float) -> None:
        """This side begins the close, for *reason*."""
        return None

    def aborting(self, now: float) -> None:
        """The close did not finish within its grace: the connection is
        aborted."""
        return None

    def lost(self, loss: Loss, reason: Failure, now: float) -> None:
        """The connection is gone: *loss* says how, *reason* is Twisted's."""
        return None


class Metrics(ConversationObserver):
    """What ``--metrics`` counts, as an observer of every conversation: one
    for the factory, shared by its conversations, TCP and web."""

    def __init__(self, stats: ServerStats) -> None:
        self.stats = stats

    def started(self, info: ConversationInfo, now: float) -> None:
        self.stats.started += 1

    def reported(self, report: EngineReport) -> None:
        if type(report) is LineRefused:
            self.stats.refused_line(report.code)
        elif type(report) is Ended:
            self.stats.fold(report)

    def answered_later(self, seconds: float) -> None:
        self.stats.observe_later(self.stats.kind, seconds)


class ClientObserver(Protocol):
    """Watches the client's side of a conversation: the hooks its protocol
    calls, in order (the observer reads its own clock, if it needs one)."""

    def connected(self, transport: ITransport) -> None:
        """The connection is made (for TLS, before its handshake)."""
        return None

    def read(self, data: bytes) -> None:
        """A read brought *data*."""
        return None

    def answered(self) -> None:
        """An answer came: the turn is the client's again, before whoever
        waits for the answer hears it."""
        return None

    def handled(self, turn: ClientTurn) -> None:
        """The last read was taken in: *turn* is whose turn it is now."""
        return None

    def sent(self, text: str, data: bytes) -> None:
        """The line *text* was written, as *data*."""
        return None

    def peer_closed(self) -> None:
        """The server closed its sending half (a FIN)."""
        return None

    def lost(self, loss: Loss, reason: Failure) -> None:
        """The connection is gone, and whoever waited was told: *loss* says
        how, *reason* is Twisted's."""
        return None
