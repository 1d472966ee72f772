"""Hostile and faulty clients, in memory: limits, timeouts, back-pressure.

Every test here names a row of docs/security.md.
"""

from __future__ import annotations

import re
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from sockchat import ChatServerFactory, EchoResponder
from sockchat._core.codec import LineDecoder
from sockchat._core.limits import AccessRules, Admission, parse_networks
from sockchat._core.rules import ITEM_OVERHEAD
from sockchat._core.wire import Answer, Notice, parse_server_line
from sockchat._doors.tcp import TRANSPORT_BUFFER

from fakes import Later, lose, open_conversation, said


def v4(host: str, port: int = 40000) -> IPv4Address:
    return IPv4Address("TCP", host, port)


def connect(factory: ChatServerFactory, addr=None):
    return open_conversation(factory, addr or v4("127.0.0.1"))


lines = said


# Idle timeout


def test_idle_client_gets_a_notice_and_only_it_is_closed():
    clock = Clock()
    factory = ChatServerFactory(EchoResponder(), idle_timeout=60, clock=clock)
    _idle, idle_t = connect(factory)
    busy, busy_t = connect(factory)
    lines(idle_t), lines(busy_t)
    for _ in range(4):
        clock.advance(20)
        busy.dataReceived(b"still here\n")
    assert lines(idle_t)[-1] == (
        "!bye idle-timeout: no line from you for 60 seconds; goodbye."
    )
    assert idle_t.disconnecting
    assert not busy_t.disconnecting
    assert lines(busy_t) == ["still here"] * 4


def test_idle_time_counts_from_the_last_line():
    clock = Clock()
    factory = ChatServerFactory(EchoResponder(), idle_timeout=60, clock=clock)
    proto, transport = connect(factory)
    clock.advance(50)
    proto.dataReceived(b"hi\n")
    clock.advance(50)
    assert not transport.disconnecting
    clock.advance(10)
    assert transport.disconnecting


def test_a_refused_line_also_restarts_the_idle_time():
    clock = Clock()
    factory = ChatServerFactory(EchoResponder(), idle_timeout=60, clock=clock)
    proto, transport = connect(factory)
    clock.advance(50)
    proto.dataReceived(b"\xff\n")  # not UTF-8: refused, but the client spoke
    clock.advance(50)
    assert not transport.disconnecting
    clock.advance(10)
    assert transport.disconnecting


def test_waiting_for_the_server_is_not_idling():
    clock = Clock()
    responder = Later()
    factory = ChatServerFactory(responder, idle_timeout=60, clock=clock)
    proto, transport = connect(factory)
    proto.dataReceived(b"a slow question\n")
    clock.advance(1000)
    assert not transport.disconnecting
    responder.pending[0].callback("a slow answer")
    clock.advance(59)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting


def test_after_a_slow_answer_the_client_gets_its_whole_idle_time():
    clock = Clock()
    responder = Later()
    factory = ChatServerFactory(responder, idle_timeout=3, clock=clock)
    proto, transport = connect(factory)
    proto.dataReceived(b"a slow question\n")
    clock.pump([0.1] * 54)  # the operator takes 5.4 s
    responder.pending[0].callback("a slow answer")
    clock.pump([0.1] * 29)
    assert not transport.disconnecting, "cut short after the answer"
    clock.pump([0.1] * 2)
    assert transport.disconnecting


def test_unfinished_overlong_line_is_logged_at_close():
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        factory = ChatServerFactory(EchoResponder(), max_line=10, clock=Clock())
        proto, _ = connect(factory)
        proto.dataReceived(b"y" * 150)
        lose(proto)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any(e.get("count") == 150 for e in events)


def test_a_client_that_cannot_take_its_bye_is_aborted():
    clock = Clock()
    factory = ChatServerFactory(EchoResponder(), idle_timeout=60, clock=clock)
    proto, transport = connect(factory)
    clock.advance(60)
    assert transport.disconnecting
    assert not transport.disconnected
    clock.advance(factory.settings.close_grace)
    assert transport.disconnected  # StringTransport marks abortConnection so
    lose(proto)
    assert factory.conversations == {}
    assert clock.getDelayedCalls() == []


def test_idle_timeout_can_be_off():
    clock = Clock()
    factory = ChatServerFactory(EchoResponder(), idle_timeout=None, clock=clock)
    _, transport = connect(factory)
    clock.advance(10**6)
    assert not transport.disconnecting


# Connection limits and access rules


def test_over_max_clients_a_newcomer_hears_busy_first_then_close():
    factory = ChatServerFactory(
        EchoResponder(), admission=Admission(max_clients=2), clock=Clock()
    )
    first, _ = connect(factory, v4("10.0.0.1"))
    connect(factory, v4("10.0.0.2"))
    _, third = connect(factory, v4("10.0.0.3"))
    assert lines(third) == [
        "!bye busy: the server is full (2 clients); try again later."
    ]
    assert third.disconnecting
    lose(first)
    _, fourth = connect(factory, v4("10.0.0.4"))
    assert lines(fourth)[0].startswith("!info welcome:")


def test_over_max_per_ip_a_newcomer_hears_busy():
    factory = ChatServerFactory(
        EchoResponder(), admission=Admission(max_per_ip=1), clock=Clock()
    )
    connect(factory, v4("10.0.0.1", 1))
    _, same = connect(factory, v4("10.0.0.1", 2))
    _, other = connect(factory, v4("10.0.0.2", 3))
    assert lines(same)[0].startswith("!bye busy: your address already has 1")
    assert lines(other)[0].startswith("!info welcome:")


def test_denied_address_hears_why_first():
    rules = AccessRules(deny=parse_networks(["10.0.0.0/8"]))
    factory = ChatServerFactory(
        EchoResponder(), admission=Admission(rules=rules), clock=Clock()
    )
    _, denied = connect(factory, v4("10.1.2.3"))
    assert lines(denied) == [
        "!bye denied: connections from your address are not accepted here."
    ]
    assert denied.disconnecting
    assert factory.admission.total == 0


@pytest.mark.parametrize(
    ("allow", "deny", "host", "ok"),
    [
        ([], [], "203.0.113.9", True),
        (["10.0.0.0/8"], [], "10.9.9.9", True),
        (["10.0.0.0/8"], [], "11.0.0.1", False),
        (["10.0.0.0/8"], ["10.0.0.0/16"], "10.0.3.4", False),
        (["10.0.0.0/8"], ["10.0.0.0/16"], "10.1.3.4", True),
        (["2001:db8::/32"], [], "2001:db8::1", True),
        (["2001:db8::/32"], [], "2001:db9::1", False),
        ([], ["::1"], "::1", False),
        ([], ["10.0.0.0/8"], "::ffff:10.1.1.1", False),  # IPv4-mapped IPv6
        (["10.0.0.0/8"], [], "fe80::1%eth0", False),
    ],
)
def test_allow_and_deny_ranges(allow, deny, host, ok):
    rules = AccessRules(parse_networks(allow), parse_networks(deny))
    assert rules.permits(host) is ok


def test_unix_socket_peers_are_not_subject_to_address_rules():
    rules = AccessRules(allow=parse_networks(["10.0.0.0/8"]))
    factory = ChatServerFactory(
        EchoResponder(), admission=Admission(rules=rules, max_per_ip=1), clock=Clock()
    )
    for _ in range(2):
        _, transport = connect(factory, UNIXAddress(b"/tmp/s"))
        assert lines(transport)[0].startswith("!info welcome:")


def test_ipv6_peers_are_counted_per_address():
    factory = ChatServerFactory(
        EchoResponder(), admission=Admission(max_per_ip=1), clock=Clock()
    )
    connect(factory, IPv6Address("TCP", "2001:db8::1", 1))
    _, again = connect(factory, IPv6Address("TCP", "2001:db8::1", 2))
    assert lines(again)[0].startswith("!bye busy:")


def test_bad_ranges_are_named():
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300' is not"):
        parse_networks(["10.0.0.0/8", "10.0.0.300"])


# Slow readers


def test_a_client_that_does_not_read_is_held_back_not_buffered_without_bound():
    factory = ChatServerFactory(EchoResponder(), max_output=1000, clock=Clock())
    proto, transport = connect(factory)
    lines(transport)
    transport.producer.pauseProducing()  # the transport: its send buffer is full
    sent = 0
    while transport.producerState != "paused":  # a real transport stops reading
        proto.dataReceived(b"x" * 50 + b"\n")
        sent += 1
        assert sent < 100, "reading was never paused"
    assert transport.value() == b"", "nothing is answered while it does not read"
    one_line = sys.getsizeof("x" * 50) + ITEM_OVERHEAD
    assert proto.runner.engine.held <= 1000 + one_line, (
        "held back: the limit plus one read"
    )
    # It read: everything held back is answered, in order.
    transport.producer.resumeProducing()
    assert lines(transport) == ["x" * 50] * sent
    assert transport.producerState == "producing"


def test_reads_stay_small_and_the_transport_pauses_early():
    class Transport(StringTransport):
        bufferSize = 2**16  # Twisted's: its read size and its pause limit

    factory = ChatServerFactory(EchoResponder(), max_output=100_000, clock=Clock())
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
    proto.makeConnection(transport)
    # Twisted counts bytes, not the ~56 bytes it spends on each write: a
    # small limit bounds what it holds before the engine counts the rest.
    assert transport.bufferSize == TRANSPORT_BUFFER == 4096


def test_lines_held_back_are_answered_before_a_half_close_ends_the_talk():
    factory = ChatServerFactory(EchoResponder(), max_output=1000, clock=Clock())
    proto, transport = connect(factory)
    lines(transport)
    transport.producer.pauseProducing()
    proto.dataReceived(b"one\ntwo\n")
    proto.readConnectionLost()
    assert not transport.disconnecting
    transport.producer.resumeProducing()
    assert lines(transport) == [
        "one",
        "two",
        "!bye end-of-input: you closed your side of the connection; goodbye.",
    ]


# Half-close


def test_half_close_still_gets_the_answer_owed_then_a_bye():
    responder = Later()
    factory = ChatServerFactory(responder, clock=Clock())
    proto, transport = connect(factory)
    lines(transport)
    proto.dataReceived(b"question\n")
    proto.readConnectionLost()
    assert not transport.disconnecting
    responder.pending[0].callback("answer")
    assert lines(transport) == [
        "answer",
        "!bye end-of-input: you closed your side of the connection; goodbye.",
    ]
    assert transport.disconnecting


# Any byte stream, split anywhere


#: Telnet commands, which the server takes out of the stream first: IAC IAC
#: is a 0xFF byte; a negotiation never takes a newline as its option.
TELNET = re.compile(rb"\xff(\xff)|\xff[\xfb-\xfe][^\n]|\xff[\xf0-\xfa]")


def expected_answers(stream: bytes, max_line: int) -> list[str]:
    """What the server must answer, worked out independently of its code."""
    stream = TELNET.sub(lambda m: m.group(1) or b"", stream)
    answers = []
    for raw in stream.split(b"\n")[:-1]:  # the last piece is unfinished
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) > max_line:
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if text == "q":
            break
        answers.append(text)
    return answers


pieces = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20).map(lambda t: t.encode() + b"\n"),
    st.sampled_from(
        [
            b"\n",
            b"\r\n",
            b"\xff\n",
            b"q\n",
            b"!bye x: y\n",
            b"x" * 90,
            b"\xff\xf4",
            b"\xff\xfd\x06",
        ]
    ),
)


@given(st.lists(pieces, max_size=30), st.lists(st.integers(1, 64), max_size=40))
def test_any_stream_split_anywhere_gets_exactly_one_answer_per_good_line(parts, cuts):
    max_line = 64
    stream = b"".join(parts)
    factory = ChatServerFactory(EchoResponder(), max_line=max_line, clock=Clock())
    proto, transport = connect(factory)
    position = 0
    for size in [*cuts, len(stream)]:  # never raises, whatever the split
        proto.dataReceived(stream[position : position + size])
        position += size
        assert proto.runner.engine.buffered <= max_line + 1
        if position >= len(stream):
            break
    decoder = LineDecoder(strip_cr=False)
    # Refusals of telnet options are the only bytes that are not lines.
    out = re.sub(rb"\xff[\xfb\xfc\xfe].", b"", transport.value(), flags=re.DOTALL)
    got = [parse_server_line(line) for line in decoder.feed(out)]
    answers = [m.text for m in got if isinstance(m, Answer)]
    assert answers == expected_answers(stream, max_line)
    notices = [m for m in got if isinstance(m, Notice)]
    assert notices[0].code == "welcome"


# The log's bounds (docs/security.md): one client cannot fill the disk.


def test_a_flood_of_refused_lines_logs_one_line_and_a_count():
    from twisted.logger import capturedLogs

    factory = ChatServerFactory(EchoResponder(), clock=Clock())
    with capturedLogs() as events:
        proto, _ = connect(factory)
        for _ in range(200):
            proto.dataReceived(b"\xff\n")
        lose(proto)
    texts = [e["log_format"] for e in events]
    assert sum("a line was refused" in t for t in texts) == 1
    (last,) = [e for e in events if "ended after" in e["log_format"]]
    assert last["refused"] == 200


def test_a_responder_that_always_fails_logs_one_traceback_and_a_count():
    from twisted.logger import capturedLogs

    from sockchat import FunctionResponder

    def broken(conversation, text):
        raise ValueError(text)

    factory = ChatServerFactory(FunctionResponder(broken), clock=Clock())
    with capturedLogs() as events:
        proto, transport = connect(factory)
        for n in range(50):
            proto.dataReceived(b"line %d\n" % n)
        lose(proto)
    assert sum("log_failure" in e for e in events) == 1
    (last,) = [e for e in events if "ended after" in e["log_format"]]
    assert last["failures"] == 50
    assert lines(transport)[-1].startswith("!error responder-failed: line 50 ")


def test_a_probe_that_connects_and_leaves_is_one_debug_event():
    from twisted.logger import LogLevel, capturedLogs

    factory = ChatServerFactory(EchoResponder(), clock=Clock())
    with capturedLogs() as events:
        proto, _ = connect(factory)
        lose(proto)
    mine = [e for e in events if e.get("log_namespace") == "sockchat.server"]
    assert [e["log_level"] for e in mine] == [LogLevel.debug]


def test_the_idle_watch_does_not_grow_with_connections_that_came_and_went():
    clock = Clock()
    factory = ChatServerFactory(EchoResponder(), idle_timeout=600, clock=clock)
    for _ in range(10_000):
        proto, _ = connect(factory)
        lose(proto)
    kept, _ = connect(factory)
    assert len(factory._idle._heap) < 200, "one entry per ended conversation"
    clock.advance(600)
    assert kept.runner.engine.code == "idle-timeout"


def test_refused_connections_and_silent_probes_log_a_line_a_minute():
    from twisted.logger import capturedLogs

    clock = Clock()
    factory = ChatServerFactory(
        EchoResponder(), admission=Admission(max_clients=1), clock=clock
    )
    with capturedLogs() as events:
        keep, _ = connect(factory)
        for _ in range(100):  # over the cap: refused
            factory.buildProtocol(v4("127.0.0.1", 40001))
        keep.connectionLost(Failure(ConnectionDone()))
        for _ in range(100):  # probes that say nothing
            proto, _ = connect(factory)
            lose(proto)
        clock.advance(61)
        factory.buildProtocol(v4("127.0.0.1", 40002))
        proto, _ = connect(factory)
        proto, _ = connect(factory)  # refused again: the cap is 1
    refused = [e for e in events if "refused a connection" in e["log_format"]]
    silent = [e for e in events if e["log_level"].name == "debug"]
    assert [e["held_back"] for e in refused] == [0, 99]  # then 99 counted
    assert [e["held_back"] for e in silent] == [0]
