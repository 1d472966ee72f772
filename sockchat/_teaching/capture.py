"""Teaching mode's packet capture: the Twisted reader of an ``AF_PACKET`` socket.

``open_capture`` opens a packet socket (``SOCK_RAW``, every protocol:
``ETH_P_ALL``) on the interface that carries the given address (``lo``
for loopback; every interface for a wildcard address), attaches the
kernel filter of ``bpf.py`` so that only TCP segments from or to the
given port come up, and reads it through the reactor without blocking.
Each frame is checked again (``bpf.matches``: a second guard for frames
queued before the filter was attached), parsed (``packets.parse_frame``),
tied to its connection (``packets.Flows``) and handed on:

- to every ``on_frame`` observer as the frame's bytes (for a pcap file);
- to the observers ``watch``-ing its connection, as a ``Tracked`` packet.

It prints nothing: what it saw and what it left out are values and
counters for the caller to show.

**Without CAP_NET_RAW** (not root, and no capability given to the
interpreter), the kernel refuses the socket (EPERM): ``open_capture``
returns a ``Refused`` value whose ``line`` says so in one line, with how to
grant it, and the caller goes on without packets.

**Bounded.** Packets are kept for each connection, so that those that
came before its ``accept()`` (the handshake) can be shown when the
conversation begins: at most ``Limits.per_conversation`` of each, with at
most ``Limits.payload`` bytes of payload each (the lengths stay whole),
for at most ``Limits.conversations`` connections at once; past that the
least recently active one is forgotten.  What is not kept is counted
(``Kept.dropped``, ``PacketStore.forgotten``), and ``describe_drops`` says
it.  A read of the socket takes at most ``BATCH`` packets before it gives
the reactor back.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import struct
import sys
from collections import OrderedDict
from collections.abc import Callable

from attrs import field, frozen
from twisted.internet.interfaces import IReactorFDSet, IReactorTime, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockchat._teaching.bpf import PACKET_OUTGOING, SNAP, matches, pack, tcp_port_filter
from sockchat._teaching.interfaces import interface_for
from sockchat._teaching.packets import (
    Connection,
    Flows,
    Segment,
    Tracked,
    Undecoded,
    parse_frame,
    trimmed,
)

__all__ = [
    "BATCH",
    "Capture",
    "Kept",
    "Limits",
    "PacketStore",
    "Refused",
    "describe_drops",
    "interface_for",
    "open_capture",
    "open_packet_socket",
    "refusal",
]

log = Logger(namespace="sockchat.capture")

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
#: The kernel's receive time of each packet, as a timespec (asm-generic).
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("=qq")
SOL_PACKET = 263
PACKET_STATISTICS = 6
_STATS = struct.Struct("=II")  # struct tpacket_stats: packets, drops
#: Packets read in one turn of the reactor, at most.
BATCH = 64


@frozen
class Limits:
    """How much the capture keeps (see the module's docstring)."""

    per_conversation: int = 128
    conversations: int = 32
    payload: int = 64


@frozen
class Kept:
    """What the capture kept of one connection, and how many it left out."""

    packets: tuple[Tracked, ...]
    dropped: int


class PacketStore:
    """Packets kept per connection, within ``Limits``; no I/O."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._kept: OrderedDict[Connection, list[Tracked]] = OrderedDict()
        self._dropped: dict[Connection, int] = {}
        #: Connections forgotten to make room, and their packets.
        self.forgotten = 0
        self.forgotten_packets = 0

    def add(self, packet: Tracked) -> bool:
        """Keep *packet*, if its connection has room: True if kept."""
        connection = packet.connection
        kept = self._kept.get(connection)
        if kept is None:
            kept = self._kept[connection] = []
            while len(self._kept) > self.limits.conversations:
                old, packets = self._kept.popitem(last=False)
                self._dropped.pop(old, None)
                self.forgotten += 1
                self.forgotten_packets += len(packets)
        else:
            self._kept.move_to_end(connection)
        if len(kept) >= self.limits.per_conversation:
            self._dropped[connection] = self._dropped.get(connection, 0) + 1
            return False
        kept.append(trimmed(packet, self.limits.payload))
        return True

    def kept(self, connection: Connection) -> Kept:
        return Kept(
            tuple(self._kept.get(connection, ())), self._dropped.get(connection, 0)
        )

    def forget(self, connection: Connection) -> None:
        self._kept.pop(connection, None)
        self._dropped.pop(connection, None)

    def connections(self) -> list[Connection]:
        """The connections kept, least recently active first."""
        return list(self._kept)

    def __len__(self) -> int:
        return sum(len(packets) for packets in self._kept.values())


def describe_drops(kept: Kept, limits: Limits) -> str | None:
    """One line on what was not kept of a connection, or None if nothing."""
    if not kept.dropped:
        return None
    return (
        f"capture: {kept.dropped} more packets of this connection were seen "
        f"and not kept (at most {limits.per_conversation} are kept, to bound "
        "memory): the ladder and the counts stop there"
    )


@frozen
class Refused:
    """The capture could not start; ``line`` says why, and what to do."""

    line: str
    errno: int | None = None


def refusal(error: OSError, *, executable: str | None = None) -> Refused:
    """The one line for a packet socket the kernel refused."""
    if error.errno in (errno.EPERM, errno.EACCES):
        real = os.path.realpath(executable or sys.executable)
        return Refused(
            "packet capture is off: reading packets needs the CAP_NET_RAW "
            "capability, which this process lacks; run as root, or give it to "
            f"this Python with: sudo setcap cap_net_raw+ep {real} "
            "(the trace goes on from the socket, without packets)",
            error.errno,
        )
    if error.errno in (errno.EAFNOSUPPORT, errno.EINVAL) or not hasattr(
        socket, "AF_PACKET"
    ):
        return Refused(
            "packet capture is off: it needs Linux's AF_PACKET sockets, which "
            f"this system ({sys.platform}) does not have (the trace goes on "
            "from the socket, without packets)",
            error.errno,
        )
    return Refused(
        f"packet capture is off: the packet socket failed "
        f"({error.strerror or error}); the trace goes on from the socket",
        error.errno,
    )


def open_packet_socket(port: int, interface: str | None) -> socket.socket:
    """A non-blocking packet socket on *interface* (None: all) that the
    kernel lets only *port*'s TCP through.  Raises OSError."""
    # On one interface, protocol 0: nothing comes up until bind() names one,
    # after the filter is on.  On every interface there is no bind(), so the
    # socket takes frames from its creation: the second guard sees to those.
    protocol = 0 if interface else socket.htons(ETH_P_ALL)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, protocol)
    try:
        loopback = socket.if_nametoindex("lo") if interface in (None, "lo") else None
        program = pack(tcp_port_filter(port, loopback=loopback))
        array = ctypes.create_string_buffer(program, len(program))
        fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(array))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        with contextlib.suppress(OSError):  # then the reactor's clock gives times
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if interface:
            # Python puts this one in network byte order itself (socket() does not).
            sock.bind((interface, ETH_P_ALL))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


Observer = Callable[[Tracked], None]
FrameObserver = Callable[[float, bytes, int], None]


@frozen
class _Watch:
    observer: Observer = field(eq=False)


@implementer(IReadDescriptor)
class Capture:
    """Reads one port's TCP packets through the reactor; see the module."""

    def __init__(
        self,
        sock: socket.socket,
        port: int,
        reactor: IReactorFDSet,
        clock: IReactorTime,
        *,
        limits: Limits = Limits(),
        interface: str | None = None,
    ) -> None:
        self.port = port
        self.interface = interface
        self.limits = limits
        self._sock = sock
        self._reactor = reactor
        self._clock = clock
        self._buffer = bytearray(SNAP)
        self._ancillary = socket.CMSG_SPACE(_TIMESPEC.size)
        self.flows = Flows(server_ports=(port,))
        self.store = PacketStore(limits)
        self.frame_observers: list[FrameObserver] = []
        self._watches: dict[Connection, list[_Watch]] = {}
        self.reading = False
        #: Frames read, frames the second guard turned away, frames not TCP
        #: segments (fragments, cut, malformed), and the last of those.
        self.frames = 0
        self.not_ours = 0
        self.undecoded = 0
        self.last_undecoded: Undecoded | None = None

    # -- what callers use ------------------------------------------------------

    def start(self) -> None:
        if not self.reading and self._sock.fileno() >= 0:
            self.reading = True
            self._reactor.addReader(self)

    def stop(self) -> None:
        """Stop reading and close the socket; what was kept stays."""
        if self.reading:
            self.reading = False
            self._reactor.removeReader(self)
        self._sock.close()

    def watch(self, connection: Connection, observer: Observer) -> Callable[[], None]:
        """Hand *observer* each packet of *connection*: those kept so far at
        once, then each as it comes.  Returns what stops it."""
        entry = _Watch(observer)
        self._watches.setdefault(connection, []).append(entry)
        for packet in self.store.kept(connection).packets:
            observer(packet)

        def stop() -> None:
            watching = self._watches.get(connection, [])
            if entry in watching:
                watching.remove(entry)
            if not watching:
                self._watches.pop(connection, None)

        return stop

    def kept(self, connection: Connection) -> Kept:
        return self.store.kept(connection)

    def forget(self, connection: Connection) -> None:
        self.store.forget(connection)

    def drain(self, most: int = 4 * BATCH) -> None:
        """Read what the kernel holds for this socket now, up to *most*
        frames: called before a connection's socket is read, so that the
        packets that brought its bytes are handed on before the read is
        (on loopback a frame reaches the packet socket before TCP).  The
        reactor reads the rest as usual."""
        if not self.reading:
            return
        for _ in range(0, most, BATCH):
            before = self.frames
            self.doRead()
            if self.frames - before < BATCH:
                return

    def kernel_drops(self) -> int | None:
        """Packets the kernel dropped since the last call, its queue full
        (``PACKET_STATISTICS``); None where it cannot say."""
        try:
            raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
        except (OSError, ValueError):
            return None
        return int(_STATS.unpack(raw)[1])

    # -- IReadDescriptor ------------------------------------------------------

    def fileno(self) -> int:
        return self._sock.fileno()

    def logPrefix(self) -> str:
        return "capture"

    def connectionLost(self, reason: Failure) -> None:
        self.reading = False
        self._sock.close()

    def doRead(self) -> None:
        for _ in range(BATCH):
            try:
                size, ancillary, _, address = self._sock.recvmsg_into(
                    [self._buffer], self._ancillary, socket.MSG_TRUNC
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.error(
                    "packet capture stopped: reading its socket failed: {error}",
                    error=e.strerror or str(e),
                )
                self.stop()
                return
            self.frames += 1
            if address[2] == PACKET_OUTGOING and address[0] == "lo":
                self.not_ours += 1  # loopback's copy on its way out
                continue
            frame = bytes(self._buffer[: min(size, len(self._buffer))])
            if not matches(frame, self.port):
                self.not_ours += 1
                continue
            self.received(_when(ancillary, self._clock), frame, size)

    def received(self, time: float, frame: bytes, original_length: int) -> None:
        """One frame that passed the guards: parse it and hand it on."""
        for frame_observer in self.frame_observers:
            frame_observer(time, frame, original_length)
        parsed = parse_frame(frame, original_length=original_length)
        if not isinstance(parsed, Segment):
            self.undecoded += 1
            self.last_undecoded = parsed
            return
        packet = self.flows.track(parsed, time)
        self.store.add(packet)
        for entry in list(self._watches.get(packet.connection, ())):
            entry.observer(packet)


def _when(ancillary: list[tuple[int, int, bytes]], clock: IReactorTime) -> float:
    for level, kind, data in ancillary:
        if (
            level == socket.SOL_SOCKET
            and kind == SO_TIMESTAMPNS
            and len(data) >= _TIMESPEC.size
        ):
            seconds, nanos = _TIMESPEC.unpack_from(data)
            return int(seconds) + int(nanos) / 1e9
    return clock.seconds()


def open_capture(
    reactor: IReactorFDSet,
    clock: IReactorTime,
    port: int,
    *,
    host: str = "127.0.0.1",
    limits: Limits = Limits(),
    opener: Callable[[int, str | None], socket.socket] = open_packet_socket,
) -> Capture | Refused:
    """Start capturing *port*'s TCP on the interface that carries *host*.

    A ``Refused`` (not an exception) when the kernel will not: its line is
    for the user, once.  *opener* is the one place the socket is opened
    (tests pass their own).
    """
    interface = interface_for(host)
    try:
        sock = opener(port, interface)
    except OSError as e:
        return refusal(e)
    capture = Capture(sock, port, reactor, clock, limits=limits, interface=interface)
    capture.start()
    log.info(
        "packet capture: TCP port {port} on {interface}",
        port=port,
        interface=interface or "every interface",
    )
    return capture
