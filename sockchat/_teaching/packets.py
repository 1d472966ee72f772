"""Ethernet, IPv4, IPv6 and TCP, read from bytes: no sockets, no Twisted.

Teaching mode's packet capture (``capture.py``) hands this module each
frame an ``AF_PACKET`` socket read, and shows what it says.  Nothing here
does I/O, so every case is a fast test, with frames made by hand
(``build_frame``) or captured.

- ``parse_frame`` reads one Ethernet II frame (Linux's loopback device
  ``lo`` delivers the same: an Ethernet header whose two MAC addresses are
  all zeros) into a ``Segment``: its ``Ethernet``, ``IPv4`` or ``IPv6``, and
  ``Tcp`` headers, and its payload.  Anything else, or anything cut short or
  wrong, is an ``Undecoded`` value saying why, in one line; no exception
  escapes, whatever the bytes.
- IPv4 fragments are recognised and not read as TCP (a fragment's payload
  is not a TCP header, past the first; and the first is not a whole
  segment).  IPv6 extension headers (hop-by-hop, routing, destination
  options, AH, and a fragment header that does not fragment) are skipped;
  a real IPv6 fragment is recognised as such.
- Checksums are not checked: on loopback the kernel leaves TCP's to the
  card it does not have (checksum offload), so a captured segment carries
  a wrong one, as ``tcpdump -v`` shows (``cksum ... incorrect``).
- ``Flows`` ties each segment to its connection (the four numbers: both
  addresses, both ports), says which end sent it, and numbers its sequence
  and acknowledgement numbers from 0 at the SYN, as Wireshark shows them
  (its "relative sequence numbers").
- ``build_frame`` makes a frame from the values (with correct checksums),
  for tests and for examples.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import struct
from collections import OrderedDict
from collections.abc import Iterable

from attrs import evolve, frozen

from sockchat._teaching.trace import Address, Side

__all__ = [
    "ETHERTYPE_IPV4",
    "ETHERTYPE_IPV6",
    "FLOWS_LIMIT",
    "Connection",
    "Counts",
    "Ethernet",
    "Flows",
    "IPv4",
    "IPv6",
    "Problem",
    "Segment",
    "Tcp",
    "TcpFlags",
    "TcpOptions",
    "Tracked",
    "Undecoded",
    "build_frame",
    "count",
    "flag_names",
    "mac_text",
    "normal_host",
    "parse_frame",
    "trimmed",
]

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
PROTOCOL_TCP = 6
ETHERNET_HEADER = 14
#: Connections ``Flows`` remembers at once; the least recently seen goes.
FLOWS_LIMIT = 4096


class TcpFlags(enum.IntFlag):
    """The eight flag bits of a TCP header (RFC 9293, and RFC 3168's two)."""

    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80


#: The order a flag list is written in: the handshake's first, as people say them.
_FLAG_ORDER = (
    TcpFlags.SYN,
    TcpFlags.FIN,
    TcpFlags.RST,
    TcpFlags.PSH,
    TcpFlags.ACK,
    TcpFlags.URG,
    TcpFlags.ECE,
    TcpFlags.CWR,
)


def flag_names(flags: TcpFlags) -> str:
    """``SYN-ACK``, ``PSH-ACK``, ``FIN-ACK``, ``RST``...: as a ladder names them."""
    names = [flag.name or "" for flag in _FLAG_ORDER if flag in flags]
    return "-".join(names) if names else "(no flags)"


def mac_text(mac: bytes) -> str:
    """A MAC address as its 12 hex digits in pairs: ``00:1a:2b:3c:4d:5e``."""
    return ":".join(f"{b:02x}" for b in mac)


@functools.lru_cache(maxsize=1024)
def normal_host(host: str) -> str:
    """*host* as a packet shows it: an IPv4-mapped IPv6 address as the IPv4
    one (a dual-stack socket says ``::ffff:127.0.0.1``), no ``%scope``,
    IPv6 in its short form.  Anything that is not an address is kept.
    (Remembered: every packet asks it of the same few hosts.)"""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


# -- The values ----------------------------------------------------------------


@frozen
class Ethernet:
    """The data link layer's header (数据链路层): two MAC addresses and a type."""

    destination: bytes
    source: bytes
    ethertype: int


@frozen
class IPv4:
    """The network layer's header (网络层), version 4 (RFC 791)."""

    source: str
    destination: str
    header_length: int  # bytes, options included
    total_length: int  # bytes: header and payload, as the header says
    ttl: int
    protocol: int
    identification: int
    dont_fragment: bool
    more_fragments: bool
    fragment_offset: int  # bytes
    tos: int

    version = 4

    @property
    def hop_limit(self) -> int:
        return self.ttl


@frozen
class IPv6:
    """The network layer's header (网络层), version 6 (RFC 8200)."""

    source: str
    destination: str
    header_length: int  # 40, and the extension headers skipped
    payload_length: int  # bytes after the fixed 40, extensions included
    hop_limit: int
    protocol: int  # the last next-header: 6 for TCP
    traffic_class: int
    flow_label: int
    extensions: tuple[int, ...] = ()  # the extension headers skipped, in order

    version = 6

    @property
    def ttl(self) -> int:
        """IPv6's hop limit is IPv4's TTL under another name."""
        return self.hop_limit

    @property
    def total_length(self) -> int:
        return 40 + self.payload_length


@frozen
class TcpOptions:
    """The TCP options a SYN or a segment carried (RFC 9293, 7323, 2018)."""

    mss: int | None = None
    window_scale: int | None = None
    sack_permitted: bool = False
    timestamps: tuple[int, int] | None = None  # (TSval, TSecr)
    sack: tuple[tuple[int, int], ...] = ()
    other: tuple[int, ...] = ()  # kinds seen and not read

    def describe(self) -> str:
        """``mss 65495, sackOK, TS val 1 ecr 0, wscale 7``: as tcpdump says them."""
        parts = []
        if self.mss is not None:
            parts.append(f"mss {self.mss}")
        if self.sack_permitted:
            parts.append("sackOK")
        if self.timestamps is not None:
            parts.append(f"TS val {self.timestamps[0]} ecr {self.timestamps[1]}")
        if self.window_scale is not None:
            parts.append(f"wscale {self.window_scale}")
        if self.sack:
            parts.append("sack " + " ".join(f"{a}:{b}" for a, b in self.sack))
        parts.extend(f"option {kind}" for kind in self.other)
        return ", ".join(parts)


@frozen
class Tcp:
    """The transport layer's header (传输层): TCP (RFC 9293)."""

    source_port: int
    destination_port: int
    seq: int
    ack: int
    header_length: int  # bytes, options included
    flags: TcpFlags
    window: int  # as sent: before any window scale
    checksum: int
    urgent: int
    options: TcpOptions = TcpOptions()


@frozen
class Segment:
    """One TCP segment in its frame, every layer read."""

    link: Ethernet
    ip: IPv4 | IPv6
    tcp: Tcp
    #: The payload captured: all of it, unless the frame was cut (a snap length).
    payload: bytes
    #: The payload's length as the IP header says it: the bytes sent.
    payload_length: int

    @property
    def source(self) -> Address:
        return Address(self.ip.source, self.tcp.source_port)

    @property
    def destination(self) -> Address:
        return Address(self.ip.destination, self.tcp.destination_port)

    @property
    def snapped(self) -> bool:
        """Only the start of the payload was captured."""
        return len(self.payload) < self.payload_length


class Problem(enum.Enum):
    """Why a frame is not a ``Segment``."""

    TRUNCATED = "truncated"  # cut before a header ends, or shorter than it says
    MALFORMED = "malformed"  # a field that cannot be right
    NOT_IP = "not IP"  # another ethertype (ARP, ...)
    NOT_TCP = "not TCP"  # another protocol (UDP, ICMP, ...)
    FRAGMENT = "fragment"  # part of a fragmented IP packet: not reassembled


@frozen
class Undecoded:
    """A frame that is not a whole TCP segment, and why, in one line."""

    problem: Problem
    layer: str  # the layer that said so: Ethernet, IPv4, IPv6 or TCP
    detail: str

    def __str__(self) -> str:
        return f"{self.layer}: {self.problem.value}: {self.detail}"


# -- Reading -------------------------------------------------------------------

_ETHERNET = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")

#: IPv6 extension headers whose length is in 8-byte units, less one.
_IPV6_EXTENSIONS = {0: "hop-by-hop", 43: "routing", 60: "destination options"}
_IPV6_FRAGMENT = 44
_IPV6_AH = 51
_IPV6_ESP = 50
_IPV6_NONE = 59


def parse_frame(
    frame: bytes, *, original_length: int | None = None
) -> Segment | Undecoded:
    """One Ethernet II frame, read down to its TCP payload.

    *original_length* is the frame's length on the wire, where the capture
    kept less (a snap length): then a payload shorter than the IP header
    says is expected, and the ``Segment`` is ``snapped``.  Without it, a
    frame shorter than its headers say is ``TRUNCATED``.
    """
    if len(frame) < ETHERNET_HEADER:
        return Undecoded(
            Problem.TRUNCATED,
            "Ethernet",
            f"{len(frame)} bytes, less than the {ETHERNET_HEADER}-byte header",
        )
    destination, source, ethertype = _ETHERNET.unpack_from(frame)
    link = Ethernet(destination, source, ethertype)
    cut = original_length is not None and original_length > len(frame)
    body = frame[ETHERNET_HEADER:]
    if ethertype == ETHERTYPE_IPV4:
        return _ipv4(link, body, cut)
    if ethertype == ETHERTYPE_IPV6:
        return _ipv6(link, body, cut)
    return Undecoded(Problem.NOT_IP, "Ethernet", f"ethertype 0x{ethertype:04x}")


def _ipv4(link: Ethernet, data: bytes, cut: bool) -> Segment | Undecoded:
    if len(data) < _IPV4.size:
        return Undecoded(
            Problem.TRUNCATED,
            "IPv4",
            f"{len(data)} bytes, less than the 20-byte header",
        )
    (vihl, tos, total, ident, frag, ttl, proto, _, src, dst) = _IPV4.unpack_from(data)
    version, ihl = vihl >> 4, (vihl & 0x0F) * 4
    if version != 4:
        return Undecoded(
            Problem.MALFORMED, "IPv4", f"version {version} in an IPv4 frame"
        )
    if ihl < 20:
        return Undecoded(
            Problem.MALFORMED, "IPv4", f"header length {ihl}, less than 20"
        )
    if total < ihl:
        return Undecoded(
            Problem.MALFORMED,
            "IPv4",
            f"total length {total}, less than its header {ihl}",
        )
    if len(data) < ihl:
        return Undecoded(
            Problem.TRUNCATED, "IPv4", f"{len(data)} bytes, less than its header {ihl}"
        )
    if len(data) < total and not cut:
        return Undecoded(
            Problem.TRUNCATED,
            "IPv4",
            f"total length {total}, but {len(data)} bytes came",
        )
    ip = IPv4(
        source="%d.%d.%d.%d" % tuple(src),  # noqa: UP031 (the fastest way)
        destination="%d.%d.%d.%d" % tuple(dst),  # noqa: UP031
        header_length=ihl,
        total_length=total,
        ttl=ttl,
        protocol=proto,
        identification=ident,
        dont_fragment=bool(frag & 0x4000),
        more_fragments=bool(frag & 0x2000),
        fragment_offset=(frag & 0x1FFF) * 8,
        tos=tos,
    )
    if ip.more_fragments or ip.fragment_offset:
        return Undecoded(
            Problem.FRAGMENT,
            "IPv4",
            f"id {ident}, offset {ip.fragment_offset}"
            + (", more to come" if ip.more_fragments else ", the last")
            + ": fragments are not reassembled",
        )
    if proto != PROTOCOL_TCP:
        return Undecoded(Problem.NOT_TCP, "IPv4", f"protocol {proto}")
    # The IP header's length, not the frame's: Ethernet pads short frames.
    return _tcp(link, ip, data[ihl:total], total - ihl)


def _ipv6(link: Ethernet, data: bytes, cut: bool) -> Segment | Undecoded:
    if len(data) < _IPV6.size:
        return Undecoded(
            Problem.TRUNCATED,
            "IPv6",
            f"{len(data)} bytes, less than the 40-byte header",
        )
    first, payload_length, next_header, hop_limit, src, dst = _IPV6.unpack_from(data)
    version = first >> 28
    if version != 6:
        return Undecoded(
            Problem.MALFORMED, "IPv6", f"version {version} in an IPv6 frame"
        )
    end = 40 + payload_length
    if len(data) < end and not cut:
        return Undecoded(
            Problem.TRUNCATED,
            "IPv6",
            f"payload length {payload_length}, but {len(data) - 40} bytes came",
        )
    offset, skipped = 40, []
    while True:
        if next_header in _IPV6_EXTENSIONS or next_header in (_IPV6_AH, _IPV6_FRAGMENT):
            if offset + 8 > min(end, len(data)):
                return Undecoded(
                    Problem.TRUNCATED,
                    "IPv6",
                    f"extension header {next_header} cut short",
                )
            after, size = data[offset], data[offset + 1]
            if next_header == _IPV6_FRAGMENT:
                (word,) = struct.unpack_from("!H", data, offset + 2)
                if word & 0xFFF9:  # an offset, or more to come: a real fragment
                    return Undecoded(
                        Problem.FRAGMENT,
                        "IPv6",
                        f"offset {(word >> 3) * 8}: fragments are not reassembled",
                    )
                length = 8
            elif next_header == _IPV6_AH:
                length = (size + 2) * 4
            else:
                length = (size + 1) * 8
            skipped.append(next_header)
            next_header, offset = after, offset + length
            if offset > end:
                return Undecoded(
                    Problem.MALFORMED,
                    "IPv6",
                    "extension headers longer than the payload",
                )
            continue
        break
    ip = IPv6(
        source=str(ipaddress.IPv6Address(src)),
        destination=str(ipaddress.IPv6Address(dst)),
        header_length=offset,
        payload_length=payload_length,
        hop_limit=hop_limit,
        protocol=next_header,
        traffic_class=(first >> 20) & 0xFF,
        flow_label=first & 0xFFFFF,
        extensions=tuple(skipped),
    )
    if next_header == _IPV6_ESP:
        return Undecoded(Problem.NOT_TCP, "IPv6", "ESP: encrypted, not readable")
    if next_header != PROTOCOL_TCP:
        return Undecoded(Problem.NOT_TCP, "IPv6", f"next header {next_header}")
    return _tcp(link, ip, data[offset:end], end - offset)


def _tcp(
    link: Ethernet, ip: IPv4 | IPv6, data: bytes, length: int
) -> Segment | Undecoded:
    """*data*: the captured part of the IP payload, *length* bytes in all."""
    if length < _TCP.size:
        return Undecoded(
            Problem.MALFORMED, "TCP", f"{length} bytes, less than the 20-byte header"
        )
    if len(data) < _TCP.size:
        return Undecoded(
            Problem.TRUNCATED, "TCP", f"{len(data)} bytes, less than the 20-byte header"
        )
    sport, dport, seq, ack, offset_byte, flags, window, checksum, urgent = (
        _TCP.unpack_from(data)
    )
    header = (offset_byte >> 4) * 4
    if header < 20:
        return Undecoded(
            Problem.MALFORMED, "TCP", f"data offset {header}, less than 20"
        )
    if header > length:
        return Undecoded(
            Problem.MALFORMED,
            "TCP",
            f"header of {header} bytes in a {length}-byte segment",
        )
    if len(data) < header:
        return Undecoded(
            Problem.TRUNCATED, "TCP", f"header of {header} bytes, {len(data)} captured"
        )
    options = _options(data[20:header])
    if isinstance(options, Undecoded):
        return options
    tcp = Tcp(
        sport,
        dport,
        seq,
        ack,
        header,
        TcpFlags(flags),
        window,
        checksum,
        urgent,
        options,
    )
    return Segment(link, ip, tcp, data[header:], length - header)


def _options(data: bytes) -> TcpOptions | Undecoded:
    mss = scale = timestamps = None
    sack_ok = False
    sack: list[tuple[int, int]] = []
    other: list[int] = []
    at = 0
    while at < len(data):
        kind = data[at]
        if kind == 0:  # end of the option list
            break
        if kind == 1:  # no-operation: padding
            at += 1
            continue
        if at + 1 >= len(data) or data[at + 1] < 2 or at + data[at + 1] > len(data):
            return Undecoded(
                Problem.MALFORMED, "TCP", f"option {kind} has a bad length"
            )
        size = data[at + 1]
        value = data[at + 2 : at + size]
        if kind == 2 and size == 4:
            (mss,) = struct.unpack("!H", value)
        elif kind == 3 and size == 3:
            scale = value[0]
        elif kind == 4 and size == 2:
            sack_ok = True
        elif kind == 8 and size == 10:
            timestamps = struct.unpack("!II", value)
        elif kind == 5 and (size - 2) % 8 == 0:
            sack.extend(
                struct.unpack_from("!II", value, i) for i in range(0, size - 2, 8)
            )
        else:
            other.append(kind)
        at += size
    return TcpOptions(
        mss=mss,
        window_scale=scale,
        sack_permitted=sack_ok,
        timestamps=timestamps,
        sack=tuple(sack),
        other=tuple(other),
    )


# -- Connections and relative numbers -------------------------------------------


@frozen
class Connection:
    """A TCP connection, named by its four numbers: both ends' address and port.

    Hosts are as packets show them (``normal_host``), so the same
    connection seen from a socket (``getHost``/``getPeer``) compares equal.
    """

    client: Address
    server: Address

    @classmethod
    def of(cls, client: Address, server: Address) -> Connection:
        return cls(
            Address(normal_host(client.host), client.port),
            Address(normal_host(server.host), server.port),
        )


@frozen
class Tracked:
    """A segment of a known connection, with Wireshark's relative numbers."""

    time: float
    segment: Segment
    connection: Connection
    sender: Side
    relative_seq: int
    #: None when the segment carries no ACK (a first SYN, a bare RST).
    relative_ack: int | None
    #: False if this direction's SYN was not seen: its numbers count from
    #: the first segment seen, taken to be 1.
    from_syn: bool = True

    @property
    def flags(self) -> TcpFlags:
        return self.segment.tcp.flags

    @property
    def data(self) -> int:
        """Bytes of payload this segment carried (not counting SYN and FIN)."""
        return self.segment.payload_length


class _Flow:
    __slots__ = ("base", "connection", "saw_syn")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        #: The initial sequence number of each sender's direction.
        self.base: dict[Side, int] = {}
        self.saw_syn: dict[Side, bool] = {}


class Flows:
    """Which connection each segment belongs to, and its relative numbers.

    The client is the end that sent the first SYN; if the SYN was not seen,
    an end whose port is in *server_ports* is the server, and failing that
    the first segment seen is taken to go to the server.  At most *limit*
    connections are remembered: the least recently seen is forgotten first
    (``forgotten`` counts them).  A new SYN on a known four-tuple with
    another initial sequence number starts the count again: a new
    connection from the same port.
    """

    def __init__(
        self, *, server_ports: Iterable[int] = (), limit: int = FLOWS_LIMIT
    ) -> None:
        self._server_ports = frozenset(server_ports)
        self._limit = limit
        self._flows: OrderedDict[frozenset[Address], _Flow] = OrderedDict()
        self.forgotten = 0

    def __len__(self) -> int:
        return len(self._flows)

    def track(self, segment: Segment, time: float) -> Tracked:
        source = Address(normal_host(segment.ip.source), segment.tcp.source_port)
        destination = Address(
            normal_host(segment.ip.destination), segment.tcp.destination_port
        )
        key = frozenset((source, destination))
        flags = segment.tcp.flags
        first_syn = TcpFlags.SYN in flags and TcpFlags.ACK not in flags
        flow = self._flows.get(key)
        if flow is not None and first_syn:
            known = flow.base.get(Side.CLIENT)
            if flow.connection.client != source or (
                known is not None and known != segment.tcp.seq
            ):
                flow = None  # a new connection on the same four numbers
        if flow is None:
            flow = _Flow(self._roles(segment, source, destination))
            self._flows[key] = flow
            while len(self._flows) > self._limit:
                self._flows.popitem(last=False)
                self.forgotten += 1
        else:
            self._flows.move_to_end(key)
        sender = Side.CLIENT if flow.connection.client == source else Side.SERVER
        tcp = segment.tcp
        if sender not in flow.base:
            syn = TcpFlags.SYN in flags
            flow.base[sender] = tcp.seq if syn else (tcp.seq - 1) % 2**32
            flow.saw_syn[sender] = syn
        relative_ack = None
        if TcpFlags.ACK in flags:
            other = sender.other
            if other not in flow.base:  # its SYN unseen: count its first byte as 1
                flow.base[other] = (tcp.ack - 1) % 2**32
                flow.saw_syn[other] = False
            relative_ack = (tcp.ack - flow.base[other]) % 2**32
        return Tracked(
            time=time,
            segment=segment,
            connection=flow.connection,
            sender=sender,
            relative_seq=(tcp.seq - flow.base[sender]) % 2**32,
            relative_ack=relative_ack,
            from_syn=flow.saw_syn[sender],
        )

    def _roles(
        self, segment: Segment, source: Address, destination: Address
    ) -> Connection:
        flags = segment.tcp.flags
        if TcpFlags.SYN in flags:
            from_client = TcpFlags.ACK not in flags
        elif (
            source.port in self._server_ports
            and destination.port not in self._server_ports
        ):
            from_client = False
        else:
            from_client = True
        if from_client:
            return Connection(source, destination)
        return Connection(destination, source)


def trimmed(packet: Tracked, payload: int) -> Tracked:
    """*packet* with at most *payload* bytes of its payload (its length
    stays whole: ``Segment.payload_length``)."""
    segment = packet.segment
    if len(segment.payload) <= payload:
        return packet
    return evolve(packet, segment=evolve(segment, payload=segment.payload[:payload]))


@frozen
class Counts:
    """How many segments had each flag, and how many carried data."""

    syn: int = 0
    fin: int = 0
    rst: int = 0
    data: int = 0
    segments: int = 0


def count(flags_and_lengths: Iterable[tuple[TcpFlags, int]]) -> Counts:
    """Counts of SYN, FIN, RST and data segments, from (flags, payload length)."""
    syn = fin = rst = data = total = 0
    for flags, length in flags_and_lengths:
        total += 1
        syn += TcpFlags.SYN in flags
        fin += TcpFlags.FIN in flags
        rst += TcpFlags.RST in flags
        data += length > 0
    return Counts(syn, fin, rst, data, total)


# -- Building (tests and examples) ------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(
        int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)
    )
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _option_bytes(options: TcpOptions) -> bytes:
    out = b""
    if options.mss is not None:
        out += struct.pack("!BBH", 2, 4, options.mss)
    if options.sack_permitted:
        out += b"\x04\x02"
    if options.timestamps is not None:
        out += struct.pack("!BBII", 8, 10, *options.timestamps)
    if options.window_scale is not None:
        out += struct.pack("!BBB", 3, 3, options.window_scale)
    if options.sack:
        out += struct.pack("!BB", 5, 2 + 8 * len(options.sack))
        out += b"".join(struct.pack("!II", a, b) for a, b in options.sack)
    for kind in options.other:
        out += struct.pack("!BB", kind, 2)
    out += b"\x01" * (-len(out) % 4)
    if len(out) > 40:
        raise ValueError(f"TCP options of {len(out)} bytes: at most 40 fit")
    return out


def build_frame(
    source: Address,
    destination: Address,
    *,
    flags: TcpFlags = TcpFlags.ACK,
    seq: int = 0,
    ack: int = 0,
    window: int = 65535,
    options: TcpOptions = TcpOptions(),
    payload: bytes = b"",
    ttl: int = 64,
    mac_source: bytes = bytes(6),
    mac_destination: bytes = bytes(6),
    identification: int = 0,
    urgent: int = 0,
) -> bytes:
    """An Ethernet II frame with one TCP segment, checksums right.

    IPv6 when the addresses are; the IPv4 header has Don't Fragment set,
    as Linux sends TCP.  Raises ValueError for values that do not fit.
    """
    src = ipaddress.ip_address(source.host)
    dst = ipaddress.ip_address(destination.host)
    if src.version != dst.version:
        raise ValueError("both ends must be IPv4, or both IPv6")
    opts = _option_bytes(options)
    offset = (20 + len(opts)) // 4
    header = struct.pack(
        "!HHIIBBHHH",
        source.port,
        destination.port,
        seq,
        ack,
        offset << 4,
        int(flags),
        window,
        0,
        urgent,
    )
    segment = header + opts + payload
    if src.version == 4:
        pseudo = (
            src.packed + dst.packed + struct.pack("!BBH", 0, PROTOCOL_TCP, len(segment))
        )
    else:
        pseudo = (
            src.packed + dst.packed + struct.pack("!I3xB", len(segment), PROTOCOL_TCP)
        )
    check = _checksum(pseudo + segment)
    segment = segment[:16] + struct.pack("!H", check) + segment[18:]
    if src.version == 4:
        if 20 + len(segment) > 0xFFFF:
            raise ValueError("an IPv4 packet holds at most 65535 bytes")
        ip = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(segment),
            identification,
            0x4000,
            ttl,
            PROTOCOL_TCP,
            0,
            src.packed,
            dst.packed,
        )
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        ethertype = ETHERTYPE_IPV4
    else:
        if len(segment) > 0xFFFF:
            raise ValueError("an IPv6 payload holds at most 65535 bytes")
        ip = struct.pack(
            "!IHBB16s16s",
            6 << 28,
            len(segment),
            PROTOCOL_TCP,
            ttl,
            src.packed,
            dst.packed,
        )
        ethertype = ETHERTYPE_IPV6
    return _ETHERNET.pack(mac_destination, mac_source, ethertype) + ip + segment
