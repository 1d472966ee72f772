"""Teaching mode's Twisted glue: tracing subclasses of the doors and the client.

Used only with ``--trace``: without it, the server and the client use their
own classes, and nothing here runs.  Every fact and word comes from
``_trace``; this module reads the sockets (addresses, ``TCP_INFO``,
``SIOCOUTQ``), notes when reads, FINs and closes happen, runs ``ss`` after
a close, and prints what ``_trace`` says:

- the server's lines go to its log as ``[tcp] conversation N: ...``,
  through ``safe_text``;
- a web conversation's also go to its page, as ``!info trace: ...``
  notices (docs/protocol.md);
- the client's go to the callable it is given (stderr, or the screen).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import address
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockchat._core.engine import Close, Phase, Turn
from sockchat._core.framing import Framing
from sockchat._core.render import safe_text
from sockchat._core.turns import Turn as ClientTurn
from sockchat._core.wire import QUIT, Notice
from sockchat._doors.client import _ChatClientProtocol, _ClientFactory
from sockchat._doors.tcp import ChatServerFactory, ChatServerProtocol
from sockchat._doors.web import WebConversation, close_code
from sockchat._teaching.trace import (
    READS_PER_SECOND,
    TCP_INFO_SIZE,
    Address,
    CloseTracker,
    ReadTracker,
    Side,
    TraceBudget,
    check_time_wait,
    describe_close,
    describe_connection,
    describe_read,
    describe_tcp_info,
    describe_turn,
    parse_ss,
    parse_tcp_info,
    ss_filter,
    tcp_info_unavailable,
    websocket_accept,
)

if TYPE_CHECKING:
    from twisted.web.server import Request

__all__ = [
    "SS_COMMAND",
    "ConnectionTrace",
    "ProbeBusy",
    "TracingChatServerFactory",
    "TracingChatServerProtocol",
    "TracingClientFactory",
    "TracingClientProtocol",
    "TracingWebConversation",
    "ss_probe",
]

log = Logger(namespace="sockchat.trace")

#: The client's own trace goes to its own terminal, not a shared log: a
#: looser bound.
CLIENT_READS_PER_SECOND = 50

#: How the kernel is asked about a connection's sockets after its close
#: (then a filter for its two ports): ``ss -tan state time-wait`` shows
#: the TIME_WAIT ones; all states are asked for, so that a side still in
#: FIN_WAIT_2 is seen as such.
SS_COMMAND = ("ss", "-tanoH")
#: Seconds after a close before ``ss`` is asked (the last ACK must arrive),
#: and between tries while a side is still closing; at most ``SS_TRIES``.
SS_DELAY = 0.2
SS_AGAIN = 1.0
SS_TRIES = 5
#: At most this many ``ss`` run at once.
SS_AT_ONCE = 4

#: What ``ss_probe`` gives: ss's output for a filter, or None without ss.
Probe = Callable[[Sequence[str]], "Deferred[str | None]"]


class ProbeBusy(Exception):
    """Too many closes are being checked with ``ss`` at once: not this one."""


def ss_probe(reactor: Any, at_once: int = SS_AT_ONCE) -> Probe:
    """Run ``ss -tanoH FILTER`` without blocking; None if it is missing.

    At most *at_once* run at a time: past that, the check fails with
    ``ProbeBusy`` (a server shutting down closes every connection at once).
    """
    from twisted.internet.utils import getProcessOutputAndValue

    running_now = [0]

    def done(result: object) -> object:
        running_now[0] -= 1
        return result

    def probe(where: Sequence[str]) -> Deferred[str | None]:
        path = shutil.which(SS_COMMAND[0])
        if path is None:
            return succeed(None)
        if running_now[0] >= at_once:
            return fail(ProbeBusy())
        running_now[0] += 1
        running: Deferred[Any] = getProcessOutputAndValue(  # type: ignore[no-untyped-call]  # twisted.internet.utils has no annotations
            path, [*SS_COMMAND[1:], *where], env=dict(os.environ), reactor=reactor
        )
        running.addBoth(done)
        return running.addCallbacks(
            lambda done: done[0].decode("utf-8", "replace"), lambda _: None
        )

    return probe


def address_of(addr: object) -> Address | None:
    """An IP address and port, or None (UNIX sockets, pipes)."""
    if isinstance(addr, (address.IPv4Address, address.IPv6Address)):
        return Address(addr.host, addr.port)
    return None


def socket_of(transport: object) -> socket.socket | None:
    """The TCP socket under *transport* (TLS included), or None."""
    while transport is not None:
        handle = getattr(transport, "getHandle", None)
        if handle is not None:
            try:
                found = handle()
            except Exception:
                found = None
            if isinstance(found, socket.socket):
                return found
        transport = getattr(transport, "transport", None)
    return None


def ephemeral_range() -> tuple[int, int] | None:
    """Linux's range of ephemeral ports, or None where it cannot be read."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = f.read().split()[:2]
        return int(low), int(high)
    except (OSError, ValueError):
        return None


def kernel_line(sock: socket.socket | None) -> str:
    """The kernel's counters for *sock*, or what is not available, in one line."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return tcp_info_unavailable(sys.platform)
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return tcp_info_unavailable(sys.platform, "this connection is not TCP")
    try:
        data = sock.getsockopt(socket.IPPROTO_TCP, option, TCP_INFO_SIZE)
    except OSError as e:
        return tcp_info_unavailable(sys.platform, e.strerror or str(e))
    info = parse_tcp_info(data, outq=_outq(sock))
    if info is None:
        return tcp_info_unavailable(sys.platform, f"only {len(data)} bytes of it")
    return describe_tcp_info(info)


def kernel_state(sock: socket.socket | None) -> str | None:
    """The TCP state the kernel has for *sock* (``CLOSE_WAIT``...), if known."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None or sock is None:
        return None
    try:
        info = parse_tcp_info(
            sock.getsockopt(socket.IPPROTO_TCP, option, TCP_INFO_SIZE)
        )
    except OSError:
        return None
    return None if info is None else info.state


def _outq(sock: socket.socket) -> int | None:
    try:
        import fcntl
        import termios

        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (ImportError, OSError, AttributeError):
        return None
    return int(struct.unpack("i", raw)[0])


class ConnectionTrace:
    """One connection's trace: the trackers, the budget, and where lines go."""

    def __init__(
        self,
        side: Side,
        emit: Callable[[str], None],
        clock: IReactorTime,
        probe: Probe | None = None,
        *,
        raw: bool = False,
        per_second: int = READS_PER_SECOND,
    ) -> None:
        self.side = side
        self._emit = emit
        self._clock = clock
        self._probe = probe
        self.reads = ReadTracker(raw=raw)
        self.close = CloseTracker()
        self.budget = TraceBudget(per_second)
        self.raw = raw
        self.local: Address | None = None
        self.remote: Address | None = None
        self.sock: socket.socket | None = None
        self._turn: bool | None = None  # the server's turn, when last said
        #: Fires once the close is traced, its kernel check included.
        self.settled: Deferred[None] = Deferred()

    def say(self, line: str) -> None:
        self._emit(safe_text(line))

    def connected(self, transport: Any) -> None:
        self.sock = socket_of(transport)
        self.local = address_of(transport.getHost())
        self.remote = address_of(transport.getPeer())
        if self.local is None or self.remote is None:
            self.sock = None  # no TCP_INFO either
            self.say(
                "connection: not over TCP/IP (a UNIX socket?): no ports, handshake, "
                "TCP_INFO or TIME_WAIT to show; the reads are still traced"
            )
            return
        for line in describe_connection(
            self.side, self.local, self.remote, ephemeral=ephemeral_range()
        ):
            self.say(line)
        self.say(kernel_line(self.sock))

    def read(self, data: bytes) -> bool:
        """Say what this read brought (if the budget allows: True)."""
        fact = self.reads.read(data)
        held = self.budget.admit(self._clock.seconds())
        if held is None:
            return False
        if held:
            self.say(
                f"({held} reads not shown: at most {self.budget.per_second} a second)"
            )
        self.say(describe_read(fact, self.side.other))
        if self.sock is not None:
            self.say(kernel_line(self.sock))
        return True

    def turn(
        self,
        *,
        servers_turn: bool | None,
        refused: list[str] | None = None,
        answered: int = 0,
    ) -> None:
        """Say whose turn it is, when it moved or a line was refused."""
        if refused or answered or servers_turn != self._turn:
            self._turn = servers_turn
            for line in describe_turn(
                self.side,
                servers_turn=servers_turn,
                refused=refused or (),
                raw=self.raw,
                answered=answered,
            ):
                self.say(line)

    def sent(self, size: int, *, servers_turn: bool) -> None:
        """The client sent a line (the server's own writes are not traced)."""
        if self.budget.admit(self._clock.seconds()) is None:
            return
        self.say(f"sent {size} bytes: one send(); TCP may deliver them in any pieces")
        self.turn(servers_turn=servers_turn)

    def fin_received(self) -> None:
        self.close.fin_received(self._clock.seconds())
        other = self.side.other.value
        self.say(
            f"FIN from the {other}: it has closed its sending half and will send "
            f"nothing more; this side can still send (half-close, 半关闭)"
        )

    def closing(self, why: str) -> None:
        if self.close.peer_fin is None and kernel_state(self.sock) == "CLOSE_WAIT":
            other = self.side.other.value
            self.say(
                f"the {other}'s FIN had already arrived (the kernel says CLOSE_WAIT), "
                "though this side had not read it yet: the other side closed first"
            )
            self.close.fin_received(self._clock.seconds())
        self.close.closing(self._clock.seconds())
        self.say(
            f"the {self.side.value} closes the connection ({why}): its FIN follows"
        )

    def aborted(self) -> None:
        self.close.abort(self._clock.seconds())

    def lost(self, reason: Failure) -> None:
        clean = bool(reason.check(ConnectionDone))
        for line in describe_close(
            self.side,
            self.local,
            self.remote,
            self.close,
            clean=clean,
            why=reason.getErrorMessage(),
        ):
            self.say(line)
        held = self.budget.total_held
        if held:
            self.say(f"{self.reads.reads} reads in all; {held} were not shown")
        if (
            self.local is not None
            and self.remote is not None
            and not self.close.aborted
        ) and (clean or self.close.we_closed is not None):
            self._clock.callLater(SS_DELAY, self._check, self.close.we_first, 1)
        else:
            self._settle()

    def _settle(self) -> None:
        if not self.settled.called:
            self.settled.callback(None)

    def _check(self, expected_here: bool, attempt: int) -> None:
        if self._probe is None or self.local is None or self.remote is None:
            self._settle()
            return
        asking = self._probe(ss_filter(self.local, self.remote))
        asking.addCallback(self._checked, expected_here, attempt)
        asking.addErrback(self._not_checked)

    def _not_checked(self, failure: Failure) -> None:
        if failure.check(ProbeBusy):
            self.say(
                "kernel check: skipped, as many connections are closing at once "
                f"(at most {SS_AT_ONCE} ss run at a time)"
            )
        self._settle()

    def _checked(self, output: str | None, expected_here: bool, attempt: int) -> None:
        if output is None:
            self.say(
                "kernel check: ss (from iproute2) is not available here, so TIME_WAIT "
                "cannot be checked against the kernel"
            )
            self._settle()
            return
        assert self.local is not None
        assert self.remote is not None
        check = check_time_wait(
            self.side,
            self.local,
            self.remote,
            parse_ss(output),
            expected_here=expected_here,
            last_try=attempt >= SS_TRIES,
        )
        if check.again:
            if attempt == 1:
                self.say(check.line)
            self._clock.callLater(SS_AGAIN, self._check, expected_here, attempt + 1)
            return
        self.say(check.line)
        self._settle()


class _StatsTap:
    """Stands in for the factory's stats in one traced engine: it hears the
    code of each refused line, and passes everything on."""

    def __init__(self, stats: Any, refused: list[str]) -> None:
        self._stats = stats
        self._refused = refused

    def refused_line(self, code: str) -> None:
        self._refused.append(code)
        if self._stats is not None:
            self._stats.refused_line(code)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stats, name)


def _close_why(action: Close) -> str:
    return str(action.reason.value)


class TracingChatServerProtocol(ChatServerProtocol):
    """``ChatServerProtocol``, traced: connect, each read, the turn, the close."""

    trace: ConnectionTrace

    def _emit(self, line: str) -> None:
        log.info(
            "[tcp] conversation {cid}: {trace}", cid=self.conversation_id, trace=line
        )

    def connectionMade(self) -> None:
        factory = self.factory
        self._refused_codes: list[str] = []
        self.trace = ConnectionTrace(
            Side.SERVER,
            self._emit,
            factory.clock,
            getattr(factory, "probe", None),
            raw=factory.framing.name == "raw",
        )
        self.trace.connected(self.transport)
        super().connectionMade()

    def _connected(self) -> None:
        super()._connected()
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.stats = _StatsTap(engine.stats, self._refused_codes)

    def dataReceived(self, data: bytes) -> None:
        shown = self.trace.read(data)
        engine = getattr(self, "engine", None)
        answers = 0 if engine is None else engine.answers
        super().dataReceived(data)
        refused, self._refused_codes[:] = list(self._refused_codes), []
        if shown and engine is not None:
            over = engine.phase is not Phase.OPEN
            self.trace.turn(
                servers_turn=None if over else engine.turn is Turn.SERVER,
                refused=refused,
                answered=engine.answers - answers,
            )

    def readConnectionLost(self) -> None:
        self.trace.fin_received()
        super().readConnectionLost()

    def _close(self, action: Close) -> None:
        self.trace.closing(_close_why(action))
        super()._close(action)

    def _abort(self) -> None:
        self.trace.aborted()
        super()._abort()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.trace.lost(reason)


#: The close codes' names, for the page's panel (RFC 6455 section 7.4.1).
CLOSE_NAMES = {
    1000: "normal closure",
    1001: "going away",
    1002: "protocol error",
    1003: "unsupported data",
    1007: "invalid data",
    1008: "policy violation",
    1013: "try again later",
}


class TracingWebConversation(WebConversation):
    """``WebConversation``, traced: the TCP under it, the upgrade, each message
    in, and the close code; each line also goes to the page, as a notice."""

    def __init__(self, factory: ChatServerFactory, request: Request) -> None:
        super().__init__(factory, request)
        self.trace = ConnectionTrace(
            Side.SERVER, self._emit, factory.clock, getattr(factory, "probe", None)
        )
        self._to_page = False
        self._frame_size = 0  # bytes of a streamed message so far

    def _emit(self, line: str) -> None:
        log.info(
            "[tcp] web conversation {cid}: {trace}",
            cid=self.conversation_id,
            trace=line,
        )
        socket_ = self._socket
        if self._to_page and socket_ is not None:
            try:
                socket_.sendTextMessage(f"!info trace: {line}")
            except Exception:  # the socket is closing: the log has it
                self._to_page = False

    def negotiationFinished(self) -> None:
        super().negotiationFinished()
        self._to_page = True
        request = self._request
        key = _header(request, b"sec-websocket-key") or ""
        self.trace.say(
            f"HTTP upgrade: the page sent GET {request.path.decode('latin-1')} "
            f"HTTP/1.1 with Upgrade: websocket, Host {_header(request, b'host')}, "
            f"Origin {_header(request, b'origin') or '(none: not a browser)'}, "
            f"Sec-WebSocket-Key {key}"
        )
        self.trace.say(
            "HTTP upgrade: the server answered 101 Switching Protocols with "
            f"Sec-WebSocket-Accept {websocket_accept(key)} (SHA-1 of the key and "
            "RFC 6455's GUID): from here on the same TCP connection carries "
            "WebSocket frames, not HTTP"
        )
        self.trace.connected(self._tcp)

    def _piece(self, text: str) -> None:
        # Streamed (see _web.stream_messages): the pieces come first, then
        # the message's end, as an empty rest.
        self._frame_size += len(text.encode("utf-8", "replace"))
        super()._piece(text)

    def _message(self, text: str, *, final: bool) -> None:
        if not final:  # a piece, from _piece
            super()._message(text, final=final)
            return
        engine = getattr(self, "engine", None)
        answers = 0 if engine is None else engine.answers
        super()._message(text, final=final)
        size, self._frame_size = self._frame_size, 0
        self._frame_in(size + len(text.encode("utf-8", "replace")), answers)

    def _frame_in(self, size: int, answers: int) -> None:
        engine = getattr(self, "engine", None)
        if self.trace.budget.admit(self.factory.clock.seconds()) is None:
            return
        self.trace.say(
            f"frame in: a text message of {size} bytes: one message, one line; "
            "WebSocket keeps message boundaries, so there is no sticky packet here"
        )
        if self.trace.sock is not None:
            self.trace.say(kernel_line(self.trace.sock))
        if engine is not None:
            over = engine.phase is not Phase.OPEN
            for line in describe_turn(
                Side.SERVER,
                servers_turn=None if over else engine.turn is Turn.SERVER,
                answered=engine.answers - answers,
            ):
                self.trace.say(line)

    def _close(self, action: Close) -> None:
        code = close_code(action.reason)
        self.trace.say(
            f"close handshake: the server sends a Close frame, code {code} "
            f"({CLOSE_NAMES.get(code, 'see RFC 6455')}), for {_close_why(action)}; "
            "Twisted closes TCP right after it, without waiting for the browser's "
            "own Close frame: if that comes after the server's socket has closed, "
            "the server's kernel answers it with RST, and no TIME_WAIT is left"
        )
        self._to_page = False
        self.trace.closing(_close_why(action))
        super()._close(action)

    def _abort(self) -> None:
        self.trace.aborted()
        super()._abort()

    def connectionLost(self, reason: Failure) -> None:
        self._to_page = False
        super().connectionLost(reason)
        if self.conversation_id:
            self.trace.lost(reason)


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else safe_text(value.decode("latin-1"))


class TracingChatServerFactory(ChatServerFactory):
    """``ChatServerFactory`` whose conversations, TCP and web, are traced.

    *probe* runs ``ss`` after each close (default: ``ss_probe`` on the
    reactor); tests pass their own.
    """

    web_conversation = TracingWebConversation

    def __init__(self, *args: Any, probe: Probe | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.probe = probe or ss_probe(self.clock)

    def conversation(self, addr: Any) -> ChatServerProtocol:
        proto = TracingChatServerProtocol(self.next_id(), getattr(addr, "host", None))
        proto.factory = self
        return proto


@implementer(IHalfCloseableProtocol)
class TracingClientProtocol(_ChatClientProtocol):
    """The client's protocol, traced: connect, each read, each send, the close."""

    trace: ConnectionTrace

    def connectionMade(self) -> None:
        self.trace.connected(self.transport)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        shown = self.trace.read(data)
        super().dataReceived(data)
        if shown:
            turn = self.turns.turn
            if turn is not ClientTurn.ENDED:
                self.trace.turn(servers_turn=turn is ClientTurn.SERVER)

    def _resolve(self, text: str) -> None:
        # Before the answer is handed on: whoever waits may say the next line
        # at once, in this same call.
        self.trace.turn(servers_turn=False)
        super()._resolve(text)

    def say(self, text: str) -> Deferred[str]:
        before = self.turns.turn
        sent = super().say(text)
        if text == QUIT and self.turns.turn is ClientTurn.ENDED:
            self.trace.say(
                f"sent q ({len(self._framing.encode_message(text))} bytes): this "
                "client quits; the server answers with its goodbye and closes"
            )
            return sent
        if self.turns.turn is not before or self._end is not None:
            size = len(self._framing.encode_message(text))
            self.trace.sent(size, servers_turn=True)
        return sent

    def readConnectionLost(self) -> None:
        self.trace.fin_received()
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.trace.close.peer_fin is None and reason.check(ConnectionDone):
            self.trace.closing("it asked to close before any FIN from the server")
        super().connectionLost(reason)
        self.trace.lost(reason)


class TracingClientFactory(_ClientFactory):
    """Make a ``TracingClientProtocol`` per connection; its lines go to *emit*."""

    def __init__(
        self,
        on_notice: Callable[[Notice], None],
        framing: Framing | None,
        *,
        emit: Callable[[str], None],
        clock: IReactorTime,
        probe: Probe | None = None,
    ) -> None:
        super().__init__(on_notice, framing)
        self._emit = emit
        self._clock = clock
        self._probe = probe or ss_probe(clock)
        self.traces: list[ConnectionTrace] = []

    def settled(self, timeout: float) -> Deferred[None]:
        """Fire once every connection's close is traced, or after *timeout*."""
        waiting = DeferredList([t.settled for t in self.traces], consumeErrors=True)
        done: Deferred[None] = waiting.addCallback(lambda _: None)
        return done.addTimeout(timeout, self._clock, lambda result, t: None)

    def buildProtocol(self, addr: Any) -> _ChatClientProtocol:
        proto = TracingClientProtocol(self._on_notice, self._framing)
        proto.trace = ConnectionTrace(
            Side.CLIENT,
            self._emit,
            self._clock,
            self._probe,
            raw=self._framing is not None and self._framing.name == "raw",
            per_second=CLIENT_READS_PER_SECOND,
        )
        self.traces.append(proto.trace)
        proto.factory = self
        return proto
