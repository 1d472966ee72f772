"""Turn-taking state machines, driven directly: no reactor, no sockets."""

from __future__ import annotations

import pytest

from sockchat._codec import InvalidUtf8, LineTooLong
from sockchat._turns import (
    OUT_OF_TURN,
    Answered,
    ClientTurns,
    Deliver,
    Ended,
    Noticed,
    NotYourTurn,
    Refused,
    ServerTurns,
    Turn,
)
from sockchat._wire import Notice, NoticeKind


def test_client_speaks_first_and_each_line_gets_one_answer():
    turns = ServerTurns()
    assert turns.receive("hello") == Deliver(1, "hello")
    assert turns.turn is Turn.SERVER
    assert turns.answered("hi") is False
    assert turns.turn is Turn.CLIENT
    assert turns.receive("again") == Deliver(2, "again")


def test_out_of_turn_line_gets_a_notice_that_identifies_it():
    turns = ServerTurns()
    turns.receive("first")
    notice = turns.receive("second")
    assert isinstance(notice, Notice)
    assert (notice.kind, notice.code) == (NoticeKind.ERROR, OUT_OF_TURN)
    assert 'line 2 "second"' in notice.text
    assert "line 1" in notice.text
    assert turns.turn is Turn.SERVER  # the first line is still owed its answer


def test_out_of_turn_excerpt_is_short_and_safe():
    turns = ServerTurns()
    turns.receive("first")
    notice = turns.receive("\x1b[2J" + "x" * 100)
    assert isinstance(notice, Notice)
    assert "\x1b" not in notice.text
    assert "\\x1b[2J" in notice.text
    assert "x" * 50 not in notice.text


def test_q_ends_the_conversation_even_out_of_turn():
    turns = ServerTurns()
    turns.receive("first")
    bye = turns.receive("q")
    assert isinstance(bye, Notice)
    assert bye.kind is NoticeKind.BYE
    assert turns.turn is Turn.ENDED
    assert turns.receive("more") is None


def test_answering_q_ends_the_conversation():
    turns = ServerTurns()
    turns.receive("hello")
    assert turns.answered("q") is True
    assert turns.turn is Turn.ENDED


@pytest.mark.parametrize(
    ("item", "code"),
    [(LineTooLong(70000, 65536), "line-too-long"), (InvalidUtf8("x"), "invalid-utf8")],
)
def test_refused_lines_leave_the_turn_with_the_client(item, code):
    turns = ServerTurns()
    notice = turns.receive(item)
    assert isinstance(notice, Notice)
    assert notice.code == code
    assert "your turn again" in notice.text
    assert turns.turn is Turn.CLIENT
    assert turns.receive("next") == Deliver(2, "next")


def test_too_long_names_the_limit():
    notice = ServerTurns().receive(LineTooLong(70000, 65536))
    assert isinstance(notice, Notice)
    assert "65536-byte limit" in notice.text
    assert "70000 bytes" in notice.text


def test_failed_answer_gives_the_turn_back():
    turns = ServerTurns()
    turns.receive("hello")
    notice = turns.failed("ZeroDivisionError: boom")
    assert notice.code == "responder-failed"
    assert "line 1" in notice.text
    assert turns.turn is Turn.CLIENT


def test_answer_without_a_pending_line_is_a_bug():
    with pytest.raises(NotYourTurn):
        ServerTurns().answered("unasked")


def test_client_waits_for_each_answer():
    turns = ClientTurns()
    assert turns.say("hi") == b"hi\n"
    with pytest.raises(NotYourTurn, match="wait for the answer"):
        turns.say("again")
    assert turns.receive("hello") == Answered("hello")
    assert turns.say("again") == b"again\n"


def test_client_may_always_say_q_until_the_end():
    turns = ClientTurns()
    turns.say("waiting for this")
    assert turns.say("q") == b"q\n"
    assert turns.turn is Turn.ENDED
    with pytest.raises(NotYourTurn, match="ended"):
        turns.say("q")


def test_client_unstuffs_answers_and_sees_notices():
    turns = ClientTurns()
    assert turns.receive("!info welcome: hi") == Noticed(
        Notice(NoticeKind.INFO, "welcome", "hi")
    )
    turns.say("x")
    assert turns.receive("!!info welcome: hi") == Answered("!info welcome: hi")


def test_error_notice_refuses_the_waiting_line_except_out_of_turn():
    turns = ClientTurns()
    turns.say("x")
    assert isinstance(turns.receive("!error out-of-turn: line 2"), Noticed)
    assert turns.turn is Turn.SERVER
    assert isinstance(turns.receive("!error line-too-long: line 1"), Refused)
    assert turns.turn is Turn.CLIENT


def test_server_q_and_bye_end_the_conversation():
    turns = ClientTurns()
    turns.say("x")
    assert turns.receive("q") == Ended(None)
    with pytest.raises(NotYourTurn, match="ended"):
        turns.say("y")
    other = ClientTurns()
    assert isinstance(
        other.receive("!bye shutdown: the server is shutting down."), Ended
    )


def test_unexpected_answer_is_reported_not_dropped():
    event = ClientTurns().receive("nobody asked")
    assert isinstance(event, Noticed)
    assert event.notice.code == "unexpected-answer"
    assert "nobody asked" in event.notice.text


def test_a_conversation_that_listens_owes_the_first_line():
    turns = ServerTurns()
    turns.listen()
    assert turns.turn is Turn.SERVER
    refused = turns.receive("me first")
    assert isinstance(refused, Notice)
    assert refused.code == OUT_OF_TURN
    assert "before the other side's first line" in refused.text
    assert turns.answered("the opening") is False
    assert turns.turn is Turn.CLIENT
    with pytest.raises(NotYourTurn):
        turns.listen()  # only at the start


def test_an_opening_that_cannot_be_given_hands_the_turn_over():
    turns = ServerTurns()
    turns.listen()
    notice = turns.failed("it broke")
    assert notice.code == "responder-failed"
    assert (
        notice.text
        == "the first line could not be given (it broke). It is your turn now."
    )
    assert turns.turn is Turn.CLIENT


def test_the_client_waits_after_a_listen_notice():
    turns = ClientTurns()
    event = turns.receive("!info listen: the other side speaks first")
    assert isinstance(event, Noticed)
    assert turns.turn is Turn.SERVER
    with pytest.raises(NotYourTurn):
        turns.say("hello")
    assert turns.receive("their first line") == Answered("their first line")
    assert turns.turn is Turn.CLIENT
