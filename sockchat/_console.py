"""The tutorial's server operator, as a responder.

Each client line is shown, labelled with the client that sent it, and the
operator types the answer at ``server --> client N:``.  With several clients
waiting, the oldest unanswered line is answered first and the prompt names
its client.  Lines that start with ``/`` are commands (``/help`` lists
them): list the clients, answer one out of order, disconnect one.  All
client text is shown through ``safe_text``, and a long line as an excerpt
with its length.

The operator types in the terminal's line mode, so the console sees a line
only when Enter is pressed, never the keys before it.  It cannot tell when a
line was begun, so it keeps one rule: a line goes to the client whose prompt
was on screen, and if that client stops waiting without the operator's
doing (it left, or its line timed out), the next line the operator enters
is not sent to anyone.  The screen says so at once, with a prompt that names
no client, and again when that line arrives.  Commands still run: they name
their client.

``ConsoleResponder`` writes through an injected ``write`` callable, takes
the operator's lines through ``operator_says`` and schedules with an
injected clock, so it runs without a terminal in tests;
``OperatorInput`` connects it to stdin.
"""

from __future__ import annotations

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

from ._codec import LineDecoder
from ._render import safe_text
from ._responder import ConversationInfo, IConversation, ILifecycle, IResponder
from ._wire import QUIT

__all__ = ["ConsoleResponder", "OperatorInput"]

log = Logger(namespace="sockchat.console")

#: Characters of a client line that the console shows; a longer line is
#: cut there, with its length, so that one line cannot fill the screen.
EXCERPT = 200


#: Seconds between log lines and the prompt they pushed up coming back: a
#: burst of lines gets one prompt, and a shutdown that a log line announces
#: (SIGINT) begins first, so that no prompt follows it.
REDRAW_DELAY = 0.1


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


@frozen
class _Lost:
    """The client whose prompt was on screen stopped waiting; why."""

    entry: _Waiting
    left: bool  # it left; otherwise its line timed out

    def why(self) -> str:
        cid = self.entry.conversation.id
        return f"client {cid} left" if self.left else f"client {cid}'s line timed out"


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


@implementer(IResponder, ILifecycle)
class ConsoleResponder:
    """Answers come from a person; lines wait their turn, oldest first.

    *clock* schedules what waits for the current event to finish (saying
    why a line stopped waiting, redrawing the prompt after log lines); by
    default, the global reactor.
    """

    def __init__(
        self, write: Callable[[str], None], clock: IReactorTime | None = None
    ) -> None:
        self._write = write
        self._clock = clock
        self._queue: deque[_Waiting] = deque()
        #: Whose prompt ends the screen (a _Lost: the prompt that names no
        #: client), or None when the cursor is at the start of a line.
        self._prompting: _Waiting | _Lost | None = None
        #: Set when the client whose prompt the operator saw stopped waiting
        #: by itself: the next line the operator enters is not sent.
        self._lost: _Lost | None = None
        #: Lines cancelled but not yet reported: left, or timed out?
        self._cancelled: dict[int, _Cancelled] = {}
        self._redraw: IDelayedCall | None = None
        self._closing = False
        self._clients: dict[int, IConversation] = {}
        self._last: dict[int, str] = {}  # each client's last line

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
        self._queue.append(entry)
        ahead = len(self._queue) - 1
        note = f"  [{ahead} waiting before it]" if ahead else ""
        self._show(f"{entry.label()}: {excerpt(text, quoted=False)}{note}")
        return answer

    def operator_says(self, text: str) -> None:
        """The operator typed *text*: a command, or the answer to the client
        whose prompt was on screen."""
        self._flush_cancelled()  # say first why a line stopped waiting
        self._prompting = None
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
        self._write(f"{lost.why()}; {excerpt(text)} was not sent: {then}\n")
        self._next()

    def _next(self) -> None:
        """Show the line that is answered next, and its prompt."""
        if self._queue:
            head = self._queue[0]
            self._write(f"next, {head.label()}: {excerpt(head.text, quoted=False)}\n")
        self._prompt()

    def _answer(self, entry: _Waiting, text: str) -> None:
        head = self._queue[0]
        self._queue.remove(entry)
        if text == QUIT:
            self._write(f"(you ended the conversation with {entry.label()})\n")
        entry.answer.callback(text)
        if self._queue and self._queue[0] is not head:
            self._next()
        else:
            self._prompt()

    def _command(self, line: str) -> None:
        name, _, rest = line.partition(" ")
        if name == "/help":
            self._show(HELP.rstrip("\n"))
        elif name == "/list":
            self._show(self._listing())
        elif name == "/to":
            number, _, text = rest.partition(" ")
            entry = self._waiting_entry(number, "/to ID TEXT")
            if entry is not None:
                if not text:
                    self._show(
                        f"usage: /to ID TEXT (nothing was sent to client {number})"
                    )
                else:
                    self._answer(entry, text)
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

    def _waiting_entry(self, number: str, usage: str) -> _Waiting | None:
        conversation = self._client(number, usage)
        if conversation is None:
            return None
        for entry in self._queue:
            if entry.conversation.id == conversation.info.id:
                return entry
        self._show(f"client {number} is not waiting for an answer; nothing was sent")
        return None

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
            lines.append(f"  client {cid} ({info.peer}) {state}: {said}")
        return "\n".join(lines)

    def operator_error(self, message: str) -> None:
        """Tell the operator something went wrong with what they typed."""
        self._flush_cancelled()
        self._prompting = None
        if self._lost is not None:  # that was the line begun for it
            self._lost = None
            self._write(message + "\n")
            self._next()
            return
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
        if self._redraw is not None and self._redraw.active():
            self._redraw.cancel()
        if self._prompting is not None:
            self._write("\n")
            self._prompting = None
        if not self._queue:
            return
        self._write(f"unanswered at shutdown ({len(self._queue)}):\n")
        for entry in self._queue:
            self._write(f"  {entry.label()}: {excerpt(entry.text, quoted=False)}\n")

    def interrupting(self) -> None:
        """Something else (a log line) is about to be printed: end the
        prompt's line first, so that it starts on a line of its own."""
        if self._prompting is not None:
            self._write("\n")
            self._prompting = None
            self._redraw_soon()

    def interrupted(self) -> None:
        """Something else (a log line) was printed: show the prompt again,
        once, after everything printed in the same moment."""
        self._prompting = None  # pushed up, if interrupting() was not told
        self._redraw_soon()

    def _redraw_soon(self) -> None:
        if self._closing or (self._redraw is not None and self._redraw.active()):
            return
        self._redraw = self._later(self._redrawn, REDRAW_DELAY)

    def _redrawn(self) -> None:
        self._redraw = None
        if self._prompting is None:
            self._prompt()

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
        # Was its prompt the last one the operator saw?
        shown = self._lost is None and self._queue[0] is entry
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
            self._lost = _Lost(entry, left)
            line += (
                f"\nA line you had begun for client {cid} will not be sent to "
                "anyone: press Enter to go on."
            )
        self._show(line)

    def _show(self, line: str) -> None:
        """Print a line of its own, then the prompt again."""
        if self._prompting is not None:
            self._write("\n")
        self._write(line + "\n")
        self._prompting = None
        self._prompt()

    def _prompt(self) -> None:
        if self._closing:
            return
        if self._lost is not None:
            if self._prompting is not self._lost:
                self._write(f"server --> nobody ({self._lost.why()}; Enter): ")
                self._prompting = self._lost
            return
        if not self._queue or self._prompting is self._queue[0]:
            return
        head = self._queue[0]
        self._write(f"server --> client {head.conversation.id}: ")
        self._prompting = head


class OperatorInput(Protocol):
    """Feed the operator's typed lines (stdin) to a ``ConsoleResponder``."""

    def __init__(self, console: ConsoleResponder, on_close: Callable[[], None]) -> None:
        self._console = console
        self._on_close = on_close
        self._decoder = LineDecoder()

    def dataReceived(self, data: bytes) -> None:
        for item in self._decoder.feed(data):
            if isinstance(item, str):
                self._console.operator_says(item)
            else:
                self._console.operator_error(f"your line was not sent: {item}.")

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._on_close()
