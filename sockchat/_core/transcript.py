"""Transcript entries: what was said, by whom, when; as JSON lines.

The server hands one ``TranscriptEntry`` per message or notice to an ``ITranscript``;
``encode_entry`` turns it into one line of JSON.  The format is in
``docs/transcripts.md``.  No I/O here: ``TranscriptFile`` (in
``sockchat/_operations/transcript_file.py``) writes the lines.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

from attrs import frozen
from zope.interface import Interface

from sockchat._core.render import UNSAFE

__all__ = ["ITranscript", "TranscriptEntry", "encode_entry"]


@frozen
class TranscriptEntry:
    """One thing said in a conversation."""

    #: Seconds since the epoch, from the server's clock.
    time: float
    conversation: int
    peer: str
    #: ``in``: from the client; ``out``: to the client.
    direction: str
    #: ``line`` (a client line), ``invalid`` (client bytes that were not a
    #: line: too long or not UTF-8), ``answer``, or ``notice``.
    kind: str
    text: str
    #: For notices: ``info``, ``error`` or ``bye``, and the notice's code.
    notice: str | None = None
    code: str | None = None
    #: For answers: who gave it, when the responder said (``operator ann``).
    by: str | None = None


class ITranscript(Interface):
    """Keeps the record of every conversation."""

    def record(entry: TranscriptEntry) -> None:
        """Keep *entry*; must not raise."""


def encode_entry(entry: TranscriptEntry) -> bytes:
    """One line of JSON, newline included; peer text stays exact (UTF-8),
    with every control and bidi character escaped, so the file is safe to
    ``cat``."""
    when = datetime.fromtimestamp(entry.time, timezone.utc)
    fields: dict[str, object] = {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "conversation": entry.conversation,
        "peer": entry.peer,
        "direction": entry.direction,
        "kind": entry.kind,
        "text": entry.text,
    }
    if entry.notice is not None:
        fields["notice"] = entry.notice
        fields["code"] = entry.code
    if entry.by is not None:
        fields["by"] = entry.by
    return (_escape_unsafe(json.dumps(fields, ensure_ascii=False)) + "\n").encode(
        "utf-8"
    )


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"  # all of them are in the BMP


def _escape_unsafe(dumped: str) -> str:
    """Escape, as JSON's ``\\uXXXX``, every character that ``safe_text``
    would: ``json.dumps`` escapes only U+0000 to U+001F, and leaves DEL, the
    C1 controls, bidi controls and U+2028/U+2029 raw.  Outside strings JSON
    text is plain ASCII, so each match is inside a string, and ``json.loads``
    gives back the same text."""
    if UNSAFE.search(dumped) is None:
        return dumped
    return UNSAFE.sub(_json_escape, dumped)
