"""The baseline: a bare Twisted ``LineReceiver`` echo server.

    python benchmarks/baseline.py [PORT]     (default 0: any free port)

It listens on 127.0.0.1, prints ``listening on PORT`` once bound, and for
each connection sends one greeting line shaped like sockchat's welcome (so
that both servers do the same work per connection), then answers each line
with the same line.  No turn checks, no UTF-8 validation, no idle timer, no
logging: what Twisted itself costs for one line in, one line out.
"""

from __future__ import annotations

import sys

from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

#: sockchat's welcome, word for word.
GREETING = (
    b"!info welcome: sockchat conversation %d. You speak first, one line at a "
    b"time, and wait for each answer. Send q to quit."
)


class Echo(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024

    def connectionMade(self) -> None:
        self.factory.count += 1
        self.sendLine(GREETING % self.factory.count)

    def lineReceived(self, line: bytes) -> None:
        self.sendLine(line)


class EchoFactory(Factory):
    protocol = Echo
    noisy = False
    count = 0


def main(argv: list[str]) -> None:
    from twisted.internet import epollreactor

    epollreactor.install()  # what twistd picks on Linux too
    from twisted.internet import reactor

    port = reactor.listenTCP(
        int(argv[0]) if argv else 0, EchoFactory(), interface="127.0.0.1"
    )
    print(f"listening on {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
