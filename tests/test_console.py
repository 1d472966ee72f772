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
    # On a line of its own, not after the prompt it cut short.
    assert shown.startswith(
        '\nclient 1 (127.0.0.1:50001) left; its line "bye soon" goes unanswered.\n'
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


# Commands: /list, /to, /kick, /help.


class Handle:
    """An IConversation the console can kick."""

    def __init__(self, info: ConversationInfo) -> None:
        self.info = info
        self.ended: tuple[str, str] | None = None

    def notify(self, code: str, text: str) -> None:
        raise AssertionError("the console sends no notices")

    def end(self, code: str, text: str) -> None:
        self.ended = (code, text)


CAROL = ConversationInfo(3, "[::1]:50003")


def three_waiting():
    screen = Screen()
    console = ConsoleResponder(screen.write)
    handles = {}
    answers = {}
    for info, line in [(ALICE, "first"), (BOB, "second"), (CAROL, "third\x1b[2J")]:
        handles[info.id] = Handle(info)
        console.started(handles[info.id])
        answers[info.id] = console.respond(info, line)
    screen.take()
    return screen, console, handles, answers


def test_list_shows_every_client_its_place_and_last_line_safely():
    screen, console, _handles, _ = three_waiting()
    dave = ConversationInfo(4, "127.0.0.1:50004")
    console.started(Handle(dave))
    console.operator_says("/list")
    assert screen.take() == (
        "4 connected, 3 waiting for you:\n"
        '  client 1 (127.0.0.1:50001) waiting #1: "first"\n'
        '  client 2 (127.0.0.1:50002) waiting #2: "second"\n'
        '  client 3 ([::1]:50003) waiting #3: "third\\x1b[2J"\n'
        "  client 4 (127.0.0.1:50004) their turn: (nothing yet)\n"
        "server --> client 1: "
    )


def test_to_answers_one_client_out_of_order():
    screen, console, _, answers = three_waiting()
    console.operator_says("/to 2 you first, bob")
    assert result_of(answers[2]) == "you first, bob"
    assert not answers[1].called
    assert not answers[3].called
    console.operator_says("and now alice")
    assert result_of(answers[1]) == "and now alice"
    assert "client 3" in screen.take()  # the next prompt


def test_to_a_client_that_is_not_waiting_sends_nothing():
    screen, console, _, answers = three_waiting()
    console.operator_says("/to 1 hi")
    screen.take()
    console.operator_says("/to 1 again")
    assert "client 1 is not waiting for an answer; nothing was sent" in screen.take()
    console.operator_says("/to 9 hi")
    assert "there is no client 9" in screen.take()
    console.operator_says("/to two hi")
    assert "usage: /to ID TEXT" in screen.take()
    console.operator_says("/to 2")
    assert "usage: /to ID TEXT (nothing was sent to client 2)" in screen.take()
    assert not answers[2].called


def test_kick_ends_a_conversation_without_answering_it():
    screen, console, handles, answers = three_waiting()
    console.operator_says("/kick 2")
    assert handles[2].ended == ("kicked", "the operator ended this conversation.")
    assert "(you disconnected client 2)" in screen.take()
    console.ended(handles[2], "kicked")
    answers[2].cancel()  # the server cancels it when the connection closes
    assert "left" not in screen.take()  # no second report
    console.operator_says("/list")
    assert "client 2" not in screen.take()
    console.operator_says("/kick 2")
    assert "there is no client 2" in screen.take()


def test_help_lists_the_commands_and_unknown_ones_are_refused():
    screen, console, _, answers = three_waiting()
    console.operator_says("/help")
    shown = screen.take()
    for command in ["/list", "/to ID TEXT", "/kick ID", "/help", "//TEXT"]:
        assert command in shown
    console.operator_says("/frobnicate now")
    assert "unknown command /frobnicate; /help lists the commands" in screen.take()
    assert not any(a.called for a in answers.values())


def test_a_double_slash_answers_with_a_line_that_starts_with_a_slash():
    _, console, _, answers = three_waiting()
    console.operator_says("//etc/hosts is the file")
    assert result_of(answers[1]) == "/etc/hosts is the file"
