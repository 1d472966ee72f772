"""The desk page's JSON messages: commands in, views out."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from sockchat._desk.canned import Canned
from sockchat._desk.control import Hello, Problem
from sockchat._desk.model import (
    Answer,
    AnswerDue,
    ConversationView,
    DeskView,
    End,
    HandBack,
    LineView,
    Released,
    SaidMore,
    Take,
)
from sockchat._desk.queue import Operator, Said, Who
from sockchat._desk.wire import decode, encode

ALICE = Operator("alice", "Alice")


def test_the_four_commands():
    assert decode('{"type": "take", "entry": "7"}') == Take("7")
    assert decode('{"type": "answer", "entry": "7", "text": "hi"}') == Answer("7", "hi")
    assert decode('{"type": "handback", "conversation": "3"}') == HandBack("3")
    assert decode('{"type": "end", "conversation": "3"}') == End("3")


@given(
    st.one_of(
        st.text(),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        ).map(json.dumps),
    )
)
def test_any_message_is_a_command_or_one_line_why_not(text):
    decoded = decode(text)
    if isinstance(decoded, str):
        assert decoded
        assert "\n" not in decoded
    else:
        assert isinstance(decoded, Take | Answer | HandBack | End)


def test_every_message_to_the_page_is_json_with_its_type():
    said = Said("1", 2, Who.CLIENT, "", "hello <b>", 5.0)
    line = LineView("7", "1", "client 1 (x)", "hello", 5, 3.25, ALICE)
    messages = [
        Hello(ALICE, 3, (Canned("hours", "9 to 5"),)),
        DeskView((line,), (), (ALICE,), 1),
        ConversationView("1", "client 1 (x)", (said,), "7", "hello"),
        SaidMore(said),
        AnswerDue("1", None, why="the client left"),
        Released("1", "handed back to the queue"),
        Problem("no"),
    ]
    kinds = [json.loads(encode(m))["type"] for m in messages]
    assert kinds == [
        "hello",
        "desk",
        "conversation",
        "said",
        "turn",
        "released",
        "problem",
    ]
    desk = json.loads(encode(messages[1]))
    assert desk["lines"][0]["holder"] == {"name": "alice", "display": "Alice"}
    assert desk["lines"][0]["waited"] == 3.2
    assert json.loads(encode(messages[3]))["said"]["who"] == "client"
