"""Pair mode with probes, over real sockets, against the real server
(issue 22): a probe (a health check, ``nc -z``) is nobody's partner, by
FIN or by RST; everyone who came to talk talks, the one who waited first;
a line said while waiting reaches the partner as soon as it comes.
"""

from __future__ import annotations

import socket
import time

import pytest

from pair_scenarios import Lines, Prober, arrive, check_everyone_talked, probe, say
from processes import Server

pytestmark = pytest.mark.slow


def connect(port: int) -> tuple[socket.socket, Lines]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock, Lines(sock)


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_probes_never_end_a_waiting_clients_conversation(how):
    with Server("--responder", "pair") as server:
        alice, alice_lines = connect(server.port)
        bob = None
        try:
            deadline = time.monotonic() + 20
            assert alice_lines.line(deadline).startswith("!info welcome: ")
            assert alice_lines.line(deadline).startswith("!info waiting: ")
            for _ in range(20):  # twenty probes, every 50 ms
                probe(server.port, how)
                time.sleep(0.05)
            bob, bob_lines = connect(server.port)
            assert bob_lines.line(deadline).startswith("!info listen: ")
            paired = bob_lines.line(deadline)
            assert paired.startswith("!info paired: you are talking with client 1 (")
            to_alice = alice_lines.line(deadline)
            assert to_alice.startswith("!info paired: you are talking with client ")
            assert to_alice.endswith("You speak first.")
            say(alice, "hello bob")
            assert bob_lines.line(deadline) == "hello bob"
            say(bob, "hi alice")
            assert alice_lines.line(deadline) == "hi alice"
            # Alice heard of no probe: welcome, waiting, paired, bob's line.
            assert len(alice_lines.seen) == 4, alice_lines.seen
        finally:
            alice.close()
            if bob is not None:
                bob.close()


def test_a_line_said_while_waiting_reaches_the_partner_as_it_comes():
    with Server("--responder", "pair") as server:
        alice, alice_lines = connect(server.port)
        bob = None
        try:
            deadline = time.monotonic() + 20
            alice_lines.until(lambda t: t.startswith("!info waiting: "), deadline)
            say(alice, "anyone there?")
            time.sleep(0.5)  # nobody yet: the line waits for a partner
            bob, bob_lines = connect(server.port)
            assert bob_lines.line(deadline).startswith("!info listen: ")
            assert bob_lines.line(deadline).startswith("!info paired: ")
            assert bob_lines.line(deadline) == "anyone there?"
            say(bob, "yes, me")
            alice_lines.until(lambda t: t == "yes, me", deadline)
        finally:
            alice.close()
            if bob is not None:
                bob.close()


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_with_a_probe_every_100ms_twelve_clients_all_talk(how):
    """The issue's measurement: before, 2 of the 12 got to talk."""
    with Server("--responder", "pair") as server, Prober([server.port], how) as prober:
        talkers = arrive([server.port], 12, every=0.6)
    assert prober.count >= 60
    check_everyone_talked(talkers)
    assert sum(t.speaks_first for t in talkers) == 6
