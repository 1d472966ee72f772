"""Line editing for a terminal read key by key, without I/O.

A terminal in non-canonical mode (ICANON and ECHO off) hands the program
each key as it is pressed.  ``LineEditor`` turns those bytes into the line
being typed and into events, in the manner of h11: ``receive`` takes bytes,
``next_event`` returns the next ``Entered``, ``TooLong``, ``NotUtf8`` or
``EndOfInput``, or None when it needs more bytes, and ``text`` is the line
typed so far *at that point*: after an ``Entered``, the text behind it in
the same chunk (a paste of several lines) is not yet part of it.

The keys it knows:

- printable characters, in UTF-8 (Chinese, emoji, accents), and Tab;
- Backspace and DEL erase the last grapheme cluster: what shows as one
  character, whatever its code points (a letter with its accents, 👍🏽 with
  its skin tone, a family joined by zero-width joiners, a flag), by the
  rules of Unicode's UAX #29 as the ``wcwidth`` library applies them;
  Ctrl-U erases the whole line, Ctrl-W the last word;
- Enter (CR, LF, or CR LF as one) ends the line; Ctrl-D on an empty line
  ends the input, as it does in line mode;
- escape sequences (arrows, function keys, Alt-keys) are consumed and
  ignored, never inserted;
- a bracketed paste (``ESC [ 200 ~`` … ``ESC [ 201 ~``) is text: its
  newlines are Enters, and its other control characters are dropped, so a
  pasted Ctrl-D or Ctrl-U edits nothing.

A line is at most *max_line* bytes of UTF-8, as in line mode: what is
typed past that is dropped, and Enter gives ``TooLong``, not the line.
Bytes that are not UTF-8 are dropped, with one ``NotUtf8`` per line.
"""

from __future__ import annotations

import enum
from collections import deque

from attrs import frozen
from wcwidth import grapheme_boundary_before

from sockchat._core.codec import LineTooLong
from sockchat._core.defaults import DEFAULT_MAX_LINE

__all__ = [
    "EndOfInput",
    "Entered",
    "LineEditor",
    "LineEvent",
    "NotUtf8",
    "TooLong",
]


@frozen
class Entered:
    """Enter was pressed: *text* is the line."""

    text: str


@frozen
class TooLong:
    """Enter was pressed on a line over the limit: it is not delivered."""

    problem: LineTooLong


@frozen
class NotUtf8:
    """Bytes that are not UTF-8 were typed, and dropped (once per line)."""


@frozen
class EndOfInput:
    """Ctrl-D on an empty line: nothing more will be read."""


LineEvent = Entered | TooLong | NotUtf8 | EndOfInput


class _State(enum.Enum):
    TEXT = enum.auto()
    UTF8 = enum.auto()  # inside a multi-byte character
    ESC = enum.auto()  # after ESC
    CSI = enum.auto()  # after ESC [
    SS3 = enum.auto()  # after ESC O


ESC = 0x1B
CR, LF, TAB = 0x0D, 0x0A, 0x09
BS, DEL = 0x08, 0x7F
CTRL_D, CTRL_U, CTRL_W = 0x04, 0x15, 0x17
PASTE_START, PASTE_END = b"200", b"201"
#: Parameter bytes kept of one CSI sequence (enough for 200 and 201).
CSI_KEPT = 16


def _utf8_length(lead: int) -> int:
    """Bytes of the character that *lead* starts; 0: not a lead byte."""
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


class LineEditor:
    """The line being typed at a terminal, and what the keys did."""

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError(f"max_line must be at least 1 byte, not {max_line}")
        self._max = max_line
        self._pending = bytearray()
        self._events: deque[LineEvent] = deque()
        self._chars: list[str] = []
        self._size = 0  # UTF-8 bytes in _chars
        self._over = 0  # bytes typed past the limit on this line
        self._state = _State.TEXT
        self._seq = bytearray()  # the character or sequence under way
        self._need = 0  # bytes of the UTF-8 character under way
        self._after_cr = False  # the last byte was a CR (an LF next is the same Enter)
        self._pasting = False
        self._said_not_utf8 = False
        self._ended = False

    @property
    def text(self) -> str:
        """The line typed so far, up to the last event returned."""
        return "".join(self._chars)

    @property
    def ended(self) -> bool:
        """Whether the input has ended (Ctrl-D on an empty line)."""
        return self._ended

    @property
    def pasting(self) -> bool:
        """Whether the bytes so far end inside a bracketed paste."""
        return self._pasting

    def receive(self, data: bytes) -> None:
        """Take the next bytes read from the terminal."""
        if not self._ended:
            self._pending += data

    def next_event(self) -> LineEvent | None:
        """The next event, or None once every byte received is used."""
        pending = self._pending
        used = 0
        while not self._events and used < len(pending):
            self._byte(pending[used])
            used += 1
        del pending[:used]
        if self._ended:
            pending.clear()
        return self._events.popleft() if self._events else None

    def events(self, data: bytes) -> list[LineEvent]:
        """Receive *data* and return all its events (``text`` is then the
        line after the last of them)."""
        self.receive(data)
        found = []
        while (event := self.next_event()) is not None:
            found.append(event)
        return found

    # One byte at a time.

    def _byte(self, b: int) -> None:
        state = self._state
        if state is _State.TEXT:
            self._text_byte(b)
        elif state is _State.UTF8:
            if 0x80 <= b <= 0xBF:
                self._seq.append(b)
                if len(self._seq) == self._need:
                    self._state = _State.TEXT
                    try:
                        char = self._seq.decode("utf-8")
                    except UnicodeDecodeError:  # overlong, surrogate, too big
                        self._not_utf8()
                    else:
                        self._insert(char)
            else:  # cut short: drop what came, and read this byte afresh
                self._state = _State.TEXT
                self._not_utf8()
                self._text_byte(b)
        elif state is _State.ESC:
            if b == ord("["):
                self._state = _State.CSI
                self._seq.clear()
            elif b == ord("O"):
                self._state = _State.SS3
            elif b == ESC:
                pass  # ESC ESC: still one escape under way
            elif 0x20 <= b < 0x7F:
                self._state = _State.TEXT  # Alt and a key: ignored
            else:  # a lone ESC, then a key that means something
                self._state = _State.TEXT
                self._text_byte(b)
        elif state is _State.CSI:
            if 0x20 <= b <= 0x3F:  # parameters and intermediates
                if len(self._seq) < CSI_KEPT:
                    self._seq.append(b)
            elif 0x40 <= b <= 0x7E:  # the final byte
                self._state = _State.TEXT
                if b == ord("~") and self._seq == PASTE_START:
                    self._pasting = True
                elif b == ord("~") and self._seq == PASTE_END:
                    self._pasting = False
            else:  # not a sequence after all
                self._state = _State.TEXT
                self._text_byte(b)
        else:  # SS3: one more byte names the key
            self._state = _State.TEXT
            if not 0x20 <= b < 0x7F:
                self._text_byte(b)

    def _text_byte(self, b: int) -> None:
        after_cr, self._after_cr = self._after_cr, False
        if b == CR:
            self._after_cr = True
            self._enter()
        elif b == LF:
            if not after_cr:
                self._enter()
        elif b == ESC:
            self._state = _State.ESC
        elif 0x20 <= b < 0x7F or b == TAB:
            self._insert(chr(b))
        elif b >= 0x80:
            self._need = _utf8_length(b)
            if self._need:
                self._state = _State.UTF8
                self._seq[:] = bytes([b])
            else:
                self._not_utf8()
        elif self._pasting:
            pass  # pasted control characters are text, not keys: dropped
        elif b in (BS, DEL):
            self._rub_out()
        elif b == CTRL_U:
            self._kill()
        elif b == CTRL_W:
            self._rub_out_word()
        elif b == CTRL_D and not self._chars and not self._over:
            self._ended = True
            self._events.append(EndOfInput())
        # Other control keys do nothing.

    # Edits.

    def _insert(self, char: str) -> None:
        size = len(char.encode("utf-8"))
        if self._over or self._size + size > self._max:
            self._over += size
            return
        self._chars.append(char)
        self._size += size

    def _pop(self) -> str:
        char = self._chars.pop()
        self._size -= len(char.encode("utf-8"))
        return char

    def _rub_out(self) -> None:
        # The whole last grapheme cluster goes: where it begins depends on
        # what comes before it (a flag is a pair of regional indicators,
        # counted from the start of their run), so the whole line is asked.
        chars = self._chars
        if chars:
            start = grapheme_boundary_before("".join(chars), len(chars))
            while len(chars) > start:
                self._pop()

    def _rub_out_word(self) -> None:
        while self._chars and self._chars[-1].isspace():
            self._pop()
        while self._chars and not self._chars[-1].isspace():
            self._pop()

    def _kill(self) -> None:
        self._chars.clear()
        self._size = 0
        self._over = 0

    def _enter(self) -> None:
        if self._over:
            problem = LineTooLong(self._size + self._over, self._max)
            self._events.append(TooLong(problem))
        else:
            self._events.append(Entered(self.text))
        self._kill()
        self._said_not_utf8 = False

    def _not_utf8(self) -> None:
        if not self._said_not_utf8:
            self._said_not_utf8 = True
            self._events.append(NotUtf8())
