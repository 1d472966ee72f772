#!/usr/bin/env python3
"""One echo turn through the real TCP door, in process: no sockets.

    python3 benchmarks/inprocess.py                   # this tree, 5 rounds
    python3 benchmarks/inprocess.py --against /tmp/base --rounds 9

Each run builds a ``ChatServerFactory`` with the echo responder, connects a
``ChatServerProtocol`` to a transport that keeps nothing, and times *turns*
calls of ``dataReceived(b"hello\\n")`` (each one a whole turn: the line, the
responder, the answer written), in a fresh process, CPU time
(``time.process_time``).  With ``--against DIR``, a second tree (a copy of
another branch's ``sockchat/``, made with ``git archive BRANCH sockchat |
tar -x -C DIR``) is run in alternation with this one, round by round, the
order swapped every other round; the medians and the median of the
per-round ratios are printed.  On a shared machine compare ratios from one
run, never absolute figures from two.

``--callgrind`` counts instructions instead (valgrind's callgrind): a run
of 2 x *turns* minus a run of *turns*, so that start-up and warm-up
cancel; slow, but a figure that a busy machine does not blur.  It counts
the door, the engine and the responder only, not Twisted's reactor or the
system calls of a real socket.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _callgrind import python_instructions

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: Run in a child process, with the tree to measure first on sys.path.
CHILD = r"""
import sys, time
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from zope.interface import implementer
from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport

from sockchat import ChatServerFactory, EchoResponder


@implementer(ITCPTransport, IConsumer, IPushProducer)
class Sink:
    disconnecting = False

    def write(self, data):
        pass

    def writeSequence(self, data):
        pass

    def getPeer(self):
        return IPv4Address("TCP", "127.0.0.1", 50000)

    def getHost(self):
        return IPv4Address("TCP", "127.0.0.1", 9527)

    def registerProducer(self, producer, streaming):
        pass

    def unregisterProducer(self):
        pass

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def loseConnection(self):
        pass

    def abortConnection(self):
        pass


turns = int(sys.argv[1])
factory = ChatServerFactory(EchoResponder(), clock=Clock())
proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
proto.makeConnection(Sink())
receive = proto.dataReceived
line = b"hello\n"
for _ in range(100):  # the first turns are logged; warm up
    receive(line)
start = time.process_time()
for _ in range(turns):
    receive(line)
elapsed = time.process_time() - start
print(elapsed / turns * 1e9 if turns else 0.0)
"""


def run(tree: Path, turns: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(turns)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    return float(out.stdout.split()[-1])


def instructions(tree: Path, turns: int) -> int:
    return python_instructions(CHILD, [str(turns)], tree)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", type=Path, help="a second tree to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--turns", type=int, default=200_000)
    parser.add_argument("--callgrind", action="store_true")
    args = parser.parse_args()
    trees = {"this": ROOT}
    if args.against is not None:
        trees["against"] = args.against.resolve()
    if args.callgrind:
        turns = min(args.turns, 10_000)
        for name, tree in trees.items():
            counted = instructions(tree, 2 * turns) - instructions(tree, turns)
            print(f"{name}: {counted / turns:,.0f} instructions per turn ({tree})")
        return 0
    times: dict[str, list[float]] = {name: [] for name in trees}
    ratios = []
    for n in range(args.rounds):
        order = list(trees) if n % 2 == 0 else list(reversed(trees))
        measured = {name: run(trees[name], args.turns) for name in order}
        for name, ns in measured.items():
            times[name].append(ns)
        if "against" in measured:
            ratios.append(measured["this"] / measured["against"])
        print(
            f"round {n + 1}: "
            + ", ".join(f"{name} {ns:.0f} ns" for name, ns in measured.items()),
            flush=True,
        )
    for name, values in times.items():
        print(
            f"{name}: median {statistics.median(values):.0f} ns per turn "
            f"({min(values):.0f}-{max(values):.0f})"
        )
    if ratios:
        print(
            f"this/against: median {statistics.median(ratios):.3f} "
            f"({min(ratios):.3f}-{max(ratios):.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
