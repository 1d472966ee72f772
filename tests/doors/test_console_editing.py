"""The operator console at a terminal read key by key: the screen draws
the prompt and what the operator types, in memory."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from sockchat import ConsoleResponder, ConversationInfo
from sockchat._console.lineedit import LineEditor
from sockchat._console.responder import REDRAW_DELAY, OperatorInput
from sockchat._console.screen import Screen, columns_of
from sockchat._core.render import safe_text

from conftest import result_of

ALICE = ConversationInfo(1, "127.0.0.1:50001")
BOB = ConversationInfo(2, "127.0.0.1:50002")
ERASE = "\r\x1b[K"


class Handle:
    """An IConversation the console can kick."""

    def __init__(self, info: ConversationInfo) -> None:
        self.info = info

    def notify(self, code: str, text: str) -> None:
        raise AssertionError("the console sends no notices")

    def end(self, code: str, text: str) -> None:
        raise AssertionError("not kicked in these tests")


class Terminal:
    """What was written, and the keys typed through OperatorInput."""

    def __init__(self, columns: int = 80) -> None:
        self.text = ""
        self.clock = Clock()
        self.console = ConsoleResponder(
            self.write, self.clock, editing=True, columns=lambda: columns
        )
        self.closed: list[bool] = []
        self.input = OperatorInput(self.console, lambda: self.closed.append(True))
        self.handles: dict[int, Handle] = {}

    def write(self, text: str) -> None:
        self.text += text

    def take(self) -> str:
        text, self.text = self.text, ""
        return text

    def type(self, keys: str | bytes) -> None:
        self.input.dataReceived(keys.encode() if isinstance(keys, str) else keys)

    def says(self, info: ConversationInfo, line: str):
        if info.id not in self.handles:
            self.handles[info.id] = Handle(info)
            self.console.started(self.handles[info.id])
        return self.console.respond(info, line)

    def leaves(self, info: ConversationInfo, answer) -> None:
        answer.addErrback(lambda f: f.trap(CancelledError))
        answer.cancel()
        self.console.ended(self.handles[info.id], "connection-lost")


def test_what_is_typed_is_drawn_after_the_prompt():
    term = Terminal()
    term.says(ALICE, "hello")
    assert term.take().endswith("server --> client 1: ")
    term.type("hi")
    assert term.take() == ERASE + "server --> client 1: hi"
    term.type("\x7f")
    assert term.take() == ERASE + "server --> client 1: h"
    term.type(b"\x1b[D")  # an arrow changes nothing, so nothing is drawn
    assert term.take() == ""


def test_a_client_line_erases_the_prompt_and_the_prompt_comes_back_with_the_typing():
    term = Terminal()
    first = term.says(ALICE, "hello")
    term.type("half typ")
    term.take()
    term.says(BOB, "me too")
    assert term.take() == (
        ERASE
        + "client 2 (127.0.0.1:50002): me too  [1 waiting before it]\n"
        + ERASE
        + "server --> client 1: half typ"
    )
    term.type("ed\r")
    assert result_of(first) == "half typed"
    shown = term.take()
    assert shown.startswith(ERASE + "server --> client 1: half typed\n")
    assert shown.endswith("server --> client 2: ")


def test_log_lines_erase_the_prompt_and_it_comes_back_once_with_the_typing():
    term = Terminal()
    term.says(ALICE, "hello")
    term.type("half typ")
    term.take()
    for line in ["log line 1\n", "log line 2\n"]:  # as twistd prints them
        term.console.interrupting()
        term.write(line)
        term.console.interrupted()
    assert term.take() == ERASE + "log line 1\nlog line 2\n"
    term.clock.advance(REDRAW_DELAY)
    assert term.take() == ERASE + "server --> client 1: half typ"
    term.clock.advance(REDRAW_DELAY)
    assert term.take() == ""


def test_a_key_before_the_redraw_draws_the_prompt_at_once():
    term = Terminal()
    term.says(ALICE, "hello")
    term.console.interrupting()
    term.console.interrupted()
    term.take()
    term.type("x")
    assert term.take() == ERASE + "server --> client 1: x"
    term.clock.advance(REDRAW_DELAY)
    assert term.take() == ""


def test_a_paste_of_two_lines_answers_two_clients_in_turn():
    term = Terminal()
    first, second = term.says(ALICE, "one"), term.says(BOB, "two")
    term.take()
    term.type("for alice\nfor bob\n")
    assert result_of(first) == "for alice"
    assert result_of(second) == "for bob"
    shown = term.take()
    assert "server --> client 1: for alice\n" in shown
    assert "server --> client 2: for bob\n" in shown


def test_a_line_begun_for_a_client_that_left_goes_to_nobody_and_stays_shown():
    term = Terminal()
    first, second = term.says(ALICE, "one"), term.says(BOB, "two")
    term.type("your new password is hunter2")
    term.take()
    term.leaves(ALICE, first)
    shown = term.take()
    assert shown.endswith(
        ERASE + "server --> nobody (client 1 left; Enter): your new password is hunter2"
    )
    term.type("\r")
    assert not second.called
    assert 'client 1 left; "your new password is hunter2" was not sent' in term.take()
    term.type("for bob\r")
    assert result_of(second) == "for bob"


def test_with_nothing_typed_a_client_leaving_hands_the_prompt_to_the_next():
    # The console sees the first key: with none typed, no line was begun,
    # so no "nobody" prompt and no extra Enter.
    term = Terminal()
    first, second = term.says(ALICE, "one"), term.says(BOB, "two")
    term.take()
    term.leaves(ALICE, first)
    shown = term.take()
    assert "nobody" not in shown
    assert shown.endswith("server --> client 2: ")
    term.type("for bob\r")
    assert result_of(second) == "for bob"


def test_a_line_begun_when_nobody_waited_goes_to_nobody():
    term = Terminal()
    term.type("meant for whoever")
    assert term.take() == ERASE + "server --> nobody: meant for whoever"
    answer = term.says(ALICE, "hello")
    assert term.take().endswith(
        ERASE
        + "server --> nobody (begun before client 1 spoke; Enter): meant for whoever"
    )
    term.type("\r")
    assert not answer.called
    shown = term.take()
    assert (
        'begun before client 1 spoke; "meant for whoever" was not sent: type it '
        "again to answer client 1, or /to ID TEXT."
    ) in shown
    assert shown.endswith("server --> client 1: ")
    term.type("for alice\r")
    assert result_of(answer) == "for alice"


def test_the_prompt_can_be_asked_for():
    console = ConsoleResponder(lambda text: None, Clock())
    assert console.prompt_text() is None
    assert console.prompt_text(typing=True) == "server --> nobody: "
    console.respond(ALICE, "hello")
    assert console.prompt_text() == "server --> client 1: "
    console.close()
    assert console.prompt_text(typing=True) is None


def test_commands_typed_when_nobody_waits_run():
    term = Terminal()
    term.says(ALICE, "hello")
    term.type("/list\r")
    assert "1 connected, 1 waiting for you" in term.take()


def test_a_wide_line_scrolls_sideways_and_wide_characters_count_twice():
    term = Terminal(columns=40)
    term.says(ALICE, "hello")
    prompt = "server --> client 1: "
    term.take()
    term.type("你好" * 20)
    drawn = term.take().removeprefix(ERASE)
    assert drawn.startswith(prompt + "<")
    assert columns_of(drawn) <= 39
    assert drawn.endswith("你好")
    assert columns_of("你好") == 4
    assert columns_of("e\u0301") == 1


@pytest.mark.parametrize(
    ("text", "columns"),
    [
        ("❤️", 2),  # with VS16, terminals draw the emoji: two columns
        ("👨\u200d👩\u200d👧\u200d👦", 2),  # one family, not four people
        ("👍🏽", 2),
        ("🇫🇷", 2),
        ("❤", 1),  # without VS16: text presentation
        ("ok👍🏽你", 6),
    ],
)
def test_emoji_sequences_take_the_columns_terminals_give_them(text, columns):
    assert columns_of(text) == columns


def test_a_scrolled_line_never_cuts_an_emoji_sequence_in_half():
    family = "👨\u200d👩\u200d👧\u200d👦"
    term = Terminal(columns=40)
    term.says(ALICE, "hello")
    term.take()
    term.type(family * 20)
    drawn = term.take().removeprefix(ERASE)
    shown = drawn.split("<", 1)[1]
    assert shown == family * 8  # 16 of the 17 columns left after the "<"
    assert columns_of(drawn) <= 39


def test_peer_and_operator_text_is_drawn_safely():
    term = Terminal()
    term.says(ALICE, "hello")
    term.take()
    term.type("\u202eevil")  # a bidi override, pasted
    assert term.take() == ERASE + "server --> client 1: \\u202eevil"
    term.type("\r")  # the line as entered stays on screen, escaped too
    assert term.take().startswith(ERASE + "server --> client 1: \\u202eevil\n")


def test_ctrl_d_on_an_empty_line_closes_once():
    term = Terminal()
    term.type("abc\x04")
    assert term.closed == []
    term.type("\x15\x04")
    assert term.closed == [True]
    term.input.connectionLost(Failure(ConnectionDone()))
    assert term.closed == [True]


def test_no_prompt_after_the_end_of_input():
    term = Terminal()
    term.type("\x04")
    assert term.closed == [True]
    term.says(ALICE, "hello")  # before the server has stopped
    shown = term.take()
    assert "client 1 (127.0.0.1:50001): hello" in shown
    assert "server -->" not in shown


def test_keys_after_the_screen_closed_are_dropped():
    seen = []
    screen = Screen(lambda text: None, lambda typing: "> ", editor=LineEditor())

    def handle(event):
        seen.append(event)
        screen.close()  # as a console that stops on this line would

    screen.keys(b"first\rsecond\r", handle)
    assert [e.text for e in seen] == ["first"]
    screen.keys(b"third\r", handle)
    assert len(seen) == 1


def test_a_line_too_long_is_not_sent_and_bad_bytes_are_said_and_dropped():
    term = Terminal()
    answer = term.says(ALICE, "hello")
    term.type(b"ab\xffc")
    shown = term.take()
    assert "the terminal sent bytes that are not UTF-8; they were dropped" in shown
    assert shown.endswith("server --> client 1: abc")
    term.type("x" * 70_000 + "\r")
    assert not answer.called
    assert "your line was not sent: it has 70003 bytes, over the 65536" in term.take()


def test_no_prompt_once_shutdown_has_begun_and_the_typing_is_said_unsent():
    term = Terminal()
    term.says(ALICE, "hello")
    term.type("half typ")
    term.take()
    term.console.close()
    assert term.take() == (
        "\n"
        'you had typed "half typ" without Enter; it was not sent.\n'
        "unanswered at shutdown (1):\n"
        "  client 1 (127.0.0.1:50001): hello\n"
    )
    term.type("more\r")
    term.console.interrupted()
    term.clock.advance(REDRAW_DELAY)
    assert term.take() == ""


def test_a_screen_in_line_mode_takes_no_keys():
    screen = Screen(lambda text: None, lambda typing: None)
    assert not screen.editing
    assert screen.typed is None
    with pytest.raises(ValueError, match="needs a screen that edits"):
        screen.keys(b"x", lambda event: None)


def test_the_screen_alone_with_a_prompt_of_its_own():
    # As another program (a remote console) would use it.
    written = []
    prompt = {"now": "you> "}
    entered = []
    screen = Screen(
        written.append, lambda typing: prompt["now"], Clock(), editor=LineEditor()
    )
    screen.refresh()
    screen.keys(b"hel", entered.append)
    screen.print("someone: hi\n")
    screen.refresh()
    prompt["now"] = "them> "
    screen.refresh()
    assert "".join(written) == (
        ERASE + "you> " + ERASE + "you> hel" + ERASE + "someone: hi\n"
        + ERASE + "you> hel" + ERASE + "them> hel"
    )  # fmt: skip
    assert screen.typed == "hel"


#: Keys that mean something to the editor.
SPECIAL = [b"\r", b"\x7f", b"\x15", b"\x17", b"\x04", b"\x1b[A", b"\x1b[200~"]
SPECIAL += [b"\x1b[201~", "你好".encode(), b"e\xcc\x81", b"word "]
#: Keys to type: any bytes, and the ones that mean something.
KEY = st.one_of(st.binary(max_size=12), st.sampled_from(SPECIAL))
KEYS = st.lists(KEY, max_size=25)


@given(KEYS, st.integers(10, 120))
def test_the_prompt_line_is_always_the_prompt_and_what_is_typed(chunks, columns):
    written: list[str] = []
    editor = LineEditor()
    screen = Screen(
        written.append,
        lambda typing: "> ",
        Clock(),
        editor=editor,
        columns=lambda: columns,
    )
    screen.refresh()
    for chunk in chunks:
        screen.keys(chunk, lambda event: None)
        out = "".join(written)
        # Nothing the operator types reaches the terminal as a control.
        assert "\x1b" not in out.replace(ERASE, "")
        assert "\r" not in out.replace(ERASE, "")
        if editor.ended:
            break
        last = out.rsplit(ERASE, 1)[1]
        typed = safe_text(editor.text)
        if columns_of(typed) <= columns - 3:
            assert last == "> " + typed
        else:  # scrolled: the end of it, within the width
            assert last.startswith("> <")
            assert typed.endswith(last[3:])
            assert columns_of(last) <= columns - 1
