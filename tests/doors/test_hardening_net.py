"""Hostile and faulty clients over real loopback sockets, in one process."""

from __future__ import annotations

import random
import socket
import struct

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    serverFromString,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from sockchat import ChatServerFactory, ConversationEnded, EchoResponder, connect
from sockchat._core.limits import Admission
from sockchat._core.rules import Flow
from sockchat._doors.observers import ConversationObserver
from sockchat._doors.tcp import TRANSPORT_BUFFER


class Transports(ConversationObserver):
    """Keeps the transport of each conversation as it connects."""

    def __init__(self, factory: ChatServerFactory) -> None:
        self.made: list = []
        factory.observe(lambda door, cid: self)

    def connected(self, transport, now) -> None:
        self.made.append(transport)


async def listen(description="tcp:0:interface=127.0.0.1", **kw):
    factory = ChatServerFactory(EchoResponder(), **kw)
    port = await serverFromString(reactor, description).listen(factory)
    return factory, port


async def until(condition, timeout: float = 10.0) -> None:
    waited = 0.0
    while not condition():
        assert waited < timeout, "condition not met in time"
        await deferLater(reactor, 0.02, lambda: None)
        waited += 0.02


class Flooder(Protocol):
    """Sends lines as fast as it can and never reads a byte."""

    def connectionMade(self):
        # A small receive buffer: the kernel cannot take the answers for it.
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.transport.pauseProducing()  # never read
        self.transport.write(b"flood\n" * 500_000)  # 3 MB


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_reads_holds_little_and_delays_no_one():
    factory, port = await listen(max_output=64 * 1024)
    transports = Transports(factory)
    # Accepted sockets inherit a small send buffer: the flood reaches the
    # server's own buffers after kilobytes, not after megabytes of echoes.
    port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    number = port.getHost().port
    try:
        flooder = await TCP4ClientEndpoint(reactor, "127.0.0.1", number).connect(
            Factory.forProtocol(Flooder)
        )
        await until(lambda: factory.conversations and _reading_paused(factory))
        (runner,) = factory.conversations.values()
        (transport,) = transports.made
        # Meanwhile another client is served at once.
        other = await connect(reactor, TCP4ClientEndpoint(reactor, "127.0.0.1", number))
        for n in range(50):
            assert await other.say(f"turn {n}") == f"turn {n}"
        await other.quit()
        held = _unsent(transport) + runner.engine.held + runner.engine.buffered
        assert held < 64 * 1024 + 3 * 65536, f"server holds {held} bytes for it"
        flooder.transport.abortConnection()
        await until(lambda: not factory.conversations)
    finally:
        await port.stopListening()


def _reading_paused(factory) -> bool:
    return any(p.engine.flow is Flow.STOPPED for p in factory.conversations.values())


def _unsent(transport) -> int:
    # What Twisted's TCP transport still holds to send (its two buffers).
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


@pytest_twisted.ensureDeferred
async def test_rst_mid_line_and_reconnect_storms_leave_nothing_behind(logged_failures):
    factory, port = await listen(admission=Admission(max_per_ip=None))
    number = port.getHost().port
    try:
        for n in range(200):
            sock = socket.create_connection(("127.0.0.1", number))
            if n % 2:
                sock.sendall(b"half a li")
                # SO_LINGER 0: close with an RST instead of a FIN.
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            sock.close()
            # Blocking sockets in the reactor's thread: let it accept.
            await deferLater(reactor, 0.001, lambda: None)
        await until(lambda: not factory.conversations)
        await until(lambda: factory.admission.total == 0)
        conversation = await connect(
            reactor, TCP4ClientEndpoint(reactor, "127.0.0.1", number)
        )
        assert await conversation.say("still serving") == "still serving"
        await conversation.quit()
        await until(lambda: not factory.conversations)
    finally:
        await port.stopListening()
    assert logged_failures == []


@pytest_twisted.ensureDeferred
async def test_half_closed_client_gets_its_answer_then_a_bye():
    _, port = await listen()
    try:
        sock = socket.create_connection(("127.0.0.1", port.getHost().port))
        sock.sendall(b"last words\n")
        sock.shutdown(socket.SHUT_WR)
        sock.setblocking(False)  # the reactor runs in this thread: never block
        received = b""
        for _ in range(500):
            try:
                chunk = sock.recv(4096)
            except BlockingIOError:
                await deferLater(reactor, 0.01, lambda: None)
                continue
            if not chunk:
                break
            received += chunk
        sock.close()
        assert received.split(b"\n")[1:] == [
            b"last words",
            b"!bye end-of-input: you closed your side of the connection; goodbye.",
            b"",
        ]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_ipv6_end_to_end():
    _, port = await listen(r"tcp6:0:interface=\:\:1")
    try:
        endpoint = TCP6ClientEndpoint(reactor, "::1", port.getHost().port)
        conversation = await connect(reactor, endpoint)
        assert await conversation.say("over IPv6") == "over IPv6"
        await conversation.quit()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_soak_hundreds_of_clients_some_dropping(logged_failures):
    """300 clients x 100 turns, a tenth of them dropping abruptly mid-way."""
    # 300 connections at once need a listen backlog of more than Twisted's
    # 50: a handshake that overflows it is not completed, and as the server
    # speaks first, the client waits for a welcome that never comes.
    factory, port = await listen(
        "tcp:0:interface=127.0.0.1:backlog=1024",
        admission=Admission(max_per_ip=None),
    )
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    rng = random.Random(9527)
    answered = []

    async def client(n: int) -> None:
        conversation = await connect(reactor, endpoint)
        drop_at = rng.randrange(100) if n % 10 == 0 else None
        for turn in range(100):
            if turn == drop_at:
                conversation._proto.transport.abortConnection()
                with pytest.raises(ConversationEnded):
                    await conversation.say("after the drop")
                return
            text = f"client {n} turn {turn}"
            assert await conversation.say(text) == text
            answered.append(1)
        await conversation.quit()

    try:
        results = await DeferredList(
            [Deferred.fromCoroutine(client(n)) for n in range(300)],
            consumeErrors=True,
        )
        failures = [r for ok, r in results if not ok]
        assert failures == []
        assert len(answered) >= 270 * 100
        await until(lambda: not factory.conversations)
        assert factory.admission.total == 0
    finally:
        await port.stopListening()
    assert logged_failures == []


@pytest_twisted.ensureDeferred
async def test_a_real_transport_reads_at_most_the_transport_buffer_at_once():
    """set_buffer_size() reaches into Twisted's ``bufferSize``: if Twisted
    stops reading by it, this fails (and so would the memory bound)."""
    reads: list[int] = []

    class Reads(ConversationObserver):
        every_turn = True

        def read(self, data: bytes, now: float) -> None:
            reads.append(len(data))

    factory = ChatServerFactory(EchoResponder())
    factory.observe(lambda door, cid: Reads())
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    try:
        sock = socket.create_connection(("127.0.0.1", port.getHost().port))
        sock.sendall(b"x" * 60_000 + b"\n")
        await until(lambda: sum(reads) >= 60_001)
        sock.close()
        await until(lambda: not factory.conversations)
    finally:
        await port.stopListening()
    assert max(reads) <= TRANSPORT_BUFFER
