"""Transcripts: one JSON object per line for every message and notice."""

from __future__ import annotations

import json
import os
import stat

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sockchat import (
    EchoResponder,
    TranscriptEntry,
    TranscriptFile,
)
from sockchat._core.render import safe_text
from sockchat._core.transcript import encode_entry
from sockchat.testing import MemoryServer

from fakes import Kept


def test_an_entry_is_one_line_of_json_with_exact_text():
    entry = TranscriptEntry(
        1764451801.5, 7, "127.0.0.1:5000", "in", "line", '你好 "\x1b[2J"\u202e'
    )
    data = encode_entry(entry)
    assert data.endswith(b"\n")
    assert data.count(b"\n") == 1
    assert json.loads(data) == {
        "time": "2025-11-29T21:30:01.500Z",
        "conversation": 7,
        "peer": "127.0.0.1:5000",
        "direction": "in",
        "kind": "line",
        "text": '你好 "\x1b[2J"\u202e',
    }
    assert b"\x1b" not in data  # control characters are escaped by JSON


#: The characters safe_text escapes, and the ones next to them.
dangerous = st.sampled_from(
    [chr(c) for c in range(0x00, 0x20)]
    + [chr(c) for c in range(0x7F, 0xA1)]
    + ["\u061c", "\u200e", "\u200f", "\u2028", "\u2029"]
    + [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
    + ["\u200d", "\u2027", "\u206a", '"', "\\", "/"]
)


@given(st.lists(st.one_of(dangerous, st.characters()), max_size=40).map("".join))
@example("a lone surrogate: \ud800, from a responder's string")
def test_transcript_lines_escape_all_that_safe_text_does_and_stay_exact(text):
    entry = TranscriptEntry(0.0, 1, text, "in", "line", text, "info", text)
    data = encode_entry(entry)
    line = data.decode("utf-8")
    assert line.endswith("\n")
    assert line.count("\n") == 1
    assert safe_text(line[:-1]) == line[:-1]  # nothing left that acts on a tty
    back = json.loads(data)
    assert (back["text"], back["peer"], back["code"]) == (text, text, text)


def test_c1_del_bidi_and_line_separators_are_written_as_json_escapes():
    text = "a\x7fb\x9bc\u202ed\u2028e\u2066f"
    data = encode_entry(TranscriptEntry(0.0, 1, "p", "in", "line", text))
    assert b'"text": "a\\u007fb\\u009bc\\u202ed\\u2028e\\u2066f"' in data
    assert json.loads(data)["text"] == text


def test_notices_carry_their_kind_and_code():
    entry = TranscriptEntry(0.0, 1, "p", "out", "notice", "goodbye.", "bye", "quit")
    assert json.loads(encode_entry(entry))["notice"] == "bye"
    assert json.loads(encode_entry(entry))["code"] == "quit"


def test_the_server_records_every_line_answer_and_notice_in_order():
    kept = Kept()
    server = MemoryServer(EchoResponder(), transcript=kept, max_line=10)
    conversation = server.connect()
    server.clock.advance(2.5)
    assert server.say(conversation, "hello") == "hello"
    server.result(conversation.quit())
    said = [(e.direction, e.kind, e.code, e.text) for e in kept.entries]
    assert said[0][:3] == ("out", "notice", "welcome")
    assert said[1:] == [
        ("in", "line", None, "hello"),
        ("out", "answer", None, "hello"),
        ("in", "line", None, "q"),
        ("out", "notice", "quit", "goodbye."),
    ]
    assert {e.conversation for e in kept.entries} == {1}
    assert kept.entries[1].time == 2.5
    assert kept.entries[1].peer.startswith("127.0.0.1:")


def test_refused_input_is_recorded_with_its_refusal():
    kept = Kept()
    server = MemoryServer(EchoResponder(), transcript=kept, max_line=10)
    conversation = server.connect()
    with pytest.raises(Exception, match="line-too-long"):
        server.say(conversation, "far too long for ten bytes")
    invalid, refusal = kept.entries[-2:]
    assert (invalid.direction, invalid.kind) == ("in", "invalid")
    assert "10" in invalid.text
    assert (refusal.kind, refusal.notice, refusal.code) == (
        "notice",
        "error",
        "line-too-long",
    )


def test_transcript_file_appends_privately(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_bytes(b'{"earlier": true}\n')
    os.chmod(path, 0o644)
    transcript = TranscriptFile(str(path))
    transcript.record(TranscriptEntry(0.0, 1, "p", "in", "line", "one"))
    transcript.record(TranscriptEntry(0.0, 1, "p", "out", "answer", "two"))
    # Each entry is in the file at once, before any close or flush.
    lines = path.read_text().splitlines()
    assert [json.loads(line).get("text") for line in lines] == [None, "one", "two"]
    transcript.close()
    new = tmp_path / "new.jsonl"
    TranscriptFile(str(new)).close()
    assert stat.S_IMODE(new.stat().st_mode) == 0o600


def test_an_entry_that_cannot_be_written_is_counted_and_logged(tmp_path, logged_errors):
    transcript = TranscriptFile(str(tmp_path / "t.jsonl"))
    transcript.close()
    transcript.record(TranscriptEntry(0.0, 4, "p", "in", "line", "lost"))
    assert transcript.lost == 1
    assert any("conversation 4" in text for text in logged_errors)
