#!/usr/bin/env python3
"""Where a brokered turn's cost goes, process by process, counted.

    .venv/bin/python benchmarks/broker_probe.py --setup workers --clients 10 --turns 300
    .venv/bin/python benchmarks/broker_probe.py --setup workers --measure calls
    .venv/bin/python benchmarks/broker_probe.py --measure instructions --turns 60
    .venv/bin/python benchmarks/broker_probe.py --setup local  # echo in the instance
    git archive main | tar -x -C /tmp/main-src   # the same for another revision:
    .venv/bin/python benchmarks/broker_probe.py --src /tmp/main-src
    .venv/bin/python benchmarks/broker_probe.py --replica --query '?wait=1'

Starts the set-up (``local``: one ``--responder echo`` instance; ``workers``:
redis-server, one ``--responder workers --broker`` instance and one
``python -m sockchat.worker ... sockchat:EchoResponder``), connects
C clients, does warm-up turns until every client is answered, then
measures T turns per client (C x T) and prints, per process and per turn:

- ``--measure counts`` (the default): system calls, from ``perf stat``'s
  syscall tracepoints (``epoll_wait`` is one pass of a reactor); CPU time
  from ``/proc/PID/task/*/schedstat`` (with the kernel's share, from
  ``/proc/PID/stat``); wake-ups, the voluntary context switches of
  ``/proc/PID/task/*/status`` (each is a sleep, in ``epoll_wait`` for a
  reactor, that something ended); Redis's commands from ``INFO
  commandstats`` (reset at the start; it counts the commands a script
  runs as well as the ``EVALSHA``), with the lines per read.
- ``--measure cpu``: CPU time alone, with no perf attached (perf's
  tracepoints cost each system call something).
- ``--measure calls``: Python function calls (cProfile, switched on for
  the measured turns only: ``_profiled.py``), and the functions that make
  the most of them.
- ``--measure instructions``: the instructions each Python process ran
  per turn, counted by valgrind's callgrind (zeroed as the measured turns
  begin, dumped as they end: ``callgrind_control``), which a busy or
  noisy machine does not blur.  The processes run some fifty times
  slower, so the batches are bigger than at full speed: compare counts
  taken with the same lines per read.  With ``--keep DIR`` the dumps are
  kept (``callgrind_annotate --inclusive=no`` gives each C function's
  share).

Call and syscall counts are deterministic for a given batching; the
batching (how many lines a read takes) depends on the processes' relative
speed, which is why the lines per read are printed beside them.  CPU
times are as noisy as the machine.  Loopback only; every process stops
at the end, by its pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
BIN = Path(PYTHON).parent
SYSCALLS = (
    "epoll_wait",
    "recvfrom",
    "sendto",
    "read",
    "write",
    "epoll_ctl",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def redis_cli(port: int, *args: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return done.stdout


def commandstats(port: int) -> dict[str, int]:
    calls: dict[str, int] = {}
    for line in redis_cli(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_") :].split(":", 1)
            fields = dict(kv.split("=", 1) for kv in rest.strip().split(","))
            calls[name] = int(fields["calls"])
    return calls


def cpu_ns(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def user_system(pid: int) -> tuple[int, int]:
    """The process's user and system CPU time so far, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def sleeps(pid: int) -> int:
    """How often the process went to sleep (and so was woken): its
    voluntary context switches, over its threads."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


# -- the load -------------------------------------------------------------------


class Load:
    """C clients on loopback, each sending one line and waiting for its
    answer (an echo of it), turn after turn."""

    def __init__(self, ports: list[int], clients: int) -> None:
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        for i in range(clients):
            s = socket.create_connection(("127.0.0.1", ports[i % len(ports)]))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            self.socks.append(s)
        self.buffers = {s: b"" for s in self.socks}
        self.notices = 0

    def turns(self, count: int, deadline: float) -> int:
        """*count* turns on every client; the answers that were not echoes
        (notices: ``!error unavailable`` while the instance has not seen a
        worker yet)."""
        left = {s: count for s in self.socks}
        sent: dict[socket.socket, bytes] = {}
        unanswered = 0
        for i, s in enumerate(self.socks):
            self._send(s, i, left, sent)
            self.sel.register(s, selectors.EVENT_READ)
        waiting = len(self.socks)
        while waiting:
            if time.monotonic() > deadline:
                raise SystemExit("the load timed out")
            for key, _ in self.sel.select(1.0):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                data = s.recv(65536)
                if not data:
                    raise SystemExit("a connection was closed")
                self.buffers[s] += data
                while b"\n" in self.buffers[s]:
                    line, self.buffers[s] = self.buffers[s].split(b"\n", 1)
                    if line.startswith(b"!"):
                        if line.startswith((b"!info", b"!listen")):
                            continue  # the welcome
                        unanswered += 1
                    elif line + b"\n" != sent[s]:
                        raise SystemExit(f"a wrong answer: {line!r}")
                    left[s] -= 1
                    if left[s]:
                        self._send(s, self.socks.index(s), left, sent)
                    else:
                        self.sel.unregister(s)
                        waiting -= 1
        return unanswered

    def _send(
        self,
        s: socket.socket,
        i: int,
        left: dict[socket.socket, int],
        sent: dict[socket.socket, bytes],
    ) -> None:
        line = f"client {i:05d} turn {left[s]:06d} abcdefghijkl\n".encode()
        sent[s] = line
        s.sendall(line)

    def close(self) -> None:
        for s in self.socks:
            s.close()


# -- the set-ups ------------------------------------------------------------------


class Setup:
    def __init__(self, kind: str, tmp: Path, measure: str, url_query: str) -> None:
        self.kind, self.tmp, self.measure = kind, tmp, measure
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: list[int] = []
        self.rport = 0
        self.query = url_query
        self.instance_args: list[str] = []
        #: Another sockchat source tree to run (``--src``), or "".
        self.src = ""
        #: Whether a replica of the redis-server runs (for ``?wait=1``).
        self.replica = False
        self.replica_port = 0

    def _start(self, name: str, argv: list[str]) -> None:
        if self.measure == "instructions" and name != "redis":
            argv = [
                "valgrind",
                "--tool=callgrind",
                "--compress-strings=no",  # each dump names its functions
                f"--callgrind-out-file={self.tmp / name}.cg.%p",
                *argv,
            ]
        elif self.measure == "calls" and name != "redis":
            argv = [
                PYTHON,
                str(HERE / "_profiled.py"),
                str(self.tmp / f"{name}.prof"),
            ] + (["twistd", *argv[1:]] if argv[0].endswith("twistd") else argv[1:])
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115  # kept open as the process runs
        env = dict(os.environ)
        if self.src:  # another sockchat's source, ahead of the installed one
            env["PYTHONPATH"] = self.src
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp, env=env
        )

    def twistd(self, name: str, responder: str, broker: bool) -> None:
        port = free_port()
        self.ports.append(port)
        argv = [
            str(BIN / "twistd"),
            "-n",
            "--pidfile=",
            "sockchat",
            "--port",
            str(port),
            "--responder",
            responder,
            "--max-clients",
            "5000",
            "--max-per-ip",
            "5000",
        ]
        if broker:
            argv += ["--broker", self.url]
        self._start(name, argv + self.instance_args)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.rport}/0{self.query}"

    def start(self, concurrency: int) -> None:
        deadline = time.monotonic() + (300 if self.measure == "instructions" else 30)
        if self.kind == "workers":
            self.rport = free_port()
            self._start(
                "redis",
                [
                    "redis-server",
                    "--port",
                    str(self.rport),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.tmp),
                ],
            )
            wait_port(self.rport, deadline)
            if self.replica:
                self.replica_port = free_port()
                self._start(
                    "replica",
                    [
                        "redis-server",
                        "--port",
                        str(self.replica_port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(self.tmp),
                        "--dbfilename",
                        "replica.rdb",
                        "--replicaof",
                        "127.0.0.1",
                        str(self.rport),
                    ],
                )
                while "master_link_status:up" not in redis_cli(
                    self.replica_port, "INFO", "replication"
                ):
                    if time.monotonic() > deadline:
                        raise SystemExit("the replica did not sync")
                    time.sleep(0.1)
        if self.kind == "local":
            self.twistd("instance", "echo", False)
        elif self.kind == "workers":
            self.twistd("instance", "workers", True)
            self._start(
                "worker",
                [
                    PYTHON,
                    "-m",
                    "sockchat.worker",
                    "--broker",
                    self.url,
                    "--concurrency",
                    str(concurrency),
                    "sockchat:EchoResponder",
                ],
            )
        for port in self.ports:
            wait_port(port, deadline)

    def python(self) -> list[str]:
        return [n for n in self.procs if n not in ("redis", "replica")]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def callgrind_control(setup: Setup, what: str) -> dict[str, int]:
    """``--zero`` or ``--dump`` the counts of the processes under callgrind
    (``--measure instructions``); after a dump, each one's instructions
    since the zero."""
    counts = {}
    for name in setup.python():
        pid = setup.procs[name].pid
        subprocess.run(
            ["callgrind_control", what, str(pid)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        if what != "--dump":
            continue
        dumps = sorted(setup.tmp.glob(f"{name}.cg.{pid}.*"))
        if not dumps:
            raise SystemExit(f"callgrind wrote no dump for {name}")
        text = dumps[-1].read_text(errors="replace")
        found = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.MULTILINE)
        if found is None:
            raise SystemExit(f"no totals in {dumps[-1]}")
        counts[name] = int(found.group(1))
    return counts


def perf_attach(pids: dict[str, int], tmp: Path) -> dict[str, subprocess.Popen[bytes]]:
    events = ",".join(
        ["raw_syscalls:sys_enter", *(f"syscalls:sys_enter_{s}" for s in SYSCALLS)]
    )
    perfs = {}
    for name, pid in pids.items():
        perfs[name] = subprocess.Popen(
            [
                "perf",
                "stat",
                "-x",
                ",",
                "-e",
                events,
                "-p",
                str(pid),
                "-o",
                str(tmp / f"{name}.perf"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    time.sleep(0.5)  # perf attaches
    return perfs


def perf_read(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[0].strip().isdigit():
            event = parts[2].replace("syscalls:sys_enter_", "")
            counts["all" if event == "raw_syscalls:sys_enter" else event] = int(
                parts[0]
            )
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--setup",
        choices=("local", "workers"),
        default="workers",
    )
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--turns", type=int, default=300)
    ap.add_argument(
        "--measure",
        choices=("counts", "calls", "cpu", "instructions"),
        default="counts",
    )
    ap.add_argument(
        "--concurrency", type=int, default=64, help="the worker's --concurrency"
    )
    ap.add_argument("--query", default="", help="added to the broker URL, e.g. ?wait=1")
    ap.add_argument("--top", type=int, default=25, help="functions shown (calls)")
    ap.add_argument(
        "--instance-args",
        default="",
        help="more options for the instances (e.g. '--answer-timeout 0')",
    )
    ap.add_argument(
        "--replica",
        action="store_true",
        help="run a replica of the redis-server (with --query '?wait=1')",
    )
    ap.add_argument(
        "--src",
        default="",
        help="run the sockchat of this source tree (git archive REV | tar -x -C DIR)",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--keep",
        metavar="DIR",
        help="copy the profiles (calls) or callgrind dumps (instructions) to DIR",
    )
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="broker-probe-") as tmpname:
        tmp = Path(tmpname)
        setup = Setup(a.setup, tmp, a.measure, a.query)
        setup.instance_args = a.instance_args.split()
        setup.replica = a.replica
        setup.src = a.src and str(Path(a.src).resolve())
        try:
            setup.start(a.concurrency)
            load = Load(setup.ports, a.clients)
            slow = a.measure == "instructions"  # valgrind: some 50 times slower
            deadline = time.monotonic() + (600 if slow else 60)
            while load.turns(3, deadline):  # until the instance knows its worker
                time.sleep(0.2)
            pids = {n: p.pid for n, p in setup.procs.items()}
            perfs = perf_attach(pids, tmp) if a.measure == "counts" else {}
            if setup.rport:
                redis_cli(setup.rport, "CONFIG", "RESETSTAT")
            for name in setup.python():
                if a.measure == "calls":
                    os.kill(pids[name], signal.SIGUSR1)
            if slow:
                callgrind_control(setup, "--zero")
            time.sleep(0.2)
            cpu0 = {n: cpu_ns(p) for n, p in pids.items()}
            slept0 = {n: sleeps(p) for n, p in pids.items()}
            us0 = {n: user_system(p) for n, p in pids.items()}
            t0 = time.monotonic()
            refused = load.turns(a.turns, time.monotonic() + 600)
            elapsed = time.monotonic() - t0
            if slow:
                instructions = callgrind_control(setup, "--dump")
            cpu1 = {n: cpu_ns(p) for n, p in pids.items()}
            slept1 = {n: sleeps(p) for n, p in pids.items()}
            us1 = {n: user_system(p) for n, p in pids.items()}
            stats = commandstats(setup.rport) if setup.rport else {}
            for name in setup.python():
                if a.measure == "calls":
                    os.kill(pids[name], signal.SIGUSR2)
            for perf in perfs.values():
                perf.send_signal(signal.SIGINT)
                perf.wait(10)
            time.sleep(0.5)
            load.close()
        finally:
            setup.stop()
        n = a.clients * a.turns
        report: dict[str, Any] = {
            "setup": a.setup,
            "clients": a.clients,
            "turns": n,
            "turns_per_s": round(n / elapsed),
            "refused": refused,
            "cpu_us_per_turn": {
                k: round((cpu1[k] - cpu0[k]) / n / 1000, 1) for k in pids
            },
        }
        report["cpu_us_per_turn"]["all"] = round(
            sum(report["cpu_us_per_turn"].values()), 1
        )
        report["system_share"] = {
            k: round((us1[k][1] - us0[k][1]) / max(1, sum(us1[k]) - sum(us0[k])), 2)
            for k in pids
        }
        report["wakeups_per_turn"] = {
            k: round((slept1[k] - slept0[k]) / n, 3) for k in pids
        }
        if stats:
            report["redis_per_turn"] = {
                k: round(v / n, 3)
                for k, v in sorted(stats.items(), key=lambda kv: -kv[1])
            }
            report["redis_per_turn"]["all"] = round(sum(stats.values()) / n, 3)
            for read in ("xreadgroup", "blmpop"):
                if stats.get(read):
                    report[f"lines_per_{read}"] = round(n / stats[read], 2)
        if slow and a.keep:
            Path(a.keep).mkdir(parents=True, exist_ok=True)
            for dump in tmp.glob("*.cg.*"):
                shutil.copy(dump, Path(a.keep) / dump.name)
        if slow:
            report["instructions_per_turn"] = {
                k: round(v / n) for k, v in instructions.items()
            }
        if perfs:
            report["syscalls_per_turn"] = {
                name: {
                    k: round(v / n, 2)
                    for k, v in perf_read(tmp / f"{name}.perf").items()
                }
                for name in perfs
            }
        if a.measure == "calls":
            report["calls_per_turn"] = {}
            report["top"] = {}
            for name in setup.python():
                if a.keep:
                    Path(a.keep).mkdir(parents=True, exist_ok=True)
                    shutil.copy(tmp / f"{name}.prof", Path(a.keep) / f"{name}.prof")
                st = pstats.Stats(str(tmp / f"{name}.prof"))
                report["calls_per_turn"][name] = round(st.total_calls / n, 1)  # type: ignore[attr-defined]
                rows = sorted(
                    st.stats.items(),  # type: ignore[attr-defined]
                    key=lambda kv: -kv[1][1],
                )[: a.top]
                report["top"][name] = [
                    (
                        f"{Path(f).name}:{line}:{fn}",
                        round(nc / n, 2),
                        round(tt / n * 1e6, 1),
                    )
                    for (f, line, fn), (cc, nc, tt, ct, callers) in rows
                ]
    if a.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        if key == "top":
            for name, rows in value.items():
                print(
                    f"{name}: calls per turn by function (ncalls/turn, tottime µs/turn)"
                )
                for fn, calls, tt in rows:
                    print(f"  {calls:8.2f} {tt:8.1f}  {fn}")
        else:
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
