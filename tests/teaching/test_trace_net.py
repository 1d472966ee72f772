"""Teaching mode against real loopback sockets: the trace's facts are the
kernel's.  Sticky and split reads are made on purpose; who closed first and
which side holds TIME_WAIT are checked with ``ss``."""

from __future__ import annotations

import re
import socket
import subprocess
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from sockchat import ChatServerFactory, EchoResponder, IResponder
from sockchat._doors.client import ClientFactory, connect_with
from sockchat._teaching.tracing import ClientTracing, trace_conversations

from processes import need_tool


@implementer(IResponder)
class Silent:
    """Takes its time: the server's turn lasts until the client leaves."""

    def respond(self, conversation, text):
        return Deferred()


@pytest.fixture
def traced():
    """The server's [tcp] lines, as logged."""
    lines: list[str] = []

    def observe(event):
        if event.get("log_namespace") == "sockchat.trace":
            lines.append(event["trace"])

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def traced_factory(responder=None, probe=None) -> ChatServerFactory:
    factory = ChatServerFactory(responder or EchoResponder())
    trace_conversations(factory, probe)
    return factory


def traced_client(lines: list[str]) -> tuple[ClientTracing, ClientFactory]:
    tracing = ClientTracing(lines.append, reactor)
    return tracing, ClientFactory(lambda notice: None, observe=tracing.observer)


async def serve(responder=None, probe=None):
    factory = traced_factory(responder, probe)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    return factory, port


async def until(lines: list[str], pattern: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        for line in lines:
            if re.search(pattern, line):
                return line
        assert time.monotonic() < deadline, f"no {pattern!r} in:\n" + "\n".join(lines)
        await deferLater(reactor, 0.05)


def ss_states(port: int) -> list[tuple[str, str, str]]:
    """(state, local, peer) of every TCP socket to or from *port*, from ss."""
    ss = need_tool("ss", "iproute2")
    out = subprocess.run(
        [
            ss,
            "-tanH",
            "(",
            "sport",
            "=",
            f":{port}",
            "or",
            "dport",
            "=",
            f":{port}",
            ")",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    return [(w[0], w[3], w[4]) for w in (line.split() for line in out.splitlines())]


def talk(port: int, *steps: bytes | float, close: str = "read") -> tuple[int, bytes]:
    """A blocking client (run in a thread): send each bytes step, sleep each
    float; then half-close (``close="shutdown"``) or read until the server
    closes.  Returns its own port and all it read."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    mine = sock.getsockname()[1]
    heard = sock.recv(4096)  # the welcome
    for step in steps:
        if isinstance(step, float):
            time.sleep(step)
        else:
            sock.sendall(step)
    if close == "shutdown":
        sock.shutdown(socket.SHUT_WR)
    while chunk := sock.recv(4096):
        heard += chunk
    sock.close()
    return mine, heard


@pytest_twisted.ensureDeferred
async def test_three_lines_sent_at_once_are_said_to_come_in_one_read(traced):
    _, port = await serve()
    try:
        await threads.deferToThread(
            talk, port.getHost().port, b"one\ntwo\nthree\n", 0.3, b"q\n"
        )
        line = await until(traced, r"^read 1: ")
        assert line.startswith(
            "read 1: 14 bytes b'one\\ntwo\\nthree\\n': this read carried 3 lines"
        )
        assert "粘包" in line
        assert "between the sends" not in line
        answered = await until(traced, "delivered and answered at once")
        assert answered.startswith("3 lines delivered")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_lines_answered_in_the_read_that_ends_it_are_said_before_the_close(
    traced,
):
    _, port = await serve()
    try:
        await threads.deferToThread(talk, port.getHost().port, b"one\ntwo\nq\n")
        closes = await until(traced, r"^the server closes the connection")
        answered = await until(traced, "delivered and answered at once")
        assert answered.startswith("2 lines delivered")
        assert traced.index(answered) < traced.index(closes)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_line_sent_in_two_pieces_is_a_split_read(traced):
    _, port = await serve()
    try:
        await threads.deferToThread(
            talk, port.getHost().port, b"hel", 0.3, b"lo\n", 0.3, b"q\n"
        )
        first = await until(traced, r"^read 1: ")
        second = await until(traced, r"^read 2: ")
        assert first.startswith("read 1: 3 bytes b'hel': no line ends here")
        assert second.startswith("read 2: 3 bytes b'lo\\n': 1 line")
        assert "one line split over 2 reads" in second
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_connection_is_described_with_its_real_ports(traced):
    _, port = await serve()
    server_port = port.getHost().port
    try:
        mine, _ = await threads.deferToThread(talk, server_port, b"q\n")
        await until(traced, f"^kernel check: .*127.0.0.1:{mine}")
        text = "\n".join(traced)
        assert f"local 127.0.0.1:{server_port} (this server's end)" in text
        assert f"remote 127.0.0.1:{mine} (the client's end)" in text
        assert f"port {mine} is the client's ephemeral port" in text
        assert "kernel (TCP_INFO): state ESTABLISHED, round trip" in text
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_q_makes_the_server_close_first_and_hold_time_wait_as_ss_says(traced):
    _, port = await serve()
    server_port = port.getHost().port
    try:
        mine, heard = await threads.deferToThread(talk, server_port, b"q\n")
        assert heard.endswith(b"!bye quit: goodbye.\n")
        close = await until(traced, "^close: ")
        assert close.startswith("close: the server sent FIN first")
        check = await until(traced, f"^kernel check: .*127.0.0.1:{mine}")
        assert (
            f"TIME-WAIT on this side (127.0.0.1:{server_port} -> 127.0.0.1:{mine}"
            in check
        )
        assert check.endswith("the kernel agrees with the trace")
        # And by ss itself: the TIME_WAIT socket is the server's end.
        states = ss_states(server_port)
        assert ("TIME-WAIT", f"127.0.0.1:{server_port}", f"127.0.0.1:{mine}") in states
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_half_close_from_the_client_puts_time_wait_on_its_side(traced):
    _, port = await serve()
    server_port = port.getHost().port
    try:
        mine, heard = await threads.deferToThread(
            talk, server_port, b"hello\n", 0.3, close="shutdown"
        )
        assert b"!bye end-of-input" in heard
        await until(traced, "^FIN from the client")
        close = await until(traced, "^close: ")
        assert close.startswith("close: the client sent FIN first")
        assert "half-close" in close
        check = await until(traced, f"^kernel check: .*127.0.0.1:{mine}")
        assert "TIME-WAIT on the other side" in check
        assert check.endswith("the kernel agrees with the trace")
        states = ss_states(server_port)
        assert ("TIME-WAIT", f"127.0.0.1:{mine}", f"127.0.0.1:{server_port}") in states
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_line_out_of_turn_is_traced_as_refused(traced):
    _, port = await serve(Silent())
    try:
        sock = await threads.deferToThread(
            socket.create_connection, ("127.0.0.1", port.getHost().port), 10
        )
        await threads.deferToThread(sock.recv, 4096)
        sock.sendall(b"first\n")
        await until(traced, "^turn: the server's")
        sock.sendall(b"second\n")
        refused = await until(traced, "out of turn")
        assert "refused (!error out-of-turn) and not delivered" in refused
        sock.close()
        await until(traced, "^close: ")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_reads_past_the_budget_are_counted_not_shown(traced):
    _, port = await serve()
    try:

        def many() -> None:
            sock = socket.create_connection(("127.0.0.1", port.getHost().port), 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.recv(4096)
            for _ in range(15):
                sock.sendall(b"x")
                time.sleep(0.02)
            sock.sendall(b"\nq\n")
            while sock.recv(4096):
                pass
            sock.close()

        await threads.deferToThread(many)
        summary = await until(traced, r"reads in all; \d+ were not shown")
        total, held = map(int, re.findall(r"\d+", summary))
        shown = [line for line in traced if line.startswith("read ")]
        assert len(shown) == 10  # READS_PER_SECOND, all in the first second
        assert held == total - 10
        assert total >= 11
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_client_traces_its_own_socket_and_checks_the_close_with_ss():
    need_tool("ss", "iproute2")
    _, port = await serve()
    server_port = port.getHost().port
    lines: list[str] = []
    try:
        tracing, factory = traced_client(lines)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server_port)
        conversation = await connect_with(reactor, endpoint, factory, 10.0)
        assert await conversation.say("hello") == "hello"
        await conversation.quit()
        await tracing.settled(5.0)
        text = "\n".join(lines)
        assert f"remote 127.0.0.1:{server_port} (the server's end)" in text
        assert "connect() returned once the three-way handshake" in text
        assert "sent 6 bytes" in text
        assert "read 2: 6 bytes b'hello\\n': 1 line" in text
        assert "close: the server sent FIN first" in text
        assert lines[-1].startswith(
            "kernel check: ss shows TIME-WAIT on the other side"
        )
        assert lines[-1].endswith("the kernel agrees with the trace")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_without_ss_the_trace_says_the_kernel_cannot_be_checked(traced):
    def no_ss(where) -> Deferred[str | None]:
        d: Deferred[str | None] = Deferred()
        d.callback(None)
        return d

    _, port = await serve(probe=no_ss)
    try:
        await threads.deferToThread(talk, port.getHost().port, b"q\n")
        line = await until(traced, "^kernel check: ss .from")
        assert "ss (from iproute2) is not available" in line
    finally:
        await port.stopListening()


async def built(*argv: str):
    """The factory and the listening services that ``twistd sockchat ARGV`` makes."""
    from sockchat import ChatService, tap

    options = tap.Options()
    options.parseOptions(["--port", "tcp:0:interface=127.0.0.1", *argv])
    top = tap.makeService(options)
    services = [s for s in top if isinstance(s, ChatService)]
    return services[0].factory, services


@pytest_twisted.ensureDeferred
async def test_without_trace_no_conversation_has_an_observer_of_every_turn():
    from sockchat._doors.observers import Metrics

    factory, services = await built("--responder", "echo", "--web", "tcp:0")
    try:
        for door in ("tcp", "web"):
            observers = factory.observers(door, 1)
            assert [type(o) for o in observers] == [Metrics]
            assert not any(o.every_turn for o in observers)
    finally:
        for service in services:
            await service.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_with_trace_each_conversation_has_its_trace_tcp_and_web():
    from sockchat._doors.observers import Metrics
    from sockchat._teaching.tracing import TcpTrace, WebTrace

    factory, services = await built(
        "--responder", "echo", "--trace", "--web", "tcp:0:interface=127.0.0.1"
    )
    try:
        tcp, web = factory.observers("tcp", 1), factory.observers("web", 2)
        assert [type(o) for o in tcp] == [Metrics, TcpTrace]
        assert [type(o) for o in web] == [Metrics, WebTrace]
        assert tcp[1].every_turn
        assert web[1].every_turn
        assert len(services) == 2  # the TCP door and the web door share it
        assert services[1].factory is factory
    finally:
        for service in services:
            await service.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_at_most_so_many_ss_run_at_once():
    need_tool("ss", "iproute2")
    from sockchat._teaching.tracing import ProbeBusy, ss_probe

    probe = ss_probe(reactor, at_once=1)
    where = ["sport", "=", ":1"]
    first, second = probe(where), probe(where)
    assert isinstance(await first, str)
    with pytest.raises(ProbeBusy):
        await second
    assert isinstance(await probe(where), str)  # the slot is free again


@pytest_twisted.ensureDeferred
async def test_a_check_past_the_limit_is_said_to_be_skipped(traced):
    from sockchat._teaching.tracing import ss_probe

    _, port = await serve(probe=ss_probe(reactor, at_once=0))
    try:
        await threads.deferToThread(talk, port.getHost().port, b"q\n")
        line = await until(traced, "^kernel check: skipped")
        assert "at most 4 ss run at a time" in line
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_over_tls_both_sides_trace_the_tcp_underneath(tmp_path, traced):
    from twisted.internet.endpoints import clientFromString

    from certs import make_tls_files

    files = make_tls_files(tmp_path)
    factory = traced_factory()
    port = await serverFromString(
        reactor,
        f"ssl:0:interface=127.0.0.1:privateKey={files['key']}:certKey={files['cert']}",
    ).listen(factory)
    lines: list[str] = []
    try:
        endpoint = clientFromString(
            reactor,
            f"tls:localhost:{port.getHost().port}:trustRoots={files['ca'].parent}",
        )
        tracing, client = traced_client(lines)
        conversation = await connect_with(reactor, endpoint, client, 10.0)
        assert await conversation.say("secret") == "secret"
        await conversation.quit()
        await tracing.settled(5.0)
        # The reads are the decrypted bytes; TCP_INFO is the TCP socket's.
        assert "read 2: 7 bytes b'secret\\n': 1 line" in lines
        assert any(line.startswith("kernel (TCP_INFO): state ESTAB") for line in lines)
        await until(traced, r"^read 1: 7 bytes b'secret\\n'")
        assert any(line.startswith("kernel (TCP_INFO): state") for line in traced)
    finally:
        await port.stopListening()


class _Socket:
    """A WebSocket client that keeps every text message it hears."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.closed: Deferred[object] = Deferred()
        self.transport = None

    def negotiationStarted(self, transport) -> None:
        self.transport = transport

    def negotiationFinished(self) -> None:
        pass

    def textMessageReceived(self, message: str) -> None:
        self.messages.append(message)

    def bytesMessageReceived(self, data) -> None:
        pass

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason) -> None:
        self.closed.callback(None)


class _Sockets:
    def buildProtocol(self, url: str) -> _Socket:
        return _Socket()


async def heard(socket_: _Socket, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        for message in socket_.messages:
            if text in message:
                return message
        assert time.monotonic() < deadline, f"no {text!r} in {socket_.messages}"
        await deferLater(reactor, 0.02)


@pytest_twisted.ensureDeferred
async def test_a_websocket_hears_its_own_trace_as_info_notices(traced):
    from twisted.web.websocket import WebSocketClientEndpoint

    from sockchat._doors.web import chat_site

    factory = traced_factory()
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        chat_site(factory)
    )
    web_port = port.getHost().port
    try:
        endpoint = WebSocketClientEndpoint.new(
            reactor, f"ws://127.0.0.1:{web_port}/chat"
        )
        sock = await endpoint.connect(_Sockets())
        welcome = await heard(sock, "!info welcome: ")
        assert sock.messages[0] == welcome  # the trace comes after the welcome
        upgrade = await heard(
            sock, "!info trace: HTTP upgrade: the server answered 101"
        )
        assert "Sec-WebSocket-Accept" in upgrade
        await heard(sock, f"!info trace: connection: local 127.0.0.1:{web_port}")
        sock.transport.sendTextMessage("你好")
        frame = await heard(sock, "!info trace: frame in: a text message of 6 bytes")
        assert "no sticky packet here" in frame
        await heard(sock, "!info trace: 1 line delivered and answered at once")
        assert "你好" in sock.messages  # the echo, between the trace notices
        sock.transport.sendTextMessage("q")
        close = await heard(sock, "!info trace: close handshake")
        assert "code 1000 (normal closure), for quit" in close
        # The q's frame was read before the close: it is said before it.
        q_frame = "!info trace: frame in: a text message of 1 bytes"
        assert sock.messages.index(await heard(sock, q_frame)) < sock.messages.index(
            close
        )
        await heard(sock, "!bye quit: goodbye.")
        await sock.closed
        # After the close, the trace goes on in the log only.
        await until(traced, "^close: the (server|client) sent FIN first")
        assert not any(m.startswith("!info trace: close: ") for m in sock.messages)
    finally:
        await port.stopListening()
