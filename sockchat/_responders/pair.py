"""Pair mode in one process: clients talk to each other, two by two, in
turns.

The rules (who waits, who is paired with whom, who speaks first, what a
partner's leaving does) are the core's, in ``sockchat._core.pairing``;
this is its adapter.  It tells the model what happens to each
conversation (it connected, said a line, ended, a grace ran out) and
carries out what the model says: welcome a client (it listens, or has the
turn), send it a notice, give it its partner's line as its answer, give
it the turn back, end its conversation, log.
"""

from __future__ import annotations

from collections.abc import Hashable

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from sockchat._core.pairing import (
    GRACE,
    Action,
    Answer,
    End,
    GiveTurn,
    Log,
    Pairs,
    Tell,
    Welcome,
)
from sockchat._responders.contract import (
    ConversationInfo,
    IAnsweredByPeople,
    IConversation,
    ILifecycle,
    IResponder,
    Unavailable,
    WelcomeLater,
)

__all__ = ["PairResponder", "Seat"]

log = Logger(namespace="sockchat.pair")


@define(eq=False)
class Seat:
    """One client's side of pair mode, as an adapter holds it: its
    conversation, its welcome (held until the pairing decides), and the
    line it waits for.  Pair mode across instances
    (``sockchat._broker.pairs``) holds its clients so too."""

    conversation: IConversation
    welcome: WelcomeLater = field(factory=WelcomeLater)
    #: The line the client waits for: its partner's next one.
    waiting: Deferred[str] | None = None

    def act(self, action: Action) -> bool:
        """Carry out *action* if it is for the client itself (a welcome, a
        notice, an answer, the turn back, the end, a log event); False if
        it is for the adapter (finding a partner, reaching it)."""
        if type(action) is Answer:  # the usual: the partner's line
            waiting, self.waiting = self.waiting, None
            if waiting is not None:
                waiting.callback(action.text)
        elif isinstance(action, Welcome):
            if action.listen:
                self.waiting = Deferred()
                self.welcome.server_first(self.waiting)
            else:
                self.welcome.client_first()
        elif isinstance(action, Tell):
            self.conversation.notify(action.code, action.text)
        elif isinstance(action, GiveTurn):
            waiting, self.waiting = self.waiting, None
            if waiting is not None:
                waiting.errback(Unavailable(action.why))
        elif isinstance(action, End):
            self.conversation.end(action.code, action.text)
        elif isinstance(action, Log):
            fields = dict(action.fields)
            log.emit(LogLevel.lookupByName(action.level), action.format, **fields)
        else:
            return False
        return True


@implementer(IResponder, ILifecycle, IAnsweredByPeople)
class PairResponder:
    """Pair clients in order of arrival and relay each pair's lines.

    A newcomer is offered for pairing once it has stayed *grace* seconds
    (so that a health check or a port probe, which closes at once, is
    nobody's partner); *clock* times it (the reactor by default).  With
    *grace* 0, clients are paired as soon as they connect.
    """

    def __init__(
        self, *, clock: IReactorTime | None = None, grace: float = GRACE
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        assert clock is not None
        self._clock: IReactorTime = clock
        self._pairs = Pairs(grace)
        self._seats: dict[Hashable, Seat] = {}
        self._timer: IDelayedCall | None = None

    @property
    def waiting_for_partner(self) -> int:
        """How many clients wait for a partner."""
        return len(self._pairs.waiting)

    # -- ILifecycle ------------------------------------------------------------

    def started(self, conversation: IConversation) -> WelcomeLater:
        info = conversation.info
        seat = self._seats[info.id] = Seat(conversation)
        self._pairs.arrive(info.id, f"client {info.id} ({info.peer})", self._now())
        self._run()
        return seat.welcome

    def ended(self, conversation: IConversation, reason: str) -> None:
        key = conversation.info.id
        if self._seats.pop(key, None) is not None:
            self._pairs.left(key, reason)
            self._run()

    # -- IResponder ------------------------------------------------------------

    def respond(self, conversation: ConversationInfo, text: str) -> Deferred[str]:
        seat = self._seats[conversation.id]
        answer = seat.waiting = Deferred()
        self._pairs.said(conversation.id, text)
        self._run()
        return answer

    # -- Carrying out the model's actions --------------------------------------

    def _now(self) -> float:
        return self._clock.seconds()

    def _tick(self) -> None:
        self._timer = None
        self._pairs.tick(self._now())
        self._run()

    def _run(self) -> None:
        while (action := self._pairs.next_action()) is not None:
            self._act(action)
        deadline = self._pairs.deadline
        if deadline is not None and self._timer is None:
            self._timer = self._clock.callLater(
                max(0.0, deadline - self._now()), self._tick
            )

    def _act(self, action: Action) -> None:
        seat = self._seats.get(action.key)
        if seat is not None:  # else it ended meanwhile
            seat.act(action)
