"""write_now(): an answer goes out in the same reactor pass when nothing is
queued before it (Twisted #5303), and nothing else about writing changes.

The transports here are Twisted's own (``tcp.Server``, ``unix.Server``)
over a fake socket whose kernel takes what the test says, and a fake
reactor that records what the transport asks it to watch.  So these tests
run Twisted's real queueing, ``doWrite``, producer pausing and closing
code; if any of the internals that ``write_now`` relies on change, one of
them fails.  The last tests use real loopback sockets and the real
reactor.
"""

from __future__ import annotations

import errno
import itertools
import select
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor, tcp, unix
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from sockchat import (
    ChatServerFactory,
    EchoResponder,
    FunctionResponder,
    ILifecycle,
    IResponder,
)
from sockchat._core.engine import Flow
from sockchat._core.wire import NoticeKind, make_notice
from sockchat._doors import runner
from sockchat._doors.eager import sends_at_once, write_now
from sockchat._doors.runner import WRITE_TOGETHER
from sockchat._doors.tcp import TRANSPORT_BUFFER

# -- Fakes: a socket whose kernel takes what the test says, and a reactor --


class FakeSocket:
    """A connected, non-blocking stream socket.

    Each ``send`` takes the next figure of *takes* (cycled): that many
    bytes at most, and 0 is ``EAGAIN``.  ``inbox`` is what the client sent
    and the server has not read.
    """

    def __init__(self, takes: list[int] | None = None) -> None:
        self.received = bytearray()
        self.inbox = bytearray()
        self.sends = 0
        self.error: OSError | None = None
        self.takes(takes)

    def takes(self, takes: list[int] | None) -> None:
        self._takes: Iterator[int] | None = (
            itertools.cycle(takes) if takes is not None else None
        )

    def send(self, data: Any) -> int:
        self.sends += 1
        if self.error is not None:
            raise self.error
        size = len(data) if self._takes is None else min(len(data), next(self._takes))
        if size == 0:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        self.received += bytes(data[:size])
        return size

    def recv(self, size: int) -> bytes:
        if not self.inbox:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        data = bytes(self.inbox[:size])
        del self.inbox[:size]
        return data

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return 42

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 9527)

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 50000)

    def close(self) -> None:
        pass

    def shutdown(self, how: int) -> None:
        pass

    def setsockopt(self, *args: object) -> None:
        pass


class FakeReactor(Clock):
    """Records what the transports ask it to watch."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: set[Any] = set()
        self.writers: set[Any] = set()
        self.watched_for_writing = 0  # addWriter calls: an epoll_ctl each

    def addReader(self, reader: Any) -> None:
        self.readers.add(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.discard(reader)

    def addWriter(self, writer: Any) -> None:
        if writer not in self.writers:
            self.watched_for_writing += 1
        self.writers.add(writer)

    def removeWriter(self, writer: Any) -> None:
        self.writers.discard(writer)


def queued(transport: Any) -> bytes:
    """What Twisted's transport holds, not yet sent."""
    return bytes(transport.dataBuffer[transport.offset :]) + b"".join(
        transport._tempDataBuffer
    )


def connect(
    proto: Any, sock: FakeSocket, kind: type = tcp.Server
) -> tuple[Any, FakeReactor]:
    """Twisted's own server transport for *proto*, over *sock*."""
    fake = FakeReactor()
    if kind is unix.Server:
        transport = unix.Server(sock, proto, "/tmp/chat.sock", None, 1, fake)
    else:
        transport = kind(sock, proto, ("127.0.0.1", 50000), None, 1, fake)
    proto.makeConnection(transport)
    return transport, fake


def reactor_pass(transport: Any, fake: FakeReactor) -> object:
    """What the reactor does in one pass for this socket: read, then write."""
    why = None
    if transport in fake.readers and transport.socket.inbox:
        why = transport.doRead()
    if not why and transport in fake.writers:
        why = transport.doWrite()
    return why


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


# -- What it relies on in Twisted ---------------------------------------------


@pytest.mark.parametrize("kind", [tcp.Server, unix.Server])
def test_twisteds_tcp_and_unix_transports_are_ones_it_sends_on(kind):
    transport, _ = connect(Protocol(), FakeSocket(), kind)
    assert sends_at_once(transport)


def test_any_other_transport_is_written_to_as_before():
    class Counting(tcp.Server):
        def write(self, data: bytes) -> None:  # counts, or throttles...
            super().write(data)

    string = StringTransport()
    write_now(string, b"hello\n")
    assert string.value() == b"hello\n"
    assert not sends_at_once(string)
    sock = FakeSocket()
    transport, _fake = connect(Protocol(), sock, Counting)
    assert not sends_at_once(transport)
    write_now(transport, b"hello\n")
    assert sock.sends == 0
    assert queued(transport) == b"hello\n"


def test_the_queue_is_the_two_buffers_it_looks_at():
    """The meaning of ``dataBuffer``, ``offset``, ``_tempDataBuffer`` and
    ``_tempDataLen``: write_now sends only when both are empty."""
    sock = FakeSocket(takes=[0])
    transport, fake = connect(Protocol(), sock)
    transport.write(b"abc")
    assert transport._tempDataLen == 3
    assert transport in fake.writers
    write_now(transport, b"def")  # behind what is queued: not sent
    assert sock.sends == 0
    assert transport._tempDataLen == 6
    sock.takes([2])
    assert transport.doWrite() is None
    assert sock.received == b"ab"
    assert transport.dataBuffer == b"abcdef"
    assert transport.offset == 2
    assert transport._tempDataLen == 0
    write_now(transport, b"g")  # still behind "cdef"
    assert sock.sends == 1
    sock.takes(None)
    assert transport.doWrite() is None
    assert sock.received == b"abcdefg"
    assert transport.dataBuffer == b""
    assert transport._tempDataLen == 0
    assert transport not in fake.writers
    write_now(transport, b"h")  # nothing queued: sent at once
    assert sock.received == b"abcdefgh"
    assert sock.sends == 3
    assert transport not in fake.writers


def test_an_answer_taken_whole_by_the_kernel_never_waits_for_the_reactor():
    sock = FakeSocket()
    transport, fake = connect(Protocol(), sock)
    for n in range(100):
        write_now(transport, b"answer %d\n" % n)
    assert sock.received == b"".join(b"answer %d\n" % n for n in range(100))
    assert fake.watched_for_writing == 0
    assert queued(transport) == b""


def test_what_the_kernel_does_not_take_is_queued_in_order():
    sock = FakeSocket(takes=[3, 0])
    transport, fake = connect(Protocol(), sock)
    write_now(transport, b"hello\n")
    assert sock.received == b"hel"
    assert queued(transport) == b"lo\n"
    assert transport in fake.writers
    write_now(transport, b"world\n")  # behind the rest: not sent
    assert sock.sends == 1
    sock.takes(None)
    transport.doWrite()
    assert sock.received == b"hello\nworld\n"
    assert transport not in fake.writers


def test_past_the_buffer_size_the_producer_is_paused_and_then_resumed():
    sock = FakeSocket(takes=[5, 0])
    transport, _fake = connect(Protocol(), sock)
    producer = Producer()
    transport.registerProducer(producer, True)
    transport.bufferSize = 10
    write_now(transport, b"x" * 15)  # 10 queued: not past the size
    assert not producer.paused
    write_now(transport, b"y")  # 11 queued: past it
    assert producer.paused
    sock.takes(None)
    transport.doWrite()
    assert not producer.paused
    assert sock.received == b"x" * 15 + b"y"


def test_a_closing_connection_is_written_to_as_before():
    sock = FakeSocket()
    transport, _fake = connect(Protocol(), sock)
    transport.loseConnection()
    assert transport.disconnecting
    write_now(transport, b"bye\n")
    assert sock.sends == 0
    assert transport.doWrite() is not None  # sent, then closed (CONNECTION_DONE)
    assert sock.received == b"bye\n"


def test_a_half_closed_connection_is_written_to_as_before():
    sock = FakeSocket()
    transport, _fake = connect(Protocol(), sock)
    transport.loseWriteConnection()
    write_now(transport, b"last\n")
    assert sock.sends == 0
    transport.doWrite()
    assert sock.received == b"last\n"
    assert transport._writeDisconnected
    write_now(transport, b"dropped\n")  # Twisted drops writes after it
    assert sock.sends == 1
    assert queued(transport) == b""


def test_an_aborted_or_lost_connection_sends_nothing():
    sock = FakeSocket()
    transport, fake = connect(Protocol(), sock)
    transport.abortConnection()
    write_now(transport, b"late\n")
    assert sock.sends == 0
    fake.advance(0)  # Twisted's connectionLost for the abort
    assert not transport.connected
    write_now(transport, b"later\n")
    assert sock.sends == 0
    assert sock.received == b""


def test_tls_is_written_through_its_own_layer():
    class TLSLayer(Protocol):
        """Stands in for TLSMemoryBIOProtocol, which encrypts writes."""

        def __init__(self) -> None:
            self.written: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.written.append(data)

    sock = FakeSocket()
    transport, _fake = connect(Protocol(), sock)
    layer = TLSLayer()
    transport.protocol = layer
    transport.TLS = True  # what startTLS sets
    write_now(transport, b"secret\n")
    assert sock.sends == 0
    assert layer.written == [b"secret\n"]


def test_a_unix_socket_passing_a_descriptor_keeps_it_with_the_next_byte():
    sock = FakeSocket()
    transport, _fake = connect(Protocol(), sock, unix.Server)
    transport.sendFileDescriptor(0)
    write_now(transport, b"x")
    assert sock.sends == 0  # queued: Twisted's sendmsg sends the descriptor with it
    assert queued(transport) == b"x"


# -- What one run writes goes out together -------------------------------------


def test_lines_read_at_once_are_answered_in_one_send():
    """Twisted wrote a reactor pass's answers in one send; sent at once
    one by one, Nagle's algorithm would hold the second answer until the
    client acknowledged the first (tens of milliseconds)."""
    factory = ChatServerFactory(EchoResponder(), clock=Clock())
    proto = factory.buildProtocol(None)
    sock = FakeSocket()
    transport, fake = connect(proto, sock)
    sock.inbox += b"first\n"
    reactor_pass(transport, fake)
    before = sock.sends
    sock.inbox += b"one\ntwo\nthree\n"
    reactor_pass(transport, fake)
    assert sock.sends == before + 1
    assert sock.received.endswith(b"first\none\ntwo\nthree\n")


def test_a_long_run_is_written_in_pieces_of_the_transport_buffer():
    """So Twisted pauses the door as soon as before, when the client does
    not read: what one read's lines make is written every WRITE_TOGETHER
    bytes, not all at the end."""
    factory = ChatServerFactory(
        FunctionResponder(lambda conversation, text: text * 10), clock=Clock()
    )
    proto = factory.buildProtocol(None)
    sock = FakeSocket()
    transport, fake = connect(proto, sock)
    sizes: list[int] = []
    send = sock.send

    def counted(data: Any) -> int:
        sizes.append(len(data))
        return send(data)

    sock.send = counted  # type: ignore[method-assign]
    sock.inbox += b"first\n"
    reactor_pass(transport, fake)
    sizes.clear()
    sock.inbox += b"ab\n" * 1365  # 4,095 bytes: one read, 1,365 lines
    reactor_pass(transport, fake)
    assert sum(sizes) == 21 * 1365
    assert len(sizes) == 7  # not 1,365 sends, and not one of 28 KB
    assert all(WRITE_TOGETHER <= size < WRITE_TOGETHER + 21 for size in sizes[:-1])
    assert WRITE_TOGETHER <= TRANSPORT_BUFFER


def test_the_goodbye_is_written_before_the_close():
    """Gathered bytes go out before the next action: over TLS, what is
    written after loseConnection would be lost."""

    class Recording(StringTransport):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[str] = []

        def write(self, data: bytes) -> None:
            self.calls.append("write")
            super().write(data)

        def loseConnection(self) -> None:
            self.calls.append("close")
            super().loseConnection()

    factory = ChatServerFactory(EchoResponder(), clock=Clock())
    proto = factory.buildProtocol(None)
    transport = Recording()
    proto.makeConnection(transport)
    transport.calls.clear()
    proto.runner.say_goodbye(
        make_notice(NoticeKind.BYE, "shutdown", "the server stops")
    )
    assert transport.calls == ["write", "close"]
    assert transport.value().endswith(b"!bye shutdown: the server stops\n")


@implementer(IResponder, ILifecycle)
class Scripted:
    """Answers as each line says: ``n`` answers, ``n!`` sends a notice
    from within ``respond`` first, ``n.`` ends the conversation."""

    def __init__(self) -> None:
        self.conversation: Any = None

    def started(self, conversation: Any) -> None:
        self.conversation = conversation

    def ended(self, conversation: Any, reason: str) -> None:
        pass

    def respond(self, info: Any, text: str) -> str:
        if text.endswith("!"):
            self.conversation.notify("note", f"before {text}")
        elif text.endswith("."):
            self.conversation.end("done", f"after {text}")
        return text


def _stream(reads: list[list[str]], together: int, monkeypatch: Any) -> bytes:
    monkeypatch.setattr(runner, "WRITE_TOGETHER", together)
    factory = ChatServerFactory(Scripted(), clock=Clock())
    proto = factory.buildProtocol(None)
    sock = FakeSocket()
    transport, fake = connect(proto, sock)
    for lines in reads:
        sock.inbox += "".join(line + "\n" for line in lines).encode()
        reactor_pass(transport, fake)
    reactor_pass(transport, fake)
    return bytes(sock.received)


@given(
    reads=st.lists(
        st.lists(
            st.builds(
                "{}{}".format, st.integers(0, 99), st.sampled_from(["", "!", "."])
            ),
            min_size=1,
            max_size=5,
        ),
        max_size=8,
    )
)
def test_gathering_writes_never_reorders_them(reads, monkeypatch_session):
    """Written one by one (as each action comes) or gathered, the client
    gets the same bytes: a notice from within the responder, an answer, a
    goodbye, in the engine's order."""
    one_by_one = _stream(reads, 1, monkeypatch_session)
    gathered = _stream(reads, WRITE_TOGETHER, monkeypatch_session)
    assert gathered == one_by_one


@pytest.fixture(scope="module")
def monkeypatch_session():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


# -- A send error ends the connection as Twisted's own would ------------------


@pytest.mark.parametrize(
    "error",
    [
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        BrokenPipeError(errno.EPIPE, "Broken pipe"),
    ],
)
def test_a_send_error_stops_reading_and_leaves_the_bytes_to_twisted(error):
    sock = FakeSocket()
    transport, fake = connect(Protocol(), sock)
    sock.error = error
    write_now(transport, b"answer\n")
    assert transport not in fake.readers  # so the hang-up reads as a write error
    assert transport in fake.writers
    assert queued(transport) == b"answer\n"
    assert isinstance(transport.doWrite(), ConnectionLost)  # Twisted's own verdict


def test_enobufs_is_a_full_buffer_not_an_error():
    sock = FakeSocket()
    transport, fake = connect(Protocol(), sock)
    sock.error = OSError(errno.ENOBUFS, "No buffer space available")
    write_now(transport, b"answer\n")
    assert transport in fake.readers
    assert queued(transport) == b"answer\n"


@implementer(IHalfCloseableProtocol)
class Watched(Protocol):
    """Records how its connection ends."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self.made: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # the test says when to read
        self.made.callback(None)

    def readConnectionLost(self) -> None:
        self.events.append("end of input")

    def writeConnectionLost(self) -> None:
        self.events.append("end of output")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.events.append(reason.type)
        self.lost.callback(None)


async def _reset_then_write(write: Any, *, take_error: bool) -> list[object]:
    """A client resets the connection; the server then writes with *write*.
    How did Twisted end the connection?"""
    protocols: list[Watched] = []

    def build() -> Watched:
        protocols.append(Watched())
        return protocols[-1]

    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        Factory.forProtocol(build)
    )
    try:
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        while not protocols:
            await deferLater(reactor, 0.01, lambda: None)
        proto = protocols[0]
        await proto.made
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # a reset
        server = proto.transport.getHandle()
        poller = select.poll()
        poller.register(server.fileno(), select.POLLIN)
        for _ in range(500):  # poll() looks without taking the socket's error
            if poller.poll(0):
                break
            await deferLater(reactor, 0.01, lambda: None)
        if take_error:  # the error was taken already: send() sees EPIPE
            server.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        proto.transport.resumeProducing()
        write(proto.transport, b"answer\n")  # before the reactor looks again
        await proto.lost
        return proto.events
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_reset_ends_the_connection_as_when_twisted_sends():
    plain = await _reset_then_write(
        lambda transport, data: transport.write(data), take_error=False
    )
    eager = await _reset_then_write(write_now, take_error=False)
    assert plain == [ConnectionLost]
    assert eager == plain


@pytest_twisted.ensureDeferred
async def test_a_broken_pipe_ends_the_connection_as_a_twisted_send_error():
    assert await _reset_then_write(write_now, take_error=True) == [ConnectionLost]


# -- Properties: whole, in order, and the memory bound --------------------------


@given(
    writes=st.lists(st.integers(1, 9000), max_size=40),
    takes=st.lists(st.integers(0, 6000), min_size=1, max_size=10),
    passes=st.lists(st.booleans(), max_size=40),
)
def test_bytes_arrive_whole_and_in_order_and_the_producer_sees_the_queue(
    writes, takes, passes
):
    sock = FakeSocket(takes)
    transport, fake = connect(Protocol(), sock)
    producer = Producer()
    transport.registerProducer(producer, True)
    transport.bufferSize = TRANSPORT_BUFFER
    expected = bytearray()
    for n, size in enumerate(writes):
        data = bytes([65 + n % 26]) * size
        write_now(transport, data)
        expected += data
        pending = queued(transport)
        assert bytes(sock.received) + pending == expected
        assert (transport in fake.writers) == bool(pending)
        if len(pending) > TRANSPORT_BUFFER:
            assert producer.paused  # as Twisted pauses past bufferSize
        if n < len(passes) and passes[n]:
            reactor_pass(transport, fake)
            if not queued(transport):
                assert not producer.paused  # and resumes once drained
    sock.takes(None)
    reactor_pass(transport, fake)
    assert sock.received == expected
    assert not producer.paused
    assert transport not in fake.writers


@given(
    lines=st.lists(st.integers(0, 700), max_size=40),
    takes=st.lists(st.integers(0, 3000), min_size=1, max_size=10),
    passes=st.lists(st.integers(0, 3), max_size=40),
    max_output=st.sampled_from([1024, 4096, 64 * 1024]),
)
def test_a_conversation_gets_every_answer_and_the_engine_counts_what_is_unsent(
    lines, takes, passes, max_output
):
    factory = ChatServerFactory(
        EchoResponder(), clock=Clock(), max_output=max_output, idle_timeout=None
    )
    proto = factory.buildProtocol(None)
    sock = FakeSocket(takes)
    transport, fake = connect(proto, sock)
    engine = proto.runner.engine
    sent: list[bytes] = []
    biggest = 200  # the welcome

    def check() -> None:
        pending = len(queued(transport))
        assert engine.bytes_out == len(sock.received) + pending
        if engine.flow < Flow.HOLDING:
            # Twisted pauses its producer past bufferSize: the engine knows.
            assert pending <= TRANSPORT_BUFFER
        else:
            assert pending > 0  # drained means resumed
        # All that is queued is counted by the engine, but what Twisted
        # held below its own bound when it paused.
        assert pending <= TRANSPORT_BUFFER + biggest + engine.held
        # The memory bound: what is held stops at max_output, give or take
        # the line or answer that crossed it.
        assert engine.held <= max_output + 2 * (biggest + 64)

    for n, size in enumerate(lines):
        line = (b"%d:" % n + b"x" * size)[: size + 1]
        sent.append(line)
        biggest = max(biggest, len(line) + 1)
        sock.inbox += line + b"\n"
        for _ in range(passes[n] if n < len(passes) else 1):
            reactor_pass(transport, fake)
            check()
    sock.takes(None)
    for _ in range(10 * len(lines) + 10):
        if not (transport in fake.writers or sock.inbox):
            break
        reactor_pass(transport, fake)
        check()
    welcome, *answers = bytes(sock.received).split(b"\n")
    assert welcome.startswith(b"!info welcome")
    assert answers == [*sent, b""]
    assert engine.flow is Flow.FLOWING
    assert transport in fake.readers


def test_the_tcp_door_sends_the_welcome_and_each_answer_at_once():
    factory = ChatServerFactory(EchoResponder(), clock=Clock())
    proto = factory.buildProtocol(None)
    sock = FakeSocket()
    transport, fake = connect(proto, sock)
    for n in range(20):
        sock.inbox += b"line %d\n" % n
        reactor_pass(transport, fake)
    lines = bytes(sock.received).split(b"\n")
    assert lines[0].startswith(b"!info welcome")
    assert lines[1:] == [b"line %d" % n for n in range(20)] + [b""]
    assert fake.watched_for_writing == 0  # no epoll_ctl, no extra reactor pass
    assert proto.runner.engine.bytes_out == len(sock.received)
