"""Server lines: answers and notices can never be confused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockchat._core.codec import LineDecoder
from sockchat._core.wire import (
    Answer,
    Notice,
    NoticeKind,
    encode_answer,
    encode_notice,
    parse_server_line,
)

answers = st.one_of(
    st.text(),
    st.text().map(lambda t: "!" + t),
    st.text().map(lambda t: "!!" + t),
    st.sampled_from(
        ["!", "!!", "!info welcome: hi", "!bye quit: goodbye.", "!error x-y: z", "q"]
    ),
).filter(lambda t: "\n" not in t)


def roundtrip(data: bytes) -> Answer | Notice:
    (line,) = LineDecoder(strip_cr=False).feed(data)
    assert isinstance(line, str)
    return parse_server_line(line)


@given(answers)
def test_any_answer_arrives_unchanged_even_if_it_looks_like_a_notice(text):
    assert roundtrip(encode_answer(text)) == Answer(text)


@given(
    st.sampled_from(list(NoticeKind)),
    st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True),
    st.text().filter(lambda t: "\n" not in t),
)
def test_any_notice_arrives_as_a_notice(kind, code, text):
    notice = Notice(kind, code, text)
    assert roundtrip(encode_notice(notice)) == notice


def test_notices_read_plainly_on_nc():
    notice = Notice(NoticeKind.ERROR, "line-too-long", "line 2 is too long.")
    assert encode_notice(notice) == b"!error line-too-long: line 2 is too long.\n"
    assert encode_answer("plain") == b"plain\n"
    assert encode_answer("!looks like a notice") == b"!!looks like a notice\n"


def test_malformed_notice_is_kept_as_info_not_dropped():
    assert parse_server_line("!nonsense") == Notice(
        NoticeKind.INFO, "malformed", "nonsense"
    )


def test_multi_line_answers_and_notices_are_refused():
    with pytest.raises(ValueError, match="one line"):
        encode_answer("a\nb")
    with pytest.raises(ValueError, match="one line"):
        encode_notice(Notice(NoticeKind.INFO, "x", "a\nb"))
