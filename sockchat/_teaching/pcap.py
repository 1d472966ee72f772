"""The classic pcap file format: written by teaching mode's capture, read
back by ``tcpdump -r``, Wireshark, and this module's tests.

A pcap file is a 24-byte header (the magic number ``a1b2c3d4`` in the
writer's byte order, version 2.4, the snap length, the link type) and
then one record a packet: a 16-byte header (seconds, microseconds, bytes
kept, bytes on the wire) and the bytes kept.  The link type here is
``LINKTYPE_ETHERNET`` (1), which is also what Linux's loopback device
gives (https://www.tcpdump.org/linktypes.html; the format:
https://www.tcpdump.org/manpages/pcap-savefile.5.html).

**Bounded.** ``PcapWriter`` writes at most ``max_bytes`` bytes in all
(header included; by default ``MAX_BYTES``, 16 MiB) and keeps at most
``snap_length`` bytes of each packet (by default ``SNAP_LENGTH``, 256 KiB,
tcpdump's own, so nothing is cut on loopback).  A packet that would go past
the bound is not written; ``dropped`` counts them, and ``full`` says that
the bound was reached, so that the caller can say so once.  The file stays
valid: it ends after the last whole record.

No file is opened here: the writer is given something with ``write``
(and the reader bytes), so the format is tested without a disk.
"""

from __future__ import annotations

import struct
from typing import Protocol

from attrs import frozen

__all__ = [
    "LINKTYPE_ETHERNET",
    "MAX_BYTES",
    "SNAP_LENGTH",
    "PcapError",
    "PcapFile",
    "PcapRecord",
    "PcapWriter",
    "read_pcap",
]

LINKTYPE_ETHERNET = 1
#: Bytes kept of each packet: tcpdump's default snap length.
SNAP_LENGTH = 262144
#: The most a capture file may hold, header and records.
MAX_BYTES = 16 * 1024 * 1024

_MAGIC_MICRO = 0xA1B2C3D4
_MAGIC_NANO = 0xA1B23C4D
_HEADER = struct.Struct("=IHHiIII")
_RECORD = struct.Struct("=IIII")


class Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


class PcapWriter:
    """Write packets to *out* as a classic pcap file, within its bounds."""

    def __init__(
        self,
        out: Writable,
        *,
        snap_length: int = SNAP_LENGTH,
        max_bytes: int = MAX_BYTES,
        linktype: int = LINKTYPE_ETHERNET,
    ) -> None:
        if max_bytes < _HEADER.size:
            raise ValueError(f"max_bytes {max_bytes}: the header alone is 24")
        self._out = out
        self.snap_length = snap_length
        self.max_bytes = max_bytes
        self.written = 0  # packets
        self.size = _HEADER.size  # bytes
        self.dropped = 0  # packets not written: past max_bytes
        out.write(_HEADER.pack(_MAGIC_MICRO, 2, 4, 0, 0, snap_length, linktype))

    @property
    def full(self) -> bool:
        """The bound was reached: a packet was left out."""
        return self.dropped > 0

    def write(
        self, time: float, frame: bytes, original_length: int | None = None
    ) -> bool:
        """Write one packet seen at *time* (seconds since the epoch).

        *original_length* is its length on the wire, if more than *frame*.
        False if it was left out (the file is full).
        """
        kept = frame[: self.snap_length]
        record = _RECORD.size + len(kept)
        if self.size + record > self.max_bytes:
            self.dropped += 1
            return False
        seconds = int(time)
        micros = min(round((time - seconds) * 1_000_000), 999_999)
        wire = max(original_length or 0, len(frame))
        self._out.write(_RECORD.pack(seconds, micros, len(kept), wire) + kept)
        self.size += record
        self.written += 1
        return True


class PcapError(ValueError):
    """Not a classic pcap file, or one cut short: the message says which."""


@frozen
class PcapRecord:
    time: float
    data: bytes
    original_length: int


@frozen
class PcapFile:
    linktype: int
    snap_length: int
    records: tuple[PcapRecord, ...]
    #: Bytes at the end that were not a whole record (a file being written).
    trailing: int = 0


def read_pcap(data: bytes) -> PcapFile:
    """Read a classic pcap file (either byte order, micro- or nanoseconds).

    A last record cut short (tcpdump still writing) is left out and
    counted in ``trailing``.  Raises ``PcapError`` if it is not pcap.
    """
    if len(data) < _HEADER.size:
        raise PcapError(f"{len(data)} bytes: a pcap file starts with a 24-byte header")
    for order in "<>":
        (magic,) = struct.unpack_from(order + "I", data)
        if magic in (_MAGIC_MICRO, _MAGIC_NANO):
            break
    else:
        raise PcapError(f"magic number 0x{data[:4].hex()}: not a classic pcap file")
    scale = 1e-9 if magic == _MAGIC_NANO else 1e-6
    _, major, minor, _, _, snap, linktype = struct.unpack_from(order + "IHHiIII", data)
    if (major, minor) != (2, 4):
        raise PcapError(f"pcap version {major}.{minor}: only 2.4 is read")
    record = struct.Struct(order + "IIII")
    records = []
    at = _HEADER.size
    while at + record.size <= len(data):
        seconds, fraction, kept, wire = record.unpack_from(data, at)
        if at + record.size + kept > len(data):
            break
        body = data[at + record.size : at + record.size + kept]
        records.append(PcapRecord(seconds + fraction * scale, body, wire))
        at += record.size + kept
    return PcapFile(linktype, snap, tuple(records), trailing=len(data) - at)
