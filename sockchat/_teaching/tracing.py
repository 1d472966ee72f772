"""Teaching mode's Twisted glue: observers of the doors and of the client.

Used only with ``--trace``: without it, nothing here is attached, and
nothing here runs.  ``trace_conversations`` attaches a ``TcpTrace`` or a
``WebTrace`` to each conversation of a factory (``ChatServerFactory.observe``);
``ClientTracing`` makes one for each of the client's connections.  Every
fact and word comes from ``sockchat._teaching.trace`` (and the ladder's and
the layers' modules); this module reads the sockets (addresses,
``TCP_INFO``, ``SIOCOUTQ``), hears from the doors when reads, FINs and
closes happen, runs ``ss`` after a close, and prints what they say:

- the server's lines go to its log as ``[tcp] conversation N: ...``,
  through ``safe_text``;
- a web conversation's also go to its page, as ``!info trace: ...``
  notices (docs/protocol.md), from its welcome on, and the page is told
  where its ladder is drawn (``!info ladder: /trace/TOKEN/ladder.svg``,
  served by ``LadderResource``);
- the client's go to the callable it is given (stderr, or the screen).

With ``--trace packets`` a ``PacketSource`` (``packet_trace.py``, which
alone imports the capture) gives each connection's captured packets:
before each of the socket's events the trace takes what the capture holds
(``sync``), so that a packet is said before the read it brought.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import socket
import struct
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import address
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IReactorTime, ISSLTransport, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource

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
from sockchat._responders.contract import ConversationInfo
from sockchat._teaching.followed import KEPT, FollowedPackets
from sockchat._teaching.interfaces import interface_for
from sockchat._teaching.ladder import (
    MAX_STEPS,
    Ladder,
    SocketLadder,
    describe_packet,
    render_svg,
    render_text,
)
from sockchat._teaching.layers import (
    layers_from_packet,
    layers_from_socket,
    render_layers,
)
from sockchat._teaching.packets import Connection, TcpFlags, Tracked
from sockchat._teaching.trace import (
    READS_PER_SECOND,
    TCP_INFO_SIZE,
    TIME_WAIT_SECONDS,
    Address,
    CloseTracker,
    ReadTracker,
    Reset,
    Side,
    TraceBudget,
    Verdict,
    both_ends_here,
    check_time_wait,
    describe_close,
    describe_connection,
    describe_counts,
    describe_fin,
    describe_read,
    describe_reset,
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
    "LadderBook",
    "LadderResource",
    "PacketSource",
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


class Following(Protocol):
    """A connection's packets, followed: ``stop`` ends it, and lets the
    capture forget them."""

    def stop(self) -> None: ...


class PacketSource(Protocol):
    """Where the trace gets a connection's packets: the captures of this
    process (``sockchat._teaching.packet_trace.PacketCapture``)."""

    def where(self, port: int) -> str | None:
        """The interface *port*'s packets are captured on, or None: not."""
        ...

    def sync(self) -> None:
        """Hand on what the captures hold now, before a socket's event."""
        ...

    def follow(
        self, connection: Connection, observer: Callable[[Tracked], None]
    ) -> Following:
        """Hand *observer* each packet of *connection*: those seen so far,
        then each as it comes."""
        ...

    def seen(self, port: int) -> list[list[Tracked]]:
        """The packets kept of each connection to *port* (for a connect()
        that failed: no connection to follow)."""
        ...


#: Packet lines shown per conversation per second; the rest are counted.
PACKETS_PER_SECOND = 20
#: Why a trace has no packets, when nothing else says why.
NO_CAPTURE = "the capture is off: --trace packets turns it on"
LAYERS_TITLE = "layers: the first segment that carried data, layer by layer"


#: Conversations that keep a ladder (its steps, its packets) at once, each
#: until its TIME_WAIT would be over: the bound on what the ladders hold
#: (at most ``MAX_STEPS`` steps and ``followed.KEPT`` packets each).
LADDERS_AT_ONCE = 64


class LadderRoom:
    """How many conversations keep a ladder now, at most *most*."""

    def __init__(self, most: int = LADDERS_AT_ONCE) -> None:
        self.most = most
        self.taken = 0

    def take(self) -> bool:
        if self.taken >= self.most:
            return False
        self.taken += 1
        return True

    def give(self) -> None:
        self.taken -= 1


class ConnectionTrace:
    """One connection's trace: the trackers, the budget, and where lines go.

    With *packets*, it follows the connection's captured packets too: each
    as a line (to *emit_packet*, if given), the reads' segments, the close's
    FIN or RST, and the ladder.  *web*: the web door's connection (HTTP,
    then WebSocket frames).
    """

    def __init__(
        self,
        side: Side,
        emit: Callable[[str], None],
        clock: IReactorTime,
        probe: Probe | None = None,
        *,
        raw: bool = False,
        per_second: int = READS_PER_SECOND,
        packets: PacketSource | None = None,
        no_packets: str = NO_CAPTURE,
        web: bool = False,
        emit_packet: Callable[[str], None] | None = None,
        ladders: LadderRoom | None = None,
    ) -> None:
        self.side = side
        self._emit = emit
        self._emit_packet = emit_packet or emit
        self._clock = clock
        self._probe = probe
        self.reads = ReadTracker(raw=raw)
        self.close = CloseTracker()
        self.budget = TraceBudget(per_second)
        self.packet_budget = TraceBudget(PACKETS_PER_SECOND)
        self.raw = raw
        self.web = web
        self.local: Address | None = None
        self.remote: Address | None = None
        self.sock: socket.socket | None = None
        self._turn: bool | None = None  # the server's turn, when last said
        #: What the socket saw, for the ladder when there are no packets.
        self.steps = SocketLadder(side, None, None)
        self._packets = packets
        self._no_packets = no_packets
        #: The connection's captured packets, when they are followed.
        self.followed: FollowedPackets | None = None
        self._following: Following | None = None
        self._read_bytes = 0  # bytes read so far, to number the reads' bytes
        self._tcp_reads = True  # False over TLS: reads are not TCP's bytes
        self._layers_said = False
        self._loss: Loss | None = None
        self._why = ""
        self._expect_reset = False
        #: What showed this connection's TIME_WAIT (``ss``), if anything did.
        self.time_wait_seen: str | None = None
        self._ladders = ladders
        self._has_ladder = False  # a place was taken in *ladders*
        #: Fires once the close is traced, its kernel check included.
        self.settled: Deferred[None] = Deferred()

    def say(self, line: str) -> None:
        self._emit(safe_text(line))

    def sync(self) -> None:
        """Hand on the packets captured so far, before this socket's event."""
        if self._packets is not None:
            self._packets.sync()

    def connected(self, transport: ITransport) -> None:
        self.sync()
        self.sock = socket_of(transport)
        self.local = address_of(transport.getHost())
        self.remote = address_of(transport.getPeer())
        self._tcp_reads = not ISSLTransport.providedBy(transport)
        if self.local is None or self.remote is None:
            self.sock = None  # no TCP_INFO either
            self.say(
                "connection: not over TCP/IP (a UNIX socket?): no ports, handshake, "
                "TCP_INFO or TIME_WAIT to show; the reads are still traced"
            )
            return
        kept = self._ladders is None or self._ladders.take()
        self._has_ladder = kept and self._ladders is not None
        if not kept:
            self.say(
                f"ladder: none for this connection: at most {LADDERS_AT_ONCE} "
                "connections keep one at once, to bound memory"
            )
        self.steps = SocketLadder(
            self.side, self.local, self.remote, most=MAX_STEPS if kept else 0
        )
        self.steps.opened(self._clock.seconds())
        client, server = (
            (self.remote, self.local)
            if self.side is Side.SERVER
            else (self.local, self.remote)
        )
        where = None if self._packets is None else self._packets.where(server.port)
        for line in describe_connection(
            self.side,
            self.local,
            self.remote,
            ephemeral=ephemeral_range(),
            captured=where,
        ):
            self.say(line)
        if self._packets is not None and where is not None:
            self.followed = FollowedPackets(self.side, kept=KEPT if kept else 0)
            self._following = self._packets.follow(
                Connection.of(client, server), self._packet
            )
        self.say(kernel_line(self.sock))

    def _packet(self, packet: Tracked) -> None:
        followed = self.followed
        if followed is None:
            return
        phase = followed.add(packet)
        held = self.packet_budget.admit(self._clock.seconds())
        if held is not None:
            if held:
                self._emit_packet(
                    f"({held} packets not shown: at most {PACKETS_PER_SECOND} a "
                    "second; the counts at the end include them)"
                )
            line = describe_packet(packet, phase, start=followed.start or 0.0)
            self._emit_packet(safe_text(line))
        if followed.first_data is not None and not self._layers_said:
            self._layers_said = True
            layers = layers_from_packet(
                followed.first_data, framing_raw=self.raw, web=self.web
            )
            for line in render_layers(layers, title=LAYERS_TITLE):
                self.say(line)

    def _socket_layers(self, data: bytes) -> None:
        """Without packets: the layers of the first read, from the socket."""
        if self._layers_said or self.followed is not None:
            return
        if self.local is None or self.remote is None:
            return
        self._layers_said = True
        layers = layers_from_socket(
            self.side,
            self.local,
            self.remote,
            data,
            why=self._no_packets,
            framing_raw=self.raw,
            web=self.web,
        )
        for line in render_layers(
            layers, title="layers: the first read, layer by layer"
        ):
            self.say(line)

    def read(self, data: bytes) -> bool:
        """Say what this read brought (if the budget allows: True)."""
        self.sync()
        fact = self.reads.read(data)
        segments = None
        if self.followed is not None and self._tcp_reads:
            segments = self.followed.segments(self._read_bytes, len(data))
        self._read_bytes += len(data)
        now = self._clock.seconds()
        self.steps.read(now, fact)
        self._socket_layers(data)
        held = self.budget.admit(now)
        if held is None:
            return False
        if held:
            self.say(
                f"({held} reads not shown: at most {self.budget.per_second} a second)"
            )
        self.say(describe_read(fact, self.side.other, segments=segments))
        if self.sock is not None:
            self.say(kernel_line(self.sock))
        return True

    def message(self, data: bytes) -> None:
        """A WebSocket message came (the web door): for the layers and the
        ladder, as a read."""
        self.sync()
        now = self._clock.seconds()
        self.steps.read(now, self.reads.read(data))
        self._socket_layers(data)

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

    def wrote(self, size: int) -> None:
        self.steps.wrote(self._clock.seconds(), size)

    def sent(self, size: int, *, servers_turn: bool) -> None:
        """The client sent a line (the server's own writes are not said)."""
        self.wrote(size)
        if self.budget.admit(self._clock.seconds()) is None:
            return
        self.say(f"sent {size} bytes: one send(); TCP may deliver them in any pieces")
        self.turn(servers_turn=servers_turn)

    def fin_received(self) -> None:
        self.sync()
        now = self._clock.seconds()
        self.close.fin_received(now)
        self.steps.fin_received(now)
        self.say(describe_fin(self.side))

    def closing(self, why: str) -> None:
        self.sync()
        now = self._clock.seconds()
        if self.close.peer_fin is None and kernel_state(self.sock) == "CLOSE_WAIT":
            other = self.side.other.value
            self.say(
                f"the {other}'s FIN had already arrived (the kernel says CLOSE_WAIT), "
                "though this side had not read it yet: the other side closed first"
            )
            self.close.fin_received(now)
        self.close.closing(now)
        self.steps.closing(now)
        self.say(
            f"the {self.side.value} closes the connection ({why}): once what it "
            "still has to send is out, its kernel is to send FIN (unless a reset "
            "from the other side ends the connection first)"
        )

    def aborted(self) -> None:
        self.close.abort(self._clock.seconds())

    def lost(self, loss: Loss, reason: Failure) -> None:
        """The connection is gone: say how once its last packets are in
        (with packets, after ``SS_DELAY``), then check with ``ss``."""
        self.sync()
        self._loss, self._why = loss, reason.getErrorMessage()
        held = self.budget.total_held
        if held:
            self.say(f"{self.reads.reads} reads in all; {held} were not shown")
        if self._following is None:
            self._conclude()
        else:  # the close's last packets come after this side's socket went
            self._clock.callLater(SS_DELAY, self._conclude)

    def _conclude(self) -> None:
        self.sync()
        followed = self.followed
        reset = peer_received = peer_fin = None
        if followed is not None:
            reset, peer_received = followed.reset(), followed.peer_received()
            peer_fin = followed.fin_from_other()
        if reset is not None:
            self.steps.reset(self._clock.seconds(), reset)
        clean = self._loss is Loss.DONE
        for line in describe_close(
            self.side,
            self.local,
            self.remote,
            self.close,
            clean=clean,
            why=self._why,
            reset=reset,
            peer_received=peer_received,
            no_rst_captured=followed is not None and reset is None,
            peer_fin=peer_fin,
        ):
            self.say(line)
        self._expect_reset = reset is not None or not (
            clean or self.close.we_closed is not None
        )
        if self.local is None or self.remote is None or self.close.aborted:
            self._settle()
        elif self._following is None:
            self._clock.callLater(SS_DELAY, self._check, self.close.we_first, 1)
        else:  # the packets have had their time already
            self._check(self.close.we_first, 1)

    def _settle(self) -> None:
        if self.settled.called:
            return
        followed = self.followed
        if followed is not None:
            self.sync()
            counts = followed.counts()
            self.say(
                describe_counts(
                    counts.segments, counts.syn, counts.fin, counts.rst, counts.data
                )
            )
            if followed.left_out and followed.packets:
                self.say(
                    f"capture: {followed.left_out} packets of this connection "
                    f"were not kept for its ladder (at most {len(followed.packets)})"
                )
        # Followed until its TIME_WAIT would be over: a late segment of it
        # still shows, and its ladder can still be drawn.
        self._clock.callLater(TIME_WAIT_SECONDS, self.forget)
        self.settled.callback(None)

    def forget(self) -> None:
        """Stop following this connection's packets; give its ladder's
        place back."""
        following, self._following = self._following, None
        if following is not None:
            following.stop()
        if self._has_ladder and self._ladders is not None:
            self._has_ladder = False
            self._ladders.give()

    def ladder(self) -> Ladder:
        """This connection's ladder: from its packets, or from the socket."""
        if self.followed is not None and self.followed.packets:
            return self.followed.ladder(time_wait_seen_by=self.time_wait_seen)
        if self.time_wait_seen is not None:
            self.steps.time_wait_seen(self.time_wait_seen)
        return self.steps.ladder()

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

    def _late_reset(self) -> None:
        """An RST captured after the close was said (the other side closed
        later, with data unread): say it, and expect no TIME_WAIT."""
        self.sync()
        reset = None if self.followed is None else self.followed.reset()
        if reset is not None and not self._expect_reset:
            self._expect_reset = True
            self.steps.reset(self._clock.seconds(), reset)
            self.say(describe_reset(self.side, reset))

    def _peer_here(self) -> bool | None:
        """Whether the other end is on this machine (then ss sees it too)."""
        assert self.remote is not None
        if self.local is not None and both_ends_here(self.local, self.remote):
            return True
        return interface_for(self.remote.host) is not None

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
        self._late_reset()
        check = check_time_wait(
            self.side,
            self.local,
            self.remote,
            parse_ss(output),
            expected_here=expected_here,
            last_try=attempt >= SS_TRIES,
            peer_here=self._peer_here(),
            reset=self._expect_reset,
        )
        if check.again:
            if attempt == 1:
                self.say(check.line)
            self._clock.callLater(SS_AGAIN, self._check, expected_here, attempt + 1)
            return
        if check.verdict is Verdict.AGREES and not self._expect_reset:
            self.time_wait_seen = "ss"
        self.say(check.line)
        self._settle()


# -- The ladder on request -------------------------------------------------------

#: Ladders kept for ``/trace/...``, the most recent; a closed one goes
#: once its TIME_WAIT would be over.
LADDERS_KEPT = 256


class LadderBook:
    """The conversations whose ladder the server draws on request: by a
    token that only its own page knows, or by its number (this machine only)."""

    def __init__(self, clock: IReactorTime, kept: int = LADDERS_KEPT) -> None:
        self._clock = clock
        self._kept = kept
        self._by_number: OrderedDict[int, tuple[str, ConnectionTrace]] = OrderedDict()
        self._by_token: dict[str, ConnectionTrace] = {}

    def add(self, number: int, trace: ConnectionTrace) -> str:
        """Keep *trace*'s ladder; its token."""
        token = secrets.token_urlsafe(16)
        self._by_number[number] = (token, trace)
        self._by_token[token] = trace
        while len(self._by_number) > self._kept:
            _, (old, _) = self._by_number.popitem(last=False)
            self._by_token.pop(old, None)
        trace.settled.addCallback(
            lambda _: self._clock.callLater(TIME_WAIT_SECONDS + 1, self.drop, number)
        )
        return token

    def drop(self, number: int) -> None:
        token, _ = self._by_number.pop(number, ("", None))
        self._by_token.pop(token, None)

    def find(self, key: str, *, local: bool) -> ConnectionTrace | None:
        """The trace of *key*: a token, or a number if *local* (the request
        came from this machine)."""
        found = self._by_token.get(key)
        if found is None and local and key.isdigit():
            entry = self._by_number.get(int(key))
            found = None if entry is None else entry[1]
        return found


class LadderResource(Resource):
    """``/trace/KEY/ladder.svg`` and ``/trace/KEY/ladder.txt``: a
    conversation's ladder, drawn now.  KEY is the token its page was given,
    or, from this machine only, the conversation's number."""

    isLeaf = True

    def __init__(self, book: LadderBook, clock: IReactorTime) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.web has no annotations
        self._book = book
        self._clock = clock

    def render_GET(self, request: Any) -> bytes:  # twisted.web: no annotations
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(
            b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'"
        )
        parts = [p.decode("latin-1") for p in request.postpath or ()]
        peer = request.getClientAddress()
        local = isinstance(peer, (address.IPv4Address, address.IPv6Address)) and (
            ipaddress.ip_address(peer.host.split("%", 1)[0]).is_loopback
        )
        trace = None
        if len(parts) == 2 and parts[1] in ("ladder.svg", "ladder.txt"):
            trace = self._book.find(parts[0], local=local)
        if trace is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return (
                b"sockchat: no such ladder (a conversation's ladder is kept until "
                b"its TIME_WAIT is over; by number, from this machine only)\n"
            )
        trace.sync()  # the packets captured so far
        now = self._clock.seconds()
        if parts[1] == "ladder.txt":
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            lines = render_text(trace.ladder(), now=now)
            return ("\n".join(lines) + "\n").encode("utf-8")
        request.setHeader(b"content-type", b"image/svg+xml; charset=utf-8")
        return render_svg(trace.ladder(), now=now).encode("utf-8")


# -- The server's observers -----------------------------------------------------


class _ServerTrace(ConversationObserver):
    """What a server-side trace hears: the engine's moves and refusals, kept
    to say after each read what it did to the turn."""

    every_turn = True

    #: Its log lines' format.
    log_format = "[tcp] conversation {cid}: {trace}"

    def __init__(
        self, cid: int, clock: IReactorTime, probe: Probe, raw: bool, **packets: Any
    ) -> None:
        self.cid = cid
        self.trace = ConnectionTrace(
            Side.SERVER,
            self._emit,
            clock,
            probe,
            raw=raw,
            emit_packet=self._log,
            **packets,
        )
        self._phase = Phase.STARTING
        self._turn = Turn.CLIENT
        self._answered = 0  # answers since the last read
        self._refused: list[str] = []  # codes of lines refused since then

    def _log(self, line: str) -> None:
        log.info(self.log_format, cid=self.cid, trace=line)

    def _emit(self, line: str) -> None:
        self._log(line)

    def started(self, info: ConversationInfo, now: float) -> None:
        self.trace.say(
            "conversation started: the server writes its welcome before any read "
            f'(the log\'s "conversation {self.cid} started" line waits for the '
            "first line, so that a port probe is not logged as a conversation)"
        )

    def reported(self, report: EngineReport) -> None:
        if isinstance(report, TurnMoved):
            self._phase, self._turn = report.phase, report.turn
            if report.event is Event.ANSWER:
                self._answered += 1
        elif isinstance(report, LineRefused):
            self._refused.append(report.code)

    def wrote(self, data: bytes, now: float) -> None:
        self.trace.wrote(len(data))

    def _servers_turn(self) -> bool | None:
        """Whose turn it is now (None: it is over)."""
        return None if self._phase is not Phase.OPEN else self._turn is Turn.SERVER

    def _since_read(self) -> tuple[int, list[str]]:
        """The answers given and the codes refused since the last read."""
        answered, refused = self._answered, self._refused
        self._answered, self._refused = 0, []
        return answered, refused

    def peer_closed(self, now: float) -> None:
        self.trace.fin_received()

    def aborting(self, now: float) -> None:
        self.trace.aborted()

    def lost(self, loss: Loss, reason: Failure, now: float) -> None:
        self.trace.lost(loss, reason)


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

    def closing(self, reason: Reason, now: float) -> None:
        self.handled(now)  # the lines answered before the close, said before it
        self.trace.closing(reason.value)


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
#: Lines a page is owed before its welcome is written, kept at most.
PAGE_HELD = 200


class WebTrace(_ServerTrace):
    """The trace of one conversation of the web door: the TCP under it, the
    upgrade, each message in, and the close code; each line also goes to
    the page, as a notice, from its welcome on (the lines before it wait),
    and the page is told where its ladder is drawn.  Packet lines go to the
    log only: the page's own notices are packets of its connection, and its
    ladder draws them."""

    log_format = "[tcp] web conversation {cid}: {trace}"

    def __init__(
        self,
        cid: int,
        clock: IReactorTime,
        probe: Probe,
        book: LadderBook | None = None,
        **packets: Any,
    ) -> None:
        super().__init__(cid, clock, probe, False, web=True, **packets)
        self._clock = clock
        self._book = book
        self._socket: WebSocketTransport | None = None
        #: Lines for the page until it can take them; None: sent as they come.
        self._held: list[str] | None = []
        self._tells_page = False
        self._frame_size = 0  # bytes of a message so far
        self._frame: int | None = None  # a whole message came: its size

    def _emit(self, line: str) -> None:
        self._log(line)
        if self._tells_page:
            self._to_page(f"!info trace: {line}")
        elif self._held is not None and len(self._held) < PAGE_HELD:
            self._held.append(line)

    def _to_page(self, message: str) -> None:
        if self._socket is None:
            return
        try:
            self._socket.sendTextMessage(message)
        except Exception:  # the socket is closing: the log has it
            self._tells_page = False

    def connected(self, transport: ITransport, now: float) -> None:
        self.trace.connected(transport)

    def upgraded(
        self, request: Request, socket: WebSocketTransport, now: float
    ) -> None:
        self._socket = socket
        self._tell_upgrade(request)

    def frame_in(self, text: str | None, size: int, final: bool, now: float) -> None:
        self.trace.sync()
        if text is None:
            return  # binary: the conversation ends; its close says why
        self._frame_size += size
        if final:
            self._frame, self._frame_size = self._frame_size, 0
            self.trace.message(text.encode("utf-8", "replace"))

    def handled(self, now: float) -> None:
        held, self._held = self._held, None
        if held is not None:  # the welcome is written: the page may hear now
            self._tells_page = True
            for line in held:
                self._to_page(f"!info trace: {line}")
            if self._book is not None:
                token = self._book.add(self.cid, self.trace)
                self._to_page(f"!info ladder: /trace/{token}/ladder.svg")
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
        if self._held is None:  # the frame read before the close, said before it
            self.handled(now)
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

    def peer_closed(self, now: float) -> None:
        # A browser closes its socket whole: what came after its FIN would
        # be answered with RST, so the page hears no more.
        self._tells_page = False
        super().peer_closed(now)

    def lost(self, loss: Loss, reason: Failure, now: float) -> None:
        self._tells_page = False
        self._held = None
        self.trace.lost(loss, reason)


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else safe_text(value.decode("latin-1"))


def trace_conversations(
    factory: ChatServerFactory,
    probe: Probe | None = None,
    *,
    packets: PacketSource | None = None,
    no_packets: str = NO_CAPTURE,
) -> LadderBook:
    """Trace every conversation of *factory* from now on, TCP and web.

    *probe* runs ``ss`` after each close (default: ``ss_probe`` on the
    factory's clock); tests pass their own.  *packets*: the captures, if
    any (*no_packets* says why not).  Returns the book of ladders, for
    ``LadderResource``.
    """
    clock = factory.clock
    checks = probe or ss_probe(clock)
    raw = factory.framing.name == "raw"
    book = LadderBook(clock)
    follow: dict[str, Any] = {
        "packets": packets,
        "no_packets": no_packets,
        "ladders": LadderRoom(),
    }

    def make(door: str, cid: int) -> ConversationObserver:
        if door == "web":
            return WebTrace(cid, clock, checks, book, **follow)
        observer = TcpTrace(cid, clock, checks, raw, **follow)
        book.add(cid, observer.trace)
        return observer

    factory.observe(make)
    return book


# -- The client --------------------------------------------------------------


class _ClientTrace(ClientObserver):
    """The trace of the client's own connection: connect, each read, each
    send, the close."""

    def __init__(self, trace: ConnectionTrace) -> None:
        self.trace = trace
        self._shown = False
        #: An answer came: its turn line waits until it is shown (``shown``).
        self._answer = False

    def connected(self, transport: ITransport) -> None:
        self.trace.connected(transport)

    def read(self, data: bytes) -> None:
        self._shown = self.trace.read(data)

    def answered(self) -> None:
        self._answer = True

    def shown(self) -> None:
        """The answer is on the screen: now say that the turn is the client's."""
        if self._answer:
            self._answer = False
            self.trace.turn(servers_turn=False)

    def handled(self, turn: ClientTurn) -> None:
        if self._shown and turn is not ClientTurn.ENDED and not self._answer:
            self.trace.turn(servers_turn=turn is ClientTurn.SERVER)

    def sent(self, text: str, data: bytes) -> None:
        self.shown()
        if text == QUIT:
            self.trace.wrote(len(data))
            self.trace.say(
                f"sent q ({len(data)} bytes): this client quits; the server "
                "answers with its goodbye and closes"
            )
        else:
            self.trace.sent(len(data), servers_turn=True)

    def peer_closed(self) -> None:
        self.trace.fin_received()

    def lost(self, loss: Loss, reason: Failure) -> None:
        self.shown()
        if self.trace.close.peer_fin is None and loss is Loss.DONE:
            self.trace.closing("it asked to close before any FIN from the server")
        self.trace.lost(loss, reason)


class ClientTracing:
    """Teaching mode for the client: an observer for each of its
    connections (``observer``, for ``ClientFactory(observe=...)``), whose
    lines go to *emit*; *packets*, the capture of the server's port."""

    def __init__(
        self,
        emit: Callable[[str], None],
        clock: IReactorTime,
        probe: Probe | None = None,
        *,
        framing: Framing | None = None,
        packets: PacketSource | None = None,
        no_packets: str = NO_CAPTURE,
    ) -> None:
        self._emit = emit
        self._clock = clock
        self._probe = probe or ss_probe(clock)
        self._raw = framing is not None and framing.name == "raw"
        self._packets = packets
        self._no_packets = no_packets
        self.traces: list[ConnectionTrace] = []
        self._observers: list[_ClientTrace] = []

    def observer(self) -> ClientObserver:
        trace = ConnectionTrace(
            Side.CLIENT,
            self._emit,
            self._clock,
            self._probe,
            raw=self._raw,
            per_second=CLIENT_READS_PER_SECOND,
            packets=self._packets,
            no_packets=self._no_packets,
        )
        self.traces.append(trace)
        observer = _ClientTrace(trace)
        self._observers.append(observer)
        return observer

    def say(self, line: str) -> None:
        self._emit(safe_text(line))

    def answer_shown(self) -> None:
        """The shell showed an answer: the turn line follows it."""
        if self._observers:
            self._observers[-1].shown()

    def connect_failed(self, failure: Failure, port: int | None) -> None:
        """connect() failed: say what was seen of it (an RST, if refused)."""
        if not failure.check(ConnectionRefusedError):
            return
        attempt: list[Tracked] = []
        if self._packets is not None and port is not None:
            self._packets.sync()
            tried = [
                packets
                for packets in self._packets.seen(port)
                if any(TcpFlags.RST in p.flags for p in packets)
            ]
            if len(tried) == 1:
                attempt = tried[0]
        followed = FollowedPackets(Side.CLIENT)
        for packet in attempt:
            step = followed.add(packet)
            self.say(describe_packet(packet, step, start=attempt[0].time))
        reset = followed.reset()
        if reset is None:
            reset = Reset(
                Side.SERVER,
                "connect() failed with ECONNREFUSED (Twisted's ConnectionRefusedError)",
            )
        else:
            reset = Reset(
                reset.by,
                f"{reset.source}, the only connection to port {port} that the "
                "capture saw reset, so this client's attempt; and connect() "
                "failed with ECONNREFUSED",
            )
        self.say(describe_reset(Side.CLIENT, reset))

    def ladder_lines(self, width: int) -> list[str]:
        """The last connection's ladder, drawn for a terminal *width* wide."""
        if not self.traces:
            return []
        return render_text(
            self.traces[-1].ladder(), width=width, now=self._clock.seconds()
        )

    def settled(self, timeout: float) -> Deferred[None]:
        """Fire once every connection's close is traced, or after *timeout*."""
        waiting = DeferredList([t.settled for t in self.traces], consumeErrors=True)
        done: Deferred[None] = waiting.addCallback(lambda _: None)
        return done.addTimeout(timeout, self._clock, lambda result, t: None)
