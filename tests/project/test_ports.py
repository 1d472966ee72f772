"""tests/ports.py: the ports handed to processes that cannot listen on port
0 come from below the kernel's ephemeral range, are free when drawn, and
differ between xdist workers even where hypothesis seeded ``random``."""

from __future__ import annotations

import random
import socket

import pytest

import ports


def test_a_free_port_is_below_the_ephemeral_range_and_free():
    port = ports.free_port()
    assert ports.LOW <= port < ports._ephemeral_low()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_a_port_held_by_a_socket_is_not_handed_out(monkeypatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports.free_port()))
        taken = held.getsockname()[1]
        draws = iter([taken, taken, ports.LOW + 1])
        monkeypatch.setattr(ports._draw, "randint", lambda low, high: next(draws))
        assert ports.free_port() == ports.LOW + 1


def test_no_free_port_is_one_error(monkeypatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports.free_port()))
        taken = held.getsockname()[1]
        monkeypatch.setattr(ports._draw, "randint", lambda low, high: taken)
        with pytest.raises(RuntimeError, match=r"no free port on 127\.0\.0\.1"):
            ports.free_port()


def test_seeding_random_does_not_repeat_the_draws():
    # Two workers whose `random` hypothesis seeded alike.
    random.seed(0)
    first = [ports.free_port() for _ in range(5)]
    random.seed(0)
    second = [ports.free_port() for _ in range(5)]
    assert first != second
