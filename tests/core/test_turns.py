"""Turn-taking state machines, driven directly: no reactor, no sockets."""

from __future__ import annotations

import pytest

from sockchat._core.turns import (
    Answered,
    ClientTurn,
    ClientTurns,
    Ended,
    Noticed,
    NotYourTurn,
    Refused,
)
from sockchat._core.wire import Notice, NoticeKind


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
    assert turns.turn is ClientTurn.ENDED
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
    assert turns.turn is ClientTurn.SERVER
    assert isinstance(turns.receive("!error line-too-long: line 1"), Refused)
    assert turns.turn is ClientTurn.CLIENT


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


def test_the_client_waits_after_a_listen_notice():
    turns = ClientTurns()
    event = turns.receive("!info listen: the other side speaks first")
    assert isinstance(event, Noticed)
    assert turns.turn is ClientTurn.SERVER
    with pytest.raises(NotYourTurn):
        turns.say("hello")
    assert turns.receive("their first line") == Answered("their first line")
    assert turns.turn is ClientTurn.CLIENT
