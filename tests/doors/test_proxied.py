"""--port haproxy:...: the PROXY header comes first, and the client is
admitted, capped and named by the address in it, not the load balancer's."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from sockchat import Admission, ChatServerFactory, EchoResponder
from sockchat._doors.proxied import HEADER_TIMEOUT, _HeaderFirstFactory

HAPROXY = IPv4Address("TCP", "127.0.0.1", 41000)


def connect(factory, header: bytes = b""):
    proto = factory.buildProtocol(HAPROXY)
    transport = StringTransport(peerAddress=HAPROXY)
    proto.makeConnection(transport)
    if header:
        proto.dataReceived(header)
    return proto, transport


def header(source: str, port: int = 50000) -> bytes:
    return f"PROXY TCP4 {source} 127.0.0.1 {port} 9527\r\n".encode()


def server(**admission):
    clock = Clock()
    chat = ChatServerFactory(
        EchoResponder(), clock=clock, admission=Admission(**admission)
    )
    return clock, chat, _HeaderFirstFactory(chat, clock)


def test_nothing_is_said_before_the_header_and_the_real_address_is_used():
    _clock, chat, factory = server()
    proto, transport = connect(factory)
    assert transport.value() == b""
    assert chat.conversations == {}
    proto.dataReceived(header("203.0.113.7") + b"hello\n")
    lines = transport.value().decode().splitlines()
    assert lines[0].startswith("!info welcome:")
    assert lines[-1] == "hello"
    [conversation] = chat.conversations.values()
    assert conversation.info.peer == "203.0.113.7:50000"


def test_a_header_in_pieces_and_a_line_in_the_same_read():
    _clock, _chat, factory = server()
    proto, transport = connect(factory)
    whole = header("198.51.100.2") + b"one\n"
    for i in range(len(whole)):
        proto.dataReceived(whole[i : i + 1])
    assert transport.value().decode().splitlines()[-1] == "one"


def test_the_per_address_cap_counts_the_real_addresses():
    _clock, _chat, factory = server(max_per_ip=1)
    _, first = connect(factory, header("203.0.113.7", 50001))
    _, second = connect(factory, header("203.0.113.7", 50002))
    _, other = connect(factory, header("203.0.113.8", 50003))
    assert first.value().startswith(b"!info welcome:")
    assert second.value().startswith(b"!bye busy:"), second.value()
    assert other.value().startswith(b"!info welcome:")


def test_a_connection_with_no_header_is_closed_after_the_deadline():
    clock, chat, factory = server()
    _proto, transport = connect(factory)
    clock.advance(HEADER_TIMEOUT - 0.1)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnected or transport.disconnecting
    assert chat.conversations == {}


def test_something_that_is_not_a_proxy_header_is_closed():
    _clock, chat, factory = server()
    _proto, transport = connect(factory, b"hello there, no header\n")
    assert transport.disconnecting
    assert transport.value() == b""
    assert chat.conversations == {}


# Health checks announced as such (issue 24, item 7).

V2 = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_local() -> bytes:
    """What haproxy's check sends with send-proxy-v2 and check-send-proxy."""
    return V2 + b"\x20\x00\x00\x00"


def v2_proxy(source: str, port: int = 50000) -> bytes:
    import socket
    import struct

    body = socket.inet_aton(source) + socket.inet_aton("127.0.0.1")
    body += struct.pack("!HH", port, 9527)
    return V2 + b"\x21\x11" + struct.pack("!H", len(body)) + body


@given(st.lists(st.integers(min_value=1, max_value=15), max_size=4))
def test_a_v2_local_header_is_a_health_check_and_takes_no_number(cuts):
    _clock, chat, factory = server()
    proto, transport = connect(factory)
    data = v2_local()
    at = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    for a, b in itertools.pairwise(at):
        proto.dataReceived(data[a:b])
    assert transport.value() == b""  # no welcome
    assert transport.disconnecting
    assert chat.conversations == {}
    # The next client, through the same proxy, is conversation 1.
    _, client = connect(factory, v2_proxy("203.0.113.9"))
    assert client.value().startswith(b"!info welcome: sockchat conversation 1. ")


def test_a_health_check_makes_no_log_line():
    """haproxy checks every 2 s per instance: a line each would bury the log
    (docs/operating.md: a health check is "no conversation and no log line")."""
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        _clock, _chat, factory = server()
        for _ in range(3):
            _, transport = connect(factory, v2_local())
            assert transport.disconnecting
    finally:
        globalLogPublisher.removeObserver(events.append)
    ours = [e for e in events if e.get("log_namespace", "").startswith("sockchat")]
    assert ours == []


def test_a_v2_proxy_header_is_a_client():
    _clock, chat, factory = server()
    _, transport = connect(factory, v2_proxy("203.0.113.7") + b"hello\n")
    assert transport.value().decode().splitlines()[-1] == "hello"
    [conversation] = chat.conversations.values()
    assert conversation.info.peer == "203.0.113.7:50000"


def test_is_health_check_reads_only_the_v2_command():
    from sockchat._doors.proxied import is_health_check

    assert is_health_check(v2_local())
    assert not is_health_check(v2_proxy("203.0.113.7"))
    assert not is_health_check(b"PROXY UNKNOWN\r\n")  # may be a relayed client
    assert not is_health_check(header("203.0.113.7"))
