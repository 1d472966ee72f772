"""Pair mode behind a real HAProxy that health-checks the server (issues 12
and 22).

Two kinds of check: a TCP check of the chat port itself (it connects,
sends its PROXY header and resets the connection, every 100 ms), and an
HTTP check of ``/healthz`` on the ``--metrics`` port.  Neither is anyone's
partner: two clients that come through the proxy talk in turns, the first
to arrive speaking first, each line shown to the other at once.
"""

from __future__ import annotations

import contextlib
import http.client
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from pair_scenarios import CONVERSATION, PARTNER, Lines, say
from ports import free_port
from processes import MetricsServer, Server, need_tool

pytestmark = pytest.mark.slow

#: Health checks this often, so that many land while a client waits.
CHECK_EVERY_MS = 100
#: Where haproxy says it is up, by itself.
READY = "/ready"


def ready(port: int) -> bool:
    """Whether haproxy's monitor frontend on *port* says it is up."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", READY)
        return connection.getresponse().status == 200
    finally:
        connection.close()


class HAProxy:
    """haproxy in the foreground, in *where*, sending PROXY headers to each
    of *backends* in turn and checking each every CHECK_EVERY_MS, by *check*:
    ``tcp`` (the chat port) or ``http`` (``GET /healthz`` on the metrics
    port); stopped by its pid.

    Its readiness is asked of a frontend of its own (``monitor-uri``), which
    haproxy answers by itself: a probe of the chat frontend would be passed
    on to a backend as a conversation of its own, which may reach the server
    after the test's first client and take the number the test expects for
    the second."""

    def __init__(
        self, where: Path, backends: Sequence[Server], check: str = "tcp"
    ) -> None:
        self.binary = need_tool("haproxy", "haproxy")
        self.port = free_port()
        self.monitor_port = free_port()
        self.config = where / "haproxy.cfg"
        servers = []
        for n, backend in enumerate(backends):
            if check == "tcp":
                how = "check check-send-proxy"
            else:
                how = f"check port {backend.metrics_port}"  # type: ignore[attr-defined]
            servers.append(
                f"    server s{n} 127.0.0.1:{backend.port} send-proxy {how} "
                f"inter {CHECK_EVERY_MS}ms rise 1 fall 3\n"
            )
        self.config.write_text(
            "global\n"
            "    maxconn 100\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 2s\n"
            "    timeout client 30s\n"
            "    timeout server 30s\n"
            # Else a check times out after 'inter' (100 ms): slow, not down.
            "    timeout check 5s\n"
            "frontend monitor\n"
            "    mode http\n"
            f"    bind 127.0.0.1:{self.monitor_port}\n"
            f"    monitor-uri {READY}\n"
            "frontend chat\n"
            f"    bind 127.0.0.1:{self.port}\n"
            "    default_backend sockchat\n"
            "backend sockchat\n"
            "    balance leastconn\n"
            + ("    option httpchk GET /healthz\n" if check == "http" else "")
            + "".join(servers)
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
        while True:  # until it answers on its monitor port (all are bound then)
            assert self.proc.poll() is None, self.proc.stdout.read()
            try:
                if ready(self.monitor_port):
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


def two_talk_in_turns(port: int) -> tuple[list[str], list[str]]:
    """Alice arrives and waits through many checks; Bob arrives; they talk.
    Returns what each saw."""
    alice = socket.create_connection(("127.0.0.1", port), timeout=10)
    bob = None
    try:
        alice_lines = Lines(alice)
        deadline = time.monotonic() + 30
        assert alice_lines.line(deadline).startswith("!info welcome: ")
        assert alice_lines.line(deadline).startswith("!info waiting: ")
        time.sleep(12 * CHECK_EVERY_MS / 1000)  # a dozen checks come and go
        bob = socket.create_connection(("127.0.0.1", port), timeout=10)
        bob_lines = Lines(bob)
        assert bob_lines.line(deadline).startswith("!info listen: ")
        to_bob = bob_lines.line(deadline)
        assert to_bob.startswith("!info paired: "), to_bob
        assert to_bob.endswith("They waited, so they speak first; wait for their line.")
        to_alice = alice_lines.line(deadline)
        assert to_alice.startswith("!info paired: "), alice_lines.seen
        assert to_alice.endswith("You speak first.")
        for n in range(3):  # each line is shown to the other at once
            say(alice, f"alice {n}")
            assert bob_lines.line(deadline) == f"alice {n}"
            say(bob, f"bob {n}")
            assert alice_lines.line(deadline) == f"bob {n}"
        say(alice, "q")
        assert alice_lines.line(deadline).startswith("!bye quit: ")
        assert bob_lines.line(deadline).startswith("!bye partner-left: ")
        return alice_lines.seen, bob_lines.seen
    finally:
        alice.close()
        if bob is not None:
            bob.close()


@pytest.mark.parametrize("check", ["tcp", "http"])
@pytest.mark.parametrize("instances", [1, 2])
def test_two_clients_behind_a_health_checking_haproxy_talk_in_turns(
    tmp_path, request, check, instances
):
    args = ["--responder", "pair"]
    if instances == 2:  # leastconn: alice reaches one, bob the other
        args += ["--broker", request.getfixturevalue("redis_server").url]
    port = "haproxy:tcp:0:interface=127.0.0.1"
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(MetricsServer(*args, port=port))
            for _ in range(instances)
        ]
        proxy = stack.enter_context(HAProxy(tmp_path, servers, check))
        alice, bob = two_talk_in_turns(proxy.port)
    # Alice heard of no check: welcome, waiting, paired, then the talk.
    assert [line.split(":")[0] for line in alice[:3]] == [
        "!info welcome",
        "!info waiting",
        "!info paired",
    ]
    if instances == 2:  # they were on different instances
        bobs, alices = (PARTNER.search(seen).group(1) for seen in (alice[2], bob[1]))
        assert bobs.split("/")[0] != alices.split("/")[0], (alices, bobs)
        return
    # Each TCP check was a conversation of the chat port (it sends its
    # PROXY header first); an HTTP check never reaches it, and neither does
    # the probe that waited for haproxy to start.
    first, second = (
        int(CONVERSATION.search(seen[0]).group(1)) for seen in (alice, bob)
    )
    if check == "tcp":
        assert second - first > 5
    else:
        assert (first, second) == (1, 2)
