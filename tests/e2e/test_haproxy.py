"""Pair mode behind a real HAProxy that health-checks the server.

A load balancer's check connects and closes at once.  In pair mode that
check is a newcomer like any other: it must not end the conversation of the
client who was waiting for a partner (issue 12, item 2).
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from processes import Reader, Server, need_tool

pytestmark = pytest.mark.slow

#: Health checks this often, so that many land while a client waits.
CHECK_EVERY_MS = 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HAProxy:
    """haproxy in the foreground, in *where*, sending PROXY headers and
    checking *backend* every CHECK_EVERY_MS; stopped by its pid."""

    def __init__(self, where: Path, backend: int) -> None:
        self.binary = need_tool("haproxy", "haproxy")
        self.port = free_port()
        self.config = where / "haproxy.cfg"
        self.config.write_text(
            "global\n"
            "    maxconn 100\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 2s\n"
            "    timeout client 30s\n"
            "    timeout server 30s\n"
            "frontend chat\n"
            f"    bind 127.0.0.1:{self.port}\n"
            "    default_backend sockchat\n"
            "backend sockchat\n"
            f"    server one 127.0.0.1:{backend} send-proxy check "
            f"check-send-proxy inter {CHECK_EVERY_MS}ms rise 1 fall 3\n"
        )
        self.where = where

    def __enter__(self) -> HAProxy:
        self.proc = subprocess.Popen(
            [self.binary, "-db", "-f", str(self.config)],
            cwd=self.where,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:  # until it accepts on its port
            assert self.proc.poll() is None, self.proc.stdout.read()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                assert time.monotonic() < deadline, "haproxy did not start listening"
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


class Line:
    """A raw line client through the proxy."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setblocking(False)  # Reader waits, with its own deadline
        self.reader = Reader(self.sock.makefile("rb", buffering=0))

    def until(self, text: bytes, timeout: float = 10.0) -> bytes:
        return self.reader.until(text, timeout)

    def say(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def close(self) -> None:
        self.reader.stream.close()
        self.sock.close()


CONVERSATION = re.compile(rb"sockchat conversation (\d+)\.")


def paired_with(client: Line, other: int) -> bytes:
    """Read *client*'s notices up to the ``paired`` one that names *other*."""
    seen = b""
    while True:
        line = client.until(b"\n")
        seen += line
        assert not line.startswith(b"!bye"), seen
        if line.startswith(b"!info paired: ") and f"client {other} (".encode() in line:
            return line


def may_speak(paired: bytes) -> bool:
    return b"You speak first" in paired or b"You may both speak now" in paired


def test_two_clients_through_a_health_checking_haproxy_are_paired(tmp_path):
    with (
        Server(
            "--responder", "pair", port="haproxy:tcp:0:interface=127.0.0.1"
        ) as server,
        HAProxy(tmp_path, server.port) as proxy,
    ):
        alice = Line(proxy.port)
        bob = None
        try:
            # A check may be waiting already: then alice listens.
            greeting = alice.until(b"\n")
            assert greeting.startswith((b"!info welcome: ", b"!info listen: "))
            alice_id = int(CONVERSATION.search(greeting).group(1))
            # A dozen health checks pair with alice and leave; she waits on.
            time.sleep(12 * CHECK_EVERY_MS / 1000)
            seen = b""
            for _ in range(5):
                seen += alice.until(b"disconnected before you talked")
            assert seen.count(b"!info waiting: ") >= 5, seen
            assert b"!bye" not in seen
            bob = Line(proxy.port)
            greeting = bob.until(b"\n")
            bob_id = int(CONVERSATION.search(greeting).group(1))
            # However the checks fell in between, alice and bob are paired.
            to_alice = paired_with(alice, bob_id)
            to_bob = paired_with(bob, alice_id)
            if may_speak(to_alice) and may_speak(to_bob):  # their lines cross
                alice.say("hello bob")
                bob.say("hello alice")
                bob.until(b"hello bob\n")
                alice.until(b"hello alice\n")
            else:
                first, second = (alice, bob) if may_speak(to_alice) else (bob, alice)
                assert may_speak(to_alice) != may_speak(to_bob)
                first.say("hello, through haproxy")
                second.until(b"hello, through haproxy\n")
                second.say("hi there")
                first.until(b"hi there\n")
            # Once they have talked, a partner leaving ends the pair.
            alice.say("q")
            alice.until(b"!bye quit: ")
            bob.until(b"!bye partner-left: ")
            assert f"client {alice_id} (".encode() in bob.until(b"\n")
        finally:
            alice.close()
            if bob is not None:
                bob.close()
