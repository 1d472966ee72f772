#!/usr/bin/env python3
"""Python calls to send N commands in one turn, batched or not (cProfile).

    git show 1830c35:sockchat/_broker/redis.py > /tmp/before.py
    .venv/bin/python benchmarks/pipelining_calls.py /tmp/before.py

Counts the function calls (deterministic, unlike times) that the broker
client's connection makes to send 1, 5 and 20 commands in one reactor
turn and write them to an in-memory transport: now (one write per turn,
at the end of the turn) and in the module given (before the client
batched: one ``transport.write`` per command).
"""

from __future__ import annotations

import cProfile
import importlib.util
import pstats
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from sockchat._broker import redis as now


def calls(run: Callable[[], object]) -> int:
    profile = cProfile.Profile()
    profile.enable()
    run()
    profile.disable()
    return int(pstats.Stats(profile).total_calls)  # type: ignore[attr-defined]


def main(before_path: str) -> None:
    spec = importlib.util.spec_from_file_location("before", before_path)
    assert spec is not None
    assert spec.loader is not None
    before: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(before)
    print("| commands in the turn | calls now | calls before |")
    print("|---:|---:|---:|")
    for n in (1, 5, 20):

        def connected_now() -> tuple[Any, Clock]:
            clock = Clock()
            proto = now._RedisProtocol(clock, False)
            proto.makeConnection(StringTransport())
            return proto, clock

        def connected_before() -> Any:
            proto = before._RedisProtocol(False)
            proto.makeConnection(StringTransport())
            return proto

        def send_now(n: int = n) -> None:
            proto, clock = connected_now()
            for _ in range(n):
                proto.send(("XADD", "s", "*", "m", "hello"))
            clock.advance(0)

        def send_before(n: int = n) -> None:
            proto = connected_before()
            for _ in range(n):
                proto.send(("XADD", "s", "*", "m", "hello"))

        after = calls(send_now) - calls(connected_now)
        then = calls(send_before) - calls(connected_before)
        print(f"| {n} | {after} | {then} |")


if __name__ == "__main__":
    main(sys.argv[1])
