"""The web door's caps and deadlines, and TLS handshakes, over real loopback.

In one process, with the real reactor: raw sockets play the slow, the
greedy and the broken clients, and sockchat's own client the honest one.
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    clientFromString,
    serverFromString,
)
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from sockchat import ChatServerFactory, EchoResponder, connect
from sockchat._core.limits import Admission
from sockchat._doors.web import chat_site

from certs import make_tls_files


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def until(condition, timeout: float = 10.0) -> None:
    waited = 0.0
    while not condition():
        assert waited < timeout, "condition not met in time"
        await sleep(0.02)
        waited += 0.02


@pytest.fixture
def logged():
    """The text and level of every event logged while the test runs."""
    events = []

    def observe(event):
        events.append((event.get("log_level"), formatEvent(event)))

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


class Raw:
    """A non-blocking client socket, read without blocking the reactor."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=5, source_address=(source, 0)
        )
        self.sock.setblocking(False)
        self.received = b""
        self.ended = False  # the server closed or reset the connection

    def send(self, data: bytes) -> None:
        if self.ended:
            return
        try:
            self.sock.sendall(data)
        except OSError:
            # The server closed, and our send met its reset: what it wrote
            # before closing is still queued here (Linux purges only the
            # send queue on a reset), so read it before calling this ended.
            self.poll()
            self.ended = True

    def poll(self) -> None:
        while not self.ended:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:  # reset, after any data queued before it
                self.ended = True
                return
            if not data:
                self.ended = True
                return
            self.received += data

    async def until_closed(self, timeout: float = 10.0) -> bytes:
        waited = 0.0
        while True:
            self.poll()
            if self.ended:
                return self.received
            assert waited < timeout, "the server did not close the connection"
            await sleep(0.05)
            waited += 0.05

    def close(self) -> None:
        self.sock.close()


async def serve(deadline: float = 1.5, **kw):
    """The web door and the TCP door on one factory; (factory, web, tcp)."""
    factory = ChatServerFactory(EchoResponder(), **kw)
    site = chat_site(factory)
    site.headers_deadline = deadline
    backlog = "tcp:0:interface=127.0.0.1:backlog=1024"
    web = await serverFromString(reactor, backlog).listen(site)
    tcp = await serverFromString(reactor, backlog).listen(factory)
    return factory, web, tcp


@pytest_twisted.ensureDeferred
async def test_trickling_requests_from_one_address_are_capped_and_dropped():
    """The issue's attack: 300 requests, a byte every 0.5 s, from one address.

    The first second of trickling (the connects, four steps and the reads
    take 1.3 s on a quiet machine) must end well within the headers
    deadline, else a held request meets it before the refusals are counted
    and is taken for one: 3 s, not 1.5, leaves room for a busy machine (a
    run of the suite in parallel once went past 1.5 s)."""
    factory, web, tcp = await serve(
        deadline=3.0, admission=Admission(max_per_ip=20, cap_loopback=True)
    )
    clients: list[Raw] = []
    try:
        for n in range(300):
            clients.append(Raw(web.getHost().port))
            if n % 20 == 0:
                await sleep(0.01)  # let the reactor accept
        head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"y" * 1000
        for step in range(4):  # 1 s of trickling: within the deadline
            for client in clients:
                client.send(head[step : step + 1])
            await sleep(0.25)
            for client in clients:
                client.poll()  # read a refusal before sending it more
        held = [c for c in clients if not c.ended]
        assert len(held) <= 20
        assert factory.admission.total <= 20
        refused = [c for c in clients if c.ended]
        assert all(
            c.received.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
            for c in refused
        )
        assert any(
            b"your address already has 20 connection(s)" in c.received for c in refused
        )
        # Meanwhile an honest client from another address is welcomed.
        honest = await connect(
            reactor,
            TCP4ClientEndpoint(
                reactor, "127.0.0.1", tcp.getHost().port, bindAddress=("127.0.0.2", 0)
            ),
        )
        assert await honest.say("still serving") == "still serving"
        await honest.quit()
        # The held ones keep trickling, and are dropped at the deadline all
        # the same: Twisted's own timeout would start again with each byte.
        step = 4
        while any(not c.ended for c in held):
            assert step < 24, "trickling requests outlived the headers deadline"
            for client in held:
                client.send(head[step : step + 1])
                client.poll()
            await sleep(0.25)
            step += 1
        await until(lambda: factory.admission.total == 0)
    finally:
        for client in clients:
            client.close()
        await web.stopListening()
        await tcp.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_request_body_is_refused_with_413_before_it_is_read():
    factory, web, tcp = await serve()
    try:
        for head in (
            b"POST /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000000\r\n",
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n",
        ):
            client = Raw(web.getHost().port)
            client.send(head + b"\r\n")
            response = await client.until_closed(timeout=5)
            client.close()
            assert response.startswith(b"HTTP/1.1 413 Content Too Large\r\n")
            assert response.endswith(b"the chat page needs none.\n")
        await until(lambda: factory.admission.total == 0)
    finally:
        await web.stopListening()
        await tcp.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_websocket_counts_once_against_max_clients_over_real_sockets():
    factory, web, tcp = await serve(admission=Admission(max_clients=2))
    try:
        page = Raw(web.getHost().port)  # an unfinished request holds a slot
        page.send(b"GET / HT")
        await until(lambda: factory.admission.total == 1)
        tcp_client = await connect(
            reactor, TCP4ClientEndpoint(reactor, "127.0.0.1", tcp.getHost().port)
        )
        assert factory.admission.total == 2
        third = Raw(web.getHost().port)
        response = await third.until_closed(timeout=5)
        assert response.startswith(b"HTTP/1.1 503 ")
        assert response.endswith(
            b"sockchat: the server is full (2 clients); try again later.\n"
        )
        third.close()
        page.close()
        await until(lambda: factory.admission.total == 1)
        await tcp_client.quit()
        await until(lambda: factory.admission.total == 0)
    finally:
        await web.stopListening()
        await tcp.stopListening()


# TLS handshakes


async def listen_tls(tmp_path, site: bool = False, timeout: float = 1.0):
    files = make_tls_files(tmp_path)
    factory = ChatServerFactory(EchoResponder())
    factory.handshake_timeout = timeout
    door = factory
    if site:
        door = chat_site(factory)
        door.headers_deadline = timeout
    port = await serverFromString(
        reactor,
        f"ssl:0:interface=127.0.0.1:privateKey={files['key']}:certKey={files['cert']}",
    ).listen(door)
    endpoint = clientFromString(
        reactor,
        f"tls:localhost:{port.getHost().port}:trustRoots={files['ca'].parent}",
    )
    return factory, port, endpoint


@pytest_twisted.ensureDeferred
async def test_a_stalled_tls_handshake_is_closed_at_its_own_deadline(tmp_path, logged):
    factory, port, endpoint = await listen_tls(tmp_path, timeout=1.0)
    try:
        stalled = Raw(port.getHost().port)  # connects, never says hello
        await until(lambda: factory.admission.total == 1)
        started = reactor.seconds()
        await stalled.until_closed(timeout=5)
        assert reactor.seconds() - started < 3
        stalled.close()
        await until(lambda: factory.admission.total == 0)
        lines = [t for _, t in logged if "TLS handshake" in t]
        assert len(lines) == 1
        assert lines[0].startswith("TLS handshake with 127.0.0.1:")
        assert lines[0].endswith("did not finish within 1s; closed")
        assert not [t for _, t in logged if t.startswith("conversation")]
        # An honest client's conversation starts once its handshake is done.
        conversation = await connect(reactor, endpoint)
        assert await conversation.say("secret") == "secret"
        await conversation.quit()
        await until(lambda: not factory.conversations)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_failed_tls_handshake_is_one_readable_line_not_a_conversation(
    tmp_path, logged
):
    factory, port, _ = await listen_tls(tmp_path)
    try:
        client = Raw(port.getHost().port)
        mine = f"127.0.0.1:{client.sock.getsockname()[1]}"
        client.send(b"GET / HTTP/1.0\r\n\r\n")  # plain text to a TLS port
        await client.until_closed(timeout=5)
        client.close()
        await until(lambda: factory.admission.total == 0)
        await sleep(0.05)
        lines = [t for _, t in logged if "TLS handshake" in t]
        assert len(lines) == 1, lines
        line = lines[0]
        assert line.startswith("TLS handshake with 127.0.0.1:")
        assert " failed: " in line
        assert "[(" not in line
        assert "SSL routines" not in line
        assert "\n" not in line
        assert mine in line
        assert [t for _, t in logged if mine in t] == [line]
        assert [t for level, t in logged if level >= LogLevel.error] == []
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_stalled_tls_handshake_on_the_web_door_is_closed_too(tmp_path):
    factory, port, _ = await listen_tls(tmp_path, site=True, timeout=1.0)
    try:
        stalled = Raw(port.getHost().port)
        await until(lambda: factory.admission.total == 1)
        started = reactor.seconds()
        await stalled.until_closed(timeout=5)
        assert reactor.seconds() - started < 3
        stalled.close()
        await until(lambda: factory.admission.total == 0)
    finally:
        await port.stopListening()
