"""RESP2, the Redis protocol, without I/O: encode commands, parse replies.

``encode_command(*args)`` is the bytes of one command.  ``ReplyParser`` is
fed the bytes that arrive, in pieces of any size, and returns each reply
once it is complete:

========================  ==========================
reply                      value
========================  ==========================
``+OK``                    ``str``
``-ERR ...``               ``ErrorReply`` (its text)
``:42``                    ``int``
``$3 abc`` / ``$-1``       ``bytes`` / ``None``
``*2 ...`` / ``*-1``       ``list`` (nested) / ``None``
========================  ==========================

Lengths are bounded (a bulk string of at most 512 MiB, as Redis's own
limit, an array of at most ``MAX_ARRAY`` items, a line of at most
``MAX_LINE`` bytes) so that a broken or hostile peer cannot make the
parser allocate without bound; anything malformed is a ``ProtocolError``,
after which the parser is unusable and the connection must be dropped.
The parser keeps its place between feeds: a reply split into many pieces
is not parsed again from its start each time.
"""

from __future__ import annotations

import math
from typing import TypeAlias

from attrs import frozen

__all__ = [
    "MAX_ARRAY",
    "MAX_BULK",
    "MAX_LINE",
    "ErrorReply",
    "ProtocolError",
    "Reply",
    "ReplyParser",
    "encode_arg",
    "encode_command",
]

#: The longest bulk string accepted: Redis's own proto-max-bulk-len.
MAX_BULK = 512 * 1024 * 1024
#: The most items an array may say it has.
MAX_ARRAY = 1024 * 1024
#: The longest status, error or length line (without its CRLF).
MAX_LINE = 64 * 1024
#: How deeply arrays may nest.
MAX_DEPTH = 32


@frozen
class ErrorReply:
    """An error reply; *message* is the server's text (``ERR ...``)."""

    message: str


#: A reply as the parser returns it.
Reply: TypeAlias = "str | int | bytes | ErrorReply | list[Reply] | None"


class ProtocolError(ValueError):
    """The bytes are not RESP2 (or exceed a bound); the message is one line."""


def encode_arg(arg: str | bytes | int | float) -> bytes:
    """One argument as bytes: ``str`` as UTF-8, an ``int`` in decimal, a
    ``float`` as ``repr`` writes it (``inf`` and ``-inf`` too), ``bytes``
    as they are."""
    if isinstance(arg, (bytes, bytearray)):
        return bytes(arg)
    if isinstance(arg, str):
        return arg.encode("utf-8")
    if isinstance(arg, bool):
        raise TypeError("a Redis argument cannot be a bool: say 1 or 0")
    if isinstance(arg, int):
        return str(arg).encode("ascii")
    if isinstance(arg, float):
        if math.isnan(arg):
            raise ValueError("a Redis argument cannot be NaN")
        return repr(arg).encode("ascii")
    raise TypeError(
        f"a Redis argument is str, bytes, int or float, not {type(arg).__name__}"
    )


def encode_command(*args: str | bytes | int | float) -> bytes:
    """The RESP2 bytes of one command (an array of bulk strings)."""
    if not args:
        raise ValueError("a Redis command needs at least its name")
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = encode_arg(arg)
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


class ReplyParser:
    """Replies from bytes fed in pieces of any size."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0
        # The arrays being filled: each is (items so far, items expected).
        self._stack: list[tuple[list[Reply], int]] = []
        self._broken: ProtocolError | None = None

    def feed(self, data: bytes) -> list[Reply]:
        """Add *data*; return the replies it completed, in order.

        Raises ``ProtocolError`` on malformed input (and on every call
        after that).
        """
        if self._broken is not None:
            raise self._broken
        self._buffer += data
        replies: list[Reply] = []
        try:
            while True:
                item = self._item()
                if item is _INCOMPLETE:
                    break
                reply = self._place(item)
                if reply is not _INCOMPLETE:
                    replies.append(reply)  # type: ignore[arg-type]  # _place returns a Reply here
        except ProtocolError as e:
            self._broken = e
            raise
        finally:
            if self._pos:
                del self._buffer[: self._pos]
                self._pos = 0
        return replies

    def _place(self, item: object) -> object:
        """Put a finished item into the array it belongs to; return a
        finished top-level reply, or _INCOMPLETE."""
        while True:
            if isinstance(item, _ArrayStart):
                if item.size == 0:
                    item = []
                    continue
                if len(self._stack) >= MAX_DEPTH:
                    raise ProtocolError(f"arrays nested more than {MAX_DEPTH} deep")
                self._stack.append(([], item.size))
                return _INCOMPLETE
            if not self._stack:
                return item
            items, size = self._stack[-1]
            items.append(item)  # type: ignore[arg-type]  # not an _ArrayStart: a Reply
            if len(items) < size:
                return _INCOMPLETE
            self._stack.pop()
            item = items

    def _line(self) -> bytes | None:
        """The next line without its CRLF, or None if it has not all come."""
        end = self._buffer.find(b"\r\n", self._pos)
        if end < 0:
            if len(self._buffer) - self._pos > MAX_LINE + 1:
                raise ProtocolError(f"a line longer than {MAX_LINE} bytes")
            return None
        if end - self._pos > MAX_LINE + 1:
            raise ProtocolError(f"a line longer than {MAX_LINE} bytes")
        line = bytes(self._buffer[self._pos + 1 : end])
        self._pos = end + 2
        return line

    def _item(self) -> object:
        """The next scalar reply or array header, or _INCOMPLETE (and then
        the position is where it was)."""
        if self._pos >= len(self._buffer):
            return _INCOMPLETE
        start = self._pos
        kind = bytes(self._buffer[start : start + 1])
        if kind not in (b"+", b"-", b":", b"$", b"*"):
            raise ProtocolError(f"unknown reply type {kind!r}")
        line = self._line()
        if line is None:
            return _INCOMPLETE
        if kind == b"+":
            return line.decode("utf-8", "replace")
        if kind == b"-":
            return ErrorReply(line.decode("utf-8", "replace"))
        number = _integer(line)
        if kind == b":":
            return number
        if kind == b"*":
            if number == -1:
                return None
            if not 0 <= number <= MAX_ARRAY:
                raise ProtocolError(
                    f"an array of {number} items (the limit is {MAX_ARRAY})"
                )
            return _ArrayStart(number)
        if number == -1:
            return None
        if not 0 <= number <= MAX_BULK:
            raise ProtocolError(
                f"a bulk string of {number} bytes (the limit is {MAX_BULK})"
            )
        if len(self._buffer) - self._pos < number + 2:
            self._pos = start
            return _INCOMPLETE
        end = self._pos + number
        if self._buffer[end : end + 2] != b"\r\n":
            raise ProtocolError("a bulk string not followed by CRLF")
        data = bytes(self._buffer[self._pos : end])
        self._pos = end + 2
        return data


def _integer(line: bytes) -> int:
    text = line[1:] if line[:1] == b"-" else line
    if not text or not text.isdigit() or len(text) > 20:
        raise ProtocolError(f"not an integer: {line[:40]!r}")
    return int(line)


@frozen
class _ArrayStart:
    size: int


_INCOMPLETE = object()
