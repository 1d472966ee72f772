"""The line editor, without a terminal: bytes in, events and the line out."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockchat._console.lineedit import (
    EndOfInput,
    Entered,
    LineEditor,
    NotUtf8,
    TooLong,
)
from sockchat._core.codec import LineTooLong

ESC = "\x1b"
UP, DOWN, RIGHT, LEFT = ESC + "[A", ESC + "[B", ESC + "[C", ESC + "[D"
PASTE_START, PASTE_END = ESC + "[200~", ESC + "[201~"


def typed(keys: str | bytes, editor: LineEditor | None = None):
    """The events and the line after *keys*."""
    editor = editor or LineEditor()
    data = keys.encode() if isinstance(keys, str) else keys
    return editor.events(data), editor.text


def test_printable_text_is_the_line_and_enter_enters_it():
    assert typed("hello, world") == ([], "hello, world")
    assert typed("hello, world\r") == ([Entered("hello, world")], "")


def test_chinese_emoji_and_accents_are_typed_even_one_byte_at_a_time():
    editor = LineEditor()
    for byte in "你好 👋 café".encode():
        assert editor.events(bytes([byte])) == []
    assert editor.text == "你好 👋 café"


def test_cr_lf_and_cr_lf_are_each_one_enter():
    assert typed("a\rb\nc\r\nd\r\re")[0] == [
        Entered("a"),
        Entered("b"),
        Entered("c"),
        Entered("d"),
        Entered(""),
    ]
    # A CR LF split across two reads is still one Enter.
    editor = LineEditor()
    assert editor.events(b"a\r") == [Entered("a")]
    assert editor.events(b"\nb\r") == [Entered("b")]


def test_backspace_and_del_erase_the_last_character_with_its_marks():
    assert typed("abc\x7f")[1] == "ab"
    assert typed("abc\x08\x08")[1] == "a"
    assert typed("你好\x7f")[1] == "你"
    assert typed("cafe\u0301\x7f")[1] == "caf"  # e and its acute accent go
    assert typed("\x7f\x7fx")[1] == "x"  # nothing to erase: nothing happens


def test_ctrl_u_kills_the_line_and_ctrl_w_the_last_word():
    assert typed("your new password\x15")[1] == ""
    assert typed("your new password\x17")[1] == "your new "
    assert typed("your new password  \x17")[1] == "your new "
    assert typed("your new password\x17\x17")[1] == "your "
    assert typed("\x17")[1] == ""


def test_ctrl_d_on_an_empty_line_ends_the_input_and_nothing_after_counts():
    editor = LineEditor()
    assert editor.events(b"abc\x04") == []  # not on an empty line
    assert editor.text == "abc"
    assert editor.events(b"\x15\x04more\r") == [EndOfInput()]
    assert editor.ended
    assert editor.events(b"even more\r") == []
    assert editor.text == ""


def test_arrows_and_other_escape_sequences_are_never_inserted():
    keys = (
        "a" + UP + DOWN + LEFT + RIGHT + "b"
        + ESC + "[1;5C"  # Ctrl-Right
        + ESC + "[3~"  # Delete
        + ESC + "OP"  # F1
        + ESC + "x"  # Alt-x
        + ESC + ESC + "[A"  # Alt-Up
        + "c"
    )  # fmt: skip
    assert typed(keys) == ([], "abc")


def test_a_lone_escape_then_enter_still_enters_the_line():
    assert typed("abc" + ESC + "\r") == ([Entered("abc")], "")
    assert typed("abc" + ESC + "[" + "\r")[0] == [Entered("abc")]
    assert typed("abc" + ESC + "O" + "\x7f")[1] == "ab"


def test_a_paste_of_several_lines_is_several_enters():
    events, text = typed("first line\nsecond line\nthird, half")
    assert events == [Entered("first line"), Entered("second line")]
    assert text == "third, half"


def test_a_bracketed_paste_edits_nothing_but_its_newlines_are_enters():
    keys = PASTE_START + "one\r\ntwo\x04\x15\x7f\x17\tthree" + PASTE_END + "\x7f"
    assert typed(keys) == ([Entered("one")], "two\tthre")


def test_the_line_is_read_event_by_event():
    # Each event is pulled in turn, and the line is what it was then: a
    # console handles the first line before the next one is begun.
    editor = LineEditor()
    editor.receive(b"to alice\rto b")
    assert editor.next_event() == Entered("to alice")
    assert editor.text == ""
    assert editor.next_event() is None
    assert editor.text == "to b"


def test_bytes_that_are_not_utf8_are_dropped_and_said_once_per_line():
    assert typed(b"a\xffb\xc3(c\xed\xa0\x80d") == ([NotUtf8()], "ab(cd")
    assert typed(b"\xff\r\xff")[0] == [NotUtf8(), Entered(""), NotUtf8()]


def test_a_line_over_the_limit_is_not_entered():
    editor = LineEditor(max_line=10)
    assert editor.events(b"0123456789abc") == []
    assert editor.text == "0123456789"
    assert editor.events(b"\r") == [TooLong(LineTooLong(13, 10))]
    assert editor.events("你好\r".encode()) == [Entered("你好")]
    # A character that would cross the limit does not fit either.
    editor = LineEditor(max_line=4)
    assert editor.events("ab你\r".encode()) == [TooLong(LineTooLong(5, 4))]
    assert editor.events(b"abcde\x15ok\r") == [Entered("ok")]  # killed: fine


def test_the_limit_must_be_positive():
    with pytest.raises(ValueError, match="at least 1 byte, not 0"):
        LineEditor(max_line=0)


# Properties.

printable = st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), max_size=40
).filter(lambda t: "\x1b" not in t)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=False)]


@given(st.lists(printable, max_size=5), printable, st.lists(st.integers(0, 400)))
def test_typed_lines_come_out_whole_however_the_reads_split_them(lines, rest, cuts):
    data = "".join(line + "\r" for line in lines).encode() + rest.encode()
    editor = LineEditor()
    events = []
    for chunk in chunks(data, cuts):
        events += editor.events(chunk)
    assert events == [Entered(line) for line in lines]
    assert editor.text == rest


@given(st.binary(max_size=200), st.lists(st.integers(0, 400)))
def test_any_bytes_in_any_reads_give_the_same_events_and_a_safe_line(data, cuts):
    whole = LineEditor(max_line=50)
    expected = whole.events(data)
    split = LineEditor(max_line=50)
    events = []
    for chunk in chunks(data, cuts):
        events += split.events(chunk)
    assert events == expected
    assert split.text == whole.text
    # Control characters other than Tab never get into the line.
    line = whole.text
    assert not any((ord(c) < 0x20 and c != "\t") or c == "\x7f" for c in line)
    assert len(line.encode()) <= 50
    for event in events:
        if isinstance(event, Entered):
            assert "\x1b" not in event.text
            assert "\r" not in event.text
            assert "\n" not in event.text


@given(printable, st.integers(0, 10))
def test_backspacing_what_was_typed_leaves_nothing(text, extra):
    keys = text + "\x7f" * (len(text) + extra)
    assert typed(keys)[1] == ""


# Grapheme clusters (issue 24, item 9): Backspace erases what shows as one.

THUMB = "👍🏽"  # thumbs up, then a skin tone modifier
FAMILY = "👨\u200d👩\u200d👧\u200d👦"  # four people, joined by ZWJ
HEART = "❤️"  # a heart, then VS16 (emoji presentation)
FLAG = "🇫🇷"  # two regional indicators
CLUSTERS = [THUMB, FAMILY, HEART, FLAG, "e\u0301", "你", "a", "👋", "\t"]


@pytest.mark.parametrize("cluster", [THUMB, FAMILY, HEART, FLAG])
def test_backspace_erases_a_whole_emoji_sequence(cluster):
    assert typed("ok" + cluster + "\x7f")[1] == "ok"
    assert typed(cluster + cluster + "\x7f")[1] == cluster


def test_flags_are_erased_a_pair_at_a_time_counted_from_their_start():
    # Three regional indicators: a flag, then a lone one; then the flag.
    three = FLAG + "🇫"
    assert typed("x" + three + "\x7f")[1] == "x" + FLAG
    assert typed("x" + three + "\x7f\x7f")[1] == "x"


@given(
    st.lists(st.sampled_from(CLUSTERS), max_size=12),
    st.lists(st.integers(min_value=1, max_value=40), max_size=5),
    st.integers(0, 12),
)
def test_each_backspace_erases_one_cluster_however_the_bytes_arrive(
    clusters, cuts, erased
):
    # No two regional indicators meet across clusters: FLAG is a pair.
    data = ("".join(clusters) + "\x7f" * erased).encode()
    at = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    editor = LineEditor()
    for a, b in itertools.pairwise(at):
        editor.events(data[a:b])
    assert editor.text == "".join(clusters[: max(len(clusters) - erased, 0)])
