"""The line codec: framing, the CR rule, limits and UTF-8, with no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockchat._core.codec import (
    InvalidUtf8,
    LineDecoder,
    LineTooLong,
    check_message,
    encode_line,
)

messages = st.text().filter(lambda t: "\n" not in t and not t.endswith("\r"))


def feed_in_chunks(decoder: LineDecoder, data: bytes, cuts: list[int]) -> list:
    out = []
    start = 0
    for cut in sorted(set(cuts)):
        out += decoder.feed(data[start:cut])
        start = cut
    out += decoder.feed(data[start:])
    return out


def test_lines_end_in_newline_and_partial_lines_wait():
    d = LineDecoder()
    assert d.feed(b"hello\nwor") == ["hello"]
    assert d.feed(b"ld\n") == ["world"]
    assert d.feed(b"") == []


def test_one_trailing_cr_is_stripped_for_telnet_and_windows():
    d = LineDecoder()
    assert d.feed(b"crlf\r\nkeep\rinside\n\r\r\n") == ["crlf", "keep\rinside", "\r"]


def test_server_side_decoder_can_keep_cr():
    assert LineDecoder(strip_cr=False).feed(b"a\r\n") == ["a\r"]


def test_empty_line_is_a_message():
    assert LineDecoder().feed(b"\n") == [""]


@given(st.lists(messages, max_size=8), st.lists(st.integers(0, 400), max_size=20))
def test_any_split_of_the_stream_gives_the_same_lines(texts, cuts):
    data = b"".join(encode_line(t) for t in texts)
    assert feed_in_chunks(LineDecoder(), data, cuts) == texts


def test_chinese_sent_one_byte_at_a_time_arrives_intact():
    d = LineDecoder()
    out = []
    for byte in "你好，世界\n".encode():
        out += d.feed(bytes([byte]))
    assert out == ["你好，世界"]


def test_invalid_utf8_is_refused_and_the_stream_goes_on():
    out = LineDecoder().feed(b"ok\n\xff\xfebad\nnext\n")
    assert out[0] == "ok"
    assert isinstance(out[1], InvalidUtf8)
    assert "byte 1" in out[1].reason
    assert out[2] == "next"


def test_surrogates_encoded_in_utf8_are_invalid():
    (item,) = LineDecoder().feed(b"\xed\xa0\x80\n")
    assert isinstance(item, InvalidUtf8)


def test_line_at_the_limit_passes_and_one_over_is_refused():
    d = LineDecoder(max_line=5)
    assert d.feed(b"12345\n123456\nok\n") == ["12345", LineTooLong(6, 5), "ok"]


def test_limit_counts_the_line_without_its_crlf():
    assert LineDecoder(max_line=5).feed(b"12345\r\n") == ["12345"]


def test_long_line_without_newline_is_skipped_not_buffered():
    d = LineDecoder(max_line=1000)
    chunk = b"x" * 65536
    for _ in range(1600):  # 100 MiB, no newline
        assert d.feed(chunk) == []
        assert d.buffered == 0
    assert d.feed(b"tail\nafter\n") == [LineTooLong(1600 * 65536 + 4, 1000), "after"]


def test_buffer_never_exceeds_the_limit():
    d = LineDecoder(max_line=100)
    for _ in range(50):
        d.feed(b"abc")
        assert d.buffered <= 101


def test_finish_returns_the_last_line_without_newline():
    d = LineDecoder()
    d.feed(b"a\nlast")
    assert d.finish() == ["last"]
    assert d.finish() == []


def test_finish_reports_an_overlong_unfinished_line():
    d = LineDecoder(max_line=3)
    d.feed(b"abcdefgh")
    assert d.finish() == [LineTooLong(8, 3)]


def test_limit_must_be_positive():
    with pytest.raises(ValueError, match="at least 1 byte"):
        LineDecoder(max_line=0)


@pytest.mark.parametrize("bad", ["two\nlines", "ends in cr\r"])
def test_messages_that_cannot_travel_unchanged_are_rejected(bad):
    with pytest.raises(ValueError, match="message"):
        check_message(bad)


def test_unencodable_text_is_rejected():
    with pytest.raises(UnicodeEncodeError):
        encode_line("\ud800")


@given(
    st.integers(4, 40),
    st.integers(0, 90),
    st.booleans(),
    st.lists(st.integers(0, 100), max_size=12),
)
def test_a_long_line_counts_the_same_however_it_arrives(limit, size, crlf, cuts):
    """The length in ``LineTooLong`` does not count the CR of a CRLF, even
    when the line arrives in pieces and the decoder is skipping it."""
    line = b"x" * size
    data = line + (b"\r\n" if crlf else b"\n") + b"next\n"
    out = feed_in_chunks(LineDecoder(max_line=limit), data, cuts)
    first = line.decode() if size <= limit else LineTooLong(size, limit)
    assert out == [first, "next"]


@given(st.integers(1, 40), st.integers(0, 90), st.lists(st.integers(0, 100)))
def test_a_long_line_the_stream_ends_in_counts_without_its_cr(limit, size, cuts):
    decoder = LineDecoder(max_line=limit)
    data = b"x" * size + b"\r"
    out = feed_in_chunks(decoder, data, cuts) + decoder.finish()
    assert out == ["x" * size if size <= limit else LineTooLong(size, limit)]


def test_the_line_too_long_count_of_70000_bytes_sent_in_pieces():
    decoder = LineDecoder(max_line=65536)
    data = b"a" * 70000 + b"\r\n"
    out = feed_in_chunks(decoder, data, list(range(0, len(data), 4096)))
    assert out == [LineTooLong(70000, 65536)]
