"""From a bot to a person: ``HandoffResponder``.

A responder (a bot in this process, or ``QueueResponder(instance,
"workers")``, whose workers run one) answers each conversation first; when
it calls ``conversation.handoff(reason)`` (``IConversation``), the
conversation goes to the operators' queue (``QueueResponder(instance,
"operators")``) for good:

- the conversation's history so far (the client's lines and the bot's
  answers, kept here in memory until then, within the history's bounds)
  goes to the broker's history, with a note of the handoff and its reason,
  so that the operator who takes it sees the bot's part;
- the client is told (``!info handoff``);
- the line the bot was answering, if any, waits for an operator instead:
  the bot's answer to it, if one comes, is not sent (a worker's late answer
  names a queue entry that is no longer the line's, and is ignored);
- its next lines go to the operators.

The bot's hooks get a conversation whose ``handoff`` does this; a worker's
responder calls ``handoff`` on its own conversation, which sends the
instance a ``handoff`` message, and ``QueueResponder`` calls ``handoff``
on the conversation it was given: this one's.

People take the time they take: the answers this responder gives later
are ``Untimed``, and it times the bot's itself (*bot_timeout*, the
server's answer timeout), so that the client gets ``!error
responder-timeout`` and its turn back when the bot is too slow, and waits
for a person as long as it takes.  The workers' queue times its lines
itself (``QueueResponder(..., timeout=)``, one timer for all of them):
``twistd`` gives it no *bot_timeout*.

The server waits on the bot's own Deferred, with one callback of this
responder's before the server's: it keeps the turn for the history, or,
if the conversation was handed over meanwhile, returns the people's
answer to come, which Twisted then chains in the bot's place.  With the
workers' queue as the bot, nothing of this responder's stands between:
the server waits on the queue's ``Later``, the queue tells this responder
of each answer (``answered_hook``, for the history), and a handoff moves
the waiting line to the people (``QueueResponder.hand_over``), whose
answer the same ``Later`` then gives.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from sockchat._broker.instance import QueueResponder
from sockchat._broker.interface import quietly
from sockchat._broker.wire import HISTORY_BYTES, HISTORY_ITEMS, said
from sockchat._core.render import safe_text
from sockchat._core.wire import Signed
from sockchat._responders.contract import (
    ConversationInfo,
    IConversation,
    ILifecycle,
    IResponder,
    Reply,
    Untimed,
    as_deferred,
)

__all__ = ["HANDOFF_NOTICE", "HandingConversation", "HandoffResponder"]

log = Logger(namespace="sockchat.handoff")

#: What the client is told when its conversation goes to a person.
HANDOFF_NOTICE = (
    "your conversation goes to a person now; the first operator free answers you"
)


#: How far past the history's bounds a conversation's turns go before they
#: are trimmed to them.
_MARGIN_ITEMS = 100
_MARGIN_BYTES = 16 * 1024
#: A turn's text.
_TEXT = itemgetter(2)


@define(eq=False)
class _Asked:
    """A line the bot is answering."""

    text: str
    at: float
    #: The bot's answer, while it is awaited (what the server waits on).
    inner: Deferred[Any] | None = None
    #: Handed over while the bot answered: a person answers it instead.
    handed: bool = False


@define(eq=False)
class _Talk:
    """One conversation, as the bot has it until it hands it over."""

    conversation: IConversation
    wrapper: HandingConversation
    #: Turns so far: (who, by, text, at), oldest first, within bounds.
    said: list[tuple[str, str, str, float]] = field(factory=list)
    size: int = 0
    asked: _Asked | None = None
    handed: bool = False

    def record(self, *turns: tuple[str, str, str, float]) -> None:
        """Keep *turns*; past the history's bounds by a margin, trim (once
        in many turns, not at every one, in a long conversation)."""
        kept = self.said
        kept.extend(turns)
        for turn in turns:
            self.size += len(turn[2])
        if (
            self.size > HISTORY_BYTES + _MARGIN_BYTES
            or len(kept) > HISTORY_ITEMS + _MARGIN_ITEMS
        ):
            self.trim()

    def trim(self) -> None:
        """Within the history's bounds: the last turns, the latest whole."""
        kept = self.said
        extra = len(kept) - HISTORY_ITEMS
        if extra > 0:  # at once, not a call a turn
            self.size -= sum(map(len, map(_TEXT, kept[:extra])))
            del kept[:extra]
        while self.size > HISTORY_BYTES and len(kept) > 1:
            self.size -= len(kept.pop(0)[2])


@implementer(IConversation)
class HandingConversation:
    """The conversation a bot's hooks get: the server's, and ``handoff``."""

    def __init__(self, conversation: IConversation, router: HandoffResponder) -> None:
        self._conversation = conversation
        self._router = router

    @property
    def info(self) -> ConversationInfo:
        info: ConversationInfo = self._conversation.info
        return info

    def notify(self, code: str, text: str) -> None:
        self._conversation.notify(code, text)

    def end(self, code: str, text: str) -> None:
        self._conversation.end(code, text)

    def handoff(self, reason: str) -> None:
        self._router.handoff(self.info.id, reason)


@implementer(IResponder, ILifecycle)
class HandoffResponder:
    """*bot* answers; a conversation it hands off goes to *people*."""

    def __init__(
        self,
        bot: IResponder,
        people: QueueResponder,
        clock: IReactorTime,
        *,
        bot_timeout: float | None = None,
    ) -> None:
        self.bot = bot
        self.people = people
        self._clock = clock
        self._timeout = bot_timeout
        self._hooks = ILifecycle.providedBy(bot)
        self._talks: dict[int, _Talk] = {}
        #: The workers' queue as the bot (with no timeout of this
        #: responder's): the server waits on its answers directly, with no
        #: step of this responder's between (a line costs a few calls
        #: fewer, issue 23); it tells this responder of each answer, for
        #: the history, and hands a waiting line over when asked.
        self._queue: QueueResponder | None = None
        if isinstance(bot, QueueResponder) and bot_timeout is None:
            self._queue = bot
            bot.answered_hook = self._queue_answered

    # -- ILifecycle ------------------------------------------------------------

    def started(self, conversation: IConversation) -> Reply | None:
        info: ConversationInfo = conversation.info
        talk = _Talk(conversation, HandingConversation(conversation, self))
        self._talks[info.id] = talk
        if not self._hooks:
            return None
        opening: Reply | None = self.bot.started(talk.wrapper)  # type: ignore[attr-defined]  # ILifecycle
        if isinstance(opening, (str, Signed)):
            self._said_by_bot(talk, opening)
            return opening
        later = as_deferred(opening)
        if later is None:
            return opening
        opened: Deferred[str | Signed] = later.addCallback(self._opened, talk)
        return opened

    def _opened(self, opening: Any, talk: _Talk) -> Any:
        if isinstance(opening, (str, Signed)):
            self._said_by_bot(talk, opening)
        return opening

    def ended(self, conversation: IConversation, reason: str) -> None:
        talk = self._talks.pop(conversation.info.id, None)
        if talk is None:
            return
        if self._hooks:
            try:
                self.bot.ended(talk.wrapper, reason)  # type: ignore[attr-defined]  # ILifecycle
            except Exception:
                log.failure(
                    "the responder's ended hook failed in conversation {cid}",
                    cid=conversation.info.id,
                )
        if talk.handed:
            self.people.ended(conversation, reason)

    # -- IResponder ------------------------------------------------------------

    def respond(self, conversation: ConversationInfo, text: str) -> Reply:
        talk = self._talks.get(conversation.id)
        if talk is None or talk.handed:
            return Untimed(self.people.respond(conversation, text))
        if self._queue is not None:  # it records its answers, hands its lines over
            return Untimed(self._queue.respond(conversation, text))
        asked = talk.asked = _Asked(text, self._clock.seconds())
        try:
            reply = self.bot.respond(conversation, text)
        except Exception:
            if talk.asked is asked:
                talk.asked = None
            if asked.handed:  # handed over, then it raised: a person answers
                return Untimed(self._to_people(conversation, text))
            raise
        if asked.handed:  # it handed over while answering
            _discard(reply)
            return Untimed(self._to_people(conversation, text))
        if isinstance(reply, (str, Signed)):
            talk.asked = None
            self._answered(talk, asked, reply)
            return reply
        inner = as_deferred(reply)
        if inner is None:
            talk.asked = None
            return reply  # the server says what is wrong with it
        asked.inner = inner
        if self._timeout is not None:
            inner.addTimeout(self._timeout, self._clock)
        # The server waits on the bot's own Deferred.  This callback comes
        # after the timeout's (so that a person's answer is not timed) and
        # before the server's: it records the turn, or after a handoff puts
        # a person's answer in the bot's place.
        inner.addBoth(self._bot_done, talk, asked, conversation)
        return Untimed(inner)

    def _bot_done(
        self, result: object, talk: _Talk, asked: _Asked, info: ConversationInfo
    ) -> object:
        if asked.handed:
            # Handed over while the bot answered: its answer (or the failure
            # of its cancelling) is dropped, and the server waits for a
            # person's instead (cancelling the line now cancels theirs).
            return self._to_people(info, asked.text)
        if talk.asked is asked:
            talk.asked = None
        asked.inner = None
        if isinstance(result, (str, Signed)):
            self._answered(talk, asked, result)
        return result

    def _to_people(self, info: ConversationInfo, text: str) -> Deferred[str | Signed]:
        try:
            reply = self.people.respond(info, text)
        except Exception:
            return fail()
        answer = as_deferred(reply)
        assert answer is not None  # the operators' queue answers later
        return answer

    def _answered(self, talk: _Talk, asked: _Asked, reply: str | Signed) -> None:
        talk.record(("client", "", asked.text, asked.at), self._bot_said(reply))

    def _queue_answered(
        self, cid: int, text: str, at: float, reply: str | Signed
    ) -> None:
        """The workers answered the line *text*, asked *at*."""
        talk = self._talks.get(cid)
        if talk is not None and not talk.handed:
            talk.record(("client", "", text, at), self._bot_said(reply))

    def _said_by_bot(self, talk: _Talk, reply: str | Signed) -> None:
        talk.record(self._bot_said(reply))

    def _bot_said(self, reply: str | Signed) -> tuple[str, str, str, float]:
        """The bot's turn, for the history (unsigned: the desk says "bot")."""
        if isinstance(reply, Signed):
            return ("bot", reply.by, reply.text, self._clock.seconds())
        return ("bot", "", reply, self._clock.seconds())

    # -- Handing over -------------------------------------------------------------

    def handoff(self, cid: int, reason: str) -> None:
        """Conversation *cid* goes to the operators (``IConversation.handoff``)."""
        talk = self._talks.get(cid)
        if talk is None or talk.handed:
            return
        talk.handed = True
        reason = reason.replace("\n", " ")[:500]
        log.info(
            "conversation {cid} goes to the operators: {reason}",
            cid=cid,
            reason=safe_text(reason),
        )
        people = self.people
        people.started(talk.conversation)
        talk.trim()
        items = [said(*turn) for turn in talk.said]
        now = self._clock.seconds()
        items.append(said("notice", "", f"the bot handed it over: {reason}", now))
        talk.said.clear()
        instance = people.instance
        if instance.broker.up:
            quietly(instance.broker.add_history(instance.name, cid, items))
        talk.conversation.notify("handoff", HANDOFF_NOTICE)
        if self._queue is not None:  # its line, if it waits, goes to the people
            self._queue.hand_over(cid, self._to_people)
            return
        asked, talk.asked = talk.asked, None
        if asked is None:
            return
        # The line the bot answers goes to the people: at once if the bot
        # is still answering it (``respond`` sees it), or once its answer
        # is cancelled (``_bot_done``).
        asked.handed = True
        inner = asked.inner
        if inner is not None and not inner.called:
            inner.cancel()


def _discard(reply: object) -> None:
    """A reply that will not be sent: if it is still to come, stop it."""
    later = as_deferred(reply)
    if later is not None and not later.called:
        later.addErrback(lambda _: None)
        later.cancel()
