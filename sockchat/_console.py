"""The tutorial's server operator, as a responder.

Each client line is shown, labelled with the client that sent it, and the
operator types the answer at ``server --> client N:``.  With several clients
waiting, the oldest unanswered line is answered first and the prompt names
its client.  All client text is shown through ``safe_text``.

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
from twisted.python.failure import Failure
from zope.interface import implementer

from ._codec import LineDecoder
from ._render import safe_text
from ._responder import ConversationInfo, IResponder
from ._wire import QUIT

__all__ = ["ConsoleResponder", "OperatorInput"]


@frozen(eq=False)
class _Waiting:
    conversation: ConversationInfo
    text: str
    answer: Deferred[str]

    def label(self) -> str:
        return f"client {self.conversation.id} ({self.conversation.peer})"


@implementer(IResponder)
class ConsoleResponder:
    """Answers come from a person; lines wait their turn, oldest first."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self._queue: deque[_Waiting] = deque()
        self._prompting: _Waiting | None = None  # whose prompt is on screen
        self._closing = False

    @property
    def waiting(self) -> int:
        """How many client lines wait for the operator."""
        return len(self._queue)

    def respond(self, conversation: ConversationInfo, text: str) -> Deferred[str]:
        answer: Deferred[str] = Deferred(canceller=self._abandoned)
        entry = _Waiting(conversation, text, answer)
        self._queue.append(entry)
        ahead = len(self._queue) - 1
        note = f"  [{ahead} waiting before it]" if ahead else ""
        self._show(f"{entry.label()}: {safe_text(text)}{note}")
        return answer

    def operator_says(self, text: str) -> None:
        """The operator typed *text*: it answers the oldest waiting line."""
        self._prompting = None
        if not self._queue:
            self._show(
                f'nobody is waiting for an answer; "{safe_text(text)}" was not sent.'
            )
            return
        entry = self._queue.popleft()
        if text == QUIT:
            self._write(f"(you ended the conversation with {entry.label()})\n")
        entry.answer.callback(text)
        if self._queue:
            head = self._queue[0]
            self._write(f"next, {head.label()}: {safe_text(head.text)}\n")
        self._prompt()

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
                if self._prompting is entry:
                    self._prompting = None
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
