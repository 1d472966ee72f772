"""Framings: where one message ends on the wire.  No I/O here.

- ``LineFraming`` (the default): each message is a UTF-8 line ending in
  ``\\n``; notices start with ``!``.  See docs/protocol.md.
- ``RawFraming``: the tutorial's way.  Each chunk that arrives, up to
  ``RAW_MESSAGE_SIZE`` bytes (the tutorial's ``recv(1024)``), is one message,
  and a message is sent as its bare UTF-8 bytes, with no newline.  The
  server sends only answers, and in the answer's place an error or a last
  goodbye.  TCP is a stream, so messages sent close together can merge and
  long ones can split: see docs/sticky-packets.md.

A framing makes decoders for incoming bytes and encodes what goes out; the
turn-taking is the same for both (the engine, ``ClientTurns``).
"""

from __future__ import annotations

from typing import Protocol

from attrs import frozen

from sockchat._core.codec import (
    Decoded,
    InvalidUtf8,
    LineDecoder,
    LineTooLong,
    encode_line,
)
from sockchat._core.wire import Notice, NoticeKind, encode_answer, encode_notice

__all__ = [
    "FRAMINGS",
    "RAW_MESSAGE_SIZE",
    "Decoder",
    "Framing",
    "LineFraming",
    "RawDecoder",
    "RawFraming",
    "framing_named",
]

#: Most bytes in one raw message, as in the tutorial's ``recv(1024)``.
RAW_MESSAGE_SIZE = 1024


class Decoder(Protocol):
    """Bytes in, messages (or reasons a message was refused) out."""

    @property
    def buffered(self) -> int:
        """Bytes held for a message not yet complete."""

    @property
    def unfinished(self) -> int:
        """Bytes of the message under way, held or skipped."""

    def feed(self, data: bytes) -> list[Decoded]:
        """Take the next chunk of the stream; return the messages it completed."""


class Framing(Protocol):
    """How messages are cut from the stream and put on it."""

    @property
    def name(self) -> str:
        """``line`` or ``raw``, as the ``--framing`` options spell it."""

    @property
    def greets(self) -> bool:
        """True if the server's first message is a notice such as the welcome."""

    @property
    def takes_telnet(self) -> bool:
        """True if the server takes telnet commands out of client input."""

    @property
    def queues_out_of_turn(self) -> bool:
        """True if a message that arrives while an answer is owed waits its turn.

        False: it is refused at once with an ``out-of-turn`` notice.
        """

    def decoder(self, max_size: int, *, strip_cr: bool = True) -> Decoder:
        """A decoder for one direction of one connection."""

    def encode_message(self, text: str) -> bytes:
        """Frame a client message; ``ValueError`` says why it cannot travel."""

    def encode_answer(self, text: str) -> bytes:
        """Frame an answer; ``ValueError`` says why it cannot travel."""

    def encode_notice(self, notice: Notice) -> bytes:
        """Frame a notice; empty when this framing does not send it."""

    def as_server_line(self, text: str) -> str:
        """A received message as the line protocol would have sent it."""


@frozen
class LineFraming:
    """UTF-8 lines ending in ``\\n``, with ``!`` notices: the default."""

    name = "line"
    greets = True
    takes_telnet = True
    queues_out_of_turn = False

    def decoder(self, max_size: int, *, strip_cr: bool = True) -> LineDecoder:
        return LineDecoder(max_size, strip_cr=strip_cr)

    def encode_message(self, text: str) -> bytes:
        return encode_line(text)

    def encode_answer(self, text: str) -> bytes:
        if "\n" in text:
            raise ValueError("the answer has a newline in it")
        return encode_answer(text)

    def encode_notice(self, notice: Notice) -> bytes:
        return encode_notice(notice)

    def as_server_line(self, text: str) -> str:
        return text


#: Notices a raw client never hears: the welcome (and any other status),
#: and the goodbye to a client that quit or closed its side itself.
_RAW_UNSAID = frozenset({"quit", "end-of-input"})


@frozen
class RawFraming:
    """The tutorial's framing: each chunk is a message, with no newline.

    What the server sends in raw framing is one message per message it got:
    the answer, or in its place an error notice's text (``!error ...``,
    with no newline).  A bye notice is sent the same way, as the last
    message, except to a client that quit or closed its side itself.  Info
    notices, the welcome among them, are never sent.
    """

    name = "raw"
    greets = False
    takes_telnet = False
    queues_out_of_turn = True

    def decoder(self, max_size: int, *, strip_cr: bool = True) -> RawDecoder:
        return RawDecoder(max_size)

    def encode_message(self, text: str) -> bytes:
        return _raw(text, "a message")

    def encode_answer(self, text: str) -> bytes:
        return _raw(text, "the answer")

    def encode_notice(self, notice: Notice) -> bytes:
        if notice.kind is NoticeKind.INFO or notice.code in _RAW_UNSAID:
            return b""
        return encode_notice(notice).rstrip(b"\n")

    def as_server_line(self, text: str) -> str:
        # Raw framing has no notices: a message that starts with "!" is an
        # answer too, so stuff it as the line protocol would.
        return "!" + text if text.startswith("!") else text


def _raw(text: str, what: str) -> bytes:
    data = text.encode("utf-8")
    if not data:
        raise ValueError(f"{what} is empty, and raw framing cannot send nothing")
    if len(data) > RAW_MESSAGE_SIZE:
        raise ValueError(
            f"{what} has {len(data)} bytes, over raw framing's "
            f"{RAW_MESSAGE_SIZE}-byte message size"
        )
    return data


class RawDecoder:
    """Cut a byte stream into messages of at most ``RAW_MESSAGE_SIZE`` bytes.

    Each chunk fed is one message, or several if it is longer than the
    message size.  A UTF-8 character cut off at the end of a chunk is not
    refused: its first bytes are carried over to the start of the next
    message.  A message longer than *max_size* (possible only when that is
    below the message size) is refused, as a line over the limit would be.
    """

    __slots__ = ("_carry", "_max")

    def __init__(self, max_size: int = RAW_MESSAGE_SIZE) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1 byte, not {max_size}")
        self._max = max_size
        self._carry = b""

    @property
    def buffered(self) -> int:
        return len(self._carry)

    @property
    def unfinished(self) -> int:
        return len(self._carry)

    def feed(self, data: bytes) -> list[Decoded]:
        data, self._carry = self._carry + data, b""
        out: list[Decoded] = []
        while data:
            piece, data = data[:RAW_MESSAGE_SIZE], data[RAW_MESSAGE_SIZE:]
            text, cut = _decode_prefix(piece)
            if cut is not None:  # the piece ends inside a character
                if data:  # the rest of it follows in this chunk
                    data = piece[cut:] + data
                else:
                    self._carry = piece[cut:]
                piece = piece[:cut]
                if not piece:
                    continue
            if len(piece) > self._max:
                out.append(LineTooLong(len(piece), self._max))
            else:
                out.append(text)
        return out

    def finish(self) -> list[Decoded]:
        """The stream ended: a carried part of a character is not a message."""
        self._carry = b""
        return []


def _decode_prefix(piece: bytes) -> tuple[Decoded, int | None]:
    """Decode *piece*; if it ends inside a character, say where that starts.

    Returns ``(text, None)`` for a whole piece, ``(text, cut)`` when the
    bytes from ``cut`` on begin a character that the piece does not finish,
    and ``(InvalidUtf8, None)`` when the piece is not UTF-8.
    """
    try:
        return piece.decode("utf-8"), None
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data" and e.end == len(piece):
            return piece[: e.start].decode("utf-8"), e.start
        return InvalidUtf8(f"{e.reason} at byte {e.start + 1}"), None


#: The framings by the names that ``--framing`` takes.
FRAMINGS: dict[str, Framing] = {"line": LineFraming(), "raw": RawFraming()}


def framing_named(name: str) -> Framing:
    """The framing called *name*; ``ValueError`` names the choices."""
    try:
        return FRAMINGS[name]
    except KeyError:
        raise ValueError(
            f"unknown framing {name!r}; choose one of: {', '.join(FRAMINGS)}"
        ) from None
