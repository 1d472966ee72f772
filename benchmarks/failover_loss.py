#!/usr/bin/env python3
"""What a Sentinel failover loses, with and without ``?wait=1``, measured.

    .venv/bin/python benchmarks/failover_loss.py [--kills 5] [--json FILE]

Starts the tests' highly available set (tests/redis_sentinels.py: a
master, a replica, three sentinels on loopback).  For each mode (plain,
then ``?wait=1&wait_ms=500``) and each of ``--kills`` rounds, a client of
sockchat's (``RedisClient`` on the ``redis+sentinel://`` URL) writes
lines as an instance enqueues them, ``XADD`` to a stream, ten in each
reactor turn (with ``replicated()`` after each in the WAIT mode); a line
counts as *accepted* when its ``XADD`` (and ``WAIT``) succeeded.  One
second in, the master gets ``kill -9``; with ``--lag S``, half of the
rounds first stop the replica (``SIGSTOP``) for S seconds before the kill
and let it go on (``SIGCONT``) right after, as a replica that falls
behind (a pause, a slow network) would.  The client follows the promotion
the old master comes back as its replica, the client writes on for a
second more; then the stream is read from the new master, and every
accepted line missing from it is *lost*.

Then the cost of WAIT, counted by Redis itself: 1,000 lines on a healthy
set, ``INFO commandstats`` of the master before and after, per line.

No timing is a result here (the machine is shared): counts only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402

from sockchat._broker.redis import (  # noqa: E402
    BrokerUnavailable,
    RedisClient,
    RedisError,
    parse_broker_url,
)

from redis_sentinels import SentinelSet, call, info  # noqa: E402

#: Lines per reactor turn.
BATCH = 10
MODES = {"plain": "", "wait=1": "?wait=1&wait_ms=500"}


async def sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


class Writer:
    """Writes numbered lines to *key* until stopped; knows which were
    accepted."""

    def __init__(self, reactor: Any, client: RedisClient, key: str, size: int) -> None:
        self.reactor = reactor
        self.pad = b"x" * max(0, size - 8)
        self.client = client
        self.key = key
        self.accepted: set[int] = set()
        self.refused = 0
        self.last_accept = 0.0
        self.running = True
        self.done = defer.Deferred.fromCoroutine(self._run())

    async def _run(self) -> None:
        n = 0
        while self.running:
            said = []
            for value in range(n, n + BATCH):
                added = self.client.command(
                    "XADD", self.key, "*", "m", value, "t", self.pad
                )
                safe = self.client.replicated()
                said.append(defer.gatherResults([added, safe], consumeErrors=True))
            results = await defer.DeferredList(said, consumeErrors=True)
            for value, (ok, _) in zip(range(n, n + BATCH), results, strict=True):
                if ok:
                    self.accepted.add(value)
                    self.last_accept = time.monotonic()
                else:
                    self.refused += 1
            n += BATCH
            if not any(ok for ok, _ in results):
                await sleep(self.reactor, 0.05)


async def present(client: RedisClient, key: str) -> set[int]:
    while True:
        try:
            entries = await client.command("XRANGE", key, "-", "+")
            return {int(fields[1]) for _, fields in entries}  # "m" first
        except (BrokerUnavailable, RedisError):
            await sleep(client._reactor, 0.1)


async def one_round(
    reactor: Any, ha: SentinelSet, client: RedisClient, key: str, lag: float, size: int
) -> dict[str, Any]:
    writer = Writer(reactor, client, key, size)
    await sleep(reactor, 1.0)
    replica = ha.servers[ha.replica_port()]
    if lag:
        os.kill(replica.pid, signal.SIGSTOP)
        await sleep(reactor, lag)
    old = ha.kill_master()
    if lag:
        os.kill(replica.pid, signal.SIGCONT)
    killed = time.monotonic()
    new = await deferToThread(ha.wait_for_promotion, old)
    promoted = time.monotonic()
    # The old master comes back as the new one's replica: with wait=1 and
    # one replica, no line is accepted until then.
    await deferToThread(ha.restart_as_replica, old)
    whole = time.monotonic()
    while writer.last_accept < whole + 1.0:
        await sleep(reactor, 0.1)
    writer.running = False
    await writer.done
    there = await present(client, key)
    lost = sorted(writer.accepted - there)
    return {
        "lag_s": lag,
        "accepted": len(writer.accepted),
        "refused": writer.refused,
        "lost": len(lost),
        "lost_values": lost[:20],
        "promotion_s": round(promoted - killed, 2),
        "whole_again_s": round(whole - killed, 2),
        "new_master": new,
    }


async def cost(reactor: Any, ha: SentinelSet, url: str, lines: int) -> dict[str, float]:
    """Commands the master ran per line, from its INFO commandstats."""
    client = RedisClient(reactor, parse_broker_url(url))
    await client.start()
    call(ha.master_port, "CONFIG", "RESETSTAT")
    for start in range(0, lines, BATCH):
        said = []
        for value in range(start, start + BATCH):
            said.append(client.command("XADD", "cost", "*", "m", value))
            said.append(client.replicated())
        await defer.gatherResults(said)
    stats = info(ha.master_port, "commandstats")
    await client.stop()

    def calls(name: str) -> int:
        field = stats.get(f"cmdstat_{name}", "calls=0")
        return int(field.split(",")[0].split("=")[1])

    return {
        "xadd_per_line": calls("xadd") / lines,
        "wait_per_line": calls("wait") / lines,
        "replica_acks_per_line": calls("replconf") / lines,
    }


async def main(reactor: Any, kills: int, lag: float, size: int) -> dict[str, Any]:
    where = Path(tempfile.mkdtemp(prefix="sockchat-failover-"))
    ha = await deferToThread(lambda: SentinelSet(where).start())
    results: dict[str, Any] = {"kills": kills, "bytes": size, "modes": {}, "cost": {}}
    try:
        for mode, query in MODES.items():
            results["cost"][mode] = await cost(reactor, ha, ha.url(query), 1000)
        for mode, query in MODES.items():
            client = RedisClient(reactor, parse_broker_url(ha.url(query)))
            await client.start()
            rounds = []
            for k in range(kills):
                behind = lag if lag and k % 2 else 0.0
                key = f"loss:{mode}:{k}"
                rounds.append(await one_round(reactor, ha, client, key, behind, size))
                print(mode, k, rounds[-1], flush=True)
            await client.stop()
            results["modes"][mode] = rounds
    finally:
        await deferToThread(ha.stop)
    return results


def report(results: dict[str, Any]) -> str:
    lines = [
        f"{results['kills']} kill -9 of the master per mode, lines of "
        f"{results['bytes']} bytes:",
        "| mode | replica | kills | lines accepted | accepted, then lost "
        "| refused (unavailable) | promotion after the kill (s) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for mode, every in results["modes"].items():
        for lag in sorted({r["lag_s"] for r in every}):
            rounds = [r for r in every if r["lag_s"] == lag]
            promotions = sorted(r["promotion_s"] for r in rounds)
            lines.append(
                f"| {mode} | {f'stopped {lag:g} s before' if lag else 'in step'} "
                f"| {len(rounds)} | {sum(r['accepted'] for r in rounds)} "
                f"| {sum(r['lost'] for r in rounds)} "
                f"| {sum(r['refused'] for r in rounds)} "
                f"| {promotions[0]}-{promotions[-1]} |"
            )
    lines += ["", "Per line, as the master counted (INFO commandstats):"]
    for mode, c in results["cost"].items():
        lines.append(
            f"- {mode}: XADD {c['xadd_per_line']:.2f}, WAIT {c['wait_per_line']:.2f}, "
            f"REPLCONF from the replica {c['replica_acks_per_line']:.2f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument(
        "--lag", type=float, default=0.5, help="replica stopped this long (0: never)"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--bytes", type=int, default=200, help="each line's size (default 200)"
    )
    args = parser.parse_args()

    def run(reactor: Any) -> defer.Deferred[None]:
        async def go() -> None:
            results = await main(reactor, args.kills, args.lag, args.bytes)
            print(report(results))
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))

        return defer.Deferred.fromCoroutine(go())

    task.react(run)
