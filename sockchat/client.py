"""``python -m sockchat.client``: talk to a sockchat server from a terminal or a pipe.

Interactive (stdin is a terminal): the prompt ``client --> server:``, each
answer shown as ``server --> client: ...``, notices marked ``[sockchat]``.
Piped: each input line is one turn, answers go to stdout one per line,
errors to stderr, and end of input sends ``q``.  Either way server text is
shown through ``safe_text``, and the exit status is 0 on a clean end and 1,
with a one-line reason on stderr, otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO, cast

from twisted.internet.defer import Deferred, DeferredQueue, race
from twisted.internet.endpoints import HostnameEndpoint, clientFromString
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.stdio import StandardIO
from twisted.internet.task import react
from twisted.python.failure import Failure
from zope.interface import implementer

from ._client import (
    CLIENT_MAX_LINE,
    Conversation,
    ConversationEnded,
    LineRefused,
    connect,
)
from ._codec import Decoded, InvalidUtf8, LineDecoder, LineTooLong
from ._render import safe_text
from ._stdio import BlockingModes
from ._wire import QUIT, Notice, NoticeKind

PROMPT = "client --> server:"
ANSWER = "server --> client:"

__all__ = ["main", "run"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sockchat.client",
        description="Chat with a sockchat server in turns: send a line, wait "
        "for the answer. Send q (or end the input) to quit.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    parser.add_argument("--port", type=int, default=9527, help="default: 9527")
    parser.add_argument(
        "--connect",
        metavar="ENDPOINT",
        help="any Twisted client endpoint instead of --host/--port, e.g. "
        "unix:path=/tmp/chat.sock or tls:example.com:9527",
    )
    return parser


@implementer(IHalfCloseableProtocol)
class _StdinLines(Protocol):
    """stdin as a queue of lines; ``None`` marks the end of input.

    Half-closeable, so the end of stdin does not also close stdout: answers
    still owed must reach it.
    """

    def __init__(self) -> None:
        self.lines: DeferredQueue[str | None] = DeferredQueue()
        # Generous: the server, not the client, decides what is too long.
        self._decoder = LineDecoder(CLIENT_MAX_LINE)
        self.problems: list[str] = []
        self.closed: Deferred[None] = Deferred()
        self.stdout_gone = False
        #: Set while an answer is awaited at a terminal: a typed ``q`` quits
        #: at once instead of waiting its turn.
        self.quit_now: Callable[[], object] | None = None

    def dataReceived(self, data: bytes) -> None:
        self._take(self._decoder.feed(data))

    def _take(self, items: list[Decoded]) -> None:
        for item in items:
            if isinstance(item, str):
                if item == QUIT and self.quit_now is not None:
                    self.quit_now()
                    continue
                self.lines.put(item)
            elif isinstance(item, LineTooLong):
                self.problems.append(
                    f"an input line of {item.length} bytes is over the "
                    f"{item.limit}-byte limit; it was not sent"
                )
            elif isinstance(item, InvalidUtf8):
                self.problems.append(
                    f"an input line is not valid UTF-8 ({item.reason}); it was not sent"
                )

    def readConnectionLost(self) -> None:
        # A last line without a newline is still a line.
        self._take(self._decoder.finish())
        self.lines.put(None)

    def writeConnectionLost(self) -> None:
        self.stdout_gone = True

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lines.put(None)
        self.stdout_gone = True
        if not self.closed.called:
            self.closed.callback(None)


class _Screen:
    """Where things are shown: answers on stdout; notices by mode."""

    def __init__(self, stdout: Any, stderr: TextIO, interactive: bool) -> None:
        self._out = stdout  # the StandardIO transport (fd 1)
        self._err = stderr
        self.interactive = interactive
        self.prompting = False  # the prompt ends the last line on screen

    def out(self, text: str) -> None:
        self._out.write(text.encode("utf-8"))

    def err(self, text: str) -> None:
        self._err.write(text + "\n")
        self._err.flush()

    def prompt(self) -> None:
        if self.interactive and not self.prompting:
            self.out(PROMPT + " ")
            self.prompting = True

    def answer(self, text: str) -> None:
        shown = safe_text(text)
        self.out(f"{ANSWER} {shown}\n" if self.interactive else shown + "\n")

    def notice(self, notice: Notice) -> None:
        line = f"[sockchat {notice.kind.value}] {safe_text(notice.text)}"
        if self.interactive:
            # Show it above the prompt, then show the prompt again.
            was_prompting, self.prompting = self.prompting, False
            self.out(("\n" if was_prompting else "") + line + "\n")
            if was_prompting:
                self.prompt()
        elif notice.kind is NoticeKind.ERROR:
            self.err(line)


def _describe_target(args: argparse.Namespace) -> str:
    return args.connect or f"{args.host}:{args.port}"


def _endpoint(reactor: Any, args: argparse.Namespace) -> IStreamClientEndpoint:
    if args.connect:
        try:
            endpoint: IStreamClientEndpoint = clientFromString(reactor, args.connect)
        except (ValueError, KeyError, TypeError) as e:
            raise SystemExit(
                f"sockchat: --connect {args.connect!r} is not a client endpoint "
                f"description ({e})"
            ) from None
        return endpoint
    return HostnameEndpoint(reactor, args.host, args.port)


def _connect_failure(target: str, failure: Failure) -> str:
    error = failure.value
    if isinstance(error, DNSLookupError):
        return f"sockchat: cannot find host {target}: {failure.getErrorMessage()}"
    reason = failure.getErrorMessage()
    if isinstance(error, ConnectError) and "refused" in reason.lower():
        return (
            f"sockchat: cannot connect to {target}: connection refused "
            "(is the server running, on this port?)"
        )
    return f"sockchat: cannot connect to {target}: {reason}"


async def _chat(
    reactor: Any, conversation: Conversation, stdin: _StdinLines, screen: _Screen
) -> int:
    while True:
        screen.prompt()
        racing: list[Deferred[Any]] = [
            stdin.lines.get(),
            conversation.when_ended(),
        ]
        which, got = await race(racing)
        for problem in stdin.problems:
            screen.err(f"sockchat: {problem}")
        stdin.problems.clear()
        if which == 1:
            return _report_end(screen, cast(ConversationEnded, got))
        line: str = QUIT if got is None else cast(str, got)
        screen.prompting = False  # Enter moved the cursor to a new line
        if got is None and screen.interactive:
            screen.out("\n")
        if line == QUIT:
            return _report_end(screen, await conversation.quit())
        if screen.interactive:
            stdin.quit_now = conversation.quit
        try:
            answer = await conversation.say(line)
        except LineRefused as e:
            screen.notice(e.notice)
            continue
        except ConversationEnded as e:
            return _report_end(screen, e)
        finally:
            stdin.quit_now = None
        screen.answer(answer)


def _report_end(screen: _Screen, end: ConversationEnded) -> int:
    if not end.clean:
        screen.err(f"sockchat: {end.why}")
        return 1
    if screen.interactive:
        screen.out(f"[sockchat] {end.why}\n")
    return 0


async def main(reactor: Any, argv: Sequence[str] | None = None) -> int:
    """Run the client; return the exit status."""
    args = _parser().parse_args(argv)
    interactive = sys.stdin.isatty()
    endpoint = _endpoint(reactor, args)
    stdin = _StdinLines()
    stdio: Any = StandardIO(stdin, reactor=reactor)  # type: ignore[no-untyped-call]
    screen = _Screen(stdio, sys.stderr, interactive)
    try:
        try:
            conversation = await connect(reactor, endpoint, on_notice=screen.notice)
        except Exception:
            screen.err(_connect_failure(_describe_target(args), Failure()))
            return 1
        return await _chat(reactor, conversation, stdin, screen)
    finally:
        # Let what is written reach stdout before the reactor stops.
        if not stdin.stdout_gone:
            stdio.loseConnection()
            await stdin.closed


async def _exit_with_status(reactor: Any, argv: Sequence[str] | None) -> None:
    status = await main(reactor, argv)
    if status:
        raise SystemExit(status)


def run(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: exits with ``main``'s status."""
    modes = BlockingModes.save(0, 1)
    try:
        react(_exit_with_status, [argv])
    finally:
        modes.restore()


if __name__ == "__main__":
    run()
