"""``python -m sockchat.client``: talk to a sockchat server from a terminal or a pipe.

Interactive (stdin is a terminal): the prompt ``client --> server:``, each
answer shown as ``server --> client: ...`` (``partner`` for ``server`` once
pair mode has paired you), notices marked ``[sockchat]``.  When the
conversation ends, text typed without Enter is discarded and said to be
unsent, so that the shell does not run it as a command.
Piped: each input line is one turn, answers go to stdout one per line,
errors to stderr, and end of input sends ``q``.  Either way server text is
shown through ``safe_text``, and the exit status is 0 on a clean end and 1,
with a one-line reason on stderr, otherwise.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO, cast

from twisted.internet.defer import Deferred, DeferredQueue, race
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.stdio import StandardIO
from twisted.internet.task import react
from twisted.python.failure import Failure
from zope.interface import implementer

from sockchat._console.stdio import BlockingModes, discard_typed, take_typed
from sockchat._core.codec import Decoded, LineDecoder
from sockchat._core.framing import FRAMINGS, framing_named
from sockchat._core.render import safe_text
from sockchat._core.wire import QUIT, Notice, NoticeKind
from sockchat._doors.client import (
    CLIENT_MAX_LINE,
    Conversation,
    ConversationEnded,
    LineRefused,
    NotYourTurn,
    connect,
)
from sockchat._doors.endpoints import client_endpoint
from sockchat._version import __version__

if TYPE_CHECKING:
    from sockchat._core.framing import Framing
    from sockchat._teaching.packet_trace import PacketCapture
    from sockchat._teaching.tracing import ClientTracing

PROMPT = "client --> server:"
ANSWER = "server --> client:"
#: Seconds the client waits, at its end, for ``--trace`` to check the close
#: with ``ss``.
TRACE_SETTLE = 3.0
#: Who answers, once pair mode has paired this client (``!info paired``).
PARTNER = "partner"
#: Where the client connects without --connect.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9527

__all__ = ["main", "run"]


def _port_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port number (1 to 65535)")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sockchat.client",
        description="Chat with a sockchat server in turns: send a line, wait "
        "for the answer. Send q (or end the input) to quit.",
    )
    parser.add_argument(
        "--host",
        type=lambda host: host.strip("[]"),  # [::1] as well as ::1
        help=f"default: {DEFAULT_HOST}",
    )
    parser.add_argument("--port", type=_port_number, help=f"default: {DEFAULT_PORT}")
    parser.add_argument(
        "--connect",
        metavar="ENDPOINT",
        help="any Twisted client endpoint instead of --host/--port, e.g. "
        "unix:path=/tmp/chat.sock or tls:example.com:9527",
    )
    parser.add_argument(
        "--framing",
        choices=list(FRAMINGS),
        default="line",
        help="line (the default; sockchat's protocol) or raw (bare messages "
        "with no newline, for `twistd sockchat --framing raw` and the socket "
        "tutorial's own server)",
    )
    parser.add_argument(
        "--ca",
        metavar="FILE",
        help="with --connect tls:...: trust this PEM CA certificate instead of "
        "the system's",
    )
    parser.add_argument(
        "--cert",
        metavar="FILE",
        help="with --connect tls:...: client certificate (PEM)",
    )
    parser.add_argument(
        "--key", metavar="FILE", help="with --connect tls:...: its private key (PEM)"
    )
    parser.add_argument(
        "--trace",
        nargs="?",
        const="socket",
        choices=("socket", "packets"),
        help="teaching mode: show what TCP does on this client's socket, next to "
        "the chat ([tcp] lines: ports, the handshake, each read, TCP_INFO, the "
        "close and TIME_WAIT); on stderr when piped. --trace packets adds the "
        "real packets (needs CAP_NET_RAW) and, at a terminal, the ladder. See "
        "docs/lessons.md",
    )
    parser.add_argument(
        "--capture-file",
        metavar="FILE",
        help="with --trace packets (implied): also write the captured packets "
        "to FILE, a pcap file for tcpdump -r and Wireshark (readable by its "
        "owner only; at most 16 MiB)",
    )
    parser.add_argument(
        "--version", action="version", version=f"sockchat {__version__}"
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
        #: Set while an answer is awaited at a terminal: typed lines go here
        #: instead of waiting in the queue.
        self.while_waiting: Callable[[str], object] | None = None

    def dataReceived(self, data: bytes) -> None:
        self._take(self._decoder.feed(data))

    def _take(self, items: list[Decoded]) -> None:
        for item in items:
            if isinstance(item, str):
                if self.while_waiting is not None:
                    self.while_waiting(item)
                else:
                    self.lines.put(item)
            else:
                self.problems.append(f"an input line was not sent: {item}")

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
    """Where things are shown: answers on stdout, the rest by mode.

    At a terminal everything goes to stdout, in order, and a line that
    arrives while the prompt is showing goes above a fresh prompt.  In a
    pipe, stdout gets only the answers and stderr only the errors.
    *typed* takes what was typed at the terminal without Enter (and
    discards it there).
    """

    def __init__(
        self,
        stdout: Any,
        stderr: TextIO,
        interactive: bool,
        typed: Callable[[], bytes] = lambda: b"",
    ) -> None:
        self._out = stdout  # the StandardIO transport (fd 1)
        self._err = stderr
        self.interactive = interactive
        self._typed = typed
        self.prompting = False  # the prompt ends the last line on screen
        self.peer = "server"  # who answers: the server, or a pair partner

    def out(self, text: str) -> None:
        self._out.write(text.encode("utf-8"))

    def err(self, text: str) -> None:
        self._err.write(text + "\n")
        self._err.flush()

    def prompt(self) -> None:
        if self.interactive and not self.prompting:
            self.out(f"client --> {self.peer}: ")
            self.prompting = True

    def answer(self, text: str) -> None:
        shown = safe_text(text)
        label = f"{self.peer} --> client:"
        self.out(f"{label} {shown}\n" if self.interactive else shown + "\n")

    def take_unsent(self) -> str:
        """The conversation is over: take what was typed without Enter.

        Returns it (empty if nothing), and leaves the cursor at the start of
        a line when something was typed after an answer or notice.
        """
        if not self.interactive:
            return ""
        text = self._typed().decode("utf-8", "replace")
        if text and not self.prompting:
            self.out("\n")  # it was typed after a line, not after the prompt
        return text.rstrip("\n").replace("\n", " ")

    def say(self, line: str, *, reprompt: bool = True) -> None:
        """Show a line of the client's own (interactive only)."""
        if not self.interactive:
            return
        was_prompting, self.prompting = self.prompting, False
        self.out(("\n" if was_prompting else "") + line + "\n")
        if was_prompting and reprompt:
            self.prompt()

    def error(self, line: str, *, reprompt: bool = True) -> None:
        if self.interactive:
            self.say(line, reprompt=reprompt)
        else:
            self.err(line)

    def notice(self, notice: Notice) -> None:
        if notice.kind is NoticeKind.BYE:
            return  # the end of the conversation is reported once, by _chat
        if notice.kind is NoticeKind.INFO and notice.code == "paired":
            self.peer = PARTNER
        line = f"[sockchat {notice.kind.value}] {safe_text(notice.text)}"
        if notice.kind is NoticeKind.ERROR:
            self.error(line)
        else:
            self.say(line)


def _tracer(screen: _Screen) -> Callable[[str], None]:
    """Where ``--trace`` lines go: on the screen with the chat, in order, at
    a terminal; on stderr when piped, so that stdout keeps only the answers."""

    def trace(line: str) -> None:
        if screen.interactive:
            screen.say(f"[tcp] {line}")
        else:
            screen.err(f"[tcp] {line}")

    return trace


def _tracing(
    reactor: Any,
    args: argparse.Namespace,
    trace: Callable[[str], None],
    framing: Framing,
) -> tuple[ClientTracing, PacketCapture | None]:
    """``--trace``: the client's tracing; with ``--trace packets``, the
    capture of the server's port, opened before connect() sends its SYN."""
    from sockchat._teaching.tracing import NO_CAPTURE, ClientTracing

    capture = None
    no_packets = NO_CAPTURE
    if args.trace == "packets" and args.connect:
        no_packets = "it needs --host and --port, not --connect"
        trace(f"packet capture is off: {no_packets}; the trace goes on from the socket")
    elif args.trace == "packets":
        from sockchat._teaching.packet_trace import PacketCapture

        capture = PacketCapture(reactor, reactor, trace)
        if args.capture_file:
            try:
                capture.write_to(args.capture_file)
            except OSError as e:
                raise SystemExit(
                    f"sockchat: --capture-file {args.capture_file}: cannot write it "
                    f"({e.strerror or e}); choose a file in a folder you may write to"
                ) from None
        if not capture.open(args.host, args.port):
            no_packets = capture.why_not
    tracing = ClientTracing(
        trace,
        reactor,
        framing=framing,
        packets=capture if capture is not None and capture.captures else None,
        no_packets=no_packets,
    )
    return tracing, capture


def _describe_target(args: argparse.Namespace) -> str:
    """Where the client connects, as a person writes it: ``[::1]:9527``."""
    if args.connect:
        return str(args.connect)
    host = f"[{args.host}]" if ":" in args.host else args.host
    return f"{host}:{args.port}"


def _settle_target(args: argparse.Namespace, warn: Callable[[str], None]) -> None:
    """Fill in the defaults; with --connect, --host and --port are not used,
    and the user is told so rather than left to wonder."""
    if args.connect:
        ignored = [
            f"--{name} {value}"
            for name, value in (("host", args.host), ("port", args.port))
            if value is not None
        ]
        if ignored:
            warn(
                f"sockchat: {' and '.join(ignored)} ignored: --connect "
                f"{args.connect} says where to connect (put the host and port "
                "in it, e.g. tcp:HOST:PORT)"
            )
    if args.host is None:
        args.host = DEFAULT_HOST
    if args.port is None:
        args.port = DEFAULT_PORT


def _endpoint(reactor: Any, args: argparse.Namespace) -> IStreamClientEndpoint:
    try:
        return client_endpoint(
            reactor,
            host=args.host,
            port=args.port,
            connect=args.connect,
            ca=args.ca,
            cert=args.cert,
            key=args.key,
        )
    except ValueError as e:
        raise SystemExit(f"sockchat: {e}") from None


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
    reactor: Any,
    conversation: Conversation,
    stdin: _StdinLines,
    screen: _Screen,
    tracing: ClientTracing | None = None,
) -> int:
    def typed_while_waiting(text: str) -> None:
        if text == QUIT:
            conversation.quit()
        else:
            if tracing is not None:
                tracing.say(
                    "a line typed out of turn (the server's turn) was held by the "
                    "client and not sent: no byte of it reached TCP"
                )
            screen.say(
                "[sockchat] still waiting for the answer to your last line; "
                f'"{safe_text(text)}" was not sent. Type it again at the prompt.',
                reprompt=False,
            )

    while True:
        if not conversation.my_turn:  # the other side speaks first
            if screen.interactive:
                stdin.while_waiting = typed_while_waiting
            try:
                screen.answer(await conversation.listen())
                if tracing is not None:
                    tracing.answer_shown()
            except LineRefused as e:
                screen.notice(e.notice)
            except ConversationEnded as e:
                return _report_end(screen, e)
            except NotYourTurn:  # it has ended (a bye): say how, once closed
                return _report_end(screen, await conversation.when_ended())
            finally:
                stdin.while_waiting = None
        screen.prompt()
        racing: list[Deferred[Any]] = [
            stdin.lines.get(),
            conversation.when_ended(),
        ]
        which, got = await race(racing)
        for problem in stdin.problems:
            screen.error(f"sockchat: {problem}")
        stdin.problems.clear()
        if which == 1:
            return _report_end(screen, cast(ConversationEnded, got))
        if got is None and screen.interactive:
            screen.out("\n")  # Ctrl-D left the cursor after the prompt
        screen.prompting = False  # Enter moved the cursor to a new line
        line: str = QUIT if got is None else cast(str, got)
        if line == QUIT:
            return _report_end(screen, await conversation.quit())
        if screen.interactive:
            stdin.while_waiting = typed_while_waiting
        try:
            answer = await conversation.say(line)
        except LineRefused as e:
            screen.notice(e.notice)
            continue
        except ValueError as e:  # e.g. an empty line, in raw framing
            screen.error(f"sockchat: that line was not sent: {e}.")
            continue
        except ConversationEnded as e:
            return _report_end(screen, e)
        except NotYourTurn:  # it ended just now: say how, once closed
            return _report_end(screen, await conversation.when_ended())
        finally:
            stdin.while_waiting = None
        screen.answer(answer)
        if tracing is not None:
            tracing.answer_shown()


def _report_end(screen: _Screen, end: ConversationEnded) -> int:
    """Say how it ended, and what was typed but not sent."""
    unsent = screen.take_unsent()
    status = _say_end(screen, end)
    if unsent:
        screen.say(
            f'[sockchat] "{safe_text(unsent)}" was typed without Enter; it was '
            "not sent, and is discarded.",
            reprompt=False,
        )
    return status


def _say_end(screen: _Screen, end: ConversationEnded) -> int:
    """Say how it ended; 0 only for a ``q`` from either side (or a pair partner)."""
    # No prompt after these: the conversation is over.
    if not end.clean:
        screen.error(f"sockchat: {end.why}", reprompt=False)
        return 1
    if end.notice is not None and end.notice.code == "partner-left":
        # A normal end of a pair; a piped user is told on stderr.
        screen.error(f"[sockchat] {safe_text(end.notice.text)}", reprompt=False)
        return 0
    if end.notice is not None and end.notice.code != "quit":
        # The server ended it: busy, denied, idle, shutting down...
        screen.error(
            f"sockchat: the server ended the conversation: {end.notice.text}",
            reprompt=False,
        )
        return 1
    screen.say(f"[sockchat] {safe_text(end.why)}", reprompt=False)
    return 0


async def main(reactor: Any, argv: Sequence[str] | None = None) -> int:
    """Run the client; return the exit status."""
    args = _parser().parse_args(argv)
    if args.capture_file:
        args.trace = "packets"
    _settle_target(args, lambda line: print(line, file=sys.stderr, flush=True))
    interactive = sys.stdin.isatty()
    endpoint = _endpoint(reactor, args)
    stdin = _StdinLines()
    stdio: Any = StandardIO(stdin, reactor=reactor)  # type: ignore[no-untyped-call]
    typed = (lambda: take_typed(0, flush=True)) if interactive else (lambda: b"")
    screen = _Screen(stdio, sys.stderr, interactive, typed)
    flushed: Deferred[None] = Deferred()

    capture: PacketCapture | None = None
    try:
        tracing: ClientTracing | None = None
        try:
            if args.trace:
                from sockchat._doors.client import ClientFactory, connect_with

                framing = framing_named(args.framing)
                tracing, capture = _tracing(reactor, args, _tracer(screen), framing)
                factory = ClientFactory(
                    screen.notice, framing, observe=tracing.observer
                )
                conversation = await connect_with(reactor, endpoint, factory, 10.0)
            else:
                conversation = await connect(
                    reactor,
                    endpoint,
                    on_notice=screen.notice,
                    framing=framing_named(args.framing),
                )
        except Exception:
            failure = Failure()
            if tracing is not None:
                tracing.connect_failed(failure, None if args.connect else args.port)
            screen.err(_connect_failure(_describe_target(args), failure))
            return 1

        # Ctrl-C (or any other shutdown) quits the conversation properly,
        # and waits until what that prints has reached stdout.
        def quit_and_flush() -> Deferred[None]:
            quitting = conversation.quit(2.0).addBoth(lambda _: flushed)
            return quitting.addTimeout(3.0, reactor, lambda result, timeout: None)

        reactor.addSystemEventTrigger("before", "shutdown", quit_and_flush)
        status = await _chat(reactor, conversation, stdin, screen, tracing)
        if tracing is not None:  # the close's trace, and its check with ss
            await tracing.settled(TRACE_SETTLE)
            if screen.interactive:  # the ladder, drawn for this terminal
                width = shutil.get_terminal_size().columns
                for line in tracing.ladder_lines(width):
                    screen.say(line, reprompt=False)
        return status
    finally:
        if capture is not None:
            capture.stop()
        # Let what is written reach stdout before the reactor stops.
        if not stdin.stdout_gone:
            stdio.loseConnection()
            await stdin.closed
        if not flushed.called:  # a shutdown may have given up waiting
            flushed.callback(None)


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
        discard_typed(0)
        modes.restore()


if __name__ == "__main__":
    run()
