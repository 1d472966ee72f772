"""Fakes for testing your responders and client code without sockets.

``MemoryServer`` runs a real ``ChatServerFactory`` in memory, on a fake
clock: connect clients to it with the client API, and move the bytes with
``flush``.  Everything happens when you say, so tests need no reactor::

    from sockchat.testing import MemoryServer

    server = MemoryServer(MyResponder())
    conversation = server.connect()
    assert server.say(conversation, "hello") == "hi there"

``RecordingConversation`` stands in for the server's side of one
conversation when you call a responder's lifecycle hooks yourself.

Like ``treq.testing``, this is built on ``twisted.test.iosim``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from sockchat._core.wire import Notice, NoticeKind, make_notice
from sockchat._doors.client import Conversation, connect
from sockchat._doors.tcp import ChatServerFactory
from sockchat._responders.contract import ConversationInfo, IConversation, IResponder

__all__ = ["MemoryServer", "NoResultYet", "RecordingConversation"]

_T = TypeVar("_T")

#: The address the memory server seems to listen on.
SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 9527)


class NoResultYet(AssertionError):
    """A Deferred had not fired yet: something still waits (advance the clock?)."""


class MemoryServer:
    """A sockchat server in memory, answered by *responder*.

    *options* go to ``ChatServerFactory`` (``idle_timeout``, ``max_line``,
    ``answer_timeout``, ``transcript``...).  Its clock is *clock*, or a new
    ``Clock``: ``self.clock`` either way.
    """

    def __init__(
        self, responder: IResponder, *, clock: Clock | None = None, **options: Any
    ) -> None:
        self.clock = clock or Clock()
        self.factory = ChatServerFactory(responder, clock=self.clock, **options)
        self._pumps: list[iosim.IOPump] = []
        self._ports = itertools.count(50000)

    def endpoint(self, host: str = "127.0.0.1") -> IStreamClientEndpoint:
        """A client endpoint whose connections reach this server, from *host*."""
        return _MemoryEndpoint(self, host)

    def connect(
        self,
        *,
        host: str = "127.0.0.1",
        on_notice: Callable[[Notice], None] | None = None,
    ) -> Conversation:
        """Connect a client (as ``sockchat.connect`` does) and return its
        ``Conversation`` once the server has greeted it."""
        return self.result(
            connect(self.clock, self.endpoint(host), on_notice=on_notice)
        )

    def say(self, conversation: Conversation, text: str) -> str:
        """Say *text* and return the answer; raises what ``say`` fails with,
        or ``NoResultYet`` if the answer has not come (yet)."""
        return self.result(conversation.say(text))

    def flush(self) -> None:
        """Move bytes both ways until nothing more moves."""
        moved = True
        while moved:
            moved = False
            for pump in list(self._pumps):
                moved = pump.flush() or moved

    def advance(self, seconds: float) -> None:
        """Deliver what was sent, let *seconds* pass on the fake clock, then
        deliver what that caused."""
        self.flush()
        self.clock.advance(seconds)
        self.flush()

    def result(self, deferred: Deferred[_T]) -> _T:
        """Flush, then return what *deferred* fired with, or raise its error.

        Raises ``NoResultYet`` if it has not fired, and leaves it as it is.
        Once it has fired, this takes its result, like trial's
        ``successResultOf``: ask once.
        """
        self.flush()
        if not deferred.called:
            raise NoResultYet(f"{deferred!r} has not fired")
        outcome: list[Any] = []
        deferred.addBoth(outcome.append)
        if not outcome:
            raise NoResultYet(f"{deferred!r} has not fired")
        result = outcome[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result  # type: ignore[no-any-return]  # addBoth loses the type


@implementer(IStreamClientEndpoint)
class _MemoryEndpoint:
    def __init__(self, server: MemoryServer, host: str) -> None:
        self._server = server
        self._host = host

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        server = self._server
        client_address = IPv4Address("TCP", self._host, next(server._ports))
        server_proto = server.factory.buildProtocol(client_address)
        client_proto = protocolFactory.buildProtocol(SERVER_ADDRESS)
        if client_proto is None:
            return fail(ConnectionRefusedError("the client factory built nothing"))
        pump = iosim.connect(
            server_proto,
            iosim.FakeTransport(
                server_proto,
                isServer=True,
                hostAddress=SERVER_ADDRESS,
                peerAddress=client_address,
            ),
            client_proto,
            iosim.FakeTransport(
                client_proto,
                isServer=False,
                hostAddress=client_address,
                peerAddress=SERVER_ADDRESS,
            ),
            greet=False,
            clock=server.clock,
        )
        server._pumps.append(pump)
        return succeed(client_proto)


@implementer(IConversation)
class RecordingConversation:
    """The server's side of one conversation, for calling hooks in tests.

    It checks notices as the server does, and records them.
    """

    def __init__(self, id: int = 1, peer: str = "127.0.0.1:50000") -> None:
        self.info = ConversationInfo(id, peer)
        #: Info notices sent with ``notify``, in order.
        self.notices: list[Notice] = []
        #: The bye notice, once ``end`` was called.
        self.ended: Notice | None = None
        #: The reasons given to ``handoff``, in order.
        self.handoffs: list[str] = []

    def notify(self, code: str, text: str) -> None:
        self.notices.append(make_notice(NoticeKind.INFO, code, text))

    def handoff(self, reason: str) -> None:
        self.handoffs.append(reason)

    def end(self, code: str, text: str) -> None:
        if self.ended is None:
            self.ended = make_notice(NoticeKind.BYE, code, text)
