#!/usr/bin/env python3
"""Redis commands the desk costs: per turn, and per second while idle.

    .venv/bin/python benchmarks/desk_commands.py [--turns 50] [--idle 20]

Starts a redis-server (no persistence, a free loopback port), then, in
this process on the real reactor and real connections: one instance (its
``BrokerInstance`` and the operators' ``QueueResponder``, as ``twistd
sockchat --broker URL --desk`` runs them) and one desk (``BrokerQueue``)
with one operator online.  It counts with Redis's own ``INFO
commandstats`` (every command, those that Lua scripts run included):

- idle, for ``--idle`` seconds: with no client, then with ten clients
  connected and none speaking;
- ``--turns`` turns of one conversation: the client's line, the desk's
  answer (the first line taken, the rest held), one after the other,
  minus what the same time idle costs.

The client side goes through the responder's own calls (``started``,
``respond``), not a socket: the door sends nothing to Redis.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred

from sockchat._broker.instance import BrokerInstance, QueueResponder
from sockchat._broker.redisbroker import connect
from sockchat._broker.wire import OPERATORS
from sockchat._desk.brokered import BrokerQueue
from sockchat._desk.queue import Operator, Queued
from sockchat.testing import RecordingConversation

ALICE = Operator("alice", "Alice")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def blocking(port: int, *command: str) -> bytes:
    """One command on a plain socket; its whole reply."""
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        wire = f"*{len(command)}\r\n".encode()
        for part in command:
            wire += f"${len(part.encode())}\r\n{part}\r\n".encode()
        sock.sendall(wire)
        time.sleep(0.05)
        return sock.recv(1 << 20)


def stats(port: int) -> Counter[str]:
    """Calls per command, from ``INFO commandstats`` (this script's own not
    counted)."""
    text = blocking(port, "INFO", "commandstats").decode()
    calls: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            count = int(rest.split(",")[0].removeprefix("calls="))
            calls[name.removeprefix("cmdstat_")] = count
    for ours in ("info", "config|resetstat"):  # the benchmark's own
        calls.pop(ours, None)
    return calls


def reset(port: int) -> None:
    blocking(port, "CONFIG", "RESETSTAT")


def sleep(seconds: float) -> Deferred[None]:
    from twisted.internet import reactor

    return task.deferLater(reactor, seconds, lambda: None)


def show(title: str, calls: Counter[str], per: float, unit: str) -> None:
    total = sum(calls.values())
    top = ", ".join(f"{name.upper()} {n / per:.2f}" for name, n in calls.most_common())
    print(f"{title}: {total / per:.2f} commands {unit} ({top})")


async def run(reactor: Any, options: argparse.Namespace, port: int) -> None:
    url = f"redis://127.0.0.1:{port}/0"
    instance_broker = await connect(reactor, url, inbox=True)
    desk_broker = await connect(reactor, url, work=True)
    name = await instance_broker.register_instance({})
    instance = BrokerInstance(instance_broker, reactor, name)
    people = QueueResponder(instance, OPERATORS)
    instance.start()
    queue = BrokerQueue(desk_broker, reactor)
    lines: list[Queued] = []
    waiting: list[Deferred[None]] = []

    def heard(event: object) -> None:
        if isinstance(event, Queued):
            lines.append(event)
            while waiting:
                waiting.pop().callback(None)

    queue.subscribe(heard)
    await queue.start()
    await queue.online(ALICE)
    await sleep(3)  # a heartbeat and a look or two

    reset(port)
    await sleep(options.idle)
    idle = stats(port)
    show("idle, no client", idle, options.idle, "a second")

    talks = [RecordingConversation(n, f"127.0.0.1:{40000 + n}") for n in range(1, 11)]
    for talk in talks:
        people.started(talk)
    await sleep(3)
    reset(port)
    await sleep(options.idle)
    busy_idle = stats(port)
    show("idle, ten clients connected", busy_idle, options.idle, "a second")

    talk = talks[0]
    reset(port)
    started = time.monotonic()
    for n in range(options.turns):
        arrived: Deferred[None] = Deferred()
        waiting.append(arrived)
        answer = people.respond(talk.info, f"line {n}")
        if not lines:
            await arrived
        line = lines.pop()
        if n == 0:
            await queue.take(line.line.entry, ALICE)
        await queue.answer(line.line.entry, f"answer {n}", ALICE)
        await answer
    took = time.monotonic() - started
    turns = stats(port)
    for command, count in busy_idle.items():
        turns[command] -= count * took / options.idle
    turns = Counter({k: v for k, v in turns.items() if v > 0.5})
    show(
        f"per turn ({options.turns} turns in {took:.1f} s, idle cost taken off)",
        turns,
        options.turns,
        "a turn",
    )
    await queue.stop()
    await instance.stop()
    await instance_broker.close()
    await desk_broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--idle", type=float, default=20.0)
    options = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("desk_commands: redis-server is not installed")
    port = free_port()
    with tempfile.TemporaryDirectory() as where:
        server = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                where,
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                try:
                    blocking(port, "PING")
                    break
                except OSError:
                    time.sleep(0.05)
            task.react(
                lambda reactor: defer.ensureDeferred(run(reactor, options, port))
            )
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
