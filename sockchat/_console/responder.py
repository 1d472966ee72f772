"""The tutorial's server operator, as a responder.

Each client line is shown, labelled with the client that sent it, and the
operator types the answer at ``server --> client N:``.  With several clients
waiting, the oldest unanswered line is answered first and the prompt names
its client.  Lines that start with ``/`` are commands (``/help`` lists
them): list the clients, answer one out of order, disconnect one.  All
client text is shown through ``safe_text``, and a long line as an excerpt
with its length.

One rule keeps an answer from reaching the wrong client: a line begun at one
client's prompt never goes to another client.  How exactly the console
keeps it depends on what it can see:

- **Editing** (stdin and stdout are a terminal, read key by key; see
  ``lineedit.py`` and ``screen.py``, beside it): the console sees the first key, so it
  knows when a line was begun and for whom.  If that client stops waiting
  without the operator's doing (it left, or its line timed out) while the
  line is under way, or the line was begun when nobody was waiting and a
  client speaks before Enter, the line is not sent to anyone.  The prompt
  names nobody at once and says why; the typed text stays on it; at Enter
  the console says it was not sent.  If nothing was typed yet, the prompt
  simply names the next client.
- **Line mode** (stdin a pipe, or stdout not a terminal): the console sees
  a line only when Enter is pressed, so it cannot tell when the line was
  begun.  It assumes a line was under way: if the client whose prompt was
  on screen stops waiting by itself, the next line entered is not sent.

Commands still run: they name their client.

``ConsoleResponder`` writes through an injected ``write`` callable (through
a ``Screen``), takes the operator's lines through ``operator_says`` (or keys
through ``OperatorInput``) and schedules with an injected clock, so it runs
without a terminal in tests; ``OperatorInput`` connects it to stdin.
"""

from __future__ import annotations

import enum
import typing
from collections import deque
from collections.abc import Callable
from typing import cast

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockchat._console.lineedit import (
    EndOfInput,
    Entered,
    LineEditor,
    LineEvent,
    NotUtf8,
    TooLong,
)
from sockchat._console.screen import REDRAW_DELAY, Screen
from sockchat._core.codec import LineDecoder
from sockchat._core.render import safe_text
from sockchat._core.wire import QUIT
from sockchat._responders.contract import (
    ConversationInfo,
    IAnsweredByPeople,
    IConversation,
    ILifecycle,
    IResponder,
)

__all__ = ["REDRAW_DELAY", "ConsoleResponder", "Elsewhere", "OperatorInput", "Screen"]

log = Logger(namespace="sockchat.console")

#: Characters of a client line that the console shows; a longer line is
#: cut there, with its length, so that one line cannot fill the screen.
EXCERPT = 200

#: The prompt for a line begun when nobody is waiting (editing only).
NOBODY = "server --> nobody: "


def excerpt(text: str, *, quoted: bool = True, limit: int = EXCERPT) -> str:
    """*text* made safe (and *quoted*); past *limit* characters, cut, with
    its length."""
    shown = safe_text(text[:limit])
    cut = len(text) > limit
    if quoted:
        shown = f'"{shown}…"' if cut else f'"{shown}"'
    elif cut:
        shown += "…"
    return f"{shown} ({len(text):,} characters)" if cut else shown


@frozen(eq=False)
class _Waiting:
    conversation: ConversationInfo
    text: str
    answer: Deferred[str]

    def label(self) -> str:
        return f"client {self.conversation.id} ({self.conversation.peer})"


class _Why(enum.Enum):
    LEFT = enum.auto()  # the client left
    TIMED_OUT = enum.auto()  # its line timed out (--answer-timeout)
    EARLY = enum.auto()  # the line was begun before the client spoke


@frozen
class _Lost:
    """The line under way is not for the client that is answered next."""

    entry: _Waiting
    why: _Why

    def reason(self) -> str:
        cid = self.entry.conversation.id
        if self.why is _Why.LEFT:
            return f"client {cid} left"
        if self.why is _Why.TIMED_OUT:
            return f"client {cid}'s line timed out"
        return f"begun before client {cid} spoke"

    def prompt(self) -> str:
        return f"server --> nobody ({self.reason()}; Enter): "


@frozen(eq=False)
class _Cancelled:
    """A waiting line the server cancelled, not yet reported."""

    entry: _Waiting
    shown: bool  # its prompt was the last one the operator saw
    call: IDelayedCall  # reports it as timed out, unless it ends first


HELP = f"""\
commands (anything else answers the oldest waiting line):
  /list          the clients, who is waiting for you, and their last lines
  /to ID TEXT    answer client ID now, even if others have waited longer
  /kick ID       end client ID's conversation and disconnect it
  /help          this list
  //TEXT         answer with a line that starts with "/"
  {QUIT}              (as an answer) end that client's conversation
"""


class Elsewhere(typing.Protocol):
    """What a console asks about a client whose line is not waiting on it:
    across instances, it may wait in the shared queue, or another operator
    may hold it (``sockchat._broker.operators.OperatorDesk``)."""

    def state(self, number: int) -> tuple[str, str] | None:
        """(how client *number*'s line stands, the line), or None."""

    def take(self, number: int, text: str) -> bool:
        """``/to`` *number* *text*: take that client's line and answer it
        (saying on the console what came of it); False if no line of its
        is known to wait."""


@implementer(IResponder, ILifecycle, IAnsweredByPeople)
class ConsoleResponder:
    """Answers come from a person; lines wait their turn, oldest first.

    *clock* schedules what waits for the current event to finish (saying
    why a line stopped waiting, redrawing the prompt after log lines); by
    default, the global reactor.  Everything is shown through ``screen``, a
    ``Screen`` over *write*: in line mode by default; with *editing*, it
    draws what the operator types, fed to it by ``OperatorInput`` (or
    ``screen.keys``), and *columns* gives the terminal's width.
    """

    def __init__(
        self,
        write: Callable[[str], None],
        clock: IReactorTime | None = None,
        *,
        editing: bool = False,
        columns: Callable[[], int] | None = None,
    ) -> None:
        self._clock = clock
        self.screen = Screen(
            write,
            self.prompt_text,
            clock,
            editor=LineEditor() if editing else None,
            columns=columns,
        )
        self._queue: deque[_Waiting] = deque()
        #: Set when the line under way is not for the client answered next
        #: (see the module's docstring): the next line entered is not sent.
        self._lost: _Lost | None = None
        #: Lines cancelled but not yet reported: left, or timed out?
        self._cancelled: dict[int, _Cancelled] = {}
        self._closing = False
        self._clients: dict[int, IConversation] = {}
        self._last: dict[int, str] = {}  # each client's last line
        #: Where lines not on this console may wait (operators across
        #: instances): ``/list`` says how they stand, ``/to`` takes them.
        self.elsewhere: Elsewhere | None = None

    def _later(self, f: Callable[[], None], delay: float = 0) -> IDelayedCall:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = cast(IReactorTime, reactor)
        return self._clock.callLater(delay, f)

    def started(self, conversation: IConversation) -> None:
        self._clients[conversation.info.id] = conversation

    def ended(self, conversation: IConversation, reason: str) -> None:
        cid = conversation.info.id
        self._clients.pop(cid, None)
        self._last.pop(cid, None)
        if cid in self._cancelled:  # its line was cancelled because it left
            self._report(cid, left=True)

    @property
    def waiting(self) -> int:
        """How many client lines wait for the operator."""
        return len(self._queue)

    def respond(self, conversation: ConversationInfo, text: str) -> Deferred[str]:
        self._flush_cancelled()  # in the order it happened
        answer: Deferred[str] = Deferred(canceller=self._abandoned)
        entry = _Waiting(conversation, text, answer)
        self._last[conversation.id] = text
        if not self._queue and self._lost is None and self.screen.typed:
            # A line begun when nobody was waiting is for nobody.
            self._lost = _Lost(entry, _Why.EARLY)
        self._queue.append(entry)
        ahead = len(self._queue) - 1
        note = f"  [{ahead} waiting before it]" if ahead else ""
        self._show(f"{entry.label()}: {excerpt(text, quoted=False)}{note}")
        return answer

    def operator_says(self, text: str) -> None:
        """The operator typed *text*: a command, or the answer to the client
        whose prompt was on screen."""
        self._flush_cancelled()  # say first why a line stopped waiting
        self.screen.entered()
        lost, self._lost = self._lost, None
        if text.startswith("/") and not text.startswith("//"):
            self._command(text)
            return
        if lost is not None:
            self._not_sent(lost, text)
            return
        if text.startswith("//"):
            text = text[1:]
        if not self._queue:
            self._show(
                f"nobody is waiting for an answer; {excerpt(text)} was not sent."
            )
            return
        self._answer(self._queue[0], text)

    def _not_sent(self, lost: _Lost, text: str) -> None:
        if not text:  # only Enter: nothing was lost
            self._next()
            return
        if self._queue:
            head = self._queue[0].conversation.id
            then = f"type it again to answer client {head}, or /to ID TEXT."
        else:
            then = "nobody else is waiting; /to ID TEXT answers one when it is."
        self.screen.print(f"{lost.reason()}; {excerpt(text)} was not sent: {then}\n")
        self._next()

    def _next(self) -> None:
        """Show the line that is answered next, and its prompt."""
        if self._queue:
            head = self._queue[0]
            text = excerpt(head.text, quoted=False)
            self.screen.print(f"next, {head.label()}: {text}\n")
        self.screen.refresh()

    def _answer(self, entry: _Waiting, text: str) -> None:
        head = self._queue[0]
        self._queue.remove(entry)
        if text == QUIT:
            self.screen.print(f"(you ended the conversation with {entry.label()})\n")
        entry.answer.callback(text)
        if self._queue and self._queue[0] is not head:
            self._next()
        else:
            self.screen.refresh()

    def _command(self, line: str) -> None:
        name, _, rest = line.partition(" ")
        if name == "/help":
            self._show(HELP.rstrip("\n"))
        elif name == "/list":
            self._show(self._listing())
        elif name == "/to":
            number, _, text = rest.partition(" ")
            if self._client(number, "/to ID TEXT") is None:
                return
            if not text:
                self._show(f"usage: /to ID TEXT (nothing was sent to client {number})")
                return
            entry = self._waiting_entry(int(number))
            if entry is not None:
                self._answer(entry, text)
            elif self.elsewhere is None or not self.elsewhere.take(int(number), text):
                self._show(
                    f"client {number} is not waiting for an answer; nothing was sent"
                )
        elif name == "/kick":
            conversation = self._client(rest.strip(), "/kick ID")
            if conversation is not None:
                cid = conversation.info.id
                for entry in [e for e in self._queue if e.conversation.id == cid]:
                    self._queue.remove(entry)  # so that it is not reported as left
                log.info("the operator disconnected conversation {cid}", cid=cid)
                conversation.end("kicked", "the operator ended this conversation.")
                self._show(f"(you disconnected client {cid})")
        else:
            self._show(
                f"unknown command {safe_text(name)}; /help lists the commands "
                "(type //text to answer with a line that starts with /)"
            )

    def _client(self, number: str, usage: str) -> IConversation | None:
        if not number.isdigit():
            self._show(f"usage: {usage} (ID is a client number; /list shows them)")
            return None
        conversation = self._clients.get(int(number))
        if conversation is None:
            self._show(f"there is no client {number} (/list shows who is connected)")
        return conversation

    def _waiting_entry(self, cid: int) -> _Waiting | None:
        for entry in self._queue:
            if entry.conversation.id == cid:
                return entry
        return None

    def answer_client(self, cid: int, text: str) -> bool:
        """Answer client *cid*'s waiting line with *text*, as ``/to`` does;
        False if it has none."""
        entry = self._waiting_entry(cid)
        if entry is None:
            return False
        self._answer(entry, text)
        return True

    def _listing(self) -> str:
        if not self._clients:
            return "no clients are connected."
        waiting = {e.conversation.id: n for n, e in enumerate(self._queue, 1)}
        lines = [f"{len(self._clients)} connected, {len(self._queue)} waiting for you:"]
        for cid in sorted(self._clients):
            info = self._clients[cid].info
            last = self._last.get(cid)
            said = excerpt(last) if last is not None else "(nothing yet)"
            state = f"waiting #{waiting[cid]}" if cid in waiting else "their turn"
            there = self.elsewhere.state(cid) if self.elsewhere is not None else None
            if cid not in waiting and there is not None:
                state, said = there[0], excerpt(there[1])
            lines.append(f"  client {cid} ({info.peer}) {state}: {said}")
        return "\n".join(lines)

    def operator_error(self, message: str) -> None:
        """Tell the operator something went wrong with what they typed."""
        self._flush_cancelled()
        self.screen.entered()
        if self._lost is not None:  # that was the line begun for it
            self._lost = None
            self.screen.print(message + "\n")
            self._next()
            return
        self._show(message)

    def say(self, message: str) -> None:
        """Show a line of the console's own above the prompt (the line
        under way goes on)."""
        self._flush_cancelled()
        self._show(message)

    def close(self) -> None:
        """The server is stopping: list what will go unanswered, once.

        From here on there is no prompt: nothing typed would be sent.
        """
        if self._closing:
            return
        self._closing = True
        for cancelled in self._cancelled.values():
            if cancelled.call.active():
                cancelled.call.cancel()
        self._cancelled.clear()
        typed = self.screen.typed
        self.screen.close()
        if typed:
            self.screen.print(
                f"you had typed {excerpt(typed)} without Enter; it was not sent.\n"
            )
        if not self._queue:
            return
        self.screen.print(f"unanswered at shutdown ({len(self._queue)}):\n")
        for entry in self._queue:
            text = excerpt(entry.text, quoted=False)
            self.screen.print(f"  {entry.label()}: {text}\n")

    def interrupting(self) -> None:
        """Something else (a log line) is about to be printed: end or erase
        the prompt's line first, so that it starts on a line of its own."""
        self.screen.interrupting()

    def interrupted(self) -> None:
        """Something else (a log line) was printed: show the prompt again
        (with what is typed), once, after everything printed in the same
        moment."""
        self.screen.interrupted()

    def _abandoned(self, answer: Deferred[str]) -> None:
        """The server cancelled a waiting line: the client left, or the
        answer took longer than ``--answer-timeout``.

        The server says which only by what follows: a client that left is
        ``ended`` at once, one that timed out is not.  So unless it has
        ended already, the report waits for the current event to finish.
        """
        for entry in self._queue:
            if entry.answer is answer:
                break
        else:
            return  # answered or kicked already
        # Was a line under way for it?  Its prompt was the last one the
        # operator saw, and (editing: known; line mode: assumed) something
        # was typed there.
        shown = (
            self._lost is None and self._queue[0] is entry and self.screen.typed != ""
        )
        self._queue.remove(entry)
        if self._closing:
            return  # already listed by close()
        cid = entry.conversation.id
        self._cancelled[cid] = _Cancelled(
            entry, shown, self._later(lambda: self._report(cid, left=False))
        )
        if cid not in self._clients:  # ended already: it left
            self._report(cid, left=True)

    def _flush_cancelled(self) -> None:
        """Report cancelled lines now: something else is to be shown."""
        for cid in list(self._cancelled):
            self._report(cid, left=cid not in self._clients)

    def _report(self, cid: int, *, left: bool) -> None:
        """Say why client *cid*'s line stopped waiting."""
        cancelled = self._cancelled.pop(cid)
        if cancelled.call.active():
            cancelled.call.cancel()
        entry = cancelled.entry
        if left:
            line = (
                f"{entry.label()} left; its line {excerpt(entry.text)} goes unanswered."
            )
        else:
            line = (
                f"{entry.label()}: no answer within --answer-timeout, so its line "
                f"{excerpt(entry.text)} timed out; the client has its turn back."
            )
        if cancelled.shown:
            # The operator may be typing its answer: that line is not sent.
            self._lost = _Lost(entry, _Why.LEFT if left else _Why.TIMED_OUT)
            line += (
                f"\nA line you had begun for client {cid} will not be sent to "
                "anyone: press Enter to go on."
            )
        self._show(line)

    def _show(self, line: str) -> None:
        """Print a line of its own, then the prompt again."""
        self.screen.print(line + "\n")
        self.screen.refresh()

    def prompt_text(self, typing: bool = False) -> str | None:
        """The prompt now: whom the line under way goes to (*typing*: the
        operator has typed something, as far as the screen knows); None:
        no prompt.  The screen's prompt provider; a console elsewhere (a
        remote one) may ask it too."""
        if self._closing:
            return None
        if self._lost is not None:
            return self._lost.prompt()
        if self._queue:
            return f"server --> client {self._queue[0].conversation.id}: "
        return NOBODY if typing else None


class OperatorInput(Protocol):
    """Feed what the operator types (stdin) to a ``ConsoleResponder``:
    lines in line mode; keys, through its screen's editor, when it edits.

    *on_close* is called once, at end of input (Ctrl-D on an empty line
    when editing, or stdin closed).
    """

    def __init__(self, console: ConsoleResponder, on_close: Callable[[], None]) -> None:
        self._console = console
        self._on_close = on_close
        self._closed = False
        self._decoder = LineDecoder()

    def dataReceived(self, data: bytes) -> None:
        if self._console.screen.editing:
            self._console.screen.keys(data, self._event)
            return
        for item in self._decoder.feed(data):
            if isinstance(item, str):
                self._console.operator_says(item)
            else:
                self._console.operator_error(f"your line was not sent: {item}.")

    def _event(self, event: LineEvent) -> None:
        if isinstance(event, Entered):
            self._console.operator_says(event.text)
        elif isinstance(event, TooLong):
            self._console.operator_error(f"your line was not sent: {event.problem}.")
        elif isinstance(event, NotUtf8):
            self._console.say(
                "the terminal sent bytes that are not UTF-8; they were dropped "
                "(set it to UTF-8 to type such characters)."
            )
        elif isinstance(event, EndOfInput):
            self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._close()
