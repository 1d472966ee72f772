"""The operator console: oldest line first, the prompt names the client."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from sockchat import ConsoleResponder, ConversationInfo
from sockchat._console import OperatorInput

from conftest import result_of

ALICE = ConversationInfo(1, "127.0.0.1:50001")
BOB = ConversationInfo(2, "127.0.0.1:50002")


class Screen:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def take(self) -> str:
        text, self.text = self.text, ""
        return text


def test_line_is_shown_with_its_client_then_the_prompt():
    screen = Screen()
    console = ConsoleResponder(screen.write)
    answer = console.respond(ALICE, "hello")
    assert screen.take() == "client 1 (127.0.0.1:50001): hello\nserver --> client 1: "
    console.operator_says("hi there")
    assert result_of(answer) == "hi there"


def test_oldest_waiting_line_is_answered_first_and_the_prompt_says_to_whom():
    screen = Screen()
    console = ConsoleResponder(screen.write)
    first = console.respond(ALICE, "first")
    second = console.respond(BOB, "second")
    shown = screen.take()
    assert "client 2 (127.0.0.1:50002): second  [1 waiting before it]" in shown
    assert shown.endswith("server --> client 1: ")
    console.operator_says("to alice")
    assert result_of(first) == "to alice"
    assert not second.called
    shown = screen.take()
    assert "next, client 2 (127.0.0.1:50002): second" in shown
    assert shown.endswith("server --> client 2: ")
    console.operator_says("to bob")
    assert result_of(second) == "to bob"
    assert console.waiting == 0


def test_client_text_is_escaped_on_the_console():
    screen = Screen()
    console = ConsoleResponder(screen.write)
    console.respond(ALICE, "\x1b]0;pwned\x07\rfake\u202e")
    shown = screen.take()
    assert "\x1b" not in shown
    assert "\r" not in shown
    assert "\u202e" not in shown
    assert "\\x1b]0;pwned\\x07\\rfake\\u202e" in shown


def test_typing_with_nobody_waiting_is_not_silently_dropped():
    screen = Screen()
    console = ConsoleResponder(screen.write)
    console.operator_says("anyone?")
    assert 'nobody is waiting for an answer; "anyone?" was not sent.' in screen.take()


def test_client_leaving_is_shown_and_the_next_one_prompted():
    screen = Screen()
    console = ConsoleResponder(screen.write)
    first = console.respond(ALICE, "bye soon")
    console.respond(BOB, "still here")
    screen.take()
    first.cancel()
    shown = screen.take()
    assert (
        'client 1 (127.0.0.1:50001) left; its line "bye soon" goes unanswered.' in shown
    )
    assert shown.endswith("server --> client 2: ")
    assert console.waiting == 1


def test_q_from_the_operator_is_the_answer_that_ends_that_conversation():
    screen = Screen()
    console = ConsoleResponder(screen.write)
    answer = console.respond(ALICE, "hello")
    console.operator_says("q")
    assert result_of(answer) == "q"
    assert "you ended the conversation with client 1" in screen.take()


def test_operator_input_feeds_lines_and_reports_bad_ones():
    screen = Screen()
    console = ConsoleResponder(screen.write)
    closed = []
    operator = OperatorInput(console, lambda: closed.append(True))
    answer = console.respond(ALICE, "hello")
    operator.dataReceived(b"\xff\n")
    assert "not valid UTF-8" in screen.take()
    assert not answer.called
    operator.dataReceived("你好\r\n".encode())
    assert result_of(answer) == "你好"
    operator.connectionLost(Failure(ConnectionDone()))
    assert closed == [True]


def test_log_lines_in_between_repeat_the_prompt():
    screen = Screen()
    console = ConsoleResponder(screen.write)
    console.respond(ALICE, "hello")
    screen.take()
    console.interrupted()
    assert screen.take() == "server --> client 1: "
