"""A free loopback port for a process that cannot listen on port 0 itself
(redis-server, haproxy, a server whose port is written in its command line).

``bind(0)`` and ``close()`` hands over a port from the kernel's ephemeral
range, and the kernel may give that same port to any other socket (an
outgoing connection, another ``bind(0)``) before the process binds it: with
the suite's tests running in parallel, and other suites beside them, that
happens.  The ports here are drawn at random below that range, where the
kernel never hands out a port by itself, and each is checked by binding it.
"""

from __future__ import annotations

import random
import socket

__all__ = ["free_port"]

#: Its own source of randomness: hypothesis seeds the ``random`` module,
#: and two workers seeded alike would draw the same ports.
_draw = random.SystemRandom()

#: Where the ports are drawn from: below Linux's ephemeral range
#: (/proc/sys/net/ipv4/ip_local_port_range, 32768-60999 by default).
LOW, HIGH = 20000, 32767


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return HIGH + 1


def free_port(host: str = "127.0.0.1") -> int:
    """A port that no socket on *host* holds now, outside the ephemeral range."""
    high = min(HIGH, _ephemeral_low() - 1)
    for _ in range(200):
        port = _draw.randint(LOW, high)
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {host} in {LOW}-{high}")
