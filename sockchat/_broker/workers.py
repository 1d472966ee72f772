"""Workers: a responder answers the lines of every instance's clients.

``python -m sockchat.worker`` runs a ``Consumer`` of the ``workers`` group
whose handler is a ``WorkerHandler`` around the responder that
``--responder`` would take.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from sockchat._broker.consumer import (
    HandlerBase,
    Outbox,
    Outcome,
    RemoteConversation,
    WorkItem,
)
from sockchat._responders.contract import (
    ConversationInfo,
    ILifecycle,
    IResponder,
    as_deferred,
)

__all__ = ["REMEMBERED", "WorkerHandler"]

log = Logger(namespace="sockchat.consumer")

#: Conversations a worker remembers (their ids) at most.
REMEMBERED = 65_536


class WorkerHandler(HandlerBase):
    """Answer work items with a responder, as the server itself would.

    The responder sees each conversation with an id of this worker's own
    (instances' ids collide), counted from 1, and the client's address as
    its peer.  Its ``started`` and ``ended`` hooks run in the worker that
    takes those items, which need not be the one that answers the lines:
    state that must live across workers is the responder's business.
    """

    kinds = frozenset({"line", "started", "ended"})

    def __init__(self, responder: IResponder, outbox: Outbox) -> None:
        self.responder = responder
        #: Whether the conversations it serves begin with a line of the
        #: server's: its responder has lifecycle hooks (said at the heartbeat).
        self.greets = ILifecycle.providedBy(responder)
        self._outbox = outbox
        self._conversations: OrderedDict[tuple[str, int], RemoteConversation] = (
            OrderedDict()
        )
        self._count = 0

    def conversation(self, item: WorkItem) -> RemoteConversation:
        """The conversation of *item*, made when first seen."""
        where = item.where
        known = self._conversations.get(where)
        if known is None:
            self._count += 1
            info = ConversationInfo(self._count, item.peer)
            known = RemoteConversation(info, item.instance, item.conv, self._outbox)
            self._conversations[where] = known
            if len(self._conversations) > REMEMBERED:
                self._conversations.popitem(last=False)
        else:
            self._conversations.move_to_end(where)
        return known

    def handle(self, item: WorkItem) -> Outcome | Deferred[Outcome | None] | None:
        conversation = self.conversation(item)
        try:
            if item.kind == "line":
                reply = self.responder.respond(conversation.info, item.text)
                if type(reply) is str:  # most bots: at once, no Deferred
                    return Outcome("answer", reply)
            else:
                return self._lifecycle(item, conversation)
        except Exception:
            return self._raised(Failure(), item)
        return self._later(reply, item)

    def _lifecycle(
        self, item: WorkItem, conversation: RemoteConversation
    ) -> Outcome | Deferred[Outcome | None] | None:
        """A ``started`` or ``ended`` item: the responder's hooks, if any."""
        hooks = cast(ILifecycle, self.responder)
        if item.kind == "ended":
            del self._conversations[item.where]
            if self.greets:
                reason = item.message.get("reason")
                try:
                    hooks.ended(conversation, str(reason or "unknown"))
                except Exception:
                    log.failure("the responder's ended hook failed")
            return None
        opening = bool(item.message.get("opening"))
        if not self.greets:
            return (
                _failed("this worker's responder has no started hook")
                if opening
                else None
            )
        reply = hooks.started(conversation)
        if reply is None:
            return (
                _failed(
                    "the responder's started hook gave no first line "
                    "(under --responder workers, a responder with hooks "
                    "speaks first)"
                )
                if opening
                else None
            )
        return self._later(reply, item)

    def _later(
        self, reply: object, item: WorkItem
    ) -> Outcome | Deferred[Outcome | None]:
        """The outcome of a responder's *reply*, which may come later."""
        answer = as_deferred(reply)
        if answer is None:
            return self._answer(reply, item)
        result: Deferred[Outcome | None] = Deferred(lambda _: answer.cancel())

        def answered(text: object) -> None:
            if not result.called:
                result.callback(self._answer(text, item))

        def raised(failure: Failure) -> None:
            if not result.called and not failure.check(CancelledError):
                result.callback(self._raised(failure, item))

        answer.addCallbacks(answered, raised)
        return result

    def _answer(self, text: object, item: WorkItem) -> Outcome:
        if not isinstance(text, str):
            log.error(
                "the responder answered {entry} with {type}, not a str",
                entry=item.entry,
                type=type(text).__name__,
            )
            return _failed(f"the responder answered with {type(text).__name__}")
        return Outcome("answer", text)

    def _raised(self, failure: Failure, item: WorkItem) -> Outcome:
        log.failure("the responder failed on {entry}", failure, entry=item.entry)
        name = failure.type.__name__ if failure.type is not None else "an error"
        return _failed(f"the responder raised {name}")


def _failed(why: str) -> Outcome:
    return Outcome("failed", why)
