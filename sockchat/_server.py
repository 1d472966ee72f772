"""Twisted adapters for the server: a protocol per connection and its factory.

They move bytes between the transport and the core (``LineDecoder``,
``ServerTurns``) and call the responder; every decision is the core's.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet import address
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IAddress, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._codec import DEFAULT_MAX_LINE, LineDecoder
from ._render import safe_text
from ._responder import ConversationInfo, IResponder, Reply
from ._turns import Deliver, ServerTurns, Turn, shutting_down, welcome
from ._wire import Notice, NoticeKind, encode_answer, encode_notice

__all__ = ["ChatServerFactory", "ChatServerProtocol", "describe_address"]

log = Logger(namespace="sockchat.server")

_T = TypeVar("_T")


def describe_address(addr: IAddress) -> str:
    """``host:port`` for IP peers (``[::1]:port`` for IPv6), else a short name."""
    if isinstance(addr, address.IPv6Address):
        return f"[{addr.host}]:{addr.port}"
    if isinstance(addr, address.IPv4Address):
        return f"{addr.host}:{addr.port}"
    if isinstance(addr, address.UNIXAddress):
        name: object = addr.name
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return f"unix:{safe_text(str(name))}" if name else "unix"
    return safe_text(str(addr))


class BadAnswer(Exception):
    """The responder broke the contract; the message is safe to show the client."""


async def _await(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def _as_deferred(reply: Deferred[str] | Awaitable[str]) -> Deferred[str]:
    if isinstance(reply, Deferred):
        return reply
    if inspect.isawaitable(reply):
        return Deferred.fromCoroutine(_await(reply))
    raise BadAnswer(
        f"the responder returned {type(reply).__name__}; expected str, a "
        "Deferred or an awaitable"
    )


class ChatServerProtocol(Protocol):
    """One conversation, from connect to close."""

    factory: ChatServerFactory
    transport: ITCPTransport  # or any transport with the same methods

    def __init__(self, conversation_id: int) -> None:
        self.conversation_id = conversation_id
        self.info = ConversationInfo(conversation_id, "unknown")
        self.turns = ServerTurns()
        self.decoder: LineDecoder | None = None
        self._pending: Deferred[str] | None = None
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.decoder = LineDecoder(self.factory.max_line)
        self.info = ConversationInfo(
            self.conversation_id, describe_address(self.transport.getPeer())
        )
        self.factory.conversations[self.conversation_id] = self
        log.info(
            "conversation {cid} started with {peer}",
            cid=self.conversation_id,
            peer=self.info.peer,
        )
        self._send_notice(welcome(self.conversation_id))

    def dataReceived(self, data: bytes) -> None:
        assert self.decoder is not None
        for item in self.decoder.feed(data):
            action = self.turns.receive(item)
            if action is None:
                return
            if isinstance(action, Deliver):
                self._deliver(action.text)
            else:
                if action.kind is NoticeKind.ERROR:
                    log.info(
                        "conversation {cid}: a line was refused ({code})",
                        cid=self.conversation_id,
                        code=action.code,
                    )
                self._send_notice(action)
                if action.kind is NoticeKind.BYE:
                    self.transport.loseConnection()
                    return

    def end(self, notice: Notice) -> None:
        """End this conversation from the server's side with a bye notice."""
        if self.turns.turn is Turn.ENDED:
            return
        self.turns.end()
        self._send_notice(notice)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.turns.end()
        self.factory.conversations.pop(self.conversation_id, None)
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        unfinished = self.decoder.buffered if self.decoder else 0
        if unfinished:
            log.info(
                "conversation {cid} closed in the middle of a line; its "
                "{count} bytes were not delivered",
                cid=self.conversation_id,
                count=unfinished,
            )
        log.info(
            "conversation {cid} with {peer} ended after {turns} turn(s): {why}",
            cid=self.conversation_id,
            peer=self.info.peer,
            turns=self.turns.answers,
            why=safe_text(reason.getErrorMessage()),
        )
        self.closed.callback(None)

    # The responder's side.

    def _deliver(self, text: str) -> None:
        try:
            reply: Reply = self.factory.responder.respond(self.info, text)
            if isinstance(reply, str):
                self._answer(reply)
                return
            pending = _as_deferred(reply)
        except Exception:
            self._fail(Failure())
            return
        self._pending = pending
        pending.addCallbacks(self._answered_later, self._failed_later)

    def _answered_later(self, reply: object) -> None:
        self._pending = None
        if self.turns.turn is not Turn.SERVER:
            return  # the conversation ended while the responder worked
        if isinstance(reply, str):
            self._answer(reply)
        else:
            why = f"the responder's result was {type(reply).__name__}, expected str"
            self._fail(Failure(BadAnswer(why)))

    def _failed_later(self, failure: Failure) -> None:
        self._pending = None
        if self.turns.turn is Turn.SERVER:
            self._fail(failure)
        # Otherwise the conversation ended first (a CancelledError, most
        # likely): there is no one left to tell.

    def _answer(self, text: str) -> None:
        try:
            data = encode_answer(text)
        except UnicodeEncodeError:
            self._fail(Failure(BadAnswer("the answer is not encodable as UTF-8")))
            return
        except ValueError:
            self._fail(Failure(BadAnswer("the answer has a newline in it")))
            return
        self.transport.write(data)
        if self.turns.answered(text):
            self.transport.loseConnection()

    def _fail(self, failure: Failure) -> None:
        log.failure(
            "responder failed to answer in conversation {cid}",
            failure,
            cid=self.conversation_id,
        )
        if failure.check(BadAnswer):
            why = failure.getErrorMessage()
        else:  # the details stay in the server's log
            name = failure.type.__name__ if failure.type else "error"
            why = f"the responder raised {name}"
        self._send_notice(self.turns.failed(safe_text(why)))

    def _send_notice(self, notice: Notice) -> None:
        self.transport.write(encode_notice(notice))


if TYPE_CHECKING:
    _FactoryBase = Factory[ChatServerProtocol]
else:  # Factory is generic only from Twisted 26 on
    _FactoryBase = Factory


class ChatServerFactory(_FactoryBase):
    """Serve turn-taking conversations answered by *responder*.

    Embed it like any factory: ``endpoint.listen(ChatServerFactory(r))``.
    """

    noisy = False

    def __init__(self, responder: IResponder, *, max_line: int = DEFAULT_MAX_LINE):
        if not IResponder.providedBy(responder):
            raise TypeError(
                f"{responder!r} does not provide IResponder (it needs a "
                "respond(conversation, text) method and @implementer(IResponder))"
            )
        if max_line < 1:
            raise ValueError(f"max_line must be at least 1 byte, not {max_line}")
        self.responder = responder
        self.max_line = max_line
        self.conversations: dict[int, ChatServerProtocol] = {}
        self._ids = itertools.count(1)

    def buildProtocol(self, addr: Any) -> ChatServerProtocol:
        proto = ChatServerProtocol(next(self._ids))
        proto.factory = self
        return proto

    def close_all(self, notice: Notice | None = None) -> Deferred[None]:
        """Say goodbye to every conversation; fire when all have closed."""
        notice = notice or shutting_down()
        waiting = list(self.conversations.values())
        if not waiting:
            return succeed(None)
        for proto in waiting:
            proto.end(notice)
        done = DeferredList([p.closed for p in waiting], consumeErrors=True)
        return done.addCallback(lambda _: None)
