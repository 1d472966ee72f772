#!/usr/bin/env python3
"""How long a probe stays connected, as a server sees it: the measurement
behind pair mode's grace (``sockchat._core.pairing.GRACE``, 0.3 s).

    .venv/bin/python benchmarks/probe_lifetimes.py [--count 30]

A Twisted server on a free loopback port notes, for each connection, the
time from its accept (``connectionMade``) to the probe's FIN
(``readConnectionLost``) or RST (``connectionLost``).  The probes: ``nc -z``
(if installed), a Python socket closed normally (FIN), and one closed with
``SO_LINGER`` 0 (RST), *count* of each, 50 ms apart.  Prints the median and
the maximum of each kind, in milliseconds.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import struct
import subprocess
import threading
import time
from collections.abc import Callable

from twisted.internet import protocol, reactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

lifetimes: dict[str, list[float]] = {}
current = {"kind": ""}


@implementer(IHalfCloseableProtocol)
class Noted(protocol.Protocol):
    def connectionMade(self) -> None:
        self.made, self.kind, self.noted = time.monotonic(), current["kind"], False

    def _note(self) -> None:
        if not self.noted:
            self.noted = True
            lifetimes.setdefault(self.kind, []).append(
                (time.monotonic() - self.made) * 1000
            )

    def readConnectionLost(self) -> None:  # a FIN
        self._note()
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._note()  # an RST, or a FIN noted already


def probes(port: int, count: int) -> None:
    def fin() -> None:
        socket.create_connection(("127.0.0.1", port)).close()

    def rst() -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def nc() -> None:
        subprocess.run(["nc", "-z", "127.0.0.1", str(port)], check=False)

    kinds: list[tuple[str, Callable[[], None]]] = [
        ("python, FIN", fin),
        ("python, RST", rst),
    ]
    if shutil.which("nc"):
        kinds.append(("nc -z", nc))
    for kind, probe in kinds:
        current["kind"] = kind
        for _ in range(count):
            probe()
            time.sleep(0.05)
    time.sleep(0.2)
    reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=30)
    args = parser.parse_args()
    factory = protocol.Factory.forProtocol(Noted)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    threading.Thread(
        target=probes, args=(port.getHost().port, args.count), daemon=True
    ).start()
    reactor.run()  # type: ignore[attr-defined]
    print("| probe | count | median (ms) | max (ms) |")
    print("|---|---:|---:|---:|")
    for kind, values in lifetimes.items():
        print(
            f"| {kind} | {len(values)} | {statistics.median(values):.2f} "
            f"| {max(values):.2f} |"
        )


if __name__ == "__main__":
    main()
