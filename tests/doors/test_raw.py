"""Raw framing (the tutorial's bare messages), server and client, in memory.

In raw framing the server sends one message for each message it gets: the
answer, or in its place an error.  A message sent ahead waits its turn.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from sockchat import (
    ChatServerFactory,
    ConversationEnded,
    EchoResponder,
    IResponder,
    PairResponder,
    RawFraming,
)
from sockchat._core.limits import Admission
from sockchat._doors.client import ChatClientProtocol, Conversation

from conftest import has_fired, result_of
from fakes import Kept, Later, open_conversation, sent

RAW = RawFraming()
PEER = IPv4Address("TCP", "127.0.0.1", 50000)


def connect(responder=None, **kw):
    kw.setdefault("clock", Clock())
    factory = ChatServerFactory(responder or EchoResponder(), framing=RAW, **kw)
    return open_conversation(factory, PEER)


def test_no_greeting_and_answers_with_no_newline():
    proto, transport = connect()
    assert sent(transport) == b""
    proto.dataReceived("你好".encode())
    assert sent(transport) == "你好".encode()
    proto.dataReceived(b"!looks like a notice")
    assert sent(transport) == b"!looks like a notice"


def test_q_closes_without_a_word():
    proto, transport = connect()
    proto.dataReceived(b"q")
    assert sent(transport) == b""
    assert transport.disconnecting


def test_q_with_a_newline_is_a_message_not_a_quit():
    proto, transport = connect()
    proto.dataReceived(b"q\n")
    assert sent(transport) == b"q\n"
    assert not transport.disconnecting


def test_a_failed_responder_answers_with_the_error_and_the_turn_comes_back():
    @implementer(IResponder)
    class Broken:
        def respond(self, conversation, text):
            raise RuntimeError("secret")

    proto, transport = connect(Broken())
    proto.dataReceived(b"hello")
    error = sent(transport)
    assert error == (
        b"!error responder-failed: line 1 could not be answered (the responder "
        b"raised RuntimeError). It is your turn again."
    )
    assert not transport.disconnecting
    proto.dataReceived(b"again")
    assert sent(transport).startswith(b"!error responder-failed: line 2")


def test_invalid_utf8_answers_with_the_error_in_the_answers_place():
    proto, transport = connect()
    proto.dataReceived(b"\xff\xfe")
    assert sent(transport).startswith(
        b"!error invalid-utf8: line 1 was refused, not delivered: it is not valid "
        b"UTF-8 (invalid start byte at byte 1). It is your turn again."
    )
    proto.dataReceived(b"fine")
    assert sent(transport) == b"fine"


def test_a_character_split_across_reads_is_one_message():
    proto, transport = connect()
    data = "好".encode()
    proto.dataReceived(data[:1])
    proto.dataReceived(data[1:])
    assert sent(transport) == data


def test_an_answer_raw_framing_cannot_send_is_an_error_not_silence():
    answers = iter(["", "x" * 1025, "ok"])

    @implementer(IResponder)
    class Odd:
        def respond(self, conversation, text):
            return next(answers)

    proto, transport = connect(Odd())
    proto.dataReceived(b"one")
    assert b"(the answer is empty, and raw framing cannot send nothing)" in sent(
        transport
    )
    proto.dataReceived(b"two")
    assert b"(the answer has 1025 bytes, over raw framing's 1024-byte" in sent(
        transport
    )
    proto.dataReceived(b"three")
    assert sent(transport) == b"ok"


def test_a_message_sent_ahead_waits_its_turn_and_is_answered_in_order():
    responder = Later()
    proto, transport = connect(responder)
    proto.dataReceived(b"first")
    proto.dataReceived(b"second")
    proto.dataReceived(b"\xff")
    assert responder.texts == ["first"]
    assert sent(transport) == b"", "no extra message while an answer is owed"
    responder.pending[0].callback("answer 1")
    assert sent(transport) == b"answer 1"
    assert responder.texts == ["first", "second"]
    responder.pending[1].callback("answer 2")
    assert sent(transport).startswith(b"answer 2!error invalid-utf8: line 3")
    proto.dataReceived(b"fourth")
    assert responder.texts == ["first", "second", "fourth"]


def test_many_messages_sent_ahead_to_an_instant_responder_are_all_answered():
    proto, transport = connect()
    transport.producer.pauseProducing()  # held back as a whole, then let go at once
    for n in range(3000):  # deep enough to fail if draining recursed
        proto.dataReceived(b"m%d " % n)
    transport.producer.resumeProducing()
    assert sent(transport) == b"".join(b"m%d " % n for n in range(3000))


def test_a_flood_of_early_messages_is_logged_once():
    seen: list[str] = []

    def observe(event):
        if event.get("log_namespace") == "sockchat.server":
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        proto, _ = connect(Later())
        for n in range(50):
            proto.dataReceived(b"m%d" % n)
    finally:
        globalLogPublisher.removeObserver(observe)
    early = [line for line in seen if "waits its turn" in line]
    assert early == [
        "conversation 1: a message arrived before the answer to the last one; it "
        "waits its turn (raw framing)"
    ]


def test_q_sent_while_waiting_ends_at_once():
    responder = Later()
    proto, transport = connect(responder)
    proto.dataReceived(b"first")
    proto.dataReceived(b"second")
    proto.dataReceived(b"q")
    assert transport.disconnecting
    assert sent(transport) == b""
    proto.connectionLost(Failure(ConnectionDone()))
    assert responder.pending[0].called  # cancelled


def test_messages_held_past_max_output_stop_the_reading():
    responder = Later()
    proto, transport = connect(responder, max_output=100)
    proto.dataReceived(b"first")
    for _ in range(20):
        proto.dataReceived(b"x" * 10)
    assert transport.producerState == "paused"
    for n in range(21):
        responder.pending[n].callback(f"a{n}")
    assert transport.producerState == "producing"
    assert len(responder.texts) == 21


def test_the_server_answering_q_sends_q_and_closes():
    responder = Later()
    proto, transport = connect(responder)
    proto.dataReceived(b"bye?")
    responder.pending[0].callback("q")
    assert sent(transport) == b"q"
    assert transport.disconnecting


def test_limits_say_goodbye_in_the_answers_place():
    clock = Clock()
    _proto, transport = connect(idle_timeout=60, clock=clock)
    clock.advance(61)
    assert sent(transport) == (
        b"!bye idle-timeout: no line from you for 60 seconds; goodbye."
    )
    assert transport.disconnecting


def test_a_newcomer_over_the_cap_hears_busy_with_no_newline():
    factory = ChatServerFactory(
        EchoResponder(), framing=RAW, admission=Admission(max_clients=1), clock=Clock()
    )
    first = factory.buildProtocol(PEER)
    first.makeConnection(StringTransport(peerAddress=PEER))
    refused = factory.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    refused.makeConnection(transport)
    assert transport.value().startswith(b"!bye busy: ")
    assert not transport.value().endswith(b"\n")
    assert transport.disconnecting


def test_half_close_gets_the_answer_owed_and_no_bye():
    responder = Later()
    proto, transport = connect(responder)
    proto.dataReceived(b"question")
    proto.readConnectionLost()
    responder.pending[0].callback("answer")
    assert sent(transport) == b"answer"
    assert transport.disconnecting


def test_shutdown_says_so_in_the_answers_place():
    responder = Later()
    proto, transport = connect(responder)
    proto.dataReceived(b"question")
    proto.factory.close_all()
    assert sent(transport) == b"!bye shutdown: the server is shutting down."


@given(st.lists(st.binary(min_size=1, max_size=1500), min_size=1, max_size=20))
def test_every_chunk_gets_exactly_one_reply_with_an_instant_responder(chunks):
    """Each message in gets one message out: an answer or an error."""
    proto, transport = connect()
    replies = 0
    for chunk in chunks:
        if chunk == b"q":
            continue
        before = proto.runner.engine.lines
        proto.dataReceived(chunk)
        out = sent(transport)
        messages = proto.runner.engine.lines - before
        assert proto.runner.engine.buffered <= 3
        if proto.runner.engine.code == "quit":  # a chunk that decodes to q (b"q\xc2")
            assert out == b"", "a raw client that quits hears nothing more"
            break
        replies += messages
        assert (out == b"") == (messages == 0)
    assert proto.runner.engine.answers <= replies


# The client library in raw framing


class FakeReactor(Clock):
    pass


def client():
    proto = ChatClientProtocol(lambda notice: None, RAW)
    transport = StringTransport()
    proto.makeConnection(transport)
    return Conversation(FakeReactor(), proto), proto, transport


def test_client_sends_bare_text_and_takes_any_reply_as_the_answer():
    conversation, proto, transport = client()
    d = conversation.say("你好")
    assert transport.value() == "你好".encode()
    proto.dataReceived(b"!bye quit: not a notice here")
    assert result_of(d) == "!bye quit: not a notice here"


def test_client_refuses_what_raw_framing_cannot_send():
    conversation, _, transport = client()
    for text, why in [("", "empty"), ("x" * 1025, "1025 bytes")]:
        d = conversation.say(text)
        failure: list[Failure] = []
        d.addErrback(failure.append)
        assert failure
        assert why in str(failure[0].value)
    assert transport.value() == b""
    assert conversation.my_turn


def test_client_closes_when_the_server_answers_q():
    # The tutorial's server sends q and does not close.
    conversation, proto, transport = client()
    d = conversation.say("hello")
    proto.dataReceived(b"q")
    failure: list[Failure] = []
    d.addErrback(failure.append)
    assert failure[0].check(ConversationEnded)
    assert transport.disconnecting


def test_client_quit_sends_a_bare_q():
    conversation, proto, transport = client()
    ended = conversation.quit()
    assert transport.value() == b"q"
    assert not has_fired(ended)
    proto.connectionLost(Failure(ConnectionDone()))
    assert result_of(ended).clean


def test_the_transcript_holds_what_was_sent_not_the_unsent_notices():
    kept = Kept()
    proto, _ = connect(transcript=kept)
    proto.dataReceived(b"hello")
    proto.dataReceived(b"q")
    assert [(e.direction, e.kind, e.text) for e in kept.entries] == [
        ("in", "line", "hello"),
        ("out", "answer", "hello"),
        ("in", "line", "q"),
    ]  # no welcome and no bye: raw framing did not send them


def test_pair_mode_works_in_raw_framing_one_reply_per_message():
    """The second of a pair does not know it should listen: its first
    message waits until its partner's first line has been given to it."""
    factory = ChatServerFactory(PairResponder(grace=0), framing=RAW, clock=Clock())
    a, b = factory.buildProtocol(PEER), factory.buildProtocol(PEER)
    a_t, b_t = StringTransport(peerAddress=PEER), StringTransport(peerAddress=PEER)
    a.makeConnection(a_t)
    b.makeConnection(b_t)
    assert (sent(a_t), sent(b_t)) == (b"", b"")
    b.dataReceived(b"hi from B")  # too early: waits its turn
    a.dataReceived(b"hello from A")
    assert sent(b_t) == b"hello from A"
    assert sent(a_t) == b"hi from B"
    a.dataReceived(b"q")
    a.connectionLost(Failure(ConnectionDone()))
    assert sent(b_t).startswith(b"!bye partner-left: client 1 ")
    assert b_t.disconnecting


def test_a_raw_client_that_reaches_a_line_server_says_so_and_ends():
    from sockchat import ConversationEnded, EchoResponder, RawFraming, connect
    from sockchat.testing import MemoryServer

    server = MemoryServer(EchoResponder())
    conversation = server.result(
        connect(server.clock, server.endpoint(), framing=RawFraming())
    )
    with pytest.raises(ConversationEnded) as ended:
        server.result(conversation.say("hello"))
    assert not ended.value.clean
    assert "this server speaks line framing" in ended.value.why
    assert "without --framing raw" in ended.value.why
