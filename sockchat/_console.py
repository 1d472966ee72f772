"""The tutorial's server operator, as a responder.

Each client line is shown, labelled with the client that sent it, and the
operator types the answer at ``server --> client N:``.  With several clients
waiting, the oldest unanswered line is answered first and the prompt names
its client.  Lines that start with ``/`` are commands (``/help`` lists
them): list the clients, answer one out of order, disconnect one.  All
client text is shown through ``safe_text``.

``ConsoleResponder`` writes through an injected ``write`` callable and takes
the operator's lines through ``operator_says``, so it runs without a
terminal in tests; ``OperatorInput`` connects it to stdin.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from attrs import frozen
from twisted.internet.defer import Deferred
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


@frozen(eq=False)
class _Waiting:
    conversation: ConversationInfo
    text: str
    answer: Deferred[str]

    def label(self) -> str:
        return f"client {self.conversation.id} ({self.conversation.peer})"


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
    """Answers come from a person; lines wait their turn, oldest first."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self._queue: deque[_Waiting] = deque()
        self._prompting: _Waiting | None = None  # whose prompt is on screen
        self._closing = False
        self._clients: dict[int, IConversation] = {}
        self._last: dict[int, str] = {}  # each client's last line

    def started(self, conversation: IConversation) -> None:
        self._clients[conversation.info.id] = conversation

    def ended(self, conversation: IConversation, reason: str) -> None:
        self._clients.pop(conversation.info.id, None)
        self._last.pop(conversation.info.id, None)

    @property
    def waiting(self) -> int:
        """How many client lines wait for the operator."""
        return len(self._queue)

    def respond(self, conversation: ConversationInfo, text: str) -> Deferred[str]:
        answer: Deferred[str] = Deferred(canceller=self._abandoned)
        entry = _Waiting(conversation, text, answer)
        self._last[conversation.id] = text
        self._queue.append(entry)
        ahead = len(self._queue) - 1
        note = f"  [{ahead} waiting before it]" if ahead else ""
        self._show(f"{entry.label()}: {safe_text(text)}{note}")
        return answer

    def operator_says(self, text: str) -> None:
        """The operator typed *text*: a command, or the answer to the oldest
        waiting line."""
        self._prompting = None
        if text.startswith("/") and not text.startswith("//"):
            self._command(text)
            return
        if text.startswith("//"):
            text = text[1:]
        if not self._queue:
            self._show(
                f'nobody is waiting for an answer; "{safe_text(text)}" was not sent.'
            )
            return
        self._answer(self._queue[0], text)

    def _answer(self, entry: _Waiting, text: str) -> None:
        head = self._queue[0]
        self._queue.remove(entry)
        if text == QUIT:
            self._write(f"(you ended the conversation with {entry.label()})\n")
        entry.answer.callback(text)
        if self._queue and self._queue[0] is not head:
            head = self._queue[0]
            self._write(f"next, {head.label()}: {safe_text(head.text)}\n")
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
            said = f'"{safe_text(last)}"' if last is not None else "(nothing yet)"
            state = f"waiting #{waiting[cid]}" if cid in waiting else "their turn"
            lines.append(f"  client {cid} ({info.peer}) {state}: {said}")
        return "\n".join(lines)

    def operator_error(self, message: str) -> None:
        """Tell the operator something went wrong with what they typed."""
        self._prompting = None
        self._show(message)

    def close(self) -> None:
        """The server is stopping: list what will go unanswered, once."""
        self._closing = True
        if self._prompting is not None:
            self._write("\n")
            self._prompting = None
        if not self._queue:
            return
        self._write(f"unanswered at shutdown ({len(self._queue)}):\n")
        for entry in self._queue:
            self._write(f"  {entry.label()}: {safe_text(entry.text)}\n")

    def interrupted(self) -> None:
        """Something else (a log line) was printed: show the prompt again."""
        if self._prompting is not None:
            self._prompting = None
            self._prompt()

    def _abandoned(self, answer: Deferred[str]) -> None:
        for entry in self._queue:
            if entry.answer is answer:
                self._queue.remove(entry)
                if self._closing:
                    return  # already listed by close()
                # _show ends the prompt's line first, whoever it was for.
                self._show(
                    f"{entry.label()} left; its line "
                    f'"{safe_text(entry.text)}" goes unanswered.'
                )
                return

    def _show(self, line: str) -> None:
        """Print a line of its own, then the prompt again."""
        if self._prompting is not None:
            self._write("\n")
        self._write(line + "\n")
        self._prompting = None
        self._prompt()

    def _prompt(self) -> None:
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
