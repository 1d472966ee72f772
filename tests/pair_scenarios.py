"""Pair mode's scenarios over real sockets: clients that talk as people do,
and probes that connect and close (by FIN or by RST) as health checks do.

Used against one process (tests/e2e/test_pair_probes.py), two instances
through a real redis-server, and HAProxy (tests/e2e/test_haproxy.py).
Every wait has a deadline; nothing sleeps to let something happen, except
the probes' and arrivals' own pace, which is the scenario.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence

from attrs import define, field

from sockchat import connect
from sockchat._core.pairing import GRACE
from sockchat.testing import MemoryServer

#: The welcome's conversation number, and a paired notice's partner.
CONVERSATION = re.compile(r"sockchat conversation (\d+)\.")
PARTNER = re.compile(r"you are talking with client (\S+) \(")


class Lines:
    """A blocking line reader on a socket, each read with a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.seen: list[str] = []

    def line(self, deadline: float) -> str:
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line in time; saw {self.seen!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError(f"closed; saw {self.seen!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        text = line.decode()
        self.seen.append(text)
        return text

    def until(self, test: Callable[[str], bool], deadline: float) -> str:
        """The first line that passes *test*; a ``!bye`` before it fails."""
        while True:
            text = self.line(deadline)
            if test(text):
                return text
            if text.startswith("!bye "):
                raise AssertionError(f"ended first: {self.seen!r}")

    def answer(self, deadline: float) -> str:
        """The next line that is not a notice."""
        return self.until(
            lambda t: not t.startswith("!") or t.startswith("!!"), deadline
        )


def say(sock: socket.socket, text: str) -> None:
    sock.sendall(text.encode() + b"\n")


@define
class Talker:
    """A client that talks as a person does: it waits silently for a
    partner; the one told it speaks first says a line and waits for the
    answer; the other listens, then answers.  Then the first one quits."""

    name: str
    port: int
    timeout: float = 30.0
    #: What happened, for the test to check.
    conversation: str = ""
    partner: str = ""
    speaks_first: bool = False
    arrived: float = 0.0
    said: str = ""
    heard: str = ""
    partner_left_early: bool = False
    error: str = ""
    seen: list[str] = field(factory=list)

    def run(self) -> None:
        self.arrived = time.monotonic()
        deadline = self.arrived + self.timeout
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                lines = Lines(sock)
                try:
                    self._talk(sock, lines, deadline)
                finally:
                    self.seen = lines.seen
                    self.partner_left_early = any(
                        s.startswith("!bye partner-left") for s in lines.seen
                    ) and not (self.heard and self.said)
        except Exception as e:  # reported by the test, with what was seen
            self.error = f"{type(e).__name__}: {e}"

    def _talk(self, sock: socket.socket, lines: Lines, deadline: float) -> None:
        welcome = lines.line(deadline)
        match = CONVERSATION.search(welcome)
        assert match is not None, welcome
        self.conversation = match.group(1)
        if welcome.startswith("!info welcome: "):
            # It waits, silently, until it is paired: then it speaks first.
            paired = lines.until(lambda t: t.startswith("!info paired: "), deadline)
            assert "You speak first" in paired, paired
            self.speaks_first = True
            self.partner = PARTNER.search(paired).group(1)
            self.said = f"hello from {self.name}"
            say(sock, self.said)
            self.heard = lines.answer(deadline)
            say(sock, "q")
            lines.until(lambda t: t.startswith("!bye quit: "), deadline)
        else:
            assert welcome.startswith("!info listen: "), welcome
            paired = lines.until(lambda t: t.startswith("!info paired: "), deadline)
            self.partner = PARTNER.search(paired).group(1)
            self.heard = lines.answer(deadline)
            self.said = f"hi from {self.name}"
            say(sock, self.said)
            lines.until(lambda t: t.startswith("!bye partner-left: "), deadline)


def in_memory_probe(server: MemoryServer, how: str) -> None:
    """A client of a ``MemoryServer`` that connects and leaves within its
    grace: by a reset, or by a FIN (``readConnectionLost``, what a TCP
    transport tells the server's protocol)."""
    connecting = connect(server.clock, server.endpoint(), greeting_timeout=None)
    connecting.addErrback(lambda _: None)
    server.flush()
    pump = server._pumps[-1]
    if how == "reset":
        pump.client.transport.loseConnection()
    else:
        pump.server.readConnectionLost()
    server.advance(GRACE)


def probe(port: int, how: str) -> None:
    """Connect and close at once: by FIN (``nc -z``, a Kubernetes
    ``tcpSocket`` probe) or by RST (HAProxy's check)."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return
    if how == "rst":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Prober(threading.Thread):
    """Probes *ports* in turn every *every* seconds until stopped."""

    def __init__(self, ports: Sequence[int], how: str, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.ports, self.how, self.every = ports, how, every
        self.done = threading.Event()
        self.count = 0

    def run(self) -> None:
        while not self.done.wait(self.every):
            how = self.how if self.how != "both" else ("fin", "rst")[self.count % 2]
            probe(self.ports[self.count % len(self.ports)], how)
            self.count += 1

    def __enter__(self) -> Prober:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join(10)


def arrive(ports: Sequence[int], count: int, every: float) -> list[Talker]:
    """*count* talkers, one every *every* seconds, to *ports* in turn; each
    in a thread of its own; returns them once all are done."""
    talkers = [Talker(f"c{i}", ports[i % len(ports)]) for i in range(count)]
    threads = []
    for talker in talkers:
        thread = threading.Thread(target=talker.run, daemon=True)
        thread.start()
        threads.append(thread)
        time.sleep(every)
    for thread in threads:
        thread.join(talker.timeout + 5)
    return talkers


def check_everyone_talked(talkers: Sequence[Talker]) -> None:
    """Every talker was paired with another, the first to arrive spoke
    first, each line reached the partner, and none was told partner-left
    before talking.  Partners are known by what they said (each line names
    its talker), so this holds across instances, whose conversation numbers
    are their own."""
    problems = [f"{t.name}: {t.error} {t.seen}" for t in talkers if t.error]
    assert problems == [], "\n".join(problems)
    by_name = {t.name: t for t in talkers}
    for talker in talkers:
        assert not talker.partner_left_early, talker.seen
        partner = by_name[talker.heard.rsplit(" ", 1)[-1]]
        assert partner.heard == talker.said, (talker.seen, partner.seen)
        assert partner.speaks_first != talker.speaks_first
        if talker.speaks_first:  # the one who waited: it came first
            assert talker.arrived < partner.arrived
