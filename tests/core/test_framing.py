"""The framings, with no I/O: raw messages, UTF-8 carried over, what is sent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockchat._core.codec import InvalidUtf8, LineTooLong
from sockchat._core.framing import (
    RAW_MESSAGE_SIZE,
    LineFraming,
    RawDecoder,
    RawFraming,
    framing_named,
)
from sockchat._core.turns import shutting_down, welcome
from sockchat._core.wire import Notice, NoticeKind


def test_each_raw_chunk_is_one_message_with_nothing_stripped():
    d = RawDecoder()
    assert d.feed(b"hello") == ["hello"]
    assert d.feed(b"two\nlines\r\n") == ["two\nlines\r\n"]
    assert d.feed(b"q") == ["q"]
    assert d.feed(b"") == []


def test_a_raw_chunk_over_1024_bytes_is_cut_like_recv_1024():
    d = RawDecoder()
    assert d.feed(b"a" * 1024 + b"b" * 1000 + b"c" * 1024 + b"d") == [
        "a" * 1024,
        "b" * 1000 + "c" * 24,
        "c" * 1000 + "d",
    ]


def test_a_character_split_across_chunks_is_carried_over_not_refused():
    d = RawDecoder()
    data = "你好".encode()
    assert d.feed(data[:4]) == ["你"]
    assert d.buffered == 1
    assert d.feed(data[4:5]) == []
    assert d.feed(data[5:]) == ["好"]
    assert d.buffered == 0


def test_a_character_on_the_1024_byte_cut_goes_whole_to_the_next_message():
    d = RawDecoder()
    text = "好" * 500  # 1500 bytes; byte 1024 is inside a character
    assert d.feed(text.encode()) == ["好" * 341, "好" * 159]


def test_invalid_utf8_is_refused_and_the_next_chunk_is_fine():
    d = RawDecoder()
    (refused,) = d.feed(b"ab\xffcd")
    assert refused == InvalidUtf8("invalid start byte at byte 3")
    assert d.feed(b"\xe4A") == [InvalidUtf8("invalid continuation byte at byte 1")]
    assert d.feed(b"fine") == ["fine"]


def test_a_raw_message_over_max_line_is_refused_as_too_long():
    d = RawDecoder(max_size=4)
    assert d.feed(b"12345") == [LineTooLong(5, 4)]
    assert d.feed(b"1234") == ["1234"]


def test_a_carried_part_of_a_character_is_not_a_message_at_the_end():
    d = RawDecoder()
    assert d.feed(b"\xe4\xbd") == []
    assert d.unfinished == 2
    assert d.finish() == []
    assert d.unfinished == 0
    with pytest.raises(ValueError, match="at least 1 byte"):
        RawDecoder(0)


@given(
    st.text(max_size=3000).filter(bool),
    st.lists(st.integers(1, 1500), max_size=20),
)
def test_any_split_of_valid_utf8_loses_nothing_and_no_message_is_over_1024(text, cuts):
    data = text.encode()
    d = RawDecoder()
    got = []
    start = 0
    for size in [*cuts, len(data)]:
        got += d.feed(data[start : start + size])
        start += size
    assert all(isinstance(m, str) for m in got), got
    assert "".join(got) == text
    assert all(0 < len(m.encode()) <= RAW_MESSAGE_SIZE for m in got)
    assert d.buffered == 0


def test_raw_messages_and_answers_are_bare_bytes_of_1_to_1024():
    raw = RawFraming()
    assert raw.encode_message("你好") == "你好".encode()
    assert raw.encode_answer("!not a notice\n") == b"!not a notice\n"
    assert raw.encode_answer("x" * 1024) == b"x" * 1024
    with pytest.raises(ValueError, match="empty, and raw framing cannot send"):
        raw.encode_answer("")
    with pytest.raises(ValueError, match="1025 bytes, over raw framing's 1024"):
        raw.encode_message("x" * 1025)


def test_raw_framing_sends_errors_and_byes_but_no_info_and_no_newline():
    raw = RawFraming()
    assert raw.encode_notice(welcome(1)) == b""
    assert raw.encode_notice(Notice(NoticeKind.BYE, "quit", "goodbye.")) == b""
    assert raw.encode_notice(Notice(NoticeKind.BYE, "end-of-input", "bye")) == b""
    assert raw.encode_notice(shutting_down()) == (
        b"!bye shutdown: the server is shutting down."
    )
    error = Notice(NoticeKind.ERROR, "invalid-utf8", "line 1 was refused.")
    assert raw.encode_notice(error) == b"!error invalid-utf8: line 1 was refused."


def test_line_framing_is_the_line_protocol():
    line = LineFraming()
    assert line.encode_message("hi") == b"hi\n"
    assert line.encode_answer("!x") == b"!!x\n"
    assert line.encode_notice(welcome(1)).startswith(b"!info welcome: ")
    with pytest.raises(ValueError, match="the answer has a newline in it"):
        line.encode_answer("a\nb")
    assert line.as_server_line("!bye quit: x") == "!bye quit: x"


def test_in_raw_framing_everything_the_server_sends_is_an_answer():
    assert RawFraming().as_server_line("!bye quit: x") == "!!bye quit: x"
    assert RawFraming().as_server_line("plain") == "plain"


def test_framings_by_name():
    assert framing_named("raw") == RawFraming()
    assert framing_named("line") == LineFraming()
    with pytest.raises(ValueError, match="unknown framing 'lines'; choose one of"):
        framing_named("lines")
