"""The operator console: oldest line first, the prompt names the client."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from sockchat import ConsoleResponder, ConversationInfo
from sockchat._console.responder import REDRAW_DELAY, OperatorInput

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


def test_client_leaving_is_shown_and_the_next_one_prompted_after_enter():
    screen, console, handles, answers = two_waiting()
    leave(console, handles[1], answers[1])
    shown = screen.take()
    # On a line of its own, not after the prompt it cut short.
    assert shown.startswith(
        '\nclient 1 (127.0.0.1:50001) left; its line "first" goes unanswered.\n'
    )
    # Not client 2's prompt yet: the operator may be typing for client 1.
    assert shown.endswith("server --> nobody (client 1 left; Enter): ")
    console.operator_says("")  # only Enter: nothing to refuse
    assert screen.take() == (
        "next, client 2 (127.0.0.1:50002): second\nserver --> client 2: "
    )
    console.operator_says("to bob")
    assert result_of(answers[2]) == "to bob"
    assert console.waiting == 0


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
    clock = Clock()
    console = ConsoleResponder(screen.write, clock)
    console.respond(ALICE, "hello")
    screen.take()
    console.interrupted()
    clock.advance(REDRAW_DELAY)
    assert screen.take() == "server --> client 1: "


# A line begun at one client's prompt never goes to another (the console
# sees a line only at Enter; see _console's docstring for the rule).


def two_waiting():
    screen = Screen()
    clock = Clock()
    console = ConsoleResponder(screen.write, clock)
    handles = {info.id: Handle(info) for info in (ALICE, BOB)}
    answers = {}
    for info, line in [(ALICE, "first"), (BOB, "second")]:
        console.started(handles[info.id])
        answers[info.id] = console.respond(info, line)
    assert screen.take().endswith("server --> client 1: ")
    console.clock = clock  # for the tests' own use
    return screen, console, handles, answers


def leave(console, handle, answer):
    """As the server does when a client disconnects: cancel, then ended."""
    answer.addErrback(lambda f: f.trap(CancelledError))
    answer.cancel()
    console.ended(handle, "connection-lost")


def test_a_line_typed_for_a_client_that_left_goes_to_nobody():
    # The issue's repro: the operator types at client 1's prompt, client 1
    # leaves, then the operator presses Enter.
    screen, console, handles, answers = two_waiting()
    leave(console, handles[1], answers[1])
    screen.take()
    console.operator_says("your new password is hunter2")
    assert not answers[2].called
    assert screen.take() == (
        'client 1 left; "your new password is hunter2" was not sent: type it '
        "again to answer client 2, or /to ID TEXT.\n"
        "next, client 2 (127.0.0.1:50002): second\n"
        "server --> client 2: "
    )
    console.operator_says("hello bob")
    assert result_of(answers[2]) == "hello bob"


def test_a_line_typed_for_a_client_whose_line_timed_out_goes_to_nobody():
    screen, console, _handles, answers = two_waiting()
    answers[1].addErrback(lambda f: f.trap(CancelledError))
    answers[1].cancel()  # --answer-timeout: no ended() follows
    console.clock.advance(0)
    shown = screen.take()
    assert "left" not in shown
    assert (
        "client 1 (127.0.0.1:50001): no answer within --answer-timeout, so its line "
        '"first" timed out; the client has its turn back.'
    ) in shown
    assert shown.endswith("server --> nobody (client 1's line timed out; Enter): ")
    console.operator_says("too late")
    assert not answers[2].called
    assert screen.take().startswith(
        'client 1\'s line timed out; "too late" was not sent'
    )


def test_a_line_entered_before_the_timeout_is_reported_is_still_refused():
    screen, console, _handles, answers = two_waiting()
    answers[1].addErrback(lambda f: f.trap(CancelledError))
    answers[1].cancel()
    console.operator_says("for alice")  # before the clock turns
    assert not answers[2].called
    assert 'client 1\'s line timed out; "for alice" was not sent' in screen.take()
    console.clock.advance(0)
    assert screen.take() == ""  # reported once


def test_a_client_that_ended_before_its_line_was_cancelled_left():
    screen, console, handles, answers = two_waiting()
    console.ended(handles[1], "connection-lost")
    answers[1].addErrback(lambda f: f.trap(CancelledError))
    answers[1].cancel()
    assert "client 1 (127.0.0.1:50001) left" in screen.take()
    console.operator_says("x")
    assert not answers[2].called


def test_commands_still_run_after_the_prompted_client_left():
    screen, console, handles, answers = two_waiting()
    leave(console, handles[1], answers[1])
    screen.take()
    console.operator_says("/to 2 straight to bob")
    assert result_of(answers[2]) == "straight to bob"


def test_a_client_further_back_leaving_changes_nothing_for_the_prompt():
    screen, console, handles, answers = two_waiting()
    leave(console, handles[2], answers[2])
    shown = screen.take()
    assert "client 2 (127.0.0.1:50002) left" in shown
    assert "Enter" not in shown
    assert shown.endswith("server --> client 1: ")
    console.operator_says("to alice")
    assert result_of(answers[1]) == "to alice"


def test_newcomers_wait_until_the_line_begun_for_the_lost_client_is_entered():
    screen, console, handles, answers = two_waiting()
    leave(console, handles[1], answers[1])
    leave(console, handles[2], answers[2])
    carol = console.respond(CAROL, "hi, I am new")
    shown = screen.take()
    assert shown.endswith("server --> nobody (client 1 left; Enter): ")
    console.operator_says("meant for alice")
    assert not carol.called
    assert "type it again to answer client 3" in screen.take()


# Long lines, log lines, shutdown.


def test_a_long_client_line_is_shown_as_an_excerpt_with_its_length():
    screen = Screen()
    console = ConsoleResponder(screen.write, Clock())
    console.started(Handle(ALICE))
    console.respond(ALICE, "x" * 60_000)
    shown = screen.take()
    assert len(shown) < 300
    assert "x" * 200 + "… (60,000 characters)" in shown
    console.operator_says("/list")
    shown = screen.take()
    assert len(shown) < 400
    assert '"' + "x" * 200 + '…" (60,000 characters)' in shown


def test_log_lines_start_on_a_fresh_line_and_the_prompt_comes_back_once():
    screen = Screen()
    clock = Clock()
    console = ConsoleResponder(screen.write, clock)
    console.respond(ALICE, "hello")
    screen.take()
    for line in ["log line 1\n", "log line 2\n"]:  # as twistd prints them
        console.interrupting()
        screen.write(line)
        console.interrupted()
    assert screen.take() == "\nlog line 1\nlog line 2\n"
    clock.advance(REDRAW_DELAY)
    assert screen.take() == "server --> client 1: "


def test_no_prompt_once_shutdown_has_begun():
    screen = Screen()
    clock = Clock()
    console = ConsoleResponder(screen.write, clock)
    console.started(Handle(ALICE))
    answer = console.respond(ALICE, "hello")
    screen.take()
    console.close()
    assert screen.take() == (
        "\nunanswered at shutdown (1):\n  client 1 (127.0.0.1:50001): hello\n"
    )
    console.interrupting()
    console.interrupted()
    console.respond(BOB, "late")
    answer.addErrback(lambda f: f.trap(CancelledError))
    answer.cancel()
    clock.advance(REDRAW_DELAY)
    assert "server -->" not in screen.take()


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


def test_a_timed_out_client_that_speaks_again_is_reported_in_order():
    screen, console, _handles, answers = two_waiting()
    answers[1].addErrback(lambda f: f.trap(CancelledError))
    answers[1].cancel()  # timed out; before the report, it speaks again
    again = console.respond(ALICE, "second try")
    shown = screen.take()
    assert shown.index("timed out") < shown.index("second try")
    console.clock.advance(0)
    assert screen.take() == ""  # reported once
    assert not again.called
