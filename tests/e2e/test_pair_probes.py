"""Pair mode with probes, over real sockets, against the real server
(issue 22), in one process and across two instances through a real
redis-server: a probe (a health check, ``nc -z``) is nobody's partner, by
FIN or by RST; everyone who came to talk talks, the one who waited first,
each line shown to the partner at once; a line said while waiting reaches
the partner as soon as it comes; a partner's instance that dies or stops
is noticed.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from sockchat._broker.pairs import PARTNER_LOST_WITHIN

from pair_scenarios import Lines, Prober, arrive, check_everyone_talked, probe, say
from processes import Server

pytestmark = pytest.mark.slow


@pytest.fixture(params=["one process", "two instances"])
def servers(request: pytest.FixtureRequest) -> Iterator[list[Server]]:
    """``--responder pair`` in one process, or in two instances that share
    a real redis-server: clients take the ports in turn."""
    with contextlib.ExitStack() as stack:
        if request.param == "one process":
            yield [stack.enter_context(Server("--responder", "pair"))]
            return
        url = request.getfixturevalue("redis_server").url
        args = ("--responder", "pair", "--broker", url)
        yield [stack.enter_context(Server(*args)) for _ in range(2)]


@contextlib.contextmanager
def connected(port: int) -> Iterator[tuple[socket.socket, Lines]]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        yield sock, Lines(sock)


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_probes_never_end_a_waiting_clients_conversation(servers, how):
    ports = [s.port for s in servers]
    deadline = time.monotonic() + 30
    with connected(ports[0]) as (alice, alice_lines):
        assert alice_lines.line(deadline).startswith("!info welcome: ")
        assert alice_lines.line(deadline).startswith("!info waiting: ")
        for n in range(20):  # twenty probes, every 50 ms, to every instance
            probe(ports[n % len(ports)], how)
            time.sleep(0.05)
        with connected(ports[-1]) as (bob, bob_lines):
            assert bob_lines.line(deadline).startswith("!info listen: ")
            to_bob = bob_lines.line(deadline)
            assert to_bob.startswith("!info paired: you are talking with client ")
            assert "They waited, so they speak first" in to_bob
            to_alice = alice_lines.line(deadline)
            assert to_alice.startswith("!info paired: you are talking with client ")
            assert to_alice.endswith("You speak first.")
            for n in range(3):  # each line is shown to the other at once
                say(alice, f"alice {n}")
                assert bob_lines.line(deadline) == f"alice {n}"
                say(bob, f"bob {n}")
                assert alice_lines.line(deadline) == f"bob {n}"
        # Alice heard of no probe: welcome, waiting, paired, bob's lines.
        assert len(alice_lines.seen) == 6, alice_lines.seen


def test_a_line_said_while_waiting_reaches_the_partner_as_it_comes(servers):
    ports = [s.port for s in servers]
    deadline = time.monotonic() + 30
    with connected(ports[0]) as (alice, alice_lines):
        alice_lines.until(lambda t: t.startswith("!info waiting: "), deadline)
        say(alice, "anyone there?")
        time.sleep(0.5)  # nobody yet: the line waits for a partner
        with connected(ports[-1]) as (bob, bob_lines):
            assert bob_lines.line(deadline).startswith("!info listen: ")
            assert bob_lines.line(deadline).startswith("!info paired: ")
            assert bob_lines.line(deadline) == "anyone there?"
            say(bob, "yes, me")
            alice_lines.until(lambda t: t == "yes, me", deadline)


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_with_a_probe_every_100ms_twelve_clients_all_talk(servers, how):
    """The issue's measurement: before, 2 of the 12 got to talk."""
    ports = [s.port for s in servers]
    with Prober(ports, how) as prober:
        talkers = arrive(ports, 12, every=0.6)
    assert prober.count >= 60
    check_everyone_talked(talkers)
    assert sum(t.speaks_first for t in talkers) == 6


# A partner's instance that dies, or stops.


@pytest.fixture
def two(servers: list[Server]) -> list[Server]:
    if len(servers) < 2:
        pytest.skip("across instances only")
    return servers


@pytest.mark.parametrize("servers", ["two instances"], indirect=True)
def test_a_killed_partner_instance_is_noticed_within_the_documented_time(two):
    one, other = two
    deadline = time.monotonic() + 30
    with connected(one.port) as (alice, alice_lines):
        alice_lines.until(lambda t: t.startswith("!info waiting: "), deadline)
        with connected(other.port) as (bob, bob_lines):
            bob_lines.until(lambda t: t.startswith("!info paired: "), deadline)
            alice_lines.until(lambda t: t.startswith("!info paired: "), deadline)
            say(alice, "hello from one")
            assert bob_lines.line(deadline) == "hello from one"
            say(bob, "hi from two")
            assert alice_lines.line(deadline) == "hi from two"
            say(alice, "still there?")
            other.proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            other.proc.wait(10)
            bye = alice_lines.line(killed + PARTNER_LOST_WITHIN + 5)
            took = time.monotonic() - killed
    assert bye.startswith("!bye partner-left: client i2/1 (127.0.0.1:")
    assert "is gone: its server, i2, stopped answering." in bye
    assert took <= PARTNER_LOST_WITHIN + 1, took


@pytest.mark.parametrize("servers", ["two instances"], indirect=True)
def test_an_instance_that_stops_tells_the_partners_of_its_clients_at_once(two):
    one, other = two
    deadline = time.monotonic() + 30
    with connected(one.port) as (alice, alice_lines):
        alice_lines.until(lambda t: t.startswith("!info waiting: "), deadline)
        with connected(other.port) as (bob, bob_lines):
            bob_lines.until(lambda t: t.startswith("!info paired: "), deadline)
            alice_lines.until(lambda t: t.startswith("!info paired: "), deadline)
            say(alice, "hello")
            assert bob_lines.line(deadline) == "hello"
            say(bob, "hi")
            assert alice_lines.line(deadline) == "hi"
            say(alice, "are you staying?")
            stopped = time.monotonic()
            assert other.stop() == -signal.SIGTERM  # as twistd exits on SIGTERM
            bye = alice_lines.line(stopped + 5)
    assert bye.startswith("!bye partner-left: client i2/1 (127.0.0.1:")
    assert "left: its server is shutting down." in bye
