"""The client library against the real server, over in-memory transports."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim

from sockchat import (
    ChatServerFactory,
    Conversation,
    ConversationEnded,
    EchoResponder,
    IResponder,
    LineRefused,
    Notice,
    NoticeKind,
    NotYourTurn,
)
from sockchat._doors.client import ClientFactory

from conftest import result_of
from fakes import Later


class Pair:
    """A client Conversation wired to a server factory through iosim."""

    def __init__(self, responder: IResponder, **kw: object) -> None:
        self.clock = Clock()
        self.notices: list[Notice] = []
        self.factory = ChatServerFactory(responder, **kw)  # type: ignore[arg-type]
        client_factory = ClientFactory(self.notices.append)
        self.client, self.server, self.pump = iosim.connectedServerAndClient(
            lambda: self.factory.buildProtocol(None),
            lambda: client_factory.buildProtocol(None),
            clock=self.clock,
        )
        self.conversation = Conversation(self.clock, self.client)

    def say(self, text: str) -> Deferred[str]:
        d = self.conversation.say(text)
        self.pump.flush()
        return d


valid_messages = st.one_of(
    st.text(),
    st.text().map(lambda t: "!" + t),
    st.sampled_from(["!bye quit: goodbye.", "!error out-of-turn: x", "!!", "!"]),
).filter(lambda t: "\n" not in t and not t.endswith("\r") and t != "q")


@given(st.lists(valid_messages, min_size=1, max_size=5))
def test_any_chat_text_arrives_byte_for_byte_even_if_it_looks_like_a_notice(texts):
    pair = Pair(EchoResponder())
    for text in texts:
        assert result_of(pair.say(text)) == text
    assert [n.code for n in pair.notices] == ["welcome"]


def test_welcome_arrives_as_a_notice_not_an_answer():
    pair = Pair(EchoResponder())
    pair.pump.flush()
    assert pair.notices[0].kind is NoticeKind.INFO
    assert pair.notices[0].code == "welcome"


def test_refused_line_raises_and_the_turn_comes_back():
    pair = Pair(EchoResponder(), max_line=5)
    with pytest.raises(LineRefused) as caught:
        result_of(pair.say("too long for five"))
    assert caught.value.notice.code == "line-too-long"
    assert pair.conversation.my_turn
    assert result_of(pair.say("short")) == "short"


def test_say_before_the_answer_is_a_programming_error():
    pair = Pair(Later())
    pair.say("one")
    with pytest.raises(NotYourTurn):
        result_of(pair.conversation.say("two"))


def test_multi_line_text_is_refused_before_sending():
    pair = Pair(EchoResponder())
    with pytest.raises(ValueError, match="newline"):
        result_of(pair.say("a\nb"))
    assert pair.conversation.my_turn


def test_quit_ends_cleanly_once_the_server_closes():
    pair = Pair(EchoResponder())
    ended = pair.conversation.quit()
    pair.pump.flush()
    end = result_of(ended)
    assert end.clean
    assert pair.factory.conversations == {}
    assert pair.notices[-1] == Notice(NoticeKind.BYE, "quit", "goodbye.")


def test_server_q_ends_the_conversation_cleanly():
    responder = Later()
    pair = Pair(responder)
    answer = pair.say("hello")
    responder.pending[0].callback("q")
    pair.pump.flush()
    with pytest.raises(ConversationEnded) as caught:
        result_of(answer)
    assert caught.value.clean
    assert "the server ended the conversation" in caught.value.why


def test_lost_connection_fails_the_waiting_say_uncleanly():
    pair = Pair(Later())
    answer = pair.say("hello")
    pair.server.transport.abortConnection()
    pair.pump.flush()
    with pytest.raises(ConversationEnded) as caught:
        result_of(answer)
    assert not caught.value.clean
    end = result_of(pair.conversation.when_ended())
    assert not end.clean


def test_quit_times_out_if_the_server_never_closes():
    pair = Pair(EchoResponder())
    pair.pump.flush()
    pair.server.transport.loseConnection = lambda: None  # a stuck server
    pair.server.dataReceived = lambda data: None
    ended = pair.conversation.quit(timeout=5)
    pair.pump.flush()
    assert not ended.called
    pair.clock.advance(5)
    pair.pump.flush()
    assert result_of(ended).clean


def test_shutdown_bye_reaches_the_waiting_say():
    pair = Pair(Later())
    answer = pair.say("hello")
    pair.factory.close_all()
    pair.pump.flush()
    with pytest.raises(ConversationEnded) as caught:
        result_of(answer)
    assert caught.value.notice is not None
    assert caught.value.notice.code == "shutdown"


def test_quit_while_waiting_for_an_answer_ends_cleanly():
    responder = Later()
    pair = Pair(responder)
    answer = pair.say("hello")
    ended = pair.conversation.quit()
    pair.pump.flush()
    assert result_of(ended).clean
    with pytest.raises(ConversationEnded) as caught:
        result_of(answer)
    assert caught.value.clean
    assert responder.pending[0].called  # cancelled: nobody is left to answer


def test_connect_fails_clearly_when_the_server_says_nothing():
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.testing import MemoryReactorClock
    from twisted.test.iosim import FakeTransport

    from sockchat import NoGreeting, connect
    from sockchat.testing import SERVER_ADDRESS

    reactor = MemoryReactorClock()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", 9527)
    outcome = []
    connect(reactor, endpoint, greeting_timeout=5).addBoth(outcome.append)
    _host, _port, factory, _timeout, _bind = reactor.tcpClients[0]
    proto = factory.buildProtocol(SERVER_ADDRESS)
    transport = FakeTransport(proto, isServer=False)
    proto.makeConnection(transport)
    reactor.advance(4.9)
    assert outcome == []
    reactor.advance(0.2)
    (failure,) = outcome
    assert failure.check(NoGreeting)
    assert "said nothing for 5 seconds" in failure.getErrorMessage()
    assert transport.disconnecting


def tls_alert() -> bytes:
    """What a real TLS server (OpenSSL) sends first when a handshake record
    makes no sense: an alert record."""
    from OpenSSL import SSL

    from certs import make_tls_files

    with tempfile.TemporaryDirectory() as where:
        files = make_tls_files(Path(where))
        context = SSL.Context(SSL.TLS_METHOD)
        context.use_privatekey_file(str(files["key"]))
        context.use_certificate_file(str(files["cert"]))
    server = SSL.Connection(context, None)
    server.set_accept_state()
    server.bio_write(b"\x16\x03\x01\x00\x04\x01\x00\x00\x00")
    with pytest.raises(SSL.Error):
        server.do_handshake()
    return server.bio_read(4096)


TLS_ALERT = tls_alert()


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    """*data* in pieces, cut at *cuts* (positions, any order)."""
    at = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(at) if b > a]


@given(st.lists(st.integers(min_value=0), max_size=4))
def test_a_plain_client_told_in_tls_ends_at_once_with_a_hint(cuts):
    from sockchat._doors.client import TLS_SPOKEN

    assert TLS_ALERT[:1] == b"\x15"  # an alert, from OpenSSL itself
    proto = ClientFactory(lambda notice: None).buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    for piece in cut(TLS_ALERT, cuts):
        proto.dataReceived(piece)
    assert transport.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))
    assert proto.lost is not None
    assert proto.lost.why == TLS_SPOKEN
    assert not proto.lost.clean


@given(st.lists(st.integers(min_value=0), max_size=4))
def test_a_welcome_in_pieces_is_not_taken_for_tls(cuts):
    notices = []
    proto = ClientFactory(notices.append).buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    welcome = b"!info welcome: sockchat conversation 1. You speak first.\n"
    for piece in cut(welcome, cuts):
        proto.dataReceived(piece)
    assert [n.code for n in notices] == ["welcome"]
    assert not transport.disconnecting


def test_a_silent_close_on_a_plain_connection_suggests_tls():
    from sockchat._doors.client import CLOSED_UNSPOKEN

    proto = ClientFactory(lambda notice: None).buildProtocol(None)
    proto.makeConnection(StringTransport())
    proto.connectionLost(Failure(ConnectionDone()))
    assert proto.lost is not None
    assert proto.lost.why == CLOSED_UNSPOKEN


def test_a_close_after_the_welcome_says_nothing_of_tls():
    proto = ClientFactory(lambda notice: None).buildProtocol(None)
    proto.makeConnection(StringTransport())
    proto.dataReceived(b"!info welcome: hi\n")
    proto.connectionLost(Failure(ConnectionDone()))
    assert proto.lost is not None
    assert proto.lost.why == "the server closed the connection without a goodbye."


def test_listen_when_it_is_your_turn_is_an_error():
    pair = Pair(EchoResponder())
    pair.pump.flush()
    with pytest.raises(NotYourTurn, match="it is your turn"):
        result_of(pair.conversation.listen())
