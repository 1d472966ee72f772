"""Server and client library over real sockets on this machine."""

from __future__ import annotations

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    clientFromString,
    serverFromString,
)
from twisted.internet.error import ConnectionRefusedError

from sockchat import (
    ChatServerFactory,
    ConsoleResponder,
    ConversationEnded,
    EchoResponder,
    LineRefused,
    Notice,
    connect,
)

from certs import make_tls_files


async def listen(description: str, responder=None, **kw):
    factory = ChatServerFactory(responder or EchoResponder(), **kw)
    port = await serverFromString(reactor, description).listen(factory)
    return factory, port


@pytest_twisted.ensureDeferred
async def test_chat_over_tcp_until_q():
    factory, port = await listen("tcp:0:interface=127.0.0.1")
    try:
        notices: list[Notice] = []
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        conversation = await connect(reactor, endpoint, on_notice=notices.append)
        assert await conversation.say("hello") == "hello"
        assert await conversation.say("你好") == "你好"
        end = await conversation.quit()
        assert end.clean
        assert [n.code for n in notices] == ["welcome", "quit"]
        assert factory.conversations == {}
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_server_keeps_serving_after_a_conversation_ends():
    _factory, port = await listen("tcp:0:interface=127.0.0.1")
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    try:
        for n in range(3):
            conversation = await connect(reactor, endpoint)
            assert await conversation.say(f"round {n}") == f"round {n}"
            await conversation.quit()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_chat_over_a_unix_socket(tmp_path):
    path = tmp_path / "chat.sock"
    _, port = await listen(f"unix:{path}")
    try:
        conversation = await connect(
            reactor, clientFromString(reactor, f"unix:path={path}")
        )
        assert await conversation.say("over unix") == "over unix"
        await conversation.quit()
    finally:
        await port.stopListening()


async def listen_tls(tmp_path, hostname="localhost"):
    """An echo server on TLS, and a client endpoint that trusts its CA."""
    files = make_tls_files(tmp_path, hostname)
    factory, port = await listen(
        f"ssl:0:interface=127.0.0.1:privateKey={files['key']}:certKey={files['cert']}"
    )
    endpoint = clientFromString(
        reactor,
        f"tls:localhost:{port.getHost().port}:trustRoots={files['ca'].parent}",
    )
    return factory, port, endpoint


@pytest_twisted.ensureDeferred
async def test_chat_over_verified_tls(tmp_path):
    _, port, endpoint = await listen_tls(tmp_path)
    try:
        conversation = await connect(reactor, endpoint)
        assert await conversation.say("secret") == "secret"
        await conversation.quit()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_tls_conversations_close_cleanly_without_the_grace_abort(tmp_path):
    factory, port, endpoint = await listen_tls(tmp_path)
    # An abort would come far too late for until().
    factory.settings = attrs.evolve(factory.settings, close_grace=60.0)
    try:
        conversation = await connect(reactor, endpoint)
        assert await conversation.say("secret") == "secret"
        conversation.quit(timeout=60)
        await _until(lambda: not factory.conversations)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_tls_refuses_a_certificate_for_another_host(tmp_path):
    _, port, endpoint = await listen_tls(tmp_path, hostname="not-this-host.example")
    try:
        conversation = await connect(reactor, endpoint)
        with pytest.raises(ConversationEnded) as caught:
            await conversation.say("should not be sent")
        assert not caught.value.clean
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_refused_connection_is_an_error_not_a_hang():
    _factory, port = await listen("tcp:0:interface=127.0.0.1")
    number = port.getHost().port
    await port.stopListening()
    with pytest.raises(ConnectionRefusedError):
        await connect(reactor, TCP4ClientEndpoint(reactor, "127.0.0.1", number))


@pytest_twisted.ensureDeferred
async def test_a_second_waiting_client_is_answered_next_by_the_console():
    screen: list[str] = []
    console = ConsoleResponder(screen.append)
    _, port = await listen("tcp:0:interface=127.0.0.1", console)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    try:
        first = await connect(reactor, endpoint)
        second = await connect(reactor, endpoint)
        first_answer = first.say("I came first")
        await _until(lambda: console.waiting == 1)
        second_answer = second.say("I came second")
        await _until(lambda: console.waiting == 2)
        console.operator_says("q")  # the operator ends the first conversation
        with pytest.raises(ConversationEnded):
            await first_answer
        assert "server --> client 2: " in "".join(screen)
        console.operator_says("your turn")
        assert await second_answer == "your turn"
        await second.quit()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_limits_over_a_real_socket():
    _, port = await listen("tcp:0:interface=127.0.0.1", max_line=1000)
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        conversation = await connect(reactor, endpoint)
        with pytest.raises(LineRefused, match="1000-byte limit"):
            await conversation.say("x" * 100_000)
        assert await conversation.say("ok") == "ok"
        await conversation.quit()
    finally:
        await port.stopListening()


async def _until(condition, timeout: float = 5.0) -> None:
    from twisted.internet.task import deferLater

    waited = 0.0
    while not condition():
        assert waited < timeout, "condition not met in time"
        await deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


@pytest_twisted.ensureDeferred
async def test_a_plain_client_on_a_tls_port_is_told_to_use_tls(tmp_path):
    """A real TLS server closes the connection of a client that does not
    speak TLS, without a byte (here when its handshake deadline passes):
    the client says that the port may speak TLS, and how to connect."""
    from sockchat._doors.client import CLOSED_UNSPOKEN

    factory, port, _ = await listen_tls(tmp_path)
    factory.handshake_timeout = 0.2
    try:
        plain = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        conversation = await connect(reactor, plain, greeting_timeout=30)
        end = await conversation.when_ended()
        assert not end.clean
        assert end.why == CLOSED_UNSPOKEN
        assert "--connect tls:HOST:PORT" in end.why
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_client_gone_after_closing_its_side_does_not_wait_for_ever(
    monkeypatch,
):
    """``nc`` killed, or a script that closes without reading, while its
    line waits for a person: the client closed its sending side (a FIN),
    which keeps the conversation open for the answer, then its connection
    was reset. The server stops reading at the FIN, so only a look at the
    socket finds it gone; without one, its line waited at the desk for
    ever (issue 25, the desk tried as a user)."""
    import socket
    import struct

    from twisted.internet.task import deferLater

    from sockchat._doors import tcp

    from fakes import Later

    monkeypatch.setattr(tcp, "HALF_CLOSED_CHECK", 0.1)
    responder = Later()
    factory, port = await listen("tcp:0:interface=127.0.0.1", responder)
    try:
        kept = socket.create_connection(("127.0.0.1", port.getHost().port))
        gone = socket.create_connection(("127.0.0.1", port.getHost().port))
        for client, text in ((kept, b"kept"), (gone, b"gone")):
            client.sendall(text + b": a question for a person\n")
            client.shutdown(socket.SHUT_WR)
        for _ in range(100):
            await deferLater(reactor, 0.05, lambda: None)
            if len(responder.texts) == 2:
                break
        # Closed without reading the welcome: the kernel resets it.
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()
        for _ in range(200):
            await deferLater(reactor, 0.05, lambda: None)
            if len(factory.conversations) == 1:
                break
        # The one that is still there keeps waiting for its answer, and
        # gets it.
        assert len(factory.conversations) == 1
        kept_line = responder.texts.index("kept: a question for a person")
        responder.pending[kept_line].callback("the answer")
        kept.setblocking(False)  # the reactor runs in this thread
        heard = b""
        for _ in range(200):
            await deferLater(reactor, 0.05, lambda: None)
            try:
                chunk = kept.recv(4096)
            except BlockingIOError:
                continue
            if not chunk:
                break
            heard += chunk
        assert b"\nthe answer\n!bye end-of-input:" in heard, heard
        kept.close()
    finally:
        await port.stopListening()
