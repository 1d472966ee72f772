"""The line codec: bytes in, lines (or reasons a line was refused) out.

No I/O here.  ``LineDecoder`` is fed whatever the transport read, in chunks
of any size, and returns what completed.  It never holds more than
``max_line`` bytes of an unfinished line: past the limit it stops buffering
and skips to the next newline, then reports the line as too long.
"""

from __future__ import annotations

from attrs import frozen

from sockchat._core.defaults import DEFAULT_MAX_LINE

__all__ = [
    "Decoded",
    "InvalidUtf8",
    "LineDecoder",
    "LineTooLong",
    "check_message",
    "encode_line",
]


@frozen
class LineTooLong:
    """A line longer than the limit arrived; it was skipped, not delivered."""

    length: int
    limit: int

    def __str__(self) -> str:
        return f"it has {self.length} bytes, over the {self.limit}-byte limit"


@frozen
class InvalidUtf8:
    """A line that is not valid UTF-8 arrived; it was not delivered."""

    reason: str

    def __str__(self) -> str:
        return f"it is not valid UTF-8 ({self.reason})"


#: What ``LineDecoder.feed`` yields: the text of a good line, or why a line was
#: refused.  Good lines are plain ``str`` so the common case allocates nothing
#: extra.
Decoded = str | LineTooLong | InvalidUtf8


class LineDecoder:
    """Split a byte stream into UTF-8 lines ending in ``\\n``.

    With ``strip_cr`` (the default, for what clients send) one ``\\r``
    before the newline is dropped, so telnet and Windows clients work.
    """

    __slots__ = (
        "_cr_last",
        "_parts",
        "_skipping",
        "max_line",
        "strip_cr",
        "unfinished",
    )

    def __init__(self, max_line: int = DEFAULT_MAX_LINE, *, strip_cr: bool = True):
        if max_line < 1:
            raise ValueError(f"max_line must be at least 1 byte, not {max_line}")
        #: The limit and the CR rule, and the bytes of the line under way
        #: (held, or skipped past the limit): read-only outside, and plain
        #: slots, as the engine's usual turn reads them inline.
        self.max_line = max_line
        self.strip_cr = strip_cr
        self._parts: list[bytes] = []
        self.unfinished = 0
        self._skipping = False
        #: While skipping: whether the last byte skipped was a CR, which is
        #: not counted in the length if the newline comes next.
        self._cr_last = False

    @property
    def buffered(self) -> int:
        """Bytes held for the unfinished line (never more than the limit + 1)."""
        return 0 if self._skipping else self.unfinished

    def feed(self, data: bytes) -> list[Decoded]:
        """Take the next chunk of the stream; return the lines it completed."""
        if not self.unfinished:
            # The usual case, one whole line in one read: no split, no join,
            # and _decode inline.
            end = len(data) - 1
            if end >= 0 and data.find(b"\n") == end:
                if self.strip_cr and end and data[end - 1] == 0x0D:
                    end -= 1
                if end <= self.max_line:
                    try:
                        return [data[:end].decode("utf-8")]
                    except UnicodeDecodeError:
                        pass
                return [self._decode(data[: len(data) - 1])]
        out: list[Decoded] = []
        if self._skipping:
            newline = data.find(b"\n")
            if newline < 0:
                self.unfinished += len(data)
                if data:
                    self._cr_last = data.endswith(b"\r")
                return out
            if newline:
                self._cr_last = data[newline - 1] == 0x0D
            out.append(
                LineTooLong(self._skipped(self.unfinished + newline), self.max_line)
            )
            self._skipping = False
            self.unfinished = 0
            data = data[newline + 1 :]
        if b"\n" not in data:
            self._hold(data)
            return out
        if self._parts:
            self._parts.append(data)
            data = b"".join(self._parts)
            self._parts = []
        lines = data.split(b"\n")
        rest = lines.pop()
        self.unfinished = 0
        for raw in lines:
            out.append(self._decode(raw))
        if rest:
            self._hold(rest)
        return out

    def finish(self) -> list[Decoded]:
        """The stream ended: return its last line if it had no newline."""
        if self._skipping:
            out: list[Decoded] = [
                LineTooLong(self._skipped(self.unfinished), self.max_line)
            ]
        elif self._parts:
            out = [self._decode(b"".join(self._parts))]
        else:
            out = []
        self._parts = []
        self.unfinished = 0
        self._skipping = False
        return out

    def _hold(self, data: bytes) -> None:
        self.unfinished += len(data)
        # One byte of slack leaves room for a CR before the newline.
        if self.unfinished > self.max_line + 1:
            self._skipping = True
            self._cr_last = data.endswith(b"\r")
            self._parts = []
        else:
            self._parts.append(data)

    def _skipped(self, length: int) -> int:
        """The length of a skipped line of *length* bytes, as ``_decode``
        would count it: a CR before its end is not part of the line."""
        return length - 1 if self.strip_cr and self._cr_last else length

    def _decode(self, raw: bytes) -> Decoded:
        if self.strip_cr and raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) > self.max_line:
            return LineTooLong(len(raw), self.max_line)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return InvalidUtf8(f"{e.reason} at byte {e.start + 1}")


def check_message(text: str) -> None:
    """Raise ``ValueError`` unless *text* can travel as one line unchanged."""
    if "\n" in text:
        raise ValueError("a message is one line: it cannot contain a newline")
    if text.endswith("\r"):
        raise ValueError(
            "a message cannot end with a carriage return (it would be stripped)"
        )


def encode_line(text: str) -> bytes:
    """Frame one client line: UTF-8 and a newline."""
    check_message(text)
    return text.encode("utf-8") + b"\n"
