"""Teaching mode's Twisted glue: observers of the doors and of the client.

Used only with ``--trace``: without it, nothing here is attached, and
nothing here runs.  ``trace_conversations`` attaches a ``TcpTrace`` or a
``WebTrace`` to each conversation of a factory (``ChatServerFactory.observe``);
``ClientTracing`` makes one for each of the client's connections.  Every
fact and word comes from ``sockchat._teaching.trace``; this module reads
the sockets (addresses, ``TCP_INFO``, ``SIOCOUTQ``), hears from the doors
when reads, FINs and closes happen, runs ``ss`` after a close, and prints
what ``trace`` says:

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
from twisted.internet.interfaces import IReactorTime, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from sockchat._core.engine import Reason
from sockchat._core.framing import Framing
from sockchat._core.render import safe_text
from sockchat._core.reports import EngineReport, LineRefused, TurnMoved
from sockchat._core.rules import Event, Phase, Turn
from sockchat._core.turns import ClientTurn
from sockchat._core.wire import QUIT
from sockchat._doors.observers import ClientObserver, ConversationObserver, Loss
from sockchat._doors.tcp import ChatServerFactory
from sockchat._doors.web import close_code
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
    from twisted.web.websocket import WebSocketTransport

__all__ = [
    "SS_COMMAND",
    "ClientTracing",
    "ConnectionTrace",
    "ProbeBusy",
    "TcpTrace",
    "WebTrace",
    "ss_probe",
    "trace_conversations",
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

    def connected(self, transport: ITransport) -> None:
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


class _ServerTrace(ConversationObserver):
    """What a server-side trace hears: the engine's moves and refusals, kept
    to say after each read what it did to the turn."""

    every_turn = True

    #: Its log lines' format.
    log_format = "[tcp] conversation {cid}: {trace}"

    def __init__(self, cid: int, clock: IReactorTime, probe: Probe, raw: bool) -> None:
        self.cid = cid
        self.trace = ConnectionTrace(Side.SERVER, self._emit, clock, probe, raw=raw)
        self._phase = Phase.STARTING
        self._turn = Turn.CLIENT
        self._answered = 0  # answers since the last read
        self._refused: list[str] = []  # codes of lines refused since then

    def _emit(self, line: str) -> None:
        log.info(self.log_format, cid=self.cid, trace=line)

    def reported(self, report: EngineReport) -> None:
        if isinstance(report, TurnMoved):
            self._phase, self._turn = report.phase, report.turn
            if report.event is Event.ANSWER:
                self._answered += 1
        elif isinstance(report, LineRefused):
            self._refused.append(report.code)

    def _servers_turn(self) -> bool | None:
        """Whose turn it is now (None: it is over)."""
        return None if self._phase is not Phase.OPEN else self._turn is Turn.SERVER

    def _since_read(self) -> tuple[int, list[str]]:
        """The answers given and the codes refused since the last read."""
        answered, refused = self._answered, self._refused
        self._answered, self._refused = 0, []
        return answered, refused

    def aborting(self, now: float) -> None:
        self.trace.aborted()


class TcpTrace(_ServerTrace):
    """The trace of one conversation of the TCP door: its connection, each
    read and what it did to the turn, and the close; in the server's log."""

    _shown = False  # the last read was shown: say what it did to the turn

    def connected(self, transport: ITransport, now: float) -> None:
        self.trace.connected(transport)

    def read(self, data: bytes, now: float) -> None:
        self._shown = self.trace.read(data)
        self._since_read()

    def handled(self, now: float) -> None:
        answered, refused = self._since_read()
        if self._shown:
            self._shown = False
            self.trace.turn(
                servers_turn=self._servers_turn(), refused=refused, answered=answered
            )

    def peer_closed(self, now: float) -> None:
        self.trace.fin_received()

    def closing(self, reason: Reason, now: float) -> None:
        self.trace.closing(reason.value)

    def lost(self, loss: Loss, reason: Failure, now: float) -> None:
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


class WebTrace(_ServerTrace):
    """The trace of one conversation of the web door: the TCP under it, the
    upgrade, each message in, and the close code; each line also goes to
    the page, as a notice."""

    log_format = "[tcp] web conversation {cid}: {trace}"

    def __init__(self, cid: int, clock: IReactorTime, probe: Probe) -> None:
        super().__init__(cid, clock, probe, raw=False)
        self._clock = clock
        self._tcp: ITransport | None = None
        #: The upgrade, until the welcome is sent: then its story is told.
        self._upgrade: Request | None = None
        self._socket: WebSocketTransport | None = None
        self._tells_page = False
        self._frame_size = 0  # bytes of a message so far
        self._frame: int | None = None  # a whole message came: its size

    def _emit(self, line: str) -> None:
        super()._emit(line)
        if self._tells_page and self._socket is not None:
            try:
                self._socket.sendTextMessage(f"!info trace: {line}")
            except Exception:  # the socket is closing: the log has it
                self._tells_page = False

    def connected(self, transport: ITransport, now: float) -> None:
        self._tcp = transport

    def upgraded(
        self, request: Request, socket: WebSocketTransport, now: float
    ) -> None:
        self._upgrade = request
        self._socket = socket

    def frame_in(self, text: str | None, size: int, final: bool, now: float) -> None:
        if text is None:
            return  # binary: the conversation ends; its close says why
        self._frame_size += size
        if final:
            self._frame, self._frame_size = self._frame_size, 0

    def handled(self, now: float) -> None:
        request, tcp = self._upgrade, self._tcp
        if request is not None and tcp is not None:  # the welcome is sent
            self._upgrade = None
            self._tells_page = True
            self._tell_upgrade(request)
            self.trace.connected(tcp)
        size, self._frame = self._frame, None
        answered, _ = self._since_read()
        if size is None or self.trace.budget.admit(self._clock.seconds()) is None:
            return
        self.trace.say(
            f"frame in: a text message of {size} bytes: one message, one line; "
            "WebSocket keeps message boundaries, so there is no sticky packet here"
        )
        if self.trace.sock is not None:
            self.trace.say(kernel_line(self.trace.sock))
        for line in describe_turn(
            Side.SERVER, servers_turn=self._servers_turn(), answered=answered
        ):
            self.trace.say(line)

    def _tell_upgrade(self, request: Request) -> None:
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

    def closing(self, reason: Reason, now: float) -> None:
        code = close_code(reason)
        self.trace.say(
            f"close handshake: the server sends a Close frame, code {code} "
            f"({CLOSE_NAMES.get(code, 'see RFC 6455')}), for {reason.value}; "
            "Twisted closes TCP right after it, without waiting for the browser's "
            "own Close frame: if that comes after the server's socket has closed, "
            "the server's kernel answers it with RST, and no TIME_WAIT is left"
        )
        self._tells_page = False
        self.trace.closing(reason.value)

    def lost(self, loss: Loss, reason: Failure, now: float) -> None:
        self._tells_page = False
        self.trace.lost(reason)


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else safe_text(value.decode("latin-1"))


def trace_conversations(factory: ChatServerFactory, probe: Probe | None = None) -> None:
    """Trace every conversation of *factory* from now on, TCP and web.

    *probe* runs ``ss`` after each close (default: ``ss_probe`` on the
    factory's clock); tests pass their own.
    """
    clock = factory.clock
    checks = probe or ss_probe(clock)
    raw = factory.framing.name == "raw"

    def make(door: str, cid: int) -> ConversationObserver:
        if door == "web":
            return WebTrace(cid, clock, checks)
        return TcpTrace(cid, clock, checks, raw)

    factory.observe(make)


class _ClientTrace(ClientObserver):
    """The trace of the client's own connection: connect, each read, each
    send, the close."""

    def __init__(self, trace: ConnectionTrace) -> None:
        self.trace = trace
        self._shown = False

    def connected(self, transport: ITransport) -> None:
        self.trace.connected(transport)

    def read(self, data: bytes) -> None:
        self._shown = self.trace.read(data)

    def answered(self) -> None:
        self.trace.turn(servers_turn=False)

    def handled(self, turn: ClientTurn) -> None:
        if self._shown and turn is not ClientTurn.ENDED:
            self.trace.turn(servers_turn=turn is ClientTurn.SERVER)

    def sent(self, text: str, data: bytes) -> None:
        if text == QUIT:
            self.trace.say(
                f"sent q ({len(data)} bytes): this client quits; the server "
                "answers with its goodbye and closes"
            )
        else:
            self.trace.sent(len(data), servers_turn=True)

    def peer_closed(self) -> None:
        self.trace.fin_received()

    def lost(self, loss: Loss, reason: Failure) -> None:
        if self.trace.close.peer_fin is None and loss is Loss.DONE:
            self.trace.closing("it asked to close before any FIN from the server")
        self.trace.lost(reason)


class ClientTracing:
    """Teaching mode for the client: an observer for each of its
    connections (``observer``, for ``ClientFactory(observe=...)``), whose
    lines go to *emit*."""

    def __init__(
        self,
        emit: Callable[[str], None],
        clock: IReactorTime,
        probe: Probe | None = None,
        *,
        framing: Framing | None = None,
    ) -> None:
        self._emit = emit
        self._clock = clock
        self._probe = probe or ss_probe(clock)
        self._raw = framing is not None and framing.name == "raw"
        self.traces: list[ConnectionTrace] = []

    def observer(self) -> ClientObserver:
        trace = ConnectionTrace(
            Side.CLIENT,
            self._emit,
            self._clock,
            self._probe,
            raw=self._raw,
            per_second=CLIENT_READS_PER_SECOND,
        )
        self.traces.append(trace)
        return _ClientTrace(trace)

    def settled(self, timeout: float) -> Deferred[None]:
        """Fire once every connection's close is traced, or after *timeout*."""
        waiting = DeferredList([t.settled for t in self.traces], consumeErrors=True)
        done: Deferred[None] = waiting.addCallback(lambda _: None)
        return done.addTimeout(timeout, self._clock, lambda result, t: None)
