"""RESP2, the Redis protocol, without I/O: encode commands, parse replies.

``encode_command(*args)`` is the bytes of one command.  A reply parser is
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
is not parsed again from its start each time.  Integers and lengths are
canonical (``0`` or an optional ``-`` and no leading zero, within 64 bits),
and a status or error line holds no CR or LF, as Redis writes them.

Two parsers give the same replies and the same protocol errors
(tests/broker/test_resp.py holds them to it, on random replies split at
random points):

- ``ReplyParser``, pure Python: the reference, and the parser when hiredis
  is not installed;
- ``HiredisReplyParser``: hiredis's ``Reader`` (C) builds the replies, and a
  check of each reply against its bytes holds it to the rules above
  (``_checked``).  hiredis itself bounds no length and takes RESP3's types,
  and gives a status line as ``bytes``; where the bytes could break a bound
  before the check sees them (a length of seven digits or more, or more
  than ``MAX_LINE`` bytes of an unfinished reply), that reply goes to
  ``ReplyParser`` instead.

``new_reply_parser()`` gives the hiredis one when hiredis is installed
(``pip install 'sockchat[broker]'``), else the pure one.
"""

from __future__ import annotations

import math
import re
from typing import Any, Protocol, TypeAlias

from attrs import frozen

try:
    import hiredis
except ImportError:  # pragma: no cover - the test extra installs it
    hiredis = None  # type: ignore[assignment]  # and HIREDIS says so

__all__ = [
    "HIREDIS",
    "MAX_ARRAY",
    "MAX_BULK",
    "MAX_LINE",
    "ErrorReply",
    "HiredisReplyParser",
    "IReplyParser",
    "ProtocolError",
    "Reply",
    "ReplyParser",
    "encode_arg",
    "encode_command",
    "new_reply_parser",
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


class IReplyParser(Protocol):
    """What the connection uses: bytes in, the replies they complete out."""

    def feed(self, data: bytes) -> list[Reply]:
        """Add *data*; return the replies it completed, in order.

        Raises ``ProtocolError`` on malformed input, and on every call after
        that.
        """
        ...


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


#: The arguments hiredis's ``pack_command`` encodes as ``encode_command``
#: does (a bool is not an int there, and floats are spelled differently).
_PLAIN = frozenset({str, bytes, int})


def encode_command(*args: str | bytes | int | float) -> bytes:
    """The RESP2 bytes of one command (an array of bulk strings)."""
    if not args:
        raise ValueError("a Redis command needs at least its name")
    if HIREDIS and _PLAIN.issuperset(map(type, args)):
        packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub: a 1-tuple
        return packed
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for arg in args:
        # str, bytes and int, the usual ones, without a call to encode_arg
        # (``type is``: a bool is not an int here), each part in one format.
        data: bytes
        if type(arg) is str:
            data = arg.encode()
        elif type(arg) is bytes:
            data = arg
        elif type(arg) is int:
            data = b"%d" % arg
        else:
            data = encode_arg(arg)
        append(b"$%d\r\n%b\r\n" % (len(data), data))
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

    @property
    def idle(self) -> bool:
        """Whether every byte fed so far belongs to a reply returned: no
        reply is half-read."""
        return not self._buffer and not self._stack

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
        if kind in (b"+", b"-"):
            if b"\r" in line or b"\n" in line:
                raise ProtocolError("a CR or LF inside a status or error line")
            text = line.decode("utf-8", "replace")
            return text if kind == b"+" else ErrorReply(text)
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


#: An integer as Redis writes one: no sign but ``-``, no leading zero.
_CANONICAL = re.compile(rb"0|-?[1-9][0-9]{0,18}")


def _integer(line: bytes) -> int:
    if _CANONICAL.fullmatch(line) is None or not -(2**63) <= int(line) < 2**63:
        raise ProtocolError(f"not an integer: {line[:40]!r}")
    return int(line)


@frozen
class _ArrayStart:
    size: int


_INCOMPLETE = object()


# -- hiredis, held to the same rules ------------------------------------------

#: Whether hiredis is installed (then ``new_reply_parser`` uses it).
HIREDIS: bool = hiredis is not None

#: A header whose number has seven digits or more (an aggregate of a
#: million items or a bulk string of a million bytes, or more): hiredis
#: would allocate for it or wait for it before ``_checked`` could see it, so
#: the reply goes to ``ReplyParser``.  RESP3's aggregates (``~ > | %``) are
#: in the class because hiredis takes them too.  It may also match inside a
#: bulk string's bytes: that reply is then only parsed more slowly.
#:
#: Found as the regular expression ``[*$~>|%][0-9]{7}`` would find it, in
#: two passes of C over the bytes rather than a character class tried at
#: each byte (which was a tenth of a worker's instructions): every type
#: byte becomes ``*`` and every digit ``0``, and the header is a plain find.
_SUSPECT = b"*0000000"
_MARKED = bytes.maketrans(b"*$~>|%0123456789", b"******0000000000")
#: How many bytes of a previous piece a header may have begun in.
_SUSPECT_REACH = 8


def _suspect(raw: bytes, start: int) -> bool:
    """Whether *raw* has a header with seven digits or more at or after
    *start*."""
    return _SUSPECT in raw[start:].translate(_MARKED)


#: A header's type byte, by the Python type hiredis gives its value.
_DOLLAR, _STAR, _COLON, _PLUS, _MINUS = b"$*:+-"


def new_reply_parser() -> IReplyParser:
    """The fastest parser here: hiredis's, else the pure one."""
    return HiredisReplyParser() if HIREDIS else ReplyParser()


class HiredisReplyParser:
    """Replies from bytes fed in pieces of any size, built by hiredis's
    ``Reader`` and held to ``ReplyParser``'s rules (see the module's doc).

    Each reply hiredis completes is checked against its bytes (``_checked``),
    which also tells where it ends, so that this parser always knows where
    the unfinished reply begins.  A reply whose bytes may break a bound
    before it is complete is handed, from its first byte, to a
    ``ReplyParser``, and hiredis takes over again once that one is idle.
    """

    def __init__(self) -> None:
        if not HIREDIS:
            raise RuntimeError("hiredis is not installed")
        self._reader = self._new_reader()
        #: The bytes of the reply not finished yet (hiredis holds them too).
        self._pending = b""
        self._fallback: ReplyParser | None = None
        self._broken: ProtocolError | None = None

    @staticmethod
    def _new_reader() -> Any:
        return hiredis.Reader(
            protocolError=ProtocolError,
            # hiredis gives an error reply as whatever this returns.
            replyError=ErrorReply,  # type: ignore[arg-type]  # not an Exception
            notEnoughData=_NONE,
        )

    def feed(self, data: bytes) -> list[Reply]:
        """Add *data*; return the replies it completed, in order.

        Raises ``ProtocolError`` on malformed input (and on every call
        after that).
        """
        if self._broken is not None:
            raise self._broken
        try:
            if self._fallback is not None:
                return self._feed_fallback(data)
            held = len(self._pending)
            raw = self._pending + data if held else data
            if _suspect(raw, max(0, held - _SUSPECT_REACH)):
                return self._hand_over(raw, [])
            reader = self._reader
            reader.feed(data)
            replies: list[Reply] = []
            pos = 0
            while (reply := reader.gets()) is not _NONE:
                reply, pos = _checked(reply, raw, pos, 0)
                replies.append(reply)
            if len(raw) - pos > MAX_LINE:
                return self._hand_over(raw[pos:], replies)
            self._pending = raw[pos:] if pos < len(raw) else b""
            return replies
        except ProtocolError as e:
            self._broken = e
            raise
        except hiredis.HiredisError as e:
            self._broken = ProtocolError(str(e))
            raise self._broken from None

    def _hand_over(self, raw: bytes, replies: list[Reply]) -> list[Reply]:
        """Parse *raw* (which begins a reply) with ``ReplyParser``."""
        self._fallback = ReplyParser()
        self._reader = self._new_reader()
        self._pending = b""
        return replies + self._feed_fallback(raw)

    def _feed_fallback(self, data: bytes) -> list[Reply]:
        assert self._fallback is not None
        replies = self._fallback.feed(data)
        if self._fallback.idle:
            self._fallback = None
        return replies


#: What hiredis's ``gets`` returns when no reply is complete (its default,
#: ``False``, is also RESP3's ``#f``).
_NONE: Any = object()


def _checked(reply: Any, data: bytes, pos: int, depth: int) -> tuple[Reply, int]:
    """*reply*, which hiredis read from *data* at *pos*, as ``ReplyParser``
    would give it, and the position after it; ``ProtocolError`` where
    ``ReplyParser`` would raise one.

    hiredis has checked the lengths' and integers' digits (as strictly as
    ``_integer``) and that no status line holds CR or LF; this checks the
    type byte of each part (RESP2's only), the CRLF after a bulk string
    (hiredis skips two bytes unseen), the depth and the line lengths, and
    makes a status line ``str``.
    """
    kind = data[pos]
    cls = type(reply)
    if cls is list and kind == _STAR:
        if reply and depth >= MAX_DEPTH:
            raise ProtocolError(f"arrays nested more than {MAX_DEPTH} deep")
        # The most common array, of bulk strings alone, in one step: its
        # bytes are those hiredis would send as a command of the same items
        # (an item of another type, or another spelling, takes the long way).
        if reply and type(reply[-1]) is bytes:
            try:
                flat = hiredis.pack_command(tuple(reply))
            except TypeError:  # an array or None in it
                pass
            else:
                if data.startswith(flat, pos):
                    return reply, pos + len(flat)
        count = len(reply)
        pos += _HEAD[count] if count < _HEADS else 3 + len(str(count))
        if count and type(reply[0]) is list and depth + 2 < MAX_DEPTH:
            # Stream entries (each an id and its fields), in one step too.
            try:
                entries = b"".join(
                    [
                        _ENTRY % (len(e), e, hiredis.pack_command(tuple(f)))
                        for e, f in reply
                    ]
                )
            except (TypeError, ValueError):  # not entries
                pass
            else:
                if data.startswith(entries, pos):
                    return reply, pos + len(entries)
        for i, item in enumerate(reply):
            # Bulk strings, the most common, here; the rest one level down.
            if type(item) is bytes and data[pos] == _DOLLAR:
                size = len(item)
                pos += size + (_HEAD[size] if size < _HEADS else 3 + len(str(size)))
                if not data.startswith(b"\r\n", pos):
                    raise ProtocolError("a bulk string not followed by CRLF")
                pos += 2
            else:
                reply[i], pos = _checked(item, data, pos, depth + 1)
        return reply, pos
    if cls is bytes:
        size = len(reply)
        if kind == _DOLLAR:
            pos += size + (_HEAD[size] if size < _HEADS else 3 + len(str(size)))
            if not data.startswith(b"\r\n", pos):
                raise ProtocolError("a bulk string not followed by CRLF")
            return reply, pos + 2
        if kind == _PLUS:
            if size > MAX_LINE:
                raise ProtocolError(f"a line longer than {MAX_LINE} bytes")
            return reply.decode("utf-8", "replace"), pos + size + 3
    elif cls is int:
        if kind == _COLON:
            return reply, pos + 3 + len(str(reply))
    elif reply is None:
        if kind in (_DOLLAR, _STAR):
            return None, pos + 5
    elif cls is ErrorReply and kind == _MINUS:
        end = data.index(b"\r\n", pos)
        if end - pos - 1 > MAX_LINE:
            raise ProtocolError(f"a line longer than {MAX_LINE} bytes")
        return reply, end + 2
    raise ProtocolError(f"unknown reply type {bytes([kind])!r}")


#: A stream entry's bytes up to its fields: an array of two, and the id.
_ENTRY = b"*2\r\n$%d\r\n%b\r\n%b"
#: The length of a header (type byte, digits, CRLF) for each small number.
_HEADS = 10_000
_HEAD = [3 + len(str(n)) for n in range(_HEADS)]
