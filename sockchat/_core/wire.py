"""What the server sends: answers and notices, one line each.

An answer is the text itself.  A notice starts with ``!`` followed by its
kind, so a person on ``nc`` reads both.  An answer that itself starts with
``!`` is sent with one more ``!`` in front ("bang-stuffing", like SMTP's
dot-stuffing), and the client takes it off again: any text arrives
unchanged, even text that looks like a notice.

    hello                          answer "hello"
    !!important                    answer "!important"
    !error line-too-long: ...      notice (kind error, code line-too-long)

No I/O here; see docs/protocol.md for the grammar.
"""

from __future__ import annotations

import enum
import re

from attrs import frozen

__all__ = [
    "QUIT",
    "Answer",
    "Notice",
    "NoticeKind",
    "Signed",
    "encode_answer",
    "encode_notice",
    "make_notice",
    "parse_server_line",
]

#: The tutorial's quit word: a line that is exactly this ends the conversation,
#: from either side.
QUIT = "q"

_MARK = "!"


class NoticeKind(enum.Enum):
    """What a notice means for the conversation."""

    #: Status only; the turn does not change.
    INFO = "info"
    #: A line of yours was refused and not delivered.  Unless the code is
    #: ``out-of-turn``, it was the line you are waiting on, and the turn is
    #: yours again.
    ERROR = "error"
    #: The conversation is over; the server closes the connection.
    BYE = "bye"


@frozen
class Notice:
    """A message from the server itself, not from whoever answers."""

    kind: NoticeKind
    code: str
    text: str

    def __str__(self) -> str:
        return f"{self.kind.value} {self.code}: {self.text}"


@frozen
class Answer:
    """The answer to the line the client is waiting on."""

    text: str


@frozen
class Signed:
    """A responder's answer, and who gave it (an operator, a worker): the
    client is sent *text*; the transcript records *by* as well."""

    text: str
    by: str


_CODE = re.compile(r"[a-z0-9-]+\Z")


def make_notice(kind: NoticeKind, code: str, text: str) -> Notice:
    """A notice from code that is not ours (a responder): checked first."""
    if not _CODE.match(code):
        raise ValueError(
            f"a notice code is lowercase letters, digits and '-', not {code!r}"
        )
    if "\n" in text:
        raise ValueError("a notice is one line: its text cannot contain a newline")
    return Notice(kind, code, text)


_NOTICE = re.compile(r"!(info|error|bye) ([a-z0-9-]+): (.*)\Z", re.DOTALL)


def encode_answer(text: str) -> bytes:
    """Frame an answer, stuffing a leading ``!``."""
    if "\n" in text:
        raise ValueError("an answer is one line: it cannot contain a newline")
    if text.startswith(_MARK):
        text = _MARK + text
    return text.encode("utf-8") + b"\n"


def encode_notice(notice: Notice) -> bytes:
    """Frame a notice.  Its text must already be one safe line."""
    if "\n" in notice.text or "\n" in notice.code:
        raise ValueError("a notice is one line: it cannot contain a newline")
    return f"!{notice.kind.value} {notice.code}: {notice.text}\n".encode()


def parse_server_line(line: str) -> Answer | Notice:
    """Tell an answer from a notice.

    A line that starts with one ``!`` but does not follow the notice grammar
    is not dropped: it comes back as an info notice with code ``malformed``.
    """
    if not line.startswith(_MARK):
        return Answer(line)
    if line.startswith("!!"):
        return Answer(line[1:])
    match = _NOTICE.match(line)
    if match is None:
        return Notice(NoticeKind.INFO, "malformed", line[1:])
    kind, code, text = match.groups()
    return Notice(NoticeKind(kind), code, text)
