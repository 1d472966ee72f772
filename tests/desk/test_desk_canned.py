"""Canned answers: a keyword, a space, the answer; one a line."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockchat._desk.canned import Canned, CannedError, load_canned, parse_canned


def test_keywords_and_answers_in_file_order_comments_ignored():
    text = (
        "# keyword  answer\n\n"
        "hours We are open from 9:00 to 17:00, Monday to Friday.\n"
        "  Thanks   Thank you for waiting; I am looking into it now.  \n"
        "zh 您好！请问有什么可以帮您？\n"
    )
    assert parse_canned(text) == (
        Canned("hours", "We are open from 9:00 to 17:00, Monday to Friday."),
        Canned("thanks", "Thank you for waiting; I am looking into it now."),
        Canned("zh", "您好！请问有什么可以帮您？"),
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("hours\n", "line 1: /hours has no answer after it"),
        ("/hours We open at 9.\n", "a keyword is 1 to 32 letters"),
        ("x" * 33 + " answer\n", "a keyword is 1 to 32 letters"),
        ("a A\nA B\n", "line 2: /a has another line above"),
        ("bell ring\x07\n", "cannot have control characters"),
        ("rtl abc\u202edef\n", "cannot have control characters"),
        ("long " + "x" * 4097 + "\n", "at most 4096 characters"),
        ("".join(f"k{n} answer {n}\n" for n in range(501)), "more than 500 answers"),
    ],
)
def test_a_bad_canned_file_is_one_line_naming_the_line(text, says):
    with pytest.raises(CannedError) as caught:
        parse_canned(text, "FILE")
    assert says in str(caught.value)
    assert str(caught.value).startswith("FILE")
    assert "\n" not in str(caught.value)


@given(st.text())
def test_any_text_is_answers_or_one_line_error(text):
    problem = ""
    try:
        answers = parse_canned(text)
    except CannedError as e:
        problem = str(e)
        answers = ()
    assert "\n" not in problem
    for answer in answers:
        assert answer.text
        assert "\n" not in answer.text


def test_a_missing_file_is_one_line_that_says_how_to_make_one(tmp_path):
    with pytest.raises(CannedError) as raised:
        load_canned(str(tmp_path / "none"))
    message = str(raised.value)
    assert "\n" not in message
    assert ": no such file; make one with an answer a line" in message
    # The example it gives is a file that works.
    example = message.split("e.g. '")[1].split("'")[0]
    path = tmp_path / "made"
    path.write_text(example + "\n", encoding="utf-8")
    assert load_canned(str(path)) == (Canned("hours", example.split(" ", 1)[1]),)
