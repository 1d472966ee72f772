"""Pair mode: clients talk to each other, two by two, in turns.

Clients are paired in order of arrival.  The first of a pair speaks first;
each line it sends is delivered to its partner as the answer that partner
is waiting for, and the partner's reply comes back the same way.  The
server's turn-taking still holds on both sides: each client waits for the
other's line before it speaks again.

When one side leaves (``q``, a disconnect, an idle timeout) after a line has
passed between the two, the other is told who left and why, and its
conversation ends too (``!bye partner-left``): a pair is one conversation
between two people, and nobody is handed to a stranger in the middle of it.
Connecting again joins the queue for a new partner.

A partner that leaves before either has said a line to the other (a load
balancer's health check, a port probe: they connect and close at once) ends
nothing: the one left goes back to the head of the queue and is told
``!info waiting`` again.  A first line said while waiting is kept for the
next partner.  No I/O here: the server protocols do it.
"""

from __future__ import annotations

from attrs import define
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from sockchat._core.pairing import LEFT_BECAUSE, WHO_SPEAKS, Stance, waiting_again
from sockchat._core.wire import QUIT
from sockchat._responders.contract import (
    ConversationInfo,
    IAnsweredByPeople,
    IConversation,
    ILifecycle,
    IResponder,
)

__all__ = ["PairResponder"]

log = Logger(namespace="sockchat.pair")


@define(eq=False)
class _Party:
    conversation: IConversation
    partner: _Party | None = None
    #: Fires with the partner's next line, which this party is waiting for.
    waiting: Deferred[str] | None = None
    #: A line said before any partner came, kept for the first partner.
    opening: str | None = None
    #: The opening, once handed to a partner: kept until a line passes, in
    #: case that partner leaves at once and the next one needs it.
    handed: str | None = None
    #: Whether a line has passed between this party and its partner.
    talked: bool = False

    @property
    def label(self) -> str:
        info = self.conversation.info
        return f"client {info.id} ({info.peer})"

    @property
    def stance(self) -> Stance:
        if self.opening is not None:
            return Stance.SAID
        return Stance.SPEAKS if self.waiting is None else Stance.LISTENS


@implementer(IResponder, ILifecycle, IAnsweredByPeople)
class PairResponder:
    """Relay lines between the two clients of each pair."""

    def __init__(self) -> None:
        self._parties: dict[int, _Party] = {}
        #: Clients without a partner, the one to pair next first.
        #: Newcomers pair with the head.  There is more than one only when
        #: clients whose partners left untalked all wait for a first line
        #: (they cannot take turns with each other).
        self._queue: list[_Party] = []
        self.pairs = 0  # pairs made so far

    @property
    def waiting_for_partner(self) -> int:
        """How many clients wait for a partner."""
        return len(self._queue)

    def started(self, conversation: IConversation) -> Deferred[str] | str | None:
        party = _Party(conversation)
        self._parties[conversation.info.id] = party
        if not self._queue:
            self._queue.append(party)
            conversation.notify(
                "waiting",
                "no partner yet: you will talk with the next client to connect. "
                f"You may say your first line now. Send {QUIT} to quit.",
            )
            return None
        first = self._queue.pop(0)
        stance = first.stance
        self._link(first, party)
        if stance is Stance.SAID:
            opening, first.opening = first.opening, None
            first.handed = opening
            first.conversation.notify(
                "paired",
                f"you are talking with {party.label}. They have your first line; "
                "wait for their answer.",
            )
            party.conversation.notify(
                "paired",
                f"you are talking with {first.label}. They speak first; wait for "
                "their line.",
            )
            return opening
        if stance is Stance.LISTENS:
            first.conversation.notify(
                "paired",
                f"you are talking with {party.label}. They speak first; wait for "
                "their line.",
            )
            party.conversation.notify(
                "paired", f"you are talking with {first.label}. You speak first."
            )
            return None
        first.conversation.notify(
            "paired", f"you are talking with {party.label}. You speak first."
        )
        party.conversation.notify(
            "paired",
            f"you are talking with {first.label}. They speak first; wait for "
            "their line.",
        )
        party.waiting = Deferred()
        return party.waiting

    def _link(self, first: _Party, second: _Party) -> None:
        self.pairs += 1
        first.partner, second.partner = second, first
        first.talked = second.talked = False
        # Not logged: a health check pairs and leaves at once, and a pair
        # that talked is logged when it ends.

    def respond(self, conversation: ConversationInfo, text: str) -> Deferred[str]:
        party = self._parties[conversation.id]
        answer: Deferred[str] = Deferred()
        party.waiting = answer
        partner = party.partner
        if partner is None:
            party.opening = text  # for the partner to come
            return answer
        party.talked = partner.talked = True
        party.handed = partner.handed = None
        waiting, partner.waiting = partner.waiting, None
        if partner.opening is not None:
            # Both spoke at once (they were paired while both had the turn):
            # each line is the other's answer.
            crossed, partner.opening = partner.opening, None
            party.waiting = None
            answer.callback(crossed)
        if waiting is None:  # the partner has the turn: keep it for them
            party.opening = text
        else:
            waiting.callback(text)
        return answer

    def ended(self, conversation: IConversation, reason: str) -> None:
        party = self._parties.pop(conversation.info.id, None)
        if party is None:
            return
        if party in self._queue:
            self._queue.remove(party)
        partner, party.partner = party.partner, None
        if partner is None:
            return
        partner.partner = None
        why = LEFT_BECAUSE.get(reason, f"left ({reason})")
        if partner.talked:
            log.info(
                "the pair of conversations {left} and {partner} ended: {left} {why}",
                left=conversation.info.id,
                partner=partner.conversation.info.id,
                why=why,
            )
            partner.conversation.end(
                "partner-left",
                f"{party.label} {why}. Connect again to talk with someone new.",
            )
            return
        self._requeue(partner, f"{party.label} {why} before you talked")

    def _requeue(self, party: _Party, what: str) -> None:
        """Put *party*, whose partner left untalked, back at the queue's head."""
        handed, party.handed = party.handed, None
        if handed is not None and party.waiting is not None:
            # Its first line went unanswered: it is for the next partner.
            party.opening = handed
        stance = party.stance
        party.conversation.notify("waiting", waiting_again(what, stance))
        head = self._queue[0] if self._queue else None
        if head is None or (stance is Stance.LISTENS and head.stance is stance):
            # Two that both wait for the other's first line cannot take
            # turns: each waits for a newcomer, this one first.
            self._queue.insert(0, party)
            return
        # One came while this party was paired: it was waiting behind it.
        self._pair_waiting(party, self._queue.pop(0))

    def _pair_waiting(self, first: _Party, second: _Party) -> None:
        """Pair two that were both waiting, whatever each has said."""
        stances = {first: first.stance, second: second.stance}
        self._link(first, second)
        for party, other in ((first, second), (second, first)):
            party.conversation.notify(
                "paired",
                f"you are talking with {other.label}. "
                + WHO_SPEAKS[stances[party], stances[other]],
            )
        # A first line goes at once to a partner that waits for one.
        handing = [
            (party, other)
            for party, other in ((first, second), (second, first))
            if party.opening is not None and other.waiting is not None
        ]
        if len(handing) == 2:
            # The first lines cross: a line has passed each way, so they
            # have talked (a check that says nothing never gets here).
            first.talked = second.talked = True
        for party, other in handing:
            opening, party.opening = party.opening, None
            if len(handing) == 1:
                party.handed = opening
            waiting, other.waiting = other.waiting, None
            assert waiting is not None
            assert opening is not None
            waiting.callback(opening)
