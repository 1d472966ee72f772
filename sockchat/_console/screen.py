"""The operator's screen: lines printed above one prompt line.

``Screen`` owns the bottom line of a terminal, where a prompt (and, when it
edits, what the operator is typing) sits while other lines are printed
above it.  It writes through an injected ``write`` callable, asks an
injected *prompt* callable what the prompt is (``prompt(typing)``: a string,
or None for no prompt), and schedules with an injected clock, so it runs
without a terminal in tests.

It works in one of two modes:

- **line mode** (no editor): the terminal echoes what is typed and holds
  it until Enter, so the screen never sees it.  A printed line ends the
  prompt's line with a newline first; what was typed stays above.  This is
  also what a pipe gets, where nothing is echoed.
- **editing** (with a ``LineEditor``, for a terminal read key by key): the
  screen draws the prompt and the typed text itself.  A printed line
  erases the prompt's line (CR and erase-line), is printed, and the prompt
  is drawn again with the typed text.  A line too wide for the terminal
  scrolls sideways: its end is shown, after a ``<``.

Lines printed by someone else (twistd's log) are announced with
``interrupting`` (before) and ``interrupted`` (after): the prompt comes
back once, ``REDRAW_DELAY`` after the last of a burst.  After ``close``
there is no prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from wcwidth import iter_graphemes_reverse

from sockchat._console.lineedit import (
    Entered,
    LineEditor,
    LineEvent,
    TooLong,
)
from sockchat._core.render import columns_of, safe_text

__all__ = ["REDRAW_DELAY", "Screen", "columns_of"]

#: Seconds between log lines and the prompt they pushed up coming back: a
#: burst of lines gets one prompt, and a shutdown that a log line announces
#: (SIGINT) begins first, so that no prompt follows it.
REDRAW_DELAY = 0.1

#: Back to the start of the line, and erase it.
ERASE_LINE = "\r\x1b[K"


def _tail(text: str, columns: int) -> str:
    """The end of *text* that fits in *columns*, whole grapheme clusters
    only (an emoji is never cut in half)."""
    used = 0
    start = len(text)
    for cluster in iter_graphemes_reverse(text):
        taken = columns_of(cluster)
        if used + taken > columns:
            break
        used += taken
        start -= len(cluster)
    return text[start:]


class Screen:
    """A prompt line at the bottom of a terminal, lines printed above it.

    *prompt* says what the prompt is now, given whether the operator is
    typing (has typed something not yet entered); None: no prompt.  With an
    *editor*, the screen edits (see the module's docstring); *columns*
    gives the terminal's width (80 if not given).  *clock* schedules the
    redraw after log lines; by default, the global reactor.
    """

    def __init__(
        self,
        write: Callable[[str], None],
        prompt: Callable[[bool], str | None],
        clock: IReactorTime | None = None,
        *,
        editor: LineEditor | None = None,
        columns: Callable[[], int] | None = None,
    ) -> None:
        self._write = write
        self._prompt = prompt
        self._clock = clock
        self._editor = editor
        self._columns = columns or (lambda: 80)
        #: What ends the screen: the prompt (with the typed text, when
        #: editing) as drawn, or None when the cursor is at the start of a
        #: line.
        self._shown: str | None = None
        self._redraw: IDelayedCall | None = None
        self._closed = False

    @property
    def editing(self) -> bool:
        """Whether the screen draws what is typed (a ``LineEditor``)."""
        return self._editor is not None

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called: no more prompts."""
        return self._closed

    @property
    def typed(self) -> str | None:
        """What the operator has typed and not entered; None in line mode,
        where only the terminal knows."""
        return self._editor.text if self._editor is not None else None

    def print(self, text: str) -> None:
        """Print *text* (whole lines) above the prompt; ``refresh`` then
        draws the prompt again."""
        self._leave_prompt()
        self._write(text)

    def refresh(self) -> None:
        """Draw the prompt (and what is typed) if it is not on screen as it
        is now."""
        if self._closed or (self._editor is not None and self._editor.ended):
            return  # no prompt: nothing typed would be read
        typing = bool(self.typed)
        prompt = self._prompt(typing)
        if self._editor is None:
            if prompt is not None and prompt != self._shown:
                self._write(prompt)
                self._shown = prompt
            return
        if prompt is None:
            if self._shown is not None:
                self._write(ERASE_LINE)
                self._shown = None
            return
        line = prompt + self._visible(prompt, safe_text(self._editor.text))
        if line != self._shown:
            self._write(ERASE_LINE + line)
            self._shown = line

    def _visible(self, prompt: str, typed: str) -> str:
        room = max(self._columns() - 1 - columns_of(prompt), 2)
        if columns_of(typed) <= room:
            return typed
        return "<" + _tail(typed, room - 1)

    def entered(self) -> None:
        """In line mode: the operator pressed Enter, so the terminal's echo
        has ended the prompt's line.  (Editing, the screen ends it.)"""
        if self._editor is None:
            self._shown = None

    def _leave_prompt(self) -> None:
        """Make room at the start of a line: end the prompt's line (line
        mode), or erase it (editing)."""
        if self._shown is not None:
            self._write("\n" if self._editor is None else ERASE_LINE)
            self._shown = None

    def keys(self, data: bytes, handle: Callable[[LineEvent], None]) -> None:
        """Editing: take keys read from the terminal, show the line, and
        *handle* each event in turn (a paste of several lines is several
        Enters, each handled before the next line is begun)."""
        editor = self._editor
        if editor is None:
            raise ValueError("keys() needs a screen that edits (a LineEditor)")
        if self._closed:
            return
        editor.receive(data)
        while (event := editor.next_event()) is not None:
            if isinstance(event, Entered | TooLong):
                # The line as entered stays on screen, whole, above what
                # follows.
                shown = event.text if isinstance(event, Entered) else ""
                prompt = self._prompt(bool(shown)) or ""
                if isinstance(event, TooLong):
                    line = self._shown or prompt
                else:
                    line = prompt + safe_text(shown)
                self._write(ERASE_LINE + line + "\n")
                self._shown = None
            handle(event)
            if self.closed:  # the handler stopped it: what follows is dropped
                return
        self.refresh()

    def interrupting(self) -> None:
        """Someone else is about to print a line: make room for it."""
        if self._shown is not None:
            self._leave_prompt()
            self._redraw_soon()

    def interrupted(self) -> None:
        """Someone else printed a line: show the prompt again, once, after
        everything printed in the same moment."""
        self._shown = None  # pushed up, if interrupting() was not told
        self._redraw_soon()

    def _redraw_soon(self) -> None:
        if self._closed or (self._redraw is not None and self._redraw.active()):
            return
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = cast(IReactorTime, reactor)
        self._redraw = self._clock.callLater(REDRAW_DELAY, self._redrawn)

    def _redrawn(self) -> None:
        self._redraw = None
        if self._shown is None:
            self.refresh()

    def close(self) -> None:
        """No more prompts: end the prompt's line, and leave what is on it."""
        if self._closed:
            return
        self._closed = True
        if self._redraw is not None and self._redraw.active():
            self._redraw.cancel()
        self._redraw = None
        if self._shown is not None:
            self._write("\n")
            self._shown = None
