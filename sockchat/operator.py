"""``python -m sockchat.operator --broker URL``: answer clients of every instance.

The operator console of ``twistd sockchat --responder console``, for the
instances that run ``--broker URL --responder operators``: client lines
appear with a prompt that names their client, ``/list`` shows every client
of every instance, ``/to``, ``/kick``, ``/help`` and ``//`` work as there.
Any number of operators may run at once, on any machine; each line goes to
one of them, oldest first.

On a terminal each line typed goes to the console as it is entered.  With
stdin not a terminal (a pipe, a file), each line of it answers the next
client line that comes (commands run at once), and the end of input quits
once they are all used, or once no client line has come for
``QUIET_AT_END`` (5) seconds.

Quitting (end of input, Ctrl-C, SIGTERM) hands the lines this operator
holds back to the queue at once; an operator that is killed gives them
back after ``CLAIM_AFTER`` seconds (docs/broker.md).
"""

from __future__ import annotations

import argparse
import getpass
import os
import select
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.stdio import StandardIO
from twisted.internet.task import react
from twisted.logger import Logger
from twisted.python.failure import Failure

from sockchat._broker.consumer import Outbox
from sockchat._broker.interface import IBroker
from sockchat._broker.join import BROKER_HELP, join, positive, start_logging
from sockchat._broker.operators import OperatorDesk
from sockchat._broker.wire import CLAIM_AFTER, OPERATORS
from sockchat._console.responder import ConsoleResponder
from sockchat._console.stdio import BlockingModes
from sockchat._core.render import safe_text
from sockchat._operations.services import OperatorConsoleService

__all__ = ["main"]

PROG = "sockchat.operator"

log = Logger(namespace=PROG)

#: Seconds a piped operator waits, after the end of its input, for a client
#: line that one of its remaining lines would answer.
QUIET_AT_END = 5.0


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {PROG}",
        description=(
            "Answer the clients of every sockchat instance that runs "
            "--broker URL --responder operators."
        ),
        epilog=(
            f"A line held by an operator that is killed goes to another after "
            f"{CLAIM_AFTER:g} s; quitting (Ctrl-D, Ctrl-C) hands it back at once."
        ),
    )
    parser.add_argument(
        "--broker",
        required=True,
        metavar="URL",
        help=BROKER_HELP,
    )
    parser.add_argument(
        "--name",
        default="",
        help="the name clients' answers are signed with (default: your login name)",
    )
    parser.add_argument(
        "--hold",
        type=positive("--hold"),
        default=1,
        metavar="N",
        help="lines this operator holds at once, waiting for its answers (default 1)",
    )
    return parser.parse_args(argv)


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (a container): say so plainly
        return "operator"


class _Screen:
    """Write the console's text to stdout at once, whatever its mode."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, text: str) -> None:
        view = memoryview(text.encode("utf-8"))
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:  # stdin's non-blocking mode is shared
                select.select([], [self._fd], [], 1.0)
            except OSError:
                return  # nobody to show it to


class OperatorLines(Protocol):
    """The operator's lines (stdin) to the console.

    Typed (*piped* false): each line as it comes.  Piped: commands at once,
    and each other line kept until a client line waits for it, so that the
    lines of a file answer the client lines in the order they come; after
    the end of input, *on_end* once they are all used, or once no client
    line has come for ``QUIET_AT_END`` seconds (the rest are not sent).
    """

    def __init__(
        self,
        console: ConsoleResponder,
        clock: IReactorTime,
        *,
        piped: bool,
        on_end: Callable[[], object],
        max_line: int = 64 * 1024,
    ) -> None:
        self._console = console
        self._piped = piped
        self._on_end = on_end
        self._max = max_line
        self._buffer = b""
        self._skipping = False
        self._clock = clock
        self._quiet: IDelayedCall | None = None
        self.answers: deque[str] = deque()
        self.ended = False

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._complete(line)
        if len(self._buffer) > self._max:  # too long, and not ended yet
            self._buffer = b""
            if not self._skipping:
                self._too_long()
            self._skipping = True  # until its end

    def _complete(self, line: bytes) -> None:
        if self._skipping:  # the end of a line that was too long
            self._skipping = False
        elif len(line) > self._max:
            self._too_long()
        else:
            self._line(line.rstrip(b"\r").decode("utf-8", "replace"))

    def _too_long(self) -> None:
        log.warn(
            "your line was longer than {limit:,} bytes and was not sent",
            limit=self._max,
        )

    def _line(self, text: str) -> None:
        if not self._piped or (text.startswith("/") and not text.startswith("//")):
            self._console.operator_says(text)
            return
        self.answers.append(text)
        self.pump()

    def pump(self) -> None:
        """Give the kept lines to the client lines that wait."""
        used = False
        while self.answers and self._console.waiting:
            self._console.operator_says(self.answers.popleft())
            used = True
        if not self.ended:
            return
        if not self.answers:
            self._end()
        elif used or self._quiet is None:  # wait for the next client line
            if self._quiet is not None and self._quiet.active():
                self._quiet.cancel()
            self._quiet = self._clock.callLater(QUIET_AT_END, self._no_more)

    def _no_more(self) -> None:
        log.warn(
            "no client line came for {quiet:g} s: {count} line(s) of input were "
            "not sent",
            quiet=QUIET_AT_END,
            count=len(self.answers),
        )
        self.answers.clear()
        self._end()

    def _end(self) -> None:
        if self._quiet is not None and self._quiet.active():
            self._quiet.cancel()
        self._on_end()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._buffer:
            self._complete(self._buffer)
            self._buffer = b""
        self.ended = True
        self.pump()


def banner(name: str, display: str) -> str:
    """What an operator is told first."""
    return (
        f"sockchat operator {safe_text(name)} on {display}: client lines of every "
        "instance appear below. Type each answer at its prompt; q ends that "
        "conversation; /help lists the commands; end of input (Ctrl-D) quits "
        "and hands back the lines you hold.\n"
    )


async def run(reactor: Any, options: argparse.Namespace) -> None:
    name = options.name or _login()
    out = sys.__stdout__.fileno() if sys.__stdout__ else 1
    # On a terminal, the console of --responder console: it edits the line
    # itself, keeps what was typed when a client goes, and keeps log lines
    # off the prompt's line.  It watches the log before the log is printed,
    # so it is made before the logging starts.
    terminal: OperatorConsoleService | None = None
    if os.isatty(0) and os.isatty(out):
        terminal = OperatorConsoleService(
            reactor,
            ConsoleResponder,
            banner="",
            closing="end of input: quitting, and handing back the lines you hold",
        )
        console = terminal.console
        write: Callable[[str], None] = terminal.console.screen.print
    else:
        screen = _Screen(out)
        console = ConsoleResponder(screen.write, reactor)
        write = screen.write
    start_logging(PROG)
    modes = BlockingModes.save(0, out)
    # Piped (or not a terminal): each line waits for a client line to
    # answer; the end of input quits.
    lines = None
    if terminal is None:
        lines = OperatorLines(
            console, reactor, piped=not os.isatty(0), on_end=reactor.stop
        )

    def desk(broker: IBroker, outbox: Outbox) -> OperatorDesk:
        write(banner(name, broker.display))
        shown = None if lines is None else lambda: reactor.callLater(0, lines.pump)
        return OperatorDesk(console, broker, reactor, outbox, shown=shown)

    joined = await join(
        reactor,
        prog=PROG,
        url=options.broker,
        group=OPERATORS,
        handler=desk,
        capacity=options.hold,
        display=name,
        sign=lambda _: f"operator {name}",
    )

    async def quit() -> None:
        console.close()
        await joined.quit()
        modes.restore()

    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: Deferred.fromCoroutine(quit())
    )
    if terminal is not None:
        # Before the console's own trigger (made at its start): as twistd does.
        reactor.addSystemEventTrigger("before", "shutdown", terminal.stopService)
        terminal.startService()  # reads the keys; end of input stops the reactor
    else:
        assert lines is not None
        devnull = os.open(os.devnull, os.O_WRONLY)
        StandardIO(lines, stdout=devnull, reactor=reactor)  # type: ignore[call-arg,no-untyped-call]  # POSIX's takes stdout
    await Deferred()  # until the reactor stops: end of input, Ctrl-C, SIGTERM


def main(argv: Sequence[str] | None = None) -> None:
    options = parse(argv)  # logging starts in run(), after the console's watch
    react(lambda reactor: Deferred.fromCoroutine(run(reactor, options)))


if __name__ == "__main__":
    main()
