"""A classic BPF machine, enough to run the capture's filter and tcpdump's
in a test: loads (absolute, indirect, the IP header length, ancillary
packet type and interface), jumps (``jeq``, ``jset``, ``ja``), returns.
As the kernel does, a load past the packet's end returns 0 (drop)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sockchat._teaching.bpf import (
    SKF_AD_IFINDEX,
    SKF_AD_OFF,
    SKF_AD_PKTTYPE,
    Instruction,
)

SIZES = {0x00: 4, 0x08: 2, 0x10: 1}


def run(
    program: Sequence[Instruction], frame: bytes, *, pkttype: int = 0, ifindex: int = 1
) -> int:
    a = x = 0
    pc = 0
    while pc < len(program):
        op = program[pc]
        kind, size, mode = op.code & 0x07, op.code & 0x18, op.code & 0xE0
        pc += 1
        if kind in (0x00, 0x01):  # ld, ldx
            if kind == 0x01 and mode == 0xA0:  # ldxb 4*([k]&0xf)
                if op.k >= len(frame):
                    return 0
                x = (frame[op.k] & 0x0F) * 4
                continue
            if mode == 0x00:  # immediate
                value = op.k
            else:
                at = op.k if mode == 0x20 else x + op.k
                signed = at - 2**32 if at >= 2**31 else at
                if signed == SKF_AD_OFF + SKF_AD_PKTTYPE:
                    value = pkttype
                elif signed == SKF_AD_OFF + SKF_AD_IFINDEX:
                    value = ifindex
                else:
                    width = SIZES[size]
                    if at + width > len(frame):
                        return 0
                    value = int.from_bytes(frame[at : at + width], "big")
            if kind == 0x00:
                a = value
            else:
                x = value
        elif kind == 0x05:  # jmp
            test = op.code & 0xF0
            if test == 0x00:  # ja
                pc += op.k
            elif test == 0x10:
                pc += op.jt if a == op.k else op.jf
            elif test == 0x40:
                pc += op.jt if a & op.k else op.jf
            else:
                raise NotImplementedError(hex(op.code))
        elif kind == 0x06:  # ret
            return op.k if mode == 0x00 else a
        else:
            raise NotImplementedError(hex(op.code))
    return 0


def parse_dd(text: str) -> list[Instruction]:
    """``tcpdump -dd`` output: ``{ 0x28, 0, 0, 0x0000000c },`` a line."""
    return [
        Instruction(int(c, 0), int(t), int(f), int(k, 0))
        for c, t, f, k in re.findall(
            r"\{\s*(\w+),\s*(\d+),\s*(\d+),\s*(\w+)\s*\}", text
        )
    ]
