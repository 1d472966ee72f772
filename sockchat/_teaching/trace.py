"""Teaching mode (``--trace``): what TCP is doing, in plain words, with numbers.

Every statement is an observation that names its source (a read's bytes,
``TCP_INFO``, ``ss``, a captured packet) or is worded as an inference.

This module decides every fact and every word of the trace, with no I/O:
the Twisted glue (``tracing.py``, beside it) hands it addresses, the bytes of each
read, the kernel's ``TCP_INFO`` bytes, the order of the FINs and the output
of ``ss``, each with the time, and prints the lines it gets back.

- ``parse_tcp_info`` reads Linux's ``struct tcp_info`` into a ``TcpInfo``.
- ``describe_connection`` says what the two addresses and ports are
  (loopback, the listened port, the kernel's ephemeral one), and that the
  three-way handshake was done before ``accept``/``connect`` returned.
- ``ReadTracker`` turns each read into a ``ReadFact``: its bytes, the lines
  it ended, and whether a line began in an earlier read (split) or several
  lines came in one read (粘包); ``describe_read`` says so, about the read
  and its lines only: TCP keeps no trace of the sender's ``send()`` calls,
  so they are spoken of only where captured packets show the segments.
- ``CloseTracker`` notes who sent FIN first; ``describe_close`` says which
  side holds TIME_WAIT and for how long, states only what this side saw
  (the other side's FIN, a ``Reset`` and where it was seen, what showed a
  half-close), and words the rest as what it would be; ``describe_reset``
  and ``describe_fin`` say a reset and a FIN as they are seen.
- ``check_time_wait`` compares the trace with what ``ss -tanoH`` shows, and
  says "agrees" only about what ``ss`` could see: an end that is not on
  this machine is "not checked"; with both ends here and no TIME_WAIT at
  either, the close did not end in order (most likely an RST).
- ``TraceBudget`` bounds the per-read lines: at most ``per_second`` a
  second per conversation, and the rest are counted and said once.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import struct
from collections.abc import Sequence

from attrs import frozen

__all__ = [
    "READS_PER_SECOND",
    "RST_MEANS",
    "TCP_INFO_SIZE",
    "TIME_WAIT_SECONDS",
    "Address",
    "CloseTracker",
    "KernelCheck",
    "ReadFact",
    "ReadTracker",
    "Reset",
    "Side",
    "SocketState",
    "TcpInfo",
    "TraceBudget",
    "Verdict",
    "both_ends_here",
    "check_time_wait",
    "describe_close",
    "describe_connection",
    "describe_counts",
    "describe_fin",
    "describe_read",
    "describe_reset",
    "describe_tcp_info",
    "describe_turn",
    "parse_ss",
    "parse_tcp_info",
    "ss_filter",
    "tcp_info_unavailable",
    "websocket_accept",
]

#: Bytes asked of ``getsockopt(IPPROTO_TCP, TCP_INFO)``; older kernels give
#: fewer, and the fields they lack are None.
TCP_INFO_SIZE = 232
#: Linux keeps a socket in TIME_WAIT for a fixed minute (``TCP_TIMEWAIT_LEN``).
TIME_WAIT_SECONDS = 60
#: Per-read trace lines shown per conversation per second; the rest are counted.
READS_PER_SECOND = 10
#: How many bytes of a read are shown, as a Python bytes literal.
EXCERPT = 32


class Side(str, enum.Enum):
    """Whose socket is traced."""

    SERVER = "server"
    CLIENT = "client"

    @property
    def other(self) -> Side:
        return Side.CLIENT if self is Side.SERVER else Side.SERVER


@frozen
class Address:
    """One end of a connection, as ``getHost``/``getPeer`` say it."""

    host: str
    port: int

    def __str__(self) -> str:
        return (
            f"[{self.host}]:{self.port}"
            if ":" in self.host
            else f"{self.host}:{self.port}"
        )


# -- TCP_INFO ----------------------------------------------------------------

#: ``tcpi_state`` values (include/net/tcp_states.h).
TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
}


@frozen
class TcpInfo:
    """The fields of Linux's ``struct tcp_info`` that the trace shows.

    Times are in microseconds, as the kernel gives them.  ``unacked`` is in
    segments; ``unacked_bytes`` comes from elsewhere (``SIOCOUTQ`` less the
    bytes not sent yet) and is None when that was not available.
    """

    state: str
    retransmits: int  # retransmissions of the current unacked segment
    rto_us: int
    snd_mss: int
    unacked: int
    lost: int
    retrans: int  # segments being retransmitted now
    rtt_us: int
    rttvar_us: int
    snd_cwnd: int
    total_retrans: int
    bytes_acked: int | None = None
    bytes_received: int | None = None
    segs_out: int | None = None
    segs_in: int | None = None
    notsent_bytes: int | None = None
    unacked_bytes: int | None = None


_BASE = struct.Struct("=8B24I")  # up to tcpi_total_retrans: 104 bytes
_COUNTERS = struct.Struct("=QQQQII")  # pacing, max pacing, acked, received, segs
_NOTSENT = struct.Struct("=I")


def parse_tcp_info(data: bytes, *, outq: int | None = None) -> TcpInfo | None:
    """*data* from ``getsockopt(IPPROTO_TCP, TCP_INFO, TCP_INFO_SIZE)``.

    None if it is too short to be a ``struct tcp_info`` at all.  *outq* is
    the ``SIOCOUTQ`` count (bytes written and not yet acknowledged, sent or
    not); with ``tcpi_notsent_bytes`` it gives the unacknowledged bytes.
    """
    if len(data) < _BASE.size:
        return None
    b = _BASE.unpack_from(data)
    # 8 bytes: state, ca_state, retransmits, probes, backoff, options,
    # wscales, flags; then u32s from tcpi_rto on.
    u = b[8:]
    fields: dict[str, int | None] = {}
    if len(data) >= _BASE.size + _COUNTERS.size:
        _, _, acked, received, segs_out, segs_in = _COUNTERS.unpack_from(
            data, _BASE.size
        )
        fields.update(
            bytes_acked=acked,
            bytes_received=received,
            segs_out=segs_out,
            segs_in=segs_in,
        )
        notsent_at = _BASE.size + _COUNTERS.size
        if len(data) >= notsent_at + _NOTSENT.size:
            (notsent,) = _NOTSENT.unpack_from(data, notsent_at)
            fields["notsent_bytes"] = notsent
            if outq is not None:
                fields["unacked_bytes"] = max(0, outq - notsent)
    return TcpInfo(
        state=TCP_STATES.get(b[0], f"state {b[0]}"),
        retransmits=b[2],
        rto_us=u[0],
        snd_mss=u[2],
        unacked=u[4],
        lost=u[6],
        retrans=u[7],
        rtt_us=u[15],
        rttvar_us=u[16],
        snd_cwnd=u[18],
        total_retrans=u[23],
        **fields,  # the optional counters, by name
    )


def _ms(us: int) -> str:
    return f"{us / 1000:.3g} ms"


def describe_tcp_info(info: TcpInfo) -> str:
    """The kernel's counters for this socket, in one line."""
    parts = [
        f"state {info.state}",
        f"round trip {_ms(info.rtt_us)} (±{_ms(info.rttvar_us)})",
    ]
    if info.segs_out is not None and info.segs_in is not None:
        parts.append(f"segments out {info.segs_out} / in {info.segs_in}")
    parts.append(f"retransmitted {info.total_retrans}")
    unacked = f"unacknowledged {info.unacked} segment{'s' if info.unacked != 1 else ''}"
    if info.unacked_bytes is not None:
        unacked += f" ({info.unacked_bytes} bytes)"
    parts.append(unacked)
    parts.append(f"congestion window {info.snd_cwnd} segments of {info.snd_mss} bytes")
    return "kernel (TCP_INFO): " + ", ".join(parts)


def tcp_info_unavailable(platform: str, why: str | None = None) -> str:
    """What to say where the kernel's counters cannot be read."""
    reason = why or f"TCP_INFO is Linux's, and this system is {platform}"
    return (
        f"kernel: no TCP_INFO here ({reason}): segments, retransmissions, "
        "unacknowledged bytes, the congestion window and the kernel's round "
        "trip time are not shown"
    )


# -- The connection ------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def describe_connection(
    side: Side,
    local: Address,
    remote: Address,
    *,
    ephemeral: tuple[int, int] | None = None,
    captured: str | None = None,
) -> list[str]:
    """What the two ends of a new connection are, seen from *side*.

    *ephemeral* is the range the kernel picks client ports from
    (``/proc/sys/net/ipv4/ip_local_port_range``), if known.  *captured*
    names where packets are captured (``lo``), if they are: then the
    handshake is shown from them.
    """
    server, client = (local, remote) if side is Side.SERVER else (remote, local)
    mine = "this server's" if side is Side.SERVER else "this client's"
    theirs = "the client's" if side is Side.SERVER else "the server's"
    in_range = ""
    if ephemeral is not None:
        low, high = ephemeral
        where = "in" if low <= client.port <= high else "outside"
        in_range = f" ({where} this machine's ephemeral range {low}-{high})"
    client_port = (
        f"port {client.port} is the client's ephemeral port (临时端口): its kernel "
        f"chose it for this one connection{in_range}"
    )
    server_port = (
        f"port {server.port} is the port the server listens on (监听端口), the one "
        "every client is told to use"
    )
    lines = [
        f"connection: local {local} ({mine} end) <-> remote {remote} ({theirs} end)",
        server_port,
        client_port,
    ]
    if _is_loopback(local.host) and _is_loopback(remote.host):
        lines.append(
            f"{local.host} is loopback (回环地址, localhost): both ends are this "
            "machine, and no byte leaves it"
        )
    if side is Side.SERVER:
        lines.append(
            "accepted: the kernel had already done the three-way "
            "handshake (三次握手: SYN, SYN-ACK, ACK) before accept() returned "
            "this connection; the server program never sees it"
        )
    else:
        lines.append(
            "connected: connect() returned once the three-way handshake "
            "(三次握手) was done: this end sent SYN, the server's kernel answered "
            "SYN-ACK, and this end's ACK completed it"
        )
    if captured is not None:
        lines.append(
            f"capture: this connection's packets, read from a packet socket on "
            f"{captured} as tcpdump reads them, follow as packet lines (the time "
            "from its first packet, the flags, sequence and acknowledgement "
            "numbers counted from each side's SYN, the window)"
        )
    return lines


# -- Reads ---------------------------------------------------------------------


@frozen
class ReadFact:
    """What one read brought."""

    number: int  # reads so far on this connection, this one included
    size: int
    #: Lines this read ended (line framing), or 1 (raw framing: a message).
    lines: int
    #: Bytes of the first line that came in earlier reads (a split line).
    carried: int
    #: Reads the first line took, this one included (1: not split).
    pieces: int
    #: Bytes of an unfinished line at the end, waiting for the rest.
    waiting: int
    excerpt: bytes
    raw: bool = False


class ReadTracker:
    """Turn each read into a ``ReadFact``: split and sticky lines, counted.

    It counts newlines only; it keeps no bytes but the excerpt it returns.
    """

    __slots__ = ("_pieces", "_raw", "_unfinished", "reads")

    def __init__(self, *, raw: bool = False) -> None:
        self._raw = raw
        self.reads = 0
        self._unfinished = 0  # bytes of a line begun and not yet ended
        self._pieces = 0  # reads that line has taken so far

    def read(self, data: bytes) -> ReadFact:
        self.reads += 1
        excerpt = data[:EXCERPT]
        if self._raw:
            return ReadFact(self.reads, len(data), 1, 0, 1, 0, excerpt, raw=True)
        lines = data.count(b"\n")
        carried, pieces = self._unfinished, self._pieces + 1
        if lines:
            waiting = len(data) - data.rindex(b"\n") - 1
            self._unfinished = waiting
            self._pieces = 1 if waiting else 0
        else:
            waiting = self._unfinished + len(data)
            self._unfinished = waiting
            self._pieces = pieces
        return ReadFact(self.reads, len(data), lines, carried, pieces, waiting, excerpt)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def describe_read(fact: ReadFact, sender: Side, *, segments: int | None = None) -> str:
    """One read, in plain words: several lines in one read (粘包), one line
    over several reads (拆包).

    What is said is about this read and its lines: TCP keeps no trace of the
    *sender*'s ``send()`` calls, so nothing is said about them.  *segments*
    is how many TCP segments brought this read's bytes, where captured
    packets show it (None: no packets).
    """
    shown = repr(fact.excerpt) + ("..." if fact.size > len(fact.excerpt) else "")
    head = f"read {fact.number}: {_plural(fact.size, 'byte')} {shown}"
    brought = ""
    if segments is not None:
        brought = f"; the capture shows they came in {_plural(segments, 'TCP segment')}"
    if fact.raw:
        return (
            f"{head}: raw framing takes one read as one message, whatever the "
            f"{sender.value} sent: TCP delivers a byte stream (TCP是流式协议), so "
            "one read may hold several send()s stuck together (粘包) or part of "
            f"one (拆包), and nothing in the bytes tells which{brought}"
        )
    notes: list[str] = []
    if fact.lines == 0:
        notes.append(
            f"no line ends here: a split line (拆包), {_plural(fact.waiting, 'byte')} "
            "so far wait for the rest (read "
            f"{fact.number - fact.pieces + 1} on)"
        )
        return f"{head}: " + "; ".join(notes) + brought
    if fact.lines == 1:
        notes.append("1 line")
    else:
        notes.append(
            f"this read carried {fact.lines} lines: TCP delivers a byte stream "
            "(TCP是流式协议), so one read can hold several lines (粘包, the "
            f'"sticky packet"), whether the {sender.value} sent them in one send() '
            "or in several; the newlines mark where each ends"
        )
    if fact.pieces > 1:
        notes.append(
            f"the first line began {_plural(fact.carried, 'byte')} earlier: one line "
            f"split over {fact.pieces} reads (拆包), put back together at its newline"
        )
    if fact.waiting:
        notes.append(
            f"{_plural(fact.waiting, 'byte')} of the next line wait for the rest"
        )
    return f"{head}: " + "; ".join(notes) + brought


class TraceBudget:
    """At most *per_second* lines a second; the rest are counted.

    ``admit(now)`` is None when the line is not to be shown, else the
    number of lines held back since the last one shown.
    """

    __slots__ = ("_held", "_shown", "_window", "per_second", "total_held")

    def __init__(self, per_second: int = READS_PER_SECOND) -> None:
        self.per_second = per_second
        self._window = -1.0
        self._shown = 0
        self._held = 0
        self.total_held = 0

    def admit(self, now: float) -> int | None:
        if now - self._window >= 1.0:
            self._window = now
            self._shown = 0
        if self._shown >= self.per_second:
            self._held += 1
            self.total_held += 1
            return None
        self._shown += 1
        held, self._held = self._held, 0
        return held


# -- The turn ----------------------------------------------------------------


def describe_turn(
    side: Side,
    *,
    servers_turn: bool | None,
    pending: int = 0,
    refused: Sequence[str] = (),
    raw: bool = False,
    answered: int = 0,
) -> list[str]:
    """Whose turn it is now, and what became of lines sent out of turn.

    *answered* is how many answers went out since the last read (the
    server's side): each gave the turn back to the client.  *servers_turn*
    is None once the conversation is over: no one's turn.
    """
    lines: list[str] = []
    for code in refused:
        if code == "out-of-turn":
            lines.append(
                "a line came out of turn, while the server still owed an answer: "
                "it was refused (!error out-of-turn) and not delivered. One end "
                "sends, the other receives (一端send，另一端recv)"
            )
        else:
            lines.append(f"a line was refused ({code}); the turn did not move")
    if answered:
        lines.append(
            f"{_plural(answered, 'message' if raw else 'line')} delivered and "
            "answered at once: each answer gave the turn back to the client"
        )
    if servers_turn is None:
        return lines
    if servers_turn:
        owed = f" (it owes the answer to line {pending})" if pending else ""
        extra = (
            "; a message sent meanwhile waits its turn in the server's queue, as in "
            "the tutorial server's receive buffer"
            if raw
            else ""
        )
        lines.append(f"turn: the server's{owed}; the client waits{extra}")
    else:
        lines.append("turn: the client's; the server waits for its next line")
    return lines


# -- The close -----------------------------------------------------------------


class CloseTracker:
    """Who sent FIN first, from what this side saw and did, in that order."""

    __slots__ = ("_first", "aborted", "peer_fin", "we_closed")

    def __init__(self) -> None:
        self.peer_fin: float | None = None  # the other side's FIN arrived
        self.we_closed: float | None = None  # this side asked for its close
        self.aborted = False
        self._first: bool | None = None  # True: this side's close came first

    def fin_received(self, now: float) -> None:
        if self.peer_fin is None:
            self.peer_fin = now
            if self._first is None:
                self._first = False

    def closing(self, now: float) -> None:
        if self.we_closed is None:
            self.we_closed = now
            if self._first is None:
                self._first = True

    def abort(self, now: float) -> None:
        self.aborted = True
        self.closing(now)

    @property
    def we_first(self) -> bool:
        """This side sent FIN first: it had not seen the other's before."""
        return bool(self._first)


#: What an RST means, said wherever one is seen or inferred.
RST_MEANS = (
    "a kernel sends RST (reset) instead of FIN when its program closes a socket "
    "with data still unread in it, when data comes for a socket already closed, "
    "or when a segment comes to a port where nothing listens"
)


@frozen
class Reset:
    """A reset (RST) that was seen: whose kernel sent it, and where it was seen
    (``"recv() failed with ECONNRESET"``, ``"a captured packet"``,
    ``"TCP_INFO"``, ``"SO_ERROR"``)."""

    by: Side
    source: str


def describe_reset(side: Side, reset: Reset) -> str:
    """One line for a reset as it is seen, with what an RST means."""
    who = "this side's" if reset.by is side else f"the {reset.by.value}'s"
    return (
        f"RST: {who} kernel reset the connection (seen: {reset.source}): it ends "
        f"at once, with no four-way close and no TIME_WAIT; {RST_MEANS}"
    )


def describe_fin(side: Side) -> str:
    """The other side's FIN, as this side reads it (its end of file)."""
    them = side.other.value
    return (
        f"FIN from the {them}: this side read its end of file, so the {them} will "
        "send nothing more; whether it can still receive (a half-close, 半关闭, as "
        "after shutdown(SHUT_WR)) or has closed its socket entirely is not seen "
        "from here"
    )


def describe_close(
    side: Side,
    local: Address | None,
    remote: Address | None,
    tracker: CloseTracker,
    *,
    clean: bool,
    why: str = "",
    reset: Reset | None = None,
    peer_received: str | None = None,
    no_rst_captured: bool = False,
    peer_fin: str | None = None,
) -> list[str]:
    """The four-way close (四次挥手), and who holds TIME_WAIT, from *side*.

    Only what this side saw is stated; the rest is worded as what it would
    be.  *reset* is an RST that was seen (an ECONNRESET, TCP_INFO, SO_ERROR,
    a captured packet).  *peer_received* names what showed that the other
    side, after sending FIN first, still took what this side sent (a
    captured ACK of it; ``ss`` finding its TIME_WAIT): only then is the
    close called a half-close.  *no_rst_captured*: the connection's packets
    were captured, and no RST was among them.  *peer_fin*: where the other
    side's FIN was seen when this side, closed first, could not read it (a
    captured packet).
    """
    me, them = side.value, side.other.value
    here = f" ({local} <-> {remote})" if local is not None else ""
    if tracker.aborted:
        return [
            f"close: the {me} aborted the connection: its kernel sent RST, not FIN, "
            "so there is no four-way close and no TIME_WAIT on either side"
        ]
    if reset is not None:
        by = "this side's" if reset.by is side else f"the {reset.by.value}'s"
        if tracker.we_first and reset.by is not side:
            head = (
                f"close: the {me} sent FIN first (四次挥手 1), and {by} kernel "
                f"answered with RST (seen: {reset.source}), not with its own FIN"
            )
        elif tracker.peer_fin is not None and reset.by is not side:
            head = (
                f"close: the {them} sent FIN first (四次挥手 1), then {by} kernel "
                f"sent RST (seen: {reset.source}): by then the {them}'s socket "
                "was closed, so this was not a half-close that still received"
            )
        else:
            head = f"close: {by} kernel sent RST (seen: {reset.source})"
        return [
            f"{head}: the connection ended at once, with no four-way close and no "
            "TIME_WAIT on either side",
            f"why an RST: {RST_MEANS}",
        ]
    if not clean and tracker.we_closed is None and no_rst_captured:
        return [
            f"close: the connection was lost ({why or 'no reason given'}): no "
            f"orderly FIN from the {them} was seen, and the capture saw no RST of "
            "this connection either, so there is no four-way close and no "
            "TIME_WAIT here"
        ]
    if not clean and tracker.we_closed is None:
        return [
            f"close: the connection was lost ({why or 'no reason given'}): no "
            f"orderly FIN from the {them} was seen, so there is no four-way close "
            "and no TIME_WAIT here. Twisted says this (ConnectionLost) when recv() "
            "or send() fails, most often with ECONNRESET: a reset (RST) from the "
            f"{them}'s kernel; it does not keep the error, so that is likely, not "
            "seen (--trace packets shows the packets)",
            f"why an RST: {RST_MEANS}",
        ]
    lines: list[str] = []
    if tracker.we_first:
        if tracker.peer_fin is not None:
            after = (
                f"; the {them}'s own FIN (3) came after it (this side read its end "
                "of file), and this side's kernel ACKs it (4)"
            )
        elif peer_fin is not None:
            after = (
                f"; the {them}'s own FIN (3) came after it (seen: {peer_fin}), "
                "though this program, its socket closed, could not read it"
            )
        else:
            after = (
                f". What the {them} did next is not seen from this socket, which "
                f"this program has closed: in an orderly close the {them}'s kernel "
                "ACKs (2) and sends its own FIN (3), and this side's kernel ACKs it "
                f"(4); had the {them} closed with data unread, its kernel sent RST "
                "instead (the kernel check below tells which)"
            )
        lines.append(f"close: the {me} sent FIN first (四次挥手 1: FIN, 2: ACK){after}")
        lines.append(
            f"TIME_WAIT (时间等待): the side that closes first keeps the connection "
            f"in TIME_WAIT: the {me}'s side{here}, for {TIME_WAIT_SECONDS} s on Linux, "
            "so that a late segment of it cannot be taken for a new connection's "
            "(if the close ends in order: a reset leaves none)"
        )
        if side is Side.SERVER:
            lines.append(
                f"so a server that does not set SO_REUSEADDR (the tutorial's "
                f"server.py) cannot bind port {local.port if local else 'this port'} "
                "again until then: Address already in use"
            )
        return lines
    if peer_received is not None:
        half = (
            f" It was a half-close (半关闭): the {them} could send no more, but "
            f"still received what this side sent after its FIN (seen: "
            f"{peer_received})."
        )
    else:
        half = (
            f" Whether the {them} could still receive after its FIN (a half-close, "
            "半关闭, as after shutdown(SHUT_WR)) or had closed its socket entirely "
            "is not seen from this socket: had it closed, what this side sent "
            "after the FIN was answered with RST."
        )
    lines.append(
        f"close: the {them} sent FIN first (四次挥手 1); this side's kernel ACKed "
        "it (2); this program then closed its socket, which has its kernel send "
        f"FIN (3) after what it still had to send, and the {them}'s last ACK (4) "
        f"is for this side's kernel, not seen from this socket.{half}"
    )
    lines.append(
        f"TIME_WAIT (时间等待) is on the {them}'s side, which closed first, for "
        f"{TIME_WAIT_SECONDS} s if its close ends in order; this side{here} is "
        "free at once"
    )
    return lines


def describe_counts(segments: int, syn: int, fin: int, rst: int, data: int) -> str:
    """What the capture saw of one connection, counted."""
    return (
        f"capture: {_plural(segments, 'segment')} of this connection seen so far: "
        f"{syn} with SYN, {fin} with FIN, {rst} with RST, {data} carrying data"
    )


# -- ss ----------------------------------------------------------------------


@frozen
class SocketState:
    """One line of ``ss -tanoH``: a TCP socket, its state and its timer."""

    state: str  # as ss spells it: ESTAB, FIN-WAIT-2, TIME-WAIT, ...
    local: str
    peer: str
    seconds_left: float | None  # of the TIME_WAIT timer, if shown


_TIMER = re.compile(r"timewait,(?:(\d+)min)?(?:(\d+(?:\.\d+)?)(ms|sec))?")
#: States in which a closing socket is on its way to TIME_WAIT or gone.
_CLOSING = ("FIN-WAIT-1", "FIN-WAIT-2", "CLOSING", "LAST-ACK", "CLOSE-WAIT")


def _seconds(match: re.Match[str]) -> float | None:
    minutes, amount, unit = match.groups()
    if minutes is None and amount is None:
        return None
    total = 60.0 * int(minutes or 0)
    if amount is not None:
        total += float(amount) / (1000.0 if unit == "ms" else 1.0)
    return total


def parse_ss(output: str) -> list[SocketState]:
    """The sockets in the output of ``ss -tanoH`` (with or without a filter).

    Each line is ``State Recv-Q Send-Q Local:Port Peer:Port [timer:(...)]``;
    ``ss -tanoH state time-wait`` leaves the state out, and its lines are
    read as TIME-WAIT.  Anything else is skipped.
    """
    found = []
    for line in output.splitlines():
        words = line.split()
        if len(words) >= 4 and words[0].isdigit():
            words = ["TIME-WAIT", *words]
        if len(words) < 5 or not words[1].isdigit():
            continue
        timer = _TIMER.search(line)
        found.append(
            SocketState(
                words[0], words[3], words[4], _seconds(timer) if timer else None
            )
        )
    return found


def _ss_form(address: Address) -> str:
    host = address.host
    if host.startswith("::ffff:") and "." in host:
        host = host.removeprefix("::ffff:")  # ss shows v4-mapped ones as v4
    return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"


def ss_filter(local: Address, remote: Address) -> list[str]:
    """``ss`` arguments for the sockets of this connection, on both its ends."""
    a, b = str(local.port), str(remote.port)
    return ["(", "sport", "=", f":{a}", "and", "dport", "=", f":{b}", ")", "or",
            "(", "sport", "=", f":{b}", "and", "dport", "=", f":{a}", ")"]  # fmt: skip


class Verdict(enum.Enum):
    """What the kernel check found, against what the trace expected."""

    AGREES = "agrees"
    DISAGREES = "disagrees"
    NOT_CHECKED = "not checked"
    NOT_SETTLED = "not settled"


@frozen
class KernelCheck:
    """What ``ss`` says about TIME_WAIT for one connection."""

    line: str
    #: Not settled yet (this side is still closing): ask again later.
    again: bool = False
    verdict: Verdict = Verdict.NOT_CHECKED


def both_ends_here(local: Address, remote: Address) -> bool | None:
    """Whether both ends of a connection are on this machine: True for
    loopback, else not known from the addresses alone (None)."""
    if _is_loopback(local.host) and _is_loopback(remote.host):
        return True
    return None


def check_time_wait(
    side: Side,
    local: Address,
    remote: Address,
    entries: Sequence[SocketState],
    *,
    expected_here: bool,
    last_try: bool = False,
    peer_here: bool | None = None,
    reset: bool = False,
) -> KernelCheck:
    """Does the kernel (``ss``) agree with the trace about TIME_WAIT?

    *expected_here*: the trace said this side closed first.  *reset*: a
    reset was seen, so no TIME_WAIT is expected at either end.  *peer_here*:
    the other end is on this machine too, so ``ss`` shows its socket as
    well (None: not known; loopback addresses count as known).  The check
    says "agrees" only about what ``ss`` could see: about an end not on
    this machine, it says "not checked".
    """
    if peer_here is None:
        peer_here = both_ends_here(local, remote)
    mine, theirs = _ss_form(local), _ss_form(remote)
    here = next((e for e in entries if e.local == mine and e.peer == theirs), None)
    there = next((e for e in entries if e.local == theirs and e.peer == mine), None)
    if here is not None and here.state in _CLOSING and not last_try:
        return KernelCheck(
            f"kernel check: ss shows this side in {here.state}: the close is not "
            "over yet; asking again",
            again=True,
            verdict=Verdict.NOT_SETTLED,
        )
    held_here = here is not None and here.state == "TIME-WAIT"
    held_there = there is not None and there.state == "TIME-WAIT"
    other = side.other.value
    if held_here:
        left = (
            f", {here.seconds_left:g} s left"
            if here is not None and here.seconds_left is not None
            else ""
        )
        seen = f"ss shows TIME-WAIT on this side ({mine} -> {theirs}{left})"
    elif here is not None:
        seen = f"ss shows this side in {here.state}, not TIME-WAIT"
    elif held_there:
        seen = f"ss shows TIME-WAIT on the other side ({theirs} -> {mine}), not here"
    elif peer_here:
        seen = (
            f"ss shows no TIME-WAIT for {mine} <-> {theirs} at either end, and both "
            "ends are on this machine"
        )
    else:
        seen = f"ss shows no TIME-WAIT on this side ({mine} -> {theirs})"
    if reset:
        expected = "no TIME_WAIT at either end, after a reset"
        if not (held_here or held_there):
            if peer_here:
                return _agrees(seen + ", as after a reset")
            return _not_checked(f"{seen}, as after a reset", other)
    elif expected_here:
        expected = "TIME_WAIT on this side"
        if held_here:
            return _agrees(seen)
    else:
        expected = f"TIME_WAIT on the {other}'s side"
        if held_there:
            return _agrees(seen)
        if not held_here and not peer_here:
            return _not_checked(f"{seen}, as expected", other)
    guess = ""
    if not (held_here or held_there) and peer_here:
        guess = (
            ": with no TIME_WAIT at either end, the close did not end in order; "
            f"most likely a reset (RST) ended it ({RST_MEANS})"
        )
    return KernelCheck(
        f"kernel check: {seen}{guess}; the trace expected {expected}: the kernel "
        "and the trace DISAGREE (both ends may have closed at once, a FIN may "
        "have crossed this side's, or the connection was reset); the kernel is right",
        verdict=Verdict.DISAGREES,
    )


def _agrees(seen: str) -> KernelCheck:
    return KernelCheck(
        f"kernel check: {seen}: the kernel agrees with the trace",
        verdict=Verdict.AGREES,
    )


def _not_checked(seen: str, other: str) -> KernelCheck:
    return KernelCheck(
        f"kernel check: {seen}; the {other}'s end is not known to be on this "
        "machine, so ss cannot see it: not checked there",
        verdict=Verdict.NOT_CHECKED,
    )


# -- WebSocket -------------------------------------------------------------------

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def websocket_accept(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server answers *key* with (RFC 6455 4.2.2)."""
    import base64
    import hashlib

    digest = hashlib.sha1(key.strip().encode("ascii", "replace") + _WS_GUID).digest()
    return base64.b64encode(digest).decode("ascii")
