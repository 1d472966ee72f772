"""Pair mode: clients talk to each other, two by two, in turns.

Clients are paired in order of arrival.  The first of a pair speaks first;
each line it sends is delivered to its partner as the answer that partner
is waiting for, and the partner's reply comes back the same way.  The
server's turn-taking still holds on both sides: each client waits for the
other's line before it speaks again.

When one side leaves (``q``, a disconnect, an idle timeout), the other is
told who left and why, and its conversation ends too (``!bye partner-left``):
a pair is one conversation between two people, and nobody is handed to a
stranger in the middle of it.  Connecting again joins the queue for a new
partner.  No I/O here: the server protocols do it.
"""

from __future__ import annotations

from attrs import define
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from ._responder import ConversationInfo, IConversation, ILifecycle, IResponder
from ._wire import QUIT

__all__ = ["PairResponder"]

log = Logger(namespace="sockchat.pair")

_LEFT_BECAUSE = {
    "quit": f"sent {QUIT}",
    "connection-lost": "disconnected",
    "end-of-input": "closed its side of the connection",
    "idle-timeout": "was idle for too long",
    "kicked": "was disconnected by the operator",
}


@define(eq=False)
class _Party:
    conversation: IConversation
    partner: _Party | None = None
    #: Fires with the partner's next line, which this party is waiting for.
    waiting: Deferred[str] | None = None
    #: A line said before any partner came, kept for the first partner.
    opening: str | None = None

    @property
    def label(self) -> str:
        info = self.conversation.info
        return f"client {info.id} ({info.peer})"


@implementer(IResponder, ILifecycle)
class PairResponder:
    """Relay lines between the two clients of each pair."""

    def __init__(self) -> None:
        self._parties: dict[int, _Party] = {}
        self._alone: _Party | None = None
        self.pairs = 0  # pairs made so far

    @property
    def waiting_for_partner(self) -> int:
        """How many clients wait for a partner (0 or 1)."""
        return 1 if self._alone is not None else 0

    def started(self, conversation: IConversation) -> Deferred[str] | str | None:
        party = _Party(conversation)
        self._parties[conversation.info.id] = party
        first = self._alone
        if first is None:
            self._alone = party
            conversation.notify(
                "waiting",
                "no partner yet: you will talk with the next client to connect. "
                f"You may say your first line now. Send {QUIT} to quit.",
            )
            return None
        self._alone = None
        self.pairs += 1
        first.partner, party.partner = party, first
        log.info(
            "conversations {first} and {second} are paired",
            first=first.conversation.info.id,
            second=conversation.info.id,
        )
        if first.opening is not None:
            first.conversation.notify(
                "paired",
                f"you are talking with {party.label}. They have your first line; "
                "wait for their answer.",
            )
        else:
            first.conversation.notify(
                "paired", f"you are talking with {party.label}. You speak first."
            )
        party.conversation.notify(
            "paired",
            f"you are talking with {first.label}. They speak first; wait for "
            "their line.",
        )
        opening, first.opening = first.opening, None
        if opening is not None:
            return opening
        party.waiting = Deferred()
        return party.waiting

    def respond(self, conversation: ConversationInfo, text: str) -> Deferred[str]:
        party = self._parties[conversation.id]
        answer: Deferred[str] = Deferred()
        party.waiting = answer
        partner = party.partner
        if partner is None:
            party.opening = text  # for the partner to come
        else:
            waiting, partner.waiting = partner.waiting, None
            assert waiting is not None, "turn-taking: the partner must be waiting"
            waiting.callback(text)
        return answer

    def ended(self, conversation: IConversation, reason: str) -> None:
        party = self._parties.pop(conversation.info.id, None)
        if party is None:
            return
        if self._alone is party:
            self._alone = None
        partner, party.partner = party.partner, None
        if partner is not None:
            partner.partner = None
            why = _LEFT_BECAUSE.get(reason, f"left ({reason})")
            partner.conversation.end(
                "partner-left",
                f"{party.label} {why}. Connect again to talk with someone new.",
            )
