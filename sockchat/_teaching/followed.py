"""What one connection's captured packets showed, as the trace uses it: no I/O.

The glue (``tracing.py``) hands ``FollowedPackets`` each captured segment
of one connection as it comes (``add``), and asks it what the packets
show that a socket cannot:

- ``segments(start, size)``: how many segments brought the bytes of a
  read, by their relative sequence numbers (a read of *size* bytes after
  *start* bytes read before it: relative sequence numbers ``start + 1`` to
  ``start + size``; the other side's SYN counts as 0);
- ``reset()``: the first RST, who sent it, and when;
- ``peer_received()``: after the other side's FIN came first, whether its
  kernel acknowledged what this side sent after it (a half-close that
  still receives), or None;
- ``counts()``: SYN, FIN, RST and data segments, every one seen, kept or
  not;
- ``ladder()``: the ladder of the packets kept.

It keeps at most ``KEPT`` packets, each with at most ``PAYLOAD`` bytes of
payload (the lengths stay whole; the first that carried data, for its
layers, ``FIRST_DATA``), and counts the rest; of the other side's data it
keeps the ranges not read yet, at most ``RANGES``.
"""

from __future__ import annotations

from collections import deque

from sockchat._teaching.ladder import Ladder, ladder_from_packets, phases
from sockchat._teaching.packets import Counts, TcpFlags, Tracked, trimmed
from sockchat._teaching.trace import Reset, Side

__all__ = ["FIRST_DATA", "KEPT", "PAYLOAD", "RANGES", "FollowedPackets"]

#: Packets of one connection kept for its ladder.
KEPT = 128
#: Bytes of each kept packet's payload.
PAYLOAD = 64
#: Ranges of the other side's data, not read yet, kept at most.
RANGES = 4096
#: Bytes kept of the first data segment's payload, for its layers' lines.
FIRST_DATA = 1024


class FollowedPackets:
    """One connection's captured packets, seen from *side*'s trace."""

    def __init__(self, side: Side, *, kept: int = KEPT, payload: int = PAYLOAD) -> None:
        self.side = side
        self._kept_most = kept
        self._payload = payload
        self.packets: list[Tracked] = []
        #: Packets seen and not kept (past ``kept``).
        self.left_out = 0
        self.start: float | None = None
        self.first_data: Tracked | None = None
        self._syn = self._fin = self._rst = self._data = self._segments = 0
        self._reset: Tracked | None = None
        #: The other side's data segments not read yet: (first, end) relative.
        self._unread: deque[tuple[int, int]] = deque()
        self._seen: set[int] = set()  # their first numbers: retransmissions
        self._ranges_lost = False
        #: Whether each side's SYN was seen (else its numbers are guesses).
        self._from_syn: dict[Side, bool] = {}
        #: The first FIN, and the end of what this side sent after the
        #: other's FIN came first; the packet that acknowledged all of it.
        self._first_fin: Tracked | None = None
        self._after_fin = 0
        self._after_fin_end: int | None = None
        self._acked_after_fin: Tracked | None = None

    def add(self, packet: Tracked) -> str:
        """Take one packet; its step of the handshake or the close, or ""."""
        if self.start is None:
            self.start = packet.time
        self._count(packet)
        self._from_syn.setdefault(packet.sender, packet.from_syn)
        flags, other = packet.flags, self.side.other
        if TcpFlags.RST in flags and self._reset is None:
            self._reset = packet
        if TcpFlags.FIN in flags and self._first_fin is None:
            self._first_fin = packet
        if packet.data:
            if self._data == 1:  # the first (_count counted it already)
                self.first_data = trimmed(packet, FIRST_DATA)
            if packet.sender is other:
                self._unread_data(packet)
            elif self._first_fin is not None and self._first_fin.sender is other:
                end = (packet.relative_seq + packet.data) % 2**32
                self._after_fin += packet.data
                self._after_fin_end = end
        if (
            packet.sender is other
            and self._after_fin_end is not None
            and packet.relative_ack is not None
            and packet.relative_ack >= self._after_fin_end
            and TcpFlags.RST not in flags
        ):
            self._acked_after_fin = packet
        if len(self.packets) >= self._kept_most:
            self.left_out += 1
            return ""
        self.packets.append(trimmed(packet, self._payload))
        return phases(self.packets)[-1]

    def _count(self, packet: Tracked) -> None:
        flags = packet.flags
        self._segments += 1
        self._syn += TcpFlags.SYN in flags
        self._fin += TcpFlags.FIN in flags
        self._rst += TcpFlags.RST in flags
        self._data += packet.data > 0

    def _unread_data(self, packet: Tracked) -> None:
        first = packet.relative_seq
        if first in self._seen:
            return  # a retransmission: the same bytes again
        if len(self._unread) >= RANGES:
            self._ranges_lost = True
            return
        self._seen.add(first)
        self._unread.append((first, first + packet.data))

    def counts(self) -> Counts:
        """Every segment seen, kept or not."""
        return Counts(self._syn, self._fin, self._rst, self._data, self._segments)

    def segments(self, start: int, size: int) -> int | None:
        """How many of the other side's segments brought the *size* bytes
        read after *start* bytes; None where the packets cannot say (its
        SYN not seen, or too many ranges unread)."""
        if self._ranges_lost or not self._from_syn.get(self.side.other, False):
            return None
        first, end = start + 1, start + 1 + size
        brought = sum(1 for a, b in self._unread if a < end and b > first)
        while self._unread and self._unread[0][1] <= end:
            done, _ = self._unread.popleft()
            self._seen.discard(done)
        return brought or None

    def reset(self) -> Reset | None:
        """The first RST captured, as a ``Reset``."""
        rst = self._reset
        if rst is None:
            return None
        return Reset(
            rst.sender,
            f"a captured packet: RST from {rst.segment.source}, {self._since(rst)} "
            "ms after the connection's first packet",
        )

    def fin_from_other(self) -> str | None:
        """The other side's FIN as captured, and this side's ACK of it."""
        other = self.side.other
        fin = next(
            (p for p in self.packets if p.sender is other and TcpFlags.FIN in p.flags),
            None,
        )
        if fin is None:
            return None
        end = (fin.relative_seq + fin.data + 1) % 2**32
        acked = any(
            p.sender is self.side and p.time >= fin.time and p.relative_ack == end
            for p in self.packets
        )
        return (
            f"a captured packet: FIN from {fin.segment.source}, "
            f"{self._since(fin)} ms after the connection's first packet"
            + (", and this side's kernel's ACK of it (4)" if acked else "")
        )

    def _since(self, packet: Tracked) -> str:
        return f"{(packet.time - (self.start or packet.time)) * 1000:.3f}"

    def peer_received(self) -> str | None:
        """What showed that the other side, its FIN sent first, still took
        what this side sent after it: a captured ACK of all of it."""
        acked = self._acked_after_fin
        if acked is None or self._reset is not None:
            return None
        return (
            f"a captured packet: the {acked.sender.value}'s kernel acknowledged "
            f"the {self._after_fin} bytes this side sent after its FIN (ack "
            f"{acked.relative_ack})"
        )

    def ladder(self, *, time_wait_seen_by: str | None = None) -> Ladder:
        return ladder_from_packets(
            self.packets, dropped=self.left_out, time_wait_seen_by=time_wait_seen_by
        )
