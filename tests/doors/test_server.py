"""The server protocol over in-memory transports (StringTransport)."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from sockchat import ChatServerFactory, ConversationInfo, EchoResponder, IResponder
from sockchat._doors.tcp import ChatServerProtocol, describe_address

from fakes import open_conversation, said


@implementer(IResponder)
class Recorder:
    """Answers with whatever the test says, whenever the test says."""

    def __init__(self) -> None:
        self.calls: list[tuple[ConversationInfo, str]] = []
        self.pending: list[Deferred[str]] = []
        self.cancelled = 0

    def respond(self, conversation: ConversationInfo, text: str) -> Deferred[str]:
        self.calls.append((conversation, text))
        d: Deferred[str] = Deferred(lambda _: self._cancelled())
        self.pending.append(d)
        return d

    def _cancelled(self) -> None:
        self.cancelled += 1


def connect(responder, **kw) -> tuple[ChatServerProtocol, StringTransport]:
    factory = ChatServerFactory(responder, **kw)
    return open_conversation(factory)


def test_welcome_is_a_notice_that_says_who_speaks_first():
    _, transport = connect(EchoResponder())
    (welcome,) = said(transport)
    assert welcome.startswith("!info welcome: ")
    assert "You speak first" in welcome
    assert "q to quit" in welcome


def test_echo_answers_each_line_in_turn():
    proto, transport = connect(EchoResponder())
    said(transport)
    proto.dataReceived("hello\n你好\r\n".encode())
    assert said(transport) == ["hello", "你好"]
    assert proto.runner.engine.answers == 2


def test_q_gets_a_bye_and_a_clean_close():
    proto, transport = connect(EchoResponder())
    said(transport)
    proto.dataReceived(b"q\n")
    assert said(transport) == ["!bye quit: goodbye."]
    assert transport.disconnecting


def test_deferred_answer_and_out_of_turn_line():
    responder = Recorder()
    proto, transport = connect(responder)
    said(transport)
    proto.dataReceived(b"one\ntwo\n")
    (notice,) = said(transport)
    assert notice.startswith('!error out-of-turn: line 2 "two"')
    assert [text for _, text in responder.calls] == ["one"]
    responder.pending[0].callback("answer to one")
    assert said(transport) == ["answer to one"]
    proto.dataReceived(b"three\n")
    assert [text for _, text in responder.calls] == ["one", "three"]


def test_responder_sees_the_peer_and_conversation_id():
    responder = Recorder()
    proto, _ = connect(responder)
    proto.dataReceived(b"hi\n")
    info, _ = responder.calls[0]
    assert info == ConversationInfo(1, "127.0.0.1:50000")


def test_coroutine_responder_is_awaited():
    @implementer(IResponder)
    class Async:
        async def respond(self, conversation, text):
            return text.upper()

    proto, transport = connect(Async())
    said(transport)
    proto.dataReceived(b"shout\n")
    assert said(transport) == ["SHOUT"]


@pytest.mark.parametrize(
    ("respond", "expect"),
    [
        (lambda text: 1 / 0, "(the responder raised ZeroDivisionError)"),
        (lambda text: 42, "(the responder returned int; expected str"),
        (lambda text: "two\nlines", "(the answer has a newline in it)"),
        (lambda text: succeed(7), "(the responder's result was int, expected str)"),
        (lambda text: "\ud800", "(the answer is not encodable as UTF-8)"),
    ],
)
def test_a_failing_responder_gives_an_error_notice_and_the_turn_back(
    respond, expect, caplog
):
    @implementer(IResponder)
    class Bad:
        def respond(self, conversation, text):
            return respond(text)

    proto, transport = connect(Bad())
    said(transport)
    proto.dataReceived(b"hello\n")
    (notice,) = said(transport)
    assert notice.startswith("!error responder-failed: line 1 could not be answered")
    assert expect in notice
    assert not transport.disconnecting
    proto.dataReceived(b"again\n")  # the turn came back: this is delivered
    (second,) = said(transport)
    assert "line 2" in second


def test_responder_internals_stay_in_the_log():
    @implementer(IResponder)
    class Leaky:
        def respond(self, conversation, text):
            raise RuntimeError("password=hunter2")

    proto, transport = connect(Leaky())
    said(transport)
    proto.dataReceived(b"hello\n")
    (notice,) = said(transport)
    assert "RuntimeError" in notice
    assert "hunter2" not in notice


def test_answer_starting_with_bang_is_stuffed():
    proto, transport = connect(EchoResponder())
    said(transport)
    proto.dataReceived(b"!bye quit: fake\n")
    assert said(transport) == ["!!bye quit: fake"]


def test_answering_q_ends_the_conversation_from_the_server():
    responder = Recorder()
    proto, transport = connect(responder)
    said(transport)
    proto.dataReceived(b"hello\n")
    responder.pending[0].callback("q")
    assert said(transport) == ["q"]
    assert transport.disconnecting


def test_100kb_line_gets_a_notice_and_the_connection_stays_usable():
    proto, transport = connect(EchoResponder())
    said(transport)
    proto.dataReceived(b"x" * 100_000 + b"\nstill here\n")
    notice, answer = said(transport)
    assert notice.startswith(
        "!error line-too-long: line 1 was skipped, not delivered: it has 100000 bytes"
    )
    assert "65536-byte limit" in notice
    assert answer == "still here"
    assert not transport.disconnecting


def test_max_line_is_configurable():
    proto, transport = connect(EchoResponder(), max_line=4)
    said(transport)
    proto.dataReceived(b"12345\n1234\n")
    notice, answer = said(transport)
    assert "4-byte limit" in notice
    assert answer == "1234"


def test_invalid_utf8_gets_a_notice_and_the_connection_stays_usable():
    proto, transport = connect(EchoResponder())
    said(transport)
    proto.dataReceived(b"\xc3\x28\nfine\n")
    notice, answer = said(transport)
    assert notice.startswith(
        "!error invalid-utf8: line 1 was refused, not delivered: it is not valid UTF-8"
    )
    assert answer == "fine"


def test_client_gone_mid_answer_cancels_the_responder():
    responder = Recorder()
    factory = ChatServerFactory(responder)
    proto = factory.buildProtocol(None)
    proto.makeConnection(StringTransport())
    proto.dataReceived(b"hello\npartial line")
    assert factory.conversations == {1: proto.runner}
    proto.connectionLost(Failure(ConnectionDone()))
    assert responder.cancelled == 1
    assert factory.conversations == {}
    assert proto.runner.closed.called


def test_close_all_says_goodbye_to_everyone():
    factory = ChatServerFactory(EchoResponder())
    transports = []
    for _ in range(3):
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        transports.append((proto, transport))
    done = factory.close_all()
    assert not done.called
    for proto, transport in transports:
        assert said(transport)[-1] == "!bye shutdown: the server is shutting down."
        assert transport.disconnecting
        proto.connectionLost(Failure(ConnectionDone()))
    assert done.called


def test_factory_refuses_a_non_responder():
    with pytest.raises(TypeError, match="IResponder"):
        ChatServerFactory(object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("addr", "text"),
    [
        (IPv4Address("TCP", "10.0.0.1", 5), "10.0.0.1:5"),
        (IPv6Address("TCP", "::1", 5), "[::1]:5"),
        (UNIXAddress(b"/tmp/s"), "unix:/tmp/s"),
        (UNIXAddress(None), "unix"),
    ],
)
def test_peer_addresses_read_well(addr, text):
    assert describe_address(addr) == text
