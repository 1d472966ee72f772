#!/usr/bin/env python3
"""What ``--trace packets`` costs the server, counted rather than timed.

    python3 benchmarks/capture_cost.py                 # both counts below
    python3 benchmarks/capture_cost.py --syscalls      # needs strace, and root
    python3 benchmarks/capture_cost.py --callgrind     # needs valgrind

**System calls per turn** (``--syscalls``): the real ``twistd sockchat
--responder echo``, with teaching mode off, with ``--trace`` and with
``--trace packets``, under ``strace -f -c``; a client on loopback makes
*turns* echo turns, one at a time, with a pause between them long enough
that every trace line is written (no per-second bound holds any back) and
that each turn is the same three segments (the line, the echo with the
ACK of the line, the delayed ACK of the echo).  A run of 3N turns minus a
run of N turns, divided by 2N, cancels start-up and shut-down: the calls
per turn, by name.

**Instructions per packet** (``--callgrind``): in process, the capture's
own work for one packet of a followed connection (``Capture.received``:
the second guard was passed already; the parse, the numbering, the store,
then the trace's ``FollowedPackets.add`` and its packet line, written to
nowhere), with valgrind's callgrind: a conversation of 2N turns minus one
of N, past the first ``KEPT`` packets, whose ladder steps are named.

Both are counts, which a shared machine does not blur, unlike times.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _callgrind import python_instructions

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: Seconds between turns: under the trace's bounds (10 reads, 20 packet
#: lines a second: a turn is 3 packets, so 5 turns a second) and more than
#: Linux's delayed ACK (40 ms at least).
PAUSE = 0.2
MODES = {"off": [], "trace": ["--trace"], "packets": ["--trace", "packets"]}
LISTENING = re.compile(rb"sockchat listening on 127\.0\.0\.1:(\d+)")


def turns_of(port: int, turns: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        heard = sock.recv(4096)
        for _ in range(turns):
            time.sleep(PAUSE)
            sock.sendall(b"hello\n")
            heard = b""
            while not heard.endswith(b"hello\n"):
                heard += sock.recv(4096)
        time.sleep(PAUSE)
        sock.sendall(b"q\n")
        while sock.recv(4096):
            pass


def syscalls(mode: str, turns: int) -> dict[str, int]:
    """The server's system calls, by name, for *turns* turns."""
    with tempfile.TemporaryDirectory() as where:
        counted = Path(where) / "strace.txt"
        log = Path(where) / "twistd.log"
        with open(log, "wb") as out:
            server = subprocess.Popen(
                [
                    shutil.which("strace") or "strace",
                    "-f",
                    "-c",
                    "-o",
                    str(counted),
                    str(BIN / "twistd"),
                    "-n",
                    "--pidfile=",
                    "sockchat",
                    "--port",
                    "tcp:0:interface=127.0.0.1",
                    "--responder",
                    "echo",
                    *MODES[mode],
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=where,
            )
            deadline = time.monotonic() + 60
            while (found := LISTENING.search(log.read_bytes())) is None:
                assert server.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "twistd did not start"
                time.sleep(0.1)
            turns_of(int(found.group(1)), turns)
            time.sleep(2.0)  # the trace's close and its ss check
            # Stop twistd itself (strace's child): strace then writes its count.
            children = Path(f"/proc/{server.pid}/task/{server.pid}/children")
            os.kill(int(children.read_text().split()[0]), signal.SIGTERM)
            server.wait(60)
        calls: dict[str, int] = {}
        for line in counted.read_text().splitlines():
            words = line.split()
            if len(words) >= 5 and words[3].isdigit():
                calls[words[-1]] = int(words[3])
        return calls


def per_turn(mode: str, turns: int) -> dict[str, float]:
    few, many = syscalls(mode, turns), syscalls(mode, 3 * turns)
    return {
        name: (many.get(name, 0) - few.get(name, 0)) / (2 * turns)
        for name in set(few) | set(many)
        if name != "total"
    }


#: Run in a child process: a followed conversation's packets, fed to the
#: capture as the kernel would hand them.
CHILD = r"""
import socket
import sys

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor

from sockchat._teaching.capture import Capture
from sockchat._teaching.followed import FollowedPackets
from sockchat._teaching.packets import Connection, TcpFlags, build_frame
from sockchat._teaching.trace import Address, Side
from sockchat._teaching.tracing import ConnectionTrace

turns, most = int(sys.argv[1]), int(sys.argv[2])
client, server = Address("127.0.0.1", 51234), Address("127.0.0.1", 9527)
A, P, S = TcpFlags.ACK, TcpFlags.PSH, TcpFlags.SYN
frames = [
    build_frame(client, server, flags=S, seq=100),
    build_frame(server, client, flags=S | A, seq=500, ack=101),
    build_frame(client, server, flags=A, seq=101, ack=501),
]
c, s = 101, 501
for _ in range(most):  # as many frames made in every run: only some are fed
    line = b"hello\n"
    frames.append(build_frame(client, server, flags=P | A, seq=c, ack=s, payload=line))
    c += 6
    frames.append(build_frame(server, client, flags=P | A, seq=s, ack=c, payload=line))
    s += 6
    frames.append(build_frame(client, server, flags=A, seq=c, ack=s))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
capture = Capture(sock, 9527, MemoryReactor(), Clock())
trace = ConnectionTrace(Side.SERVER, lambda line: None, Clock())
trace.followed = FollowedPackets(Side.SERVER)
capture.watch(Connection(client, server), trace._packet)
received = capture.received
for n, frame in enumerate(frames[: 3 + 3 * turns]):
    received(1000.0 + n / 1000, frame, len(frame))
"""


def instructions(turns: int, most: int) -> int:
    return python_instructions(CHILD, [str(turns), str(most)], ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--syscalls", action="store_true")
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--turns", type=int, default=20)
    args = parser.parse_args()
    both = not (args.syscalls or args.callgrind)
    if args.syscalls or both:
        counted = {mode: per_turn(mode, args.turns) for mode in MODES}
        names = sorted({n for c in counted.values() for n, v in c.items() if v})
        print("system calls per echo turn (server, every trace line written)")
        print(f"{'call':<16}" + "".join(f"{mode:>10}" for mode in MODES))
        for name in names:
            print(
                f"{name:<16}"
                + "".join(f"{counted[mode].get(name, 0):>10.1f}" for mode in MODES)
            )
        print(
            f"{'all':<16}"
            + "".join(f"{sum(counted[mode].values()):>10.1f}" for mode in MODES)
        )
    if args.callgrind or both:
        turns = max(args.turns, 100)  # past the packets kept (KEPT = 128)
        counted_packets = 3 * turns
        extra = instructions(2 * turns, 2 * turns) - instructions(turns, 2 * turns)
        print(
            f"capture, per packet of a followed connection: "
            f"{extra / counted_packets:,.0f} instructions "
            f"(3 packets a turn: {3 * extra / counted_packets:,.0f} a turn)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
