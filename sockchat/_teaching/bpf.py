"""The kernel's filter for teaching mode's capture: only one port's TCP.

A packet socket (``AF_PACKET``) sees every frame of its interface: every
program's traffic, not only sockchat's.  So the capture attaches this
classic BPF program to it (``SO_ATTACH_FILTER``; the kernel's
Documentation/networking/filter.rst), and the kernel hands over only the
frames it accepts.  It says, for an Ethernet frame (Linux's loopback
device gives the same layout, with zero MAC addresses):

- on the loopback device, drop the copy of a frame on its way out
  (``PACKET_OUTGOING``): loopback shows each packet twice, once leaving
  and once arriving, and libpcap drops the same copy, so that the count
  equals tcpdump's;
- IPv6 (ethertype ``86dd``) whose next header is TCP (6), with the port
  as source or destination; IPv6 extension headers before TCP are not
  followed (as tcpdump's own ``tcp port N`` does not);
- IPv4 (``0800``) whose protocol is TCP, that is not a fragment after
  the first, with the port as source or destination (the TCP header
  starts after the IP header's own length, ``4*([14]&0xf)``);
- keep ``SNAP`` bytes of what passes; drop the rest (``ret #0``).

It is what ``tcpdump -d 'tcp port N'`` prints, with the loopback check in
front.  ``matches`` says the same in Python: the capture's second guard,
in case a frame got through before the filter was attached.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from attrs import frozen

__all__ = [
    "PACKET_OUTGOING",
    "SNAP",
    "Instruction",
    "matches",
    "pack",
    "tcp_port_filter",
]

# Opcodes (include/uapi/linux/filter.h, from BSD's bpf.h).
LD, LDX, JMP, RET = 0x00, 0x01, 0x05, 0x06
W, H, B = 0x00, 0x08, 0x10
ABS, IND, MSH = 0x20, 0x40, 0xA0
JEQ, JSET = 0x10, 0x40
K = 0x00
#: Ancillary data: loads from these offsets read the packet's metadata.
SKF_AD_OFF = -0x1000
SKF_AD_PKTTYPE = 4
SKF_AD_IFINDEX = 8
#: ``sll_pkttype`` of a frame this host sends (linux/if_packet.h).
PACKET_OUTGOING = 4
#: Bytes of an accepted frame the kernel hands over (tcpdump's default).
SNAP = 262144


@frozen
class Instruction:
    """One ``struct sock_filter``: an opcode, two jump offsets and a value."""

    code: int
    jt: int
    jf: int
    k: int


def _assemble(
    lines: Sequence[tuple[str, int, int, str, str]],
) -> tuple[Instruction, ...]:
    """(label, code, k, label if true, label if false): jumps to labels
    become the offsets from the next instruction that BPF wants."""
    where = {label: i for i, (label, *_) in enumerate(lines) if label}
    program = []
    for i, (_, code, k, true, false) in enumerate(lines):
        jt = where[true] - i - 1 if true else 0
        jf = where[false] - i - 1 if false else 0
        program.append(Instruction(code, jt, jf, k & 0xFFFFFFFF))
    return tuple(program)


def tcp_port_filter(
    port: int, *, loopback: int | None = None
) -> tuple[Instruction, ...]:
    """The program that accepts only TCP segments from or to *port*.

    *loopback* is the loopback device's interface index (``lo``): its
    outgoing copies are dropped.  None: no such check (the socket is not
    bound to an interface that could be loopback).
    """
    if not 0 < port < 65536:
        raise ValueError(f"port {port}: a TCP port is 1 to 65535")
    head: list[tuple[str, int, int, str, str]] = []
    if loopback is not None:
        head = [
            ("", LD | W | ABS, SKF_AD_OFF + SKF_AD_PKTTYPE, "", ""),
            ("", JMP | JEQ | K, PACKET_OUTGOING, "out", "type"),
            ("out", LD | W | ABS, SKF_AD_OFF + SKF_AD_IFINDEX, "", ""),
            ("", JMP | JEQ | K, loopback, "drop", "type"),
        ]
    body = [
        ("type", LD | H | ABS, 12, "", ""),
        ("", JMP | JEQ | K, 0x86DD, "v6", "v4"),
        ("v6", LD | B | ABS, 14 + 6, "", ""),
        ("", JMP | JEQ | K, 6, "v6tcp", "drop"),
        ("v6tcp", LD | H | ABS, 14 + 40, "", ""),
        ("", JMP | JEQ | K, port, "keep", "v6dst"),
        ("v6dst", LD | H | ABS, 14 + 42, "", ""),
        ("", JMP | JEQ | K, port, "keep", "drop"),
        ("v4", JMP | JEQ | K, 0x0800, "v4ip", "drop"),
        ("v4ip", LD | B | ABS, 14 + 9, "", ""),
        ("", JMP | JEQ | K, 6, "v4tcp", "drop"),
        ("v4tcp", LD | H | ABS, 14 + 6, "", ""),
        ("", JMP | JSET | K, 0x1FFF, "drop", "v4ports"),
        ("v4ports", LDX | B | MSH, 14, "", ""),
        ("", LD | H | IND, 14, "", ""),
        ("", JMP | JEQ | K, port, "keep", "v4dst"),
        ("v4dst", LD | H | IND, 16, "", ""),
        ("", JMP | JEQ | K, port, "keep", "drop"),
        ("keep", RET | K, SNAP, "", ""),
        ("drop", RET | K, 0, "", ""),
    ]
    return _assemble(head + body)


def pack(program: Sequence[Instruction]) -> bytes:
    """The program as the array of ``struct sock_filter`` the kernel reads."""
    return b"".join(struct.pack("=HBBI", i.code, i.jt, i.jf, i.k) for i in program)


def matches(frame: bytes, port: int) -> bool:
    """Does *frame* pass the filter's frame part?  Cheap: the same few
    bytes the program loads, in its order, and nothing parsed; a load past
    the end drops the frame, as in BPF."""

    def half(at: int) -> int | None:
        return frame[at] << 8 | frame[at + 1] if len(frame) >= at + 2 else None

    ethertype = half(12)
    if ethertype == 0x86DD:
        if len(frame) < 21 or frame[20] != 6:
            return False
        at = 14 + 40
    elif ethertype == 0x0800:
        if len(frame) < 24 or frame[23] != 6 or (frame[20] << 8 | frame[21]) & 0x1FFF:
            return False
        at = 14 + (frame[14] & 0x0F) * 4
    else:
        return False
    source = half(at)
    if source is None:
        return False
    return source == port or half(at + 2) == port
