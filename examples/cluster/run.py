#!/usr/bin/env python3
"""A sockchat cluster on one machine, for trying: one command starts it all.

    python examples/cluster/run.py --responder workers     # FaqBot in 2 workers
    python examples/cluster/run.py --responder operators   # you are the operators
    python examples/cluster/run.py --responder pair        # clients talk in pairs

It starts, each on a free loopback port (or the ones given):

- one ``redis-server`` with no persistence, in a temporary folder;
- two sockchat instances (``twistd -n sockchat --broker ... --port
  haproxy:tcp:0:interface=127.0.0.1``), which take only connections
  that start with a PROXY protocol header;
- one ``haproxy`` in front of both (``haproxy.cfg`` beside this file, with
  ``send-proxy`` and health checks);
- with ``--responder workers``, two ``python -m sockchat.worker`` processes
  running ``examples.bot:FaqBot`` (``--bot`` to run another responder);
- with ``--ha``, a highly available Redis instead of one: a master, a
  replica and three sentinels (``redis-server --sentinel``), and every
  part given a ``redis+sentinel://`` broker URL, so that it follows a
  failover (``kill -9`` the master's pid to see one).

It prints what runs where, with its pid and log, and the commands to run
clients (and, with ``--responder operators``, the operator consoles) in
other terminals.  A part that dies (``kill -9 PID``, say) is reported and
started again, with the same command on the same port, while the rest goes
on; ``--no-restart`` leaves it down instead.  Ctrl-C (or SIGTERM) stops
every process it started, by pid, instances first so that each client gets
its ``!bye shutdown``.  The logs stay in their folder (a new temporary one,
or ``--dir``) until you remove it; run.py says where.  Run it from the
repository's top folder or anywhere, with the Python that has sockchat
installed: it finds ``examples`` itself.  Needs ``redis-server`` (7.0 or
later) and ``haproxy`` (``apt-get install redis-server haproxy``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import os
import re
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PYTHON = sys.executable
TWISTD = str(Path(PYTHON).parent / "twistd")
LISTENING = re.compile(r"sockchat listening on 127\.0\.0\.1:(\d+)")
RESPONDERS = ("operators", "workers", "pair")
#: Seconds a process may take to be ready, and to stop.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
#: Seconds between an instance's looks at the broker (sockchat's HEARTBEAT).
HEARTBEAT = 2.0
#: A part that dies this many times within RESTART_WINDOW seconds is left
#: down: it would only die again.
RESTARTS = 5
RESTART_WINDOW = 60.0


class ClusterError(Exception):
    """Something did not start; the message is one line for the user."""


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something listens on loopback *port*, read from the kernel
    (``/proc/net/tcp``) so that no connection is made to find out."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows)
                for row in rows:
                    fields = row.split()
                    local, state = fields[1], fields[3]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        return True
        except OSError:
            continue
    return False


def _die_with_parent() -> None:
    """In the child: start a session of its own (Ctrl-C reaches only this
    script, which stops the children in order), and on Linux get SIGTERM if
    this script dies without stopping it."""
    os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Process:
    """One child process, its output in *log*, stopped by its pid.

    ``restart`` runs the same command again, appending to the same log;
    ``output`` is what the current run has written.
    """

    def __init__(self, name: str, command: Sequence[str], log: Path) -> None:
        self.name = name
        self.command = list(command)
        self.log = log
        self.what = ""
        self.deaths: list[float] = []  # when it died by itself
        self._start = 0  # where the current run's output begins in the log
        log.write_bytes(b"")
        self._spawn()

    def _spawn(self) -> None:
        self._start = self.log.stat().st_size
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": _pythonpath()},
                preexec_fn=_die_with_parent,
            )

    def restart(self) -> None:
        """Run it again (it has ended), after a line in its log; then wait
        until it is ready."""
        with self.log.open("a") as out:
            out.write(f"--- run.py: started again at {time.strftime('%X')} ---\n")
        self._spawn()
        self.ready()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        with self.log.open("rb") as log:
            log.seek(self._start)
            return log.read().decode(errors="replace")

    def wait_for(
        self, ready: Callable[[], object], what: str, timeout: float = START_TIMEOUT
    ) -> None:
        """Poll *ready()* until it is true; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                raise ClusterError(
                    f"{self.name} exited with status {self.proc.returncode} before "
                    f"{what}; its log ({self.log}) ends: {self.tail()}"
                )
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{self.name} did not {what} within {timeout:g} s; its log "
                    f"({self.log}) ends: {self.tail()}"
                )
            time.sleep(0.05)

    def ready(self) -> None:
        """Wait until it serves; set ``what`` (one line about it)."""

    def tail(self) -> str:
        lines = self.output().strip().splitlines()
        return " | ".join(lines[-3:]) or "(nothing)"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal it by pid and wait; SIGKILL if it does not end in time."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _pythonpath() -> str:
    """The repository's top folder first, so ``examples.bot`` imports."""
    rest = os.environ.get("PYTHONPATH")
    return f"{ROOT}{os.pathsep}{rest}" if rest else str(ROOT)


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ClusterError(f"{tool} is not installed (apt-get install {package})")
    return path


P = TypeVar("P", bound=Process)


def ask(port: int, *words: str) -> bytes:
    """One inline command (words without spaces) to a Redis or a sentinel
    on loopback *port*; its reply's first line."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(" ".join(words).encode() + b"\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.split(b"\r\n", 1)[0]


def pong(port: int) -> bool:
    try:
        return ask(port, "PING") == b"+PONG"
    except OSError:
        return False


class Redis(Process):
    """``redis-server`` on loopback *port*, no persistence, in *where*; a
    replica of the one on *replica_of* if given."""

    def __init__(
        self,
        where: Path,
        port: int,
        name: str = "redis-server",
        replica_of: int | None = None,
    ) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.replica_of = replica_of
        replica = ("--replicaof", "127.0.0.1", str(replica_of)) if replica_of else ()
        super().__init__(
            name,
            [
                need("redis-server", "redis-server"),
                *("--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(where)),
                *("--daemonize", "no", "--protected-mode", "yes", *replica),
            ],
            where
            / ("redis.log" if name == "redis-server" else f"{name}.log").replace(
                " ", "-"
            ),
        )

    def ready(self) -> None:
        self.wait_for(lambda: pong(self.port), f"answer PING on port {self.port}")
        self.what = f"{self.url} (no persistence)"
        if self.replica_of:
            self.what += f", replica of port {self.replica_of}"

    def ask(self, *words: str) -> bytes:
        return ask(self.port, *words)

    def wait_for_workers(self, count: int, timeout: float = START_TIMEOUT) -> None:
        """Until *count* workers say they are online (the broker's
        ``sockchat:consumers:workers`` hash), and one heartbeat more, after
        which every instance knows it: before that, a line would get
        ``!error unavailable: no worker is running``."""

        def online() -> bool:
            reply = self.ask("HLEN", "sockchat:consumers:workers")
            return reply.startswith(b":") and int(reply[1:]) >= count

        self.wait_for(online, f"see {count} worker(s) online", timeout)
        time.sleep(HEARTBEAT + 0.5)


#: The name the sentinels know the master by, with ``--ha``.
MASTER = "sockchat"


class Sentinel(Process):
    """``redis-server --sentinel`` on loopback *port*, watching the master
    on *master_port* (quorum 2 of 3: a failover starts 2 s after the master
    stops answering)."""

    def __init__(self, name: str, where: Path, port: int, master_port: int) -> None:
        self.port = port
        config = where / f"{name.replace(' ', '-')}.conf"
        # Sentinel rewrites its file with what it learns.
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {where}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 2000\n"
            f"sentinel failover-timeout {MASTER} 10000\n"
        )
        super().__init__(
            name,
            [need("redis-server", "redis-server"), str(config), "--sentinel"],
            where / f"{name.replace(' ', '-')}.log",
        )

    def ready(self) -> None:
        self.wait_for(lambda: pong(self.port), f"answer PING on port {self.port}")
        self.what = f"127.0.0.1:{self.port}, watching master {MASTER!r}"


class Instance(Process):
    """``twistd -n sockchat`` behind haproxy (PROXY protocol), on a free
    loopback port, with *options* (the responder, the broker...).  Started
    again, it listens on the same port, where haproxy looks for it."""

    def __init__(
        self,
        name: str,
        where: Path,
        options: Sequence[str],
        listen: str = "haproxy:tcp:0:interface=127.0.0.1",
    ) -> None:
        self.proxied = listen.startswith("haproxy:")
        super().__init__(
            f"instance {name}",
            [*(TWISTD, "-n", "--pidfile=", "sockchat"), "--port", listen, *options],
            where / f"{name}.log",
        )
        self.port = 0

    def restart(self) -> None:
        at = self.command.index("--port") + 1
        self.command[at] = re.sub(
            r"(tcp:)0(:)", rf"\g<1>{self.port}\2", self.command[at], count=1
        )
        super().restart()

    def ready(self) -> None:
        self.wait_for(lambda: LISTENING.search(self.output()), "listen")
        match = LISTENING.search(self.output())
        assert match is not None
        self.port = int(match.group(1))
        known = re.search(r"this instance is (\S+) at the broker", self.output())
        proxied = ", PROXY protocol only" if self.proxied else ""
        self.what = f"127.0.0.1:{self.port}{proxied}" + (
            f", broker name {known.group(1)}" if known else ""
        )


class HAProxy(Process):
    """haproxy on loopback *port*, in front of *backends* (one or two
    instance ports), from the template ``haproxy.cfg``."""

    def __init__(self, where: Path, port: int, backends: Sequence[int]) -> None:
        if not 1 <= len(backends) <= 2:
            raise ValueError("haproxy.cfg names one or two instances")
        text = string.Template((HERE / "haproxy.cfg").read_text()).substitute(
            front=port, one=backends[0], two=backends[-1]
        )
        if len(backends) == 1:
            text = "".join(
                line
                for line in text.splitlines(keepends=True)
                if not line.strip().startswith("server two ")
            )
        config = where / "haproxy.cfg"
        config.write_text(text)
        self.port = port
        super().__init__(
            "haproxy",
            [need("haproxy", "haproxy"), "-db", "-f", str(config)],
            where / "haproxy.log",
        )
        self.backends = len(backends)

    def ready(self) -> None:
        self.wait_for(lambda: listening(self.port), f"listen on port {self.port}")
        names = " and ".join(("one", "two")[: self.backends])
        self.what = f"127.0.0.1:{self.port} -> {names} (send-proxy, health checks)"


class Worker(Process):
    """``python -m sockchat.worker --broker URL RESPONDER``."""

    def __init__(self, name: str, where: Path, broker: str, responder: str) -> None:
        super().__init__(
            name,
            [PYTHON, "-m", "sockchat.worker", "--broker", broker, responder],
            where / f"{name.replace(' ', '-')}.log",
        )
        self.what = responder

    def ready(self, settle: float = 1.0) -> None:
        """A worker says nothing when it is ready: fail only if it exits."""
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ClusterError(
                    f"{self.name} exited with status {self.proc.returncode}; its "
                    f"log ({self.log}) ends: {self.tail()}"
                )
            time.sleep(0.05)


class Cluster:
    """Everything ``run.py`` starts, in the order it starts them."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.processes: list[Process] = []
        self.down: list[Process] = []  # died, and left so
        #: Those whose death the rest survive without a restart (with --ha,
        #: a Redis: the sentinels fail over, and one started again empty
        #: before they noticed could lose what was queued).
        self.survivable: set[Process] = set()

    def add(self, process: P) -> P:
        """Keep *process* (so that it is stopped), then wait until it is ready."""
        self.processes.append(process)
        process.ready()
        return process

    def stop(self) -> None:
        """Instances first (their clients get their bye, their held lines go
        back), then workers, haproxy and Redis last: each by its pid."""
        order = sorted(
            self.processes,
            key=lambda p: (
                0
                if isinstance(p, Instance)
                else 1
                if isinstance(p, Worker)
                else 2
                if isinstance(p, HAProxy)
                else 3
                if isinstance(p, Sentinel)  # before a master's end looks like a fault
                else 4
            ),
        )
        for process in order:
            process.stop()

    def dead(self) -> Process | None:
        """A process that ended by itself, if any."""
        return next((p for p in self.running() if p.proc.poll() is not None), None)

    def running(self) -> list[Process]:
        """The processes not left down."""
        return [p for p in self.processes if p not in self.down]

    def watch(self, *, restart: bool, report: Callable[[str], None]) -> None:
        """Until every process is down: report each one that dies, and start
        it again (unless not *restart*, or it keeps dying); the rest go on."""
        while self.running():
            dead = self.dead()
            if dead is None:
                time.sleep(0.2)
                continue
            now = time.monotonic()
            dead.deaths = [t for t in dead.deaths if now - t < RESTART_WINDOW]
            dead.deaths.append(now)
            what = (
                f"{dead.name} (pid {dead.pid}) {exit_status(dead.proc.returncode)}; "
                f"its log ({dead.log}) ends: {dead.tail()}"
            )
            if dead in self.survivable:
                report(
                    f"{what}. Left down: the sentinels fail over to the replica, "
                    "and the rest carry on."
                )
                self.down.append(dead)
                continue
            if not restart:
                report(f"{what}. Left down (--no-restart); the rest goes on.")
                self.down.append(dead)
                continue
            if len(dead.deaths) >= RESTARTS:
                report(
                    f"{what}. It died {len(dead.deaths)} times in "
                    f"{RESTART_WINDOW:g} s: left down; the rest goes on."
                )
                self.down.append(dead)
                continue
            report(f"{what}. Starting it again.")
            try:
                dead.restart()
            except ClusterError as e:
                report(f"{e}. Left down; the rest goes on.")
                self.down.append(dead)
                continue
            report(f"{dead.name} started again: pid {dead.pid}, {dead.what}")
        report("every process is down; stopping.")


def exit_status(code: int) -> str:
    """How a process ended, in words: ``exited with status 1``, ``was
    killed by SIGKILL``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


def missing_sockchat() -> str | None:
    """Why this Python cannot start the cluster, if it cannot: it needs
    sockchat installed, and twistd beside it."""
    if importlib.util.find_spec("sockchat") and Path(TWISTD).exists():
        return None
    venv = ROOT / ".venv" / "bin" / "python"
    if venv.exists() and Path(sys.prefix).resolve() != venv.parent.parent.resolve():
        use = f"run it with the one that has: {venv} {Path(__file__)}"
    else:
        use = (
            f"install it first (in {ROOT}: python3 -m venv .venv && "
            f".venv/bin/pip install .), then run .venv/bin/python {Path(__file__)}"
        )
    return f"this Python ({PYTHON}) has no sockchat installed; {use}"


def start(
    cluster: Cluster,
    responder: str,
    *,
    port: int,
    redis_port: int,
    bot: str,
    workers: int,
    instance_options: Sequence[str] = (),
    ha: bool = False,
) -> dict[str, str]:
    """Start it all in *cluster*; return the commands to show the user."""
    where = cluster.where
    need("redis-server", "redis-server")
    need("haproxy", "haproxy")
    if ha:
        redis = cluster.add(Redis(where, redis_port, "redis master"))
        replica = Redis(where, free_port(), "redis replica", replica_of=redis.port)
        cluster.survivable |= {redis, cluster.add(replica)}
        sentinels = [
            cluster.add(Sentinel(f"sentinel {n}", where, free_port(), redis.port))
            for n in (1, 2, 3)
        ]
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
        broker = f"redis+sentinel://{hosts}/{MASTER}/0"
    else:
        redis = cluster.add(Redis(where, redis_port))
        broker = redis.url
    options = ["--responder", responder, "--broker", broker, *instance_options]
    instances = [cluster.add(Instance(n, where, options)) for n in ("one", "two")]
    cluster.add(HAProxy(where, port, [i.port for i in instances]))
    if responder == "workers":
        for n in range(1, workers + 1):
            cluster.add(Worker(f"worker {n}", where, broker, bot))
        redis.wait_for_workers(workers)
    client = [PYTHON, "-m", "sockchat.client", "--connect", f"tcp:127.0.0.1:{port}"]
    commands = {"client": shlex.join(client)}
    if responder == "operators":
        for name in ("ann", "bob"):
            commands[f"operator {name}"] = shlex.join(
                [
                    *(PYTHON, "-m", "sockchat.operator"),
                    *("--broker", broker, "--name", name),
                ]
            )
    return commands


def describe(cluster: Cluster, responder: str, commands: dict[str, str]) -> str:
    lines = [f"sockchat cluster (--responder {responder}) in {cluster.where}:"]
    for p in cluster.processes:
        lines.append(f"  {p.name:<14} pid {p.pid:<8} {p.what}  log {p.log.name}")
    lines.append("")
    if responder == "operators":
        lines.append("Operators, one terminal each (they share one queue):")
        for key, command in commands.items():
            if key.startswith("operator "):
                lines.append(f"  {key}: {command}")
    what = {
        "workers": "the FAQ bot answers; try help, port, tcp",
        "operators": "an operator answers",
        "pair": "two clients are paired, whichever instance each reached",
    }[responder]
    lines.append(f"Clients, one terminal each ({what}):")
    lines.append(f"  client: {commands['client']}")
    if any(isinstance(p, Sentinel) for p in cluster.processes):
        lines.append(
            "To see a failover: kill -9 the redis master's pid; the sentinels "
            "promote the replica within a few seconds, and every part follows it."
        )
    lines.append(
        "A process that dies is started again (not with --no-restart). "
        "Ctrl-C stops every process listed above."
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Start a sockchat cluster on this machine: Redis, two "
        "instances behind haproxy, and workers; Ctrl-C stops it all."
    )
    parser.add_argument("--responder", choices=RESPONDERS, required=True)
    parser.add_argument(
        "--port", type=int, default=0, help="haproxy's port for clients (free one)"
    )
    parser.add_argument(
        "--redis-port", type=int, default=0, help="redis-server's port (free one)"
    )
    parser.add_argument(
        "--bot",
        default="examples.bot:FaqBot",
        help="the workers' responder (default examples.bot:FaqBot)",
    )
    parser.add_argument("--workers", type=int, default=2, help="default 2")
    parser.add_argument(
        "--ha",
        action="store_true",
        help="a master, a replica and three sentinels instead of one Redis "
        "(--redis-port is then the master's)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        help="put the logs and haproxy.cfg in this folder (default: a new "
        "temporary one); they stay there until you remove them",
    )
    parser.add_argument(
        "--no-restart",
        action="store_true",
        help="leave a part that dies down (by default it is started again)",
    )
    args = parser.parse_args(argv)
    for name in ("port", "redis_port"):
        value = getattr(args, name)
        if not 0 <= value <= 65535:
            parser.error(f"--{name.replace('_', '-')} {value} is not a port number")
    if args.workers < 1:
        parser.error("--workers needs 1 or more")
    if (why := missing_sockchat()) is not None:
        print(f"run.py: {why}", file=sys.stderr)
        return 1

    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        where = args.dir.resolve()
    else:
        where = Path(tempfile.mkdtemp(prefix="sockchat-cluster-"))
    cluster = Cluster(where)
    stopping: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stopping.append(signum)
        raise KeyboardInterrupt

    # SIGINT too: a shell starts a background job with SIGINT ignored, and
    # then Python would not turn it into KeyboardInterrupt.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    status = 0
    try:
        commands = start(
            cluster,
            args.responder,
            port=args.port or free_port(),
            redis_port=args.redis_port or free_port(),
            bot=args.bot,
            workers=args.workers,
            ha=args.ha,
        )
        print(describe(cluster, args.responder, commands), flush=True)
        cluster.watch(restart=not args.no_restart, report=say)
        status = 1
    except KeyboardInterrupt:
        pass
    except ClusterError as e:
        print(f"run.py: {e}", file=sys.stderr)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # one Ctrl-C is enough
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping: " + ", ".join(p.name for p in cluster.processes), flush=True)
        cluster.stop()
        print(f"stopped. The logs are in {where} (rm -r it when done).", flush=True)
    return status


def say(text: str) -> None:
    print(f"run.py: {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
