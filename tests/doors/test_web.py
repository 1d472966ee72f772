"""The web door in memory: a wsproto client talks to the real site.

The site is ``chat_site`` over a ``StringTransport``; the client is
wsproto's own state machine, so the HTTP upgrade, the frames and the close
codes are the real ones.  Each test names a promise of the README's web
section or a row of docs/security.md.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    RejectConnection,
    Request,
    TextMessage,
)
from zope.interface import implementer

from sockchat import ChatServerFactory, EchoResponder
from sockchat._core.framing import RawFraming
from sockchat._core.limits import Admission
from sockchat._core.transcript import ITranscript, TranscriptEntry
from sockchat._doors.observers import ConversationObserver
from sockchat._doors.web import (
    CONTENT_SECURITY_POLICY,
    chat_site,
    names_this_host,
    same_origin,
)

from fakes import Later

PAGE = "http://127.0.0.1:8080"


def make_factory(responder=None, **kw) -> ChatServerFactory:
    kw.setdefault("clock", Clock())
    return ChatServerFactory(responder or EchoResponder(), **kw)


class Client:
    """One browser-like WebSocket client of the site, in memory."""

    def __init__(
        self,
        factory: ChatServerFactory,
        origin: str | None = PAGE,
        host: str = "127.0.0.1:8080",
        port: int = 50000,
        site=None,
    ) -> None:
        self.site = site or chat_site(factory)
        addr = IPv4Address("TCP", "127.0.0.1", port)
        self.channel = self.site.buildProtocol(addr)
        self.transport = StringTransport(
            peerAddress=addr, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080)
        )
        self.channel.makeConnection(self.transport)
        self.ws = WSConnection(ConnectionType.CLIENT)
        headers = [(b"origin", origin.encode())] if origin is not None else []
        self.channel.dataReceived(
            self.ws.send(Request(host=host, target="/chat", extra_headers=headers))
        )
        self.raw = self.transport.value()
        self.accepted = False
        self.close: CloseConnection | None = None
        self.texts: list[str] = []
        self._partial = ""

    def pump(self) -> list[str]:
        """What the server sent since the last call: its text messages."""
        data = self.transport.value()
        self.transport.clear()
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.accepted = True
            elif isinstance(event, RejectConnection):
                self.accepted = False
            elif isinstance(event, TextMessage):
                self._partial += event.data
                if event.message_finished:
                    self.texts.append(self._partial)
                    self._partial = ""
            elif isinstance(event, CloseConnection):
                self.close = event
        texts, self.texts = self.texts, []
        return texts

    def send(self, event) -> None:
        self.channel.dataReceived(self.ws.send(event))

    def say(self, text: str) -> list[str]:
        self.send(TextMessage(text))
        return self.pump()

    def lost(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))


class Sockets(ConversationObserver):
    """Keeps the WebSocket of each conversation as it is upgraded."""

    def __init__(self, factory: ChatServerFactory) -> None:
        self.made: list = []
        factory.observe(lambda door, cid: self)

    def upgraded(self, request, socket, now) -> None:
        self.made.append(socket)


def welcomed(factory: ChatServerFactory, **kw) -> Client:
    client = Client(factory, **kw)
    (welcome,) = client.pump()
    assert client.accepted
    assert welcome.startswith("!info welcome: sockchat conversation ")
    return client


# The Origin check


@pytest.mark.parametrize(
    ("origin", "host", "secure"),
    [
        (None, "127.0.0.1:8080", False),  # a program, not a page
        ("http://127.0.0.1:8080", "127.0.0.1:8080", False),
        ("HTTP://LOCALHOST:8080", "localhost:8080", False),
        ("http://chat.example", "chat.example:80", False),
        ("https://chat.example", "chat.example", True),
        ("http://[::1]:8080", "[::1]:8080", False),
    ],
)
def test_same_origin_handshakes_pass(origin, host, secure):
    assert same_origin(origin, host, secure)


@pytest.mark.parametrize(
    ("origin", "host", "secure"),
    [
        ("http://evil.example", "127.0.0.1:8080", False),
        ("http://127.0.0.1:8081", "127.0.0.1:8080", False),
        ("http://localhost:8080", "127.0.0.1:8080", False),
        ("https://127.0.0.1:8080", "127.0.0.1:8080", False),  # scheme differs
        ("http://chat.example", "chat.example", True),
        ("null", "127.0.0.1:8080", False),
        ("http://127.0.0.1:8080/path", "127.0.0.1:8080", False),
        ("http://user@127.0.0.1:8080", "127.0.0.1:8080", False),
        ("http://127.0.0.1:8080", None, False),
        ("http://127.0.0.1:99999", "127.0.0.1:99999", False),
        ("", "127.0.0.1:8080", False),
    ],
)
def test_cross_origin_handshakes_are_refused(origin, host, secure):
    assert not same_origin(origin, host, secure)


@pytest.mark.parametrize(
    ("host", "local", "ok"),
    [
        ("127.0.0.1:8080", "127.0.0.1", True),
        ("localhost:8080", "127.0.0.1", True),
        ("app.localhost:8080", "127.0.0.1", True),
        ("[::1]:8080", "::1", True),
        ("127.1.2.3", "127.0.0.1", True),
        ("evil.example:8080", "127.0.0.1", False),  # rebound to 127.0.0.1
        ("localhost.evil.example", "127.0.0.1", False),
        (None, "127.0.0.1", False),
        ("chat.example", "192.0.2.10", True),  # not loopback: any name
        ("chat.example", "0.0.0.0", True),
    ],
)
def test_a_loopback_server_answers_only_to_loopback_names(host, local, ok):
    assert names_this_host(host, local) is ok


def test_a_rebound_name_is_refused_even_from_its_own_origin():
    factory = make_factory()
    client = Client(
        factory, origin="http://evil.example:8080", host="evil.example:8080"
    )
    assert client.raw.startswith(b"HTTP/1.1 403 ")
    assert factory.conversations == {}


def test_cross_origin_handshake_gets_403_before_any_upgrade():
    factory = make_factory()
    client = Client(factory, origin="http://evil.example")
    assert client.raw.startswith(b"HTTP/1.1 403 ")
    assert b"101" not in client.raw.split(b"\r\n", 1)[0]
    assert b"cross-origin WebSocket refused" in client.raw
    assert client.pump() == []
    assert not client.accepted
    # No conversation was started; the connection holds its slot of the
    # caps only until it closes.
    assert factory.conversations == {}
    assert factory.admission.total == 1
    client.lost()
    assert factory.admission.total == 0


def test_same_origin_handshake_upgrades_and_hears_the_welcome():
    factory = make_factory()
    client = Client(factory)
    assert client.raw.startswith(b"HTTP/1.1 101 ")
    (welcome,) = client.pump()
    assert welcome == (
        "!info welcome: sockchat conversation 1. You speak first, one line at a "
        "time, and wait for each answer. Send q to quit."
    )


# One conversation engine


def test_each_message_is_one_line_through_the_same_turns():
    factory = make_factory()
    client = welcomed(factory)
    assert client.say("hello") == ["hello"]
    assert client.say("你好") == ["你好"]
    assert client.say("") == [""]
    # Answers that look like notices are bang-stuffed, as on TCP.
    assert client.say("!bye quit: goodbye.") == ["!!bye quit: goodbye."]
    (conversation,) = factory.conversations.values()
    assert conversation.engine.answers == 4
    assert client.say("q") == ["!bye quit: goodbye."]
    assert client.close is not None
    assert client.close.code == 1000
    assert client.transport.disconnecting
    client.lost()
    assert factory.conversations == {}
    assert factory.admission.total == 0


def test_out_of_turn_message_gets_the_same_notice_as_on_tcp():
    responder = Later()
    client = welcomed(make_factory(responder))
    assert client.say("first") == []
    assert client.say("second") == [
        '!error out-of-turn: line 2 "second" arrived before the answer to line '
        "1; it was not delivered. Wait for each answer before you send the next "
        "line."
    ]
    responder.pending[0].callback("answer to first")
    assert client.pump() == ["answer to first"]


@implementer(ITranscript)
class Recorded:
    def __init__(self) -> None:
        self.entries: list[TranscriptEntry] = []

    def record(self, entry: TranscriptEntry) -> None:
        self.entries.append(entry)


def test_web_conversations_are_in_the_transcript_like_tcp_ones():
    transcript = Recorded()
    client = welcomed(make_factory(transcript=transcript))
    client.say("你好")
    assert [(e.direction, e.kind, e.text) for e in transcript.entries][1:] == [
        ("in", "line", "你好"),
        ("out", "answer", "你好"),
    ]
    assert transcript.entries[0].code == "welcome"
    assert transcript.entries[0].peer == "127.0.0.1:50000"


def test_web_and_tcp_conversations_share_one_factory():
    factory = make_factory(admission=Admission(max_clients=2))
    tcp = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    tcp.makeConnection(StringTransport())
    client = welcomed(factory)
    assert sorted(factory.conversations) == [1, 2]
    assert factory.admission.total == 2
    # A third newcomer, through either door, is over --max-clients: on the
    # web door it is refused at its accept, before any upgrade.
    third = Client(factory, port=50001, site=client.site)
    assert third.raw.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert third.raw.endswith(
        b"\r\n\r\nsockchat: the server is full (2 clients); try again later.\n"
    )
    assert third.transport.disconnecting
    assert sorted(factory.conversations) == [1, 2]
    assert factory.admission.total == 2
    # The upgraded WebSocket is counted once, and released once.
    client.lost()
    assert factory.admission.total == 1


def test_a_message_over_max_line_gets_the_tcp_notice_and_the_socket_stays_usable():
    client = welcomed(make_factory(max_line=10))
    assert client.say("x" * 11) == [
        "!error line-too-long: line 1 was skipped, not delivered: it has 11 "
        "bytes, over the 10-byte limit. It is your turn again."
    ]
    assert client.say("1234567890") == ["1234567890"]
    assert client.close is None


def test_a_huge_message_is_streamed_not_buffered():
    factory = make_factory(max_line=1000)
    sockets = Sockets(factory)
    client = welcomed(factory)
    (conversation,) = factory.conversations.values()
    piece = "x" * 65536
    # One message of 4 MiB, sent as 64 frames, not yet finished.
    client.send(TextMessage(piece, message_finished=False))
    for _ in range(62):
        client.send(TextMessage(piece, message_finished=False))
    assert conversation.engine.unfinished == 63 * 65536  # all of it was seen
    assert conversation.engine.buffered == 0  # and none of it kept (over max_line)
    (wire,) = sockets.made
    # Twisted's own buffer stays empty: if Twisted renames it, this fails.
    assert hasattr(wire, "_textBuffer"), "Twisted changed: see stream_messages()"
    assert not getattr(wire._textBuffer, "data", "")  # nothing piles up there
    client.send(TextMessage(piece, message_finished=True))
    assert client.pump() == [
        "!error line-too-long: line 1 was skipped, not delivered: it has "
        f"{64 * 65536} bytes, over the 1000-byte limit. It is your turn again."
    ]
    assert client.say("ok") == ["ok"]


def test_a_message_split_into_frames_is_one_line():
    client = welcomed(make_factory())
    client.send(TextMessage("你", message_finished=False))
    client.send(TextMessage("好", message_finished=True))
    assert client.pump() == ["你好"]


# Bad frames get a close code


def test_a_binary_message_closes_with_1003():
    factory = make_factory()
    client = welcomed(factory)
    client.send(BytesMessage(b"\x00\x01", message_finished=False))
    assert client.pump() == []
    assert client.close is not None
    assert client.close.code == 1003
    assert client.transport.disconnecting
    client.lost()
    assert factory.conversations == {}


def test_a_newline_inside_a_message_closes_with_1007_and_nothing_is_delivered():
    responder = Later()
    client = welcomed(make_factory(responder))
    assert client.say("one\nsecond line") == []
    assert responder.pending == []  # neither half reached the responder
    assert client.close is not None
    assert client.close.code == 1007


def not_utf8_frame(payload: bytes = b"ok \xff\xfe") -> bytes:
    """A masked text frame whose payload is not UTF-8, built by hand:
    wsproto will not send one."""
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


@given(st.lists(st.integers(min_value=1, max_value=12), max_size=4))
def test_invalid_utf8_closes_with_1007_and_a_reason_of_ours(cuts):
    from twisted.logger import formatEvent, globalLogPublisher

    factory = make_factory()
    client = welcomed(factory)
    said: list[str] = []

    def observe(event):
        said.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        data = not_utf8_frame()
        at = sorted({0, len(data), *(c for c in cuts if c < len(data))})
        for a, b in itertools.pairwise(at):
            client.channel.dataReceived(data[a:b])
        client.pump()
        assert client.close is not None
        assert client.close.code == 1007
        # Ours, not wsproto's "'utf-8' codec can't decode byte 0xff ...".
        assert client.close.reason == "a text message was not valid UTF-8"
        client.lost()
    finally:
        globalLogPublisher.removeObserver(observe)
    (ended,) = [line for line in said if " ended after " in line]
    assert ended.endswith(": the server ended it (invalid-utf8-message)"), ended
    assert factory.conversations == {}


def test_broken_framing_closes_with_1002():
    factory = make_factory()
    client = welcomed(factory)
    client.channel.dataReceived(b"\x81\x02hi")  # a client frame must be masked
    client.pump()
    assert client.close is not None
    assert client.close.code == 1002
    assert client.transport.disconnecting
    client.lost()
    assert factory.conversations == {}


# The conversation's limits and endings, as close codes


def test_idle_timeout_sends_the_notice_then_closes():
    clock = Clock()
    client = welcomed(make_factory(idle_timeout=60, clock=clock))
    clock.advance(61)
    assert client.pump() == [
        "!bye idle-timeout: no line from you for 60 seconds; goodbye."
    ]
    assert client.close is not None
    assert client.close.code == 1000


def test_shutdown_says_goodbye_and_closes_with_going_away():
    factory = make_factory()
    client = welcomed(factory)
    closed = factory.close_all()
    assert client.pump() == ["!bye shutdown: the server is shutting down."]
    assert client.close is not None
    assert client.close.code == 1001
    assert not closed.called
    client.lost()
    assert closed.called


def test_denied_address_hears_why_in_a_403_before_any_upgrade():
    from sockchat._core.limits import AccessRules, parse_networks

    rules = AccessRules(deny=parse_networks(["127.0.0.0/8"]))
    factory = make_factory(admission=Admission(rules=rules))
    client = Client(factory)
    assert client.raw.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert client.raw.endswith(
        b"sockchat: connections from your address are not accepted here.\n"
    )
    assert client.transport.disconnecting
    assert factory.conversations == {}
    assert factory.admission.total == 0


def test_answers_wait_while_the_browser_does_not_read():
    factory = make_factory(max_output=100)
    client = welcomed(factory)
    (conversation,) = factory.conversations.values()
    # The TCP connection's buffer is full: it pauses its producer, the HTTP
    # channel, which pauses the conversation.
    tcp_producer = client.transport.producer
    tcp_producer.pauseProducing()
    client.send(TextMessage("held back"))
    assert client.pump() == []
    for _ in range(20):
        client.send(TextMessage("y" * 10))
    # Past max_output held back, the conversation stops reading the socket.
    assert client.transport.producerState == "paused"
    tcp_producer.resumeProducing()
    # Once it reads again, every line is handled, in order.
    assert client.pump() == ["held back"] + ["y" * 10] * 20
    assert client.transport.producerState == "producing"
    assert conversation.engine.answers == 21


def test_a_browser_that_leaves_mid_answer_cancels_it():
    responder = Later()
    factory = make_factory(responder)
    client = welcomed(factory)
    client.say("are you there?")
    client.lost()
    assert responder.pending[0].called  # cancelled
    assert factory.conversations == {}
    assert factory.admission.total == 0


# The page


def get(factory: ChatServerFactory, path: str) -> bytes:
    site = chat_site(factory)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n".encode()
    )
    return transport.value()


def headers(response: bytes) -> dict[str, str]:
    head = response.split(b"\r\n\r\n", 1)[0].decode()
    return {
        k.lower(): v.strip()
        for k, v in (line.split(":", 1) for line in head.split("\r\n")[1:])
    }


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/favicon.svg", "image/svg+xml"),
    ],
)
def test_the_page_is_served_with_a_strict_content_security_policy(path, content_type):
    response = get(make_factory(), path)
    assert response.startswith(b"HTTP/1.1 200 ")
    got = headers(response)
    assert got["content-type"] == content_type
    assert got["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert got["x-content-type-options"] == "nosniff"


def test_the_page_needs_nothing_from_elsewhere():
    page = get(make_factory(), "/").decode()
    script = get(make_factory(), "/app.js").decode()
    # The SVG namespace is a name, never fetched (the live ladder is SVG).
    script = script.replace('"http://www.w3.org/2000/svg"', "SVG_NAMESPACE")
    for text in (page, script):
        assert "http://" not in text
        assert "https://" not in text
        assert "<script>" not in text  # no inline script: the CSP forbids it
    assert ".innerHTML" not in script
    assert "textContent" in script


def test_the_page_needs_line_framing():
    with pytest.raises(ValueError, match="the chat page speaks lines"):
        chat_site(make_factory(framing=RawFraming()))


def test_other_paths_are_not_found():
    assert get(make_factory(), "/../setup.cfg").startswith(b"HTTP/1.1 404 ")
    assert get(make_factory(), "/web/app.js").startswith(b"HTTP/1.1 404 ")


# Malformed handshakes: a 4xx and one info line, never a traceback


def request(factory: ChatServerFactory, text: str, site=None):
    """Send raw HTTP *text* to a fresh channel; the channel and its transport."""
    site = site or chat_site(factory)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = StringTransport(
        peerAddress=IPv4Address("TCP", "127.0.0.1", 50000),
        hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
    )
    channel.makeConnection(transport)
    if text:
        channel.dataReceived(text.encode("latin-1"))
    return channel, transport


@pytest.fixture
def logged():
    """Every event logged while the test runs, formatted, with its level."""
    from twisted.logger import formatEvent, globalLogPublisher

    events = []

    def observe(event):
        events.append((event.get("log_level"), formatEvent(event), event))

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def levels_above_info(events):
    from twisted.logger import LogLevel

    return [text for level, text, _ in events if level > LogLevel.info]


def test_a_malformed_origin_gets_the_usual_403_not_a_500(logged):
    factory = make_factory()
    client = Client(factory, origin="http://[")
    assert client.raw.startswith(b"HTTP/1.1 403 ")
    assert b"cross-origin WebSocket refused" in client.raw
    assert factory.conversations == {}
    assert levels_above_info(logged) == []
    refusals = [t for _, t, _ in logged if "refused a cross-origin" in t]
    assert len(refusals) == 1
    assert "origin http://[" in refusals[0]
    assert "\n" not in refusals[0]


@pytest.mark.parametrize(
    "origin", ["http://[", "http://[::1", "http://a]b", "http://:x"]
)
def test_broken_origins_are_not_same_origin(origin):
    assert not same_origin(origin, "127.0.0.1:8080", False)


def test_a_plain_get_of_the_socket_gets_426_and_one_info_line(logged):
    factory = make_factory()
    _, transport = request(
        factory, "GET /chat HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
    )
    response = transport.value()
    assert response.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    got = headers(response)
    assert got["upgrade"] == "websocket"
    assert response.endswith(
        b"sockchat: /chat is the chat page's WebSocket; open / in a browser instead.\n"
    )
    assert factory.conversations == {}
    assert levels_above_info(logged) == []
    lines = [t for level, t, _ in logged if "/chat" in t or "WebSocket" in t]
    assert len(lines) <= 1
    assert all("<" not in t for _, t, _ in logged)  # no Python repr


def test_a_broken_websocket_handshake_gets_400_and_one_info_line(logged):
    factory = make_factory()
    _, transport = request(
        factory,
        "GET /chat HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\n\r\n",  # no Sec-WebSocket-Key, no version
    )
    response = transport.value()
    assert response.startswith(b"HTTP/1.1 400 ")
    assert b"sockchat: not a WebSocket handshake (" in response
    assert factory.conversations == {}
    assert levels_above_info(logged) == []
    assert all("<" not in t for _, t, _ in logged)


# Request bodies are refused before they are read


@pytest.mark.parametrize(
    "head",
    [
        "POST /chat HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 1000000000\r\n",
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 1\r\n",
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 5\r\n",
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nTransfer-Encoding: chunked\r\n",
    ],
)
def test_a_request_with_a_body_gets_413_and_its_body_is_not_read(head):
    factory = make_factory()
    channel, transport = request(factory, head + "\r\n" + "x" * 70000)
    response = transport.value()
    assert response.startswith(b"HTTP/1.1 413 Content Too Large\r\n")
    assert response.endswith(
        b"sockchat: this server takes no request bodies; the chat page needs none.\n"
    )
    assert transport.disconnecting
    # Nothing of the body was stored, and more of it is not parsed either.
    assert all(r.content is None for r in channel.requests)
    channel.dataReceived(b"y" * 70000)
    assert transport.value() == response
    channel.connectionLost(Failure(ConnectionDone()))
    assert factory.admission.total == 0


def test_a_request_without_a_body_is_served_as_before():
    factory = make_factory()
    _, transport = request(
        factory, "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 0\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 200 ")


# Deadlines and caps, in memory (over real sockets: test_web_net.py)


def test_a_trickling_request_is_dropped_at_the_headers_deadline():
    from sockchat._doors.web import HEADERS_DEADLINE

    factory = make_factory()
    clock = factory.clock
    channel, transport = request(factory, "G")
    assert factory.admission.total == 1
    for byte in "ET / HTTP/1.1\r\nX-Slow: " + "y" * 1000:
        if clock.seconds() >= HEADERS_DEADLINE:
            break
        assert not transport.disconnecting
        clock.advance(0.5)
        channel.dataReceived(byte.encode())
    clock.advance(0.5)
    assert transport.disconnecting  # aborted: a byte every 0.5 s is not enough
    assert clock.seconds() <= HEADERS_DEADLINE + 0.5
    channel.connectionLost(Failure(ConnectionDone()))
    assert factory.admission.total == 0
    assert clock.getDelayedCalls() == []


def test_a_kept_alive_connection_has_a_deadline_for_each_request():
    from sockchat._doors.web import HEADERS_DEADLINE

    factory = make_factory()
    clock = factory.clock
    _, transport = request(factory, "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    clock.advance(HEADERS_DEADLINE - 1)
    assert not transport.disconnecting  # its headers came in time
    clock.advance(1)  # but the next request's did not come at all
    assert transport.disconnecting


def test_an_idle_kept_alive_connection_closes_without_an_info_line(logged):
    """A browser keeps a connection open after its page loaded, or opens
    one ahead of a request it may never make: closing it at the deadline
    is routine, not a slow request (issue 25, the desk tried as a user)."""
    from twisted.logger import LogLevel

    from sockchat._doors.web import HEADERS_DEADLINE

    factory = make_factory()
    _, kept = request(factory, "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n")
    _, ahead = request(factory, "")
    _, slow = request(factory, "GET / HT")
    factory.clock.advance(HEADERS_DEADLINE)
    assert all(t.disconnecting for t in (kept, ahead, slow))
    closed = [
        (level, text) for level, text, _ in logged if "closed a web connection" in text
    ]
    assert [level for level, _ in closed if level >= LogLevel.info] == [LogLevel.info]
    assert [text for _, text in closed if "did not send its headers" in text] == [
        f"closed a web connection from 127.0.0.1:50000: its request did not "
        f"send its headers within {HEADERS_DEADLINE:g}s"
    ]


def test_web_connections_count_against_max_per_ip_from_their_accept():
    factory = make_factory(admission=Admission(max_per_ip=2, cap_loopback=True))
    site = chat_site(factory)
    first, _ = request(factory, "GE", site=site)  # unfinished requests
    request(factory, "GE", site=site)
    assert factory.admission.total == 2
    _, refused = request(factory, "GET / HTTP/1.1\r\n\r\n", site=site)
    assert refused.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert refused.value().endswith(
        b"sockchat: your address already has 2 connection(s), the most allowed; "
        b"close one and try again.\n"
    )
    assert refused.disconnecting
    first.connectionLost(Failure(ConnectionDone()))
    assert factory.admission.total == 1
    _, transport = request(
        factory, "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n", site=site
    )
    assert transport.value().startswith(b"HTTP/1.1 200 ")


def test_refused_connections_linger_briefly_and_only_a_few_at_once():
    from sockchat._doors.web import MAX_LINGERING, REFUSAL_LINGER

    factory = make_factory(admission=Admission(max_clients=1))
    site = chat_site(factory)
    request(factory, "GE", site=site)  # holds the only slot
    refused = [request(factory, "", site=site) for _ in range(MAX_LINGERING + 4)]
    for _, transport in refused:
        assert transport.value().startswith(b"HTTP/1.1 503 ")
    # A few linger, reading what the client sends so that the close is not
    # a reset; the rest are closed at once.
    assert [t.disconnecting for _, t in refused] == [False] * MAX_LINGERING + [True] * 4
    assert site.lingering == MAX_LINGERING
    channel, transport = refused[0]
    channel.dataReceived(b"GET / HTTP/1.1\r\n")
    assert transport.disconnecting  # it spoke: closed now
    factory.clock.advance(REFUSAL_LINGER)
    assert all(t.disconnecting for _, t in refused)
    for channel, _ in refused:
        channel.connectionLost(Failure(ConnectionDone()))
    assert site.lingering == 0
    assert factory.admission.total == 1
