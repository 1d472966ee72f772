#!/usr/bin/env python3
"""How many lines workers answer a second, by ``--concurrency``; and what
each line costs Redis.

    python3 benchmarks/concurrency.py [--workers 2] [--delay 0.025]
        [--concurrency 1,4,16,64] [--conns 100] [--turns 20] [--rounds 1]

For each concurrency: a fresh redis-server, one instance ``--responder
workers --broker``, and *workers* ``python -m sockchat.worker`` processes
running a bot that answers each line (an echo) after *delay* seconds
(``asyncio``-free: ``deferLater`` on the reactor, as an I/O-bound bot
would wait for a database or a model).  The C load generator
(``loadgen.c``) runs *conns* conversations of *turns* lines.  Printed per
run: lines/s, the load generator's p50 and p99, Redis commands per line
(``INFO commandstats`` from the first line to the last, warm-up included),
and the commands of the run by kind.

A worker holds at most *concurrency* lines at once, so *workers* ×
*concurrency* / *delay* lines a second is a ceiling that no CPU can lift:
the measurement says where the CPU's own ceiling comes first.  Loopback
only; every process is stopped by its pid; each run is bounded by the load
generator's deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

BOT = """\
from twisted.internet import reactor
from twisted.internet.task import deferLater

DELAY = float(__import__("os").environ["BOT_DELAY"])


def respond(conversation, text):
    return deferLater(reactor, DELAY, lambda: text)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis(port: int, *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout


def commandstats(port: int) -> dict[str, int]:
    calls = {}
    for line in redis(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_") :].split(":", 1)
            fields = dict(f.split("=", 1) for f in rest.split(","))
            calls[name] = int(fields["calls"])
    return calls


def wait_for(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"concurrency.py: {what} did not happen in {timeout} s")
        time.sleep(0.1)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def one(args: argparse.Namespace, concurrency: int, loadgen: Path) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="sockchat-concurrency-"))
    (tmp / "slowbot.py").write_text(BOT)
    rport, port = free_port(), free_port()
    url = f"redis://127.0.0.1:{rport}/0"
    bindir = Path(sys.executable).parent
    procs: list[subprocess.Popen[bytes]] = []

    def start(command: list[str], log: str, **env: str) -> None:
        with (tmp / log).open("wb") as out:
            procs.append(
                subprocess.Popen(
                    command,
                    cwd=tmp,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **env},
                )
            )

    try:
        start(
            [
                "redis-server",
                "--port",
                str(rport),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp),
            ],
            "redis.log",
        )
        wait_for(lambda: listening(rport), "redis-server listening")
        cap = str(args.conns + 10)
        start(
            [
                str(bindir / "twistd"),
                "-n",
                "--pidfile=",
                "sockchat",
                "--port",
                str(port),
                "--responder",
                "workers",
                "--broker",
                url,
                "--max-clients",
                cap,
                "--max-per-ip",
                cap,
            ],
            "instance.log",
        )
        for n in range(args.workers):
            start(
                [
                    sys.executable,
                    "-m",
                    "sockchat.worker",
                    "--broker",
                    url,
                    "--concurrency",
                    str(concurrency),
                    "slowbot:respond",
                ],
                f"worker{n}.log",
                BOT_DELAY=str(args.delay),
                PYTHONPATH=str(tmp),
            )
        wait_for(lambda: listening(port), "the instance listening")
        wait_for(
            lambda: (
                redis(rport, "HLEN", "sockchat:consumers:workers").strip()
                == str(args.workers)
            ),
            "the workers online",
        )
        time.sleep(2.5)  # the instance counts them at its heartbeat
        redis(rport, "CONFIG", "RESETSTAT")
        ran = subprocess.run(
            [
                str(loadgen),
                "--port",
                str(port),
                "--conns",
                str(args.conns),
                "--turns",
                str(args.turns),
                "--deadline",
                "120",
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        calls = commandstats(rport)
        try:
            result = json.loads(ran.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise SystemExit(
                f"concurrency.py: the load generator said {ran.stdout[-300:]!r} "
                f"{ran.stderr[-300:]!r}"
            ) from None
        lines = args.conns * (args.turns + 1)  # the warm-up turn included
        result["redis_commands_per_line"] = sum(calls.values()) / lines
        result["redis_commands"] = dict(sorted(calls.items(), key=lambda kv: -kv[1]))
        return result
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--delay", type=float, default=0.025)
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--conns", type=int, default=100)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    from run import build_loadgen, ensure_venv

    ensure_venv()
    loadgen = build_loadgen()
    for round_ in range(args.rounds):
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            r = one(args, concurrency, loadgen)
            ceiling = args.workers * concurrency / args.delay if args.delay else 0
            print(
                json.dumps(
                    {
                        "round": round_,
                        "concurrency": concurrency,
                        "ceiling_lines_per_s": round(ceiling),
                        "lines_per_s": r.get("turns_per_s"),
                        "p50_us": r.get("p50_us"),
                        "p99_us": r.get("p99_us"),
                        "errors": r.get("errors"),
                        "redis_commands_per_line": round(
                            r["redis_commands_per_line"], 2
                        ),
                        "redis_commands": r["redis_commands"],
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
