#!/usr/bin/env python3
"""Measure sockchat against a bare Twisted LineReceiver echo, same run.

    python3 benchmarks/run.py            # the full table (about 15 minutes)
    python3 benchmarks/run.py --quick    # smaller counts, 3 rounds (a few minutes)

Needs Python 3.10+ and a C compiler (``cc``) on Linux.  Run with a Python
that lacks Twisted, it makes ``.venv`` beside this folder (as
``scripts/check.py`` does) and runs itself again from there.

For each configuration it starts each server afresh, in turn, over several
rounds (A B A B, the order reversed every other round), drives it with the C
load generator (``loadgen.c``, built into ``benchmarks/.build``), and reads
the server's CPU time from ``/proc/PID/stat`` and its RSS from
``/proc/PID/status`` at the start and end of the turn phase.  It prints a
markdown table: medians across rounds with the range (min-max), and the
median of the per-round ratios of sockchat to the baseline.  ``--json FILE``
keeps every raw measurement.

Other servers run in the same rounds (``--variants``): the C epoll echo,
asyncio streams and asyncio's Protocol on uvloop from ``../shared/bench/``
(a sibling of this repository; uvloop is installed from PyPI into
``benchmarks/.build/uvloop-venv`` when first needed), and sockchat's web
door, driven over WebSocket.  ``--generators loadgen,turns`` also drives
every server with the independent generator, ``../shared/bench/turns.py``,
and prints a table for each.

Everything is bounded: fixed connection and turn counts, a deadline per run,
loopback only, and free ports chosen by the kernel.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = HERE / ".build"


def _shared_bench() -> Path:
    """The independent servers and load generator: ``shared/bench`` beside
    this repository (or beside a folder that holds it, as for a git
    worktree), or ``$SOCKCHAT_SHARED_BENCH``.  Absent in a lone clone."""
    if "SOCKCHAT_SHARED_BENCH" in os.environ:
        return Path(os.environ["SOCKCHAT_SHARED_BENCH"])
    for parent in ROOT.parents:
        if (parent / "shared" / "bench").is_dir():
            return parent / "shared" / "bench"
    return ROOT.parent / "shared" / "bench"


SHARED = _shared_bench()
UVLOOP_VENV = BUILD / "uvloop-venv"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NAN = float("nan")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class Config:
    name: str
    conns: int
    turns: int
    #: A held-connections configuration: memory and scale, not speed.
    held: bool = False


FULL = (
    Config("C=1 × 20000", 1, 20_000),
    Config("C=100 × 500", 100, 500),
    Config("C=1000 × 50", 1000, 50),
    Config("held 5000 × 1", 5000, 1, held=True),
    Config("held 10000 × 1", 10_000, 1, held=True),
)
QUICK = (
    Config("C=1 × 3000", 1, 3000),
    Config("C=100 × 100", 100, 100),
    Config("C=1000 × 10", 1000, 10),
    Config("held 2000 × 1", 2000, 1, held=True),
)
#: For the test suite: proves the tool works; the numbers mean nothing.
TINY = (
    Config("C=1 × 100", 1, 100),
    Config("C=10 × 20", 10, 20),
)


@dataclass(frozen=True)
class Variant:
    """One server set-up to measure."""

    name: str
    #: The load generator's mode: echo, or pair (half the clients listen).
    mode: str = "echo"
    #: Extra options for ``twistd sockchat``; None: the baseline server.
    sockchat: tuple[str, ...] | None = None
    #: What it is compared with in the ratio table (a variant name).
    against: str = "baseline"
    #: Several processes on the server's side (``broker.py``): workers,
    #: broker-pair, haproxy or cluster; None: one server process.
    rig: str | None = None
    #: A server of ``../shared/bench/servers`` (see ``PROGRAMS``), which
    #: says nothing first; None: the baseline or sockchat.
    program: str | None = None
    #: Drive sockchat's web door (``--web``) over WebSocket.
    websocket: bool = False


BASELINE = Variant("baseline")
ECHO = Variant("sockchat echo", sockchat=("--responder", "echo"))
PAIR = Variant(
    "sockchat pair", mode="pair", sockchat=("--responder", "pair"), against=ECHO.name
)
TRANSCRIPT = Variant(
    "sockchat echo + transcript",
    sockchat=("--responder", "echo", "--transcript", "{tmp}/transcript.jsonl"),
    against=ECHO.name,
)
METRICS = Variant(
    "sockchat echo + metrics",
    sockchat=("--responder", "echo", "--metrics", "tcp:0:interface=127.0.0.1"),
    against=ECHO.name,
)
#: Teaching mode: its [tcp] log lines are the point, so they are written
#: (at most a few a second per conversation) and counted in the table.
TRACE = Variant(
    "sockchat echo + trace",
    sockchat=("--responder", "echo", "--trace"),
    against=ECHO.name,
)
# The broker's (issue 13): see broker.py for what each rig starts.
WORKERS = Variant(
    "sockchat workers (Redis + 1 echo worker)",
    sockchat=("--responder", "workers"),
    against=ECHO.name,
    rig="workers",
)
BROKER_PAIR = Variant(
    "sockchat pair across 2 instances (Redis)",
    mode="pair",
    sockchat=("--responder", "pair"),
    against=PAIR.name,
    rig="broker-pair",
)
HAPROXY = Variant(
    "haproxy + 1 echo instance",
    sockchat=("--responder", "echo"),
    against=ECHO.name,
    rig="haproxy",
)
CLUSTER = Variant(
    "haproxy + 2 echo instances",
    sockchat=("--responder", "echo"),
    against=ECHO.name,
    rig="cluster",
)
# What a developer would write instead (issue 21), from ../shared/bench.
C_EPOLL = Variant("C epoll echo", program="c-epoll")
UVLOOP = Variant("asyncio Protocol on uvloop", program="uvloop")
ASYNCIO = Variant("asyncio streams", program="asyncio")
#: The web door's turn: one WebSocket text message in, one out.
WEB = Variant(
    "sockchat web door (WebSocket)",
    sockchat=("--responder", "echo", "--web", "tcp:0:interface=127.0.0.1"),
    against=ECHO.name,
    websocket=True,
)
#: --variants names for several at once.
SETS = {
    # Issue 21: sockchat against every server a developer would write instead.
    "servers": ("baseline", "echo", "c-epoll", "uvloop", "asyncio", "web"),
}
#: --variants keys, in the order they run.
VARIANTS = {
    "baseline": BASELINE,
    "echo": ECHO,
    "c-epoll": C_EPOLL,
    "uvloop": UVLOOP,
    "asyncio": ASYNCIO,
    "web": WEB,
    "pair": PAIR,
    "transcript": TRANSCRIPT,
    "metrics": METRICS,
    "trace": TRACE,
    "workers": WORKERS,
    "broker-pair": BROKER_PAIR,
    "haproxy": HAPROXY,
    "cluster": CLUSTER,
}


@dataclass
class Run:
    """What one server did for one load-generator run."""

    config: str
    variant: str
    round: int
    conns: int
    turns: int  # answers checked by the load generator
    messages: int  # lines the server carried in and out (pair: two per turn)
    errors: int
    turns_per_s: float
    p50_us: float
    p99_us: float
    wall_s: float
    connect_s: float
    server_cpu_s: float  # over the turn phase
    client_cpu_s: float  # the load generator's own, same phase
    rss_idle_kb: int  # listening, before any connection
    rss_held_kb: int  # every connection open, its turns done
    log_lines_turns: int | None  # log lines in the turn phase (None: not known)
    log_lines_total: int  # from start to stop, listening line included
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    notes: list[str] = field(default_factory=list)
    #: Server CPU over the turn phase per process (rigs of several).
    cpu_parts: dict[str, float] = field(default_factory=dict)
    #: Which load generator: loadgen (loadgen.c) or turns (turns.py).
    generator: str = "loadgen"

    @property
    def cpu_us_per_message(self) -> float:
        return self.server_cpu_s / self.messages * 1e6 if self.messages else NAN

    @property
    def client_us_per_message(self) -> float:
        return self.client_cpu_s / self.messages * 1e6 if self.messages else NAN

    @property
    def rss_kb_per_conn(self) -> float:
        return (self.rss_held_kb - self.rss_idle_kb) / self.conns


# -- Setting up ---------------------------------------------------------------


def ensure_venv() -> None:
    """Run again under ``.venv``'s Python if this one lacks Twisted."""
    try:
        import twisted  # noqa: F401
    except ImportError:
        pass
    else:
        return
    python = ROOT / ".venv" / "bin" / "python"
    if not python.exists():
        print(f"==> creating {python.parent.parent}", file=sys.stderr, flush=True)
        venv.EnvBuilder(with_pip=True).create(python.parent.parent)
    if (
        subprocess.run(
            [str(python), "-c", "import twisted, sockchat"], capture_output=True
        ).returncode
        != 0
    ):
        print("==> installing sockchat into .venv", file=sys.stderr, flush=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-e", str(ROOT)], check=True
        )
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


def build_loadgen() -> Path:
    """Compile ``loadgen.c`` once (again only when the source changes)."""
    source = HERE / "loadgen.c"
    binary = BUILD / "loadgen"
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit(
            "benchmarks: no C compiler found (install gcc, or set CC); the load "
            "generator is C so that it is not the bottleneck"
        )
    BUILD.mkdir(exist_ok=True)
    subprocess.run(
        [cc, "-O2", "-Wall", "-o", str(binary), str(source)], check=True, cwd=HERE
    )
    return binary


def raise_fd_limit(needed: int) -> int:
    """Raise the soft limit on open files (children inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


def free_port() -> int:
    """A loopback port free now, for servers that cannot be told port 0."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def uvloop_python() -> Path:
    """A Python with uvloop: ``benchmarks/.build/uvloop-venv``, made (with
    pip, from PyPI) the first time."""
    python = UVLOOP_VENV / "bin" / "python"
    check = [str(python), "-c", "import uvloop"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"==> installing uvloop into {UVLOOP_VENV}", file=sys.stderr, flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(UVLOOP_VENV)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "uvloop"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"pip could not install uvloop: {last}")
    return python


def build_c_epoll() -> Path:
    """Compile ``../shared/bench/servers/c_epoll_echo.c`` into ``.build``."""
    source = SHARED / "servers" / "c_epoll_echo.c"
    binary = BUILD / "c_epoll_echo"
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (install gcc, or set CC)")
    BUILD.mkdir(exist_ok=True)
    subprocess.run([cc, "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def program_command(program: str, port: int) -> list[str]:
    """How to start one of ``../shared/bench/servers`` on *port*."""
    servers = SHARED / "servers"
    backlog = ("--backlog", "1024")
    if program == "c-epoll":
        return [str(build_c_epoll()), "--port", str(port), *backlog]
    echo = str(servers / "asyncio_echo.py")
    if program == "uvloop":
        return [
            str(uvloop_python()),
            *(echo, "--port", str(port), "--api", "protocol", "--loop", "uvloop"),
            *backlog,
        ]
    if program == "asyncio":
        return [sys.executable, echo, "--port", str(port), "--api", "streams", *backlog]
    raise ValueError(f"unknown program {program}")


def programs_missing(keys: set[str]) -> dict[str, str]:
    """Which of the independent servers in *keys* cannot run here, and why."""
    wanted = [k for k in keys if VARIANTS[k].program is not None]
    if not wanted:
        return {}
    if not (SHARED / "servers").is_dir():
        why = f"{SHARED}/servers not found: they come with the project's shared folder"
        print(f"benchmarks: {why}; not measured: {', '.join(wanted)}", file=sys.stderr)
        return dict.fromkeys(wanted, why)
    missing = {}
    for key in wanted:
        try:
            program_command(VARIANTS[key].program or "", 0)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            missing[key] = str(e)
    return missing


def sockchat_features() -> set[str]:
    """What this sockchat's twistd plugin offers: pair mode, transcripts."""
    twistd = Path(sys.executable).parent / "twistd"
    helped = subprocess.run(
        [str(twistd), "sockchat", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    ).stdout
    found = set()
    if re.search(r"\bpair\b", helped):
        found.add("pair")
    if "--transcript" in helped:
        found.add("transcript")
    if "--trace" in helped:
        found.add("trace")
    if "--web" in helped:
        found.add("web")
    if "--metrics" in helped:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            pass
        else:
            found.add("metrics")
    # The broker's rigs: --broker, the worker, and the tools they start.
    from broker import missing_tools

    broker = "--broker" in helped
    has_worker = importlib.util.find_spec("sockchat.worker") is not None
    for key, needs_broker in (
        ("workers", True),
        ("broker-pair", True),
        ("haproxy", False),
        ("cluster", False),
    ):
        if needs_broker and not broker:
            continue
        if key == "workers" and not has_worker:
            continue
        if not missing_tools(key):
            found.add(key)
    return found


# -- Reading /proc ------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of *pid*, from ``/proc/PID/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


# -- Running servers and the load generator -----------------------------------


class Server:
    """One server process on a free loopback port."""

    def __init__(self, variant: Variant, config: Config, tmp: Path) -> None:
        self.log_path = tmp / "server.log"
        python = sys.executable
        port = None
        if variant.program is not None:
            port = free_port()
            command = program_command(variant.program, port)
            pattern = re.compile(r"listening on")
        elif variant.sockchat is None:
            command = [python, str(HERE / "baseline.py"), "0"]
            pattern = re.compile(r"listening on (\d+)")
        else:
            # Every default protection stays on; only the connection caps
            # are raised, just enough to admit this load.
            cap = str(config.conns + 10)
            extra = [a.format(tmp=tmp) for a in variant.sockchat]
            command = [
                str(Path(python).parent / "twistd"),
                "-n",
                "--pidfile=",
                "sockchat",
                "--port",
                "tcp:0:interface=127.0.0.1",
                "--max-clients",
                cap,
                "--max-per-ip",
                cap,
                *extra,
            ]
            pattern = re.compile(r"sockchat listening on 127\.0\.0\.1:(\d+)")
            if variant.websocket:
                pattern = re.compile(r"web page at http://127\.0\.0\.1:(\d+)/")
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp
        )
        deadline = time.monotonic() + 30
        while True:
            match = pattern.search(self.log_path.read_text(errors="replace"))
            if match:
                self.port = int(match.group(1)) if port is None else port
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{variant.name} did not start: "
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.process.pid

    port2: int | None = None

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def parts(self) -> dict[str, float]:
        return {}

    def rss(self) -> int:
        return rss_kb(self.pid)

    def ended(self) -> int:
        pattern = re.compile(rb"conversation \d+ with .* ended after")
        return len(pattern.findall(self.log_path.read_bytes()))

    def log_lines(self) -> int:
        with self.log_path.open("rb") as f:
            return sum(
                chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b"")
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def _read_line(stream: IO[str], deadline: float, what: str) -> str:
    """A line from the load generator, which is itself bounded in time."""
    line = stream.readline()
    if not line:
        raise RuntimeError(f"the load generator ended before {what}")
    if time.monotonic() > deadline:
        raise RuntimeError(f"the load generator took too long to reach {what}")
    return line


def run_once(
    loadgen: Path,
    variant: Variant,
    config: Config,
    round_: int,
    deadline_s: int,
    generator: str = "loadgen",
) -> Run:
    if generator == "turns":
        return run_turns_py(variant, config, round_, deadline_s)
    with tempfile.TemporaryDirectory(prefix="i7-bench-") as tmpdir:
        tmp = Path(tmpdir)
        server = make_server(variant, config, tmp)
        notes: list[str] = []
        try:
            time.sleep(0.2)  # let the server settle after start-up
            rss_idle = server.rss()
            command = [
                str(loadgen),
                "--port",
                str(server.port),
                "--conns",
                str(config.conns),
                "--turns",
                str(config.turns),
                "--mode",
                variant.mode,
                "--deadline",
                str(deadline_s),
                "--sync",
            ]
            if server.port2 is not None:
                command += ["--port2", str(server.port2)]
            if variant.program is not None:
                command += ["--no-greeting"]
            if variant.websocket:
                command += ["--ws", "chat"]
            deadline = time.monotonic() + deadline_s + 30
            gen = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert gen.stdin is not None
            assert gen.stdout is not None
            try:
                _read_line(gen.stdout, deadline, "ready")
                lines_before = server.log_lines()
                parts_before = server.parts()
                cpu_before = server.cpu()
                gen.stdin.write("go\n")
                gen.stdin.flush()
                done = _read_line(gen.stdout, deadline, "done")
                cpu_after = server.cpu()
                parts_after = server.parts()
                rss_held = server.rss()
                lines_during = server.log_lines() - lines_before
                gen.stdin.write("close\n")
                gen.stdin.close()
                gen.wait(timeout=60)
            finally:
                if gen.poll() is None:
                    gen.kill()
                    gen.wait()
            stderr = gen.stderr.read() if gen.stderr else ""
            gen_stderr = stderr.strip()
            if gen_stderr:
                notes.append(gen_stderr[:500])
            result = json.loads(done.split(" ", 1)[1])
            if variant.sockchat is not None:
                _wait_for_ends(server, config.conns)
            if "transcript" in " ".join(variant.sockchat or ()):
                notes.append(_transcript_size(tmp / "transcript.jsonl"))
        finally:
            server.stop()
        return Run(
            config=config.name,
            variant=variant.name,
            round=round_,
            conns=config.conns,
            turns=result["turns"],
            messages=result["messages"],
            errors=result["errors"] or (1 if gen.returncode else 0),
            turns_per_s=result["turns_per_s"],
            p50_us=result["p50_us"],
            p99_us=result["p99_us"],
            wall_s=result["wall_s"],
            connect_s=result["connect_s"],
            server_cpu_s=cpu_after - cpu_before,
            client_cpu_s=result["client_cpu_s"],
            rss_idle_kb=rss_idle,
            rss_held_kb=rss_held,
            log_lines_turns=lines_during,
            log_lines_total=server.log_lines(),
            load=load_average(),
            notes=notes,
            cpu_parts={k: parts_after[k] - v for k, v in parts_before.items()},
        )


def run_turns_py(variant: Variant, config: Config, round_: int, deadline_s: int) -> Run:
    """One run driven by the independent generator, ``../shared/bench/turns.py``.

    It samples the server's CPU (schedstat) and RSS itself, over its timed
    phase; it cannot say how many log lines fell in that phase.
    """
    with tempfile.TemporaryDirectory(prefix="i21-turns-") as tmpdir:
        tmp = Path(tmpdir)
        server = make_server(variant, config, tmp)
        try:
            time.sleep(0.2)
            command = [
                sys.executable,
                str(SHARED / "turns.py"),
                *("--port", str(server.port), "--clients", str(config.conns)),
                *("--size", "32", "--check", "echo", "--json"),
                *("--server-pid", str(server.pid), "--timeout", str(deadline_s)),
            ]
            if config.held:
                command += ["--connect-only", "--hold", "1"]
            else:
                command += ["--turns", str(config.turns)]
            if variant.program is None:  # sockchat's welcome, or the baseline's
                command += ["--greeting"]
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=deadline_s + 60
            )
            lines = done.stdout.strip().splitlines()
            if not lines:
                raise RuntimeError(f"turns.py printed nothing: {done.stderr[-500:]}")
            result = json.loads(lines[-1])
            if variant.sockchat is not None:
                _wait_for_ends(server, config.conns)
        finally:
            server.stop()
        log_lines = server.log_lines()
    latency = result.get("lat_us") or {}
    turns = result.get("turns") or 0
    notes = [str(e) for e in result.get("error_samples") or []][:3]
    return Run(
        config=config.name,
        variant=variant.name,
        round=round_,
        conns=config.conns,
        turns=turns,
        messages=turns,
        errors=result.get("errors", 0) + (1 if done.returncode else 0),
        turns_per_s=result.get("turns_per_s") or NAN,  # NaN: connect-only
        p50_us=latency.get("p50") or NAN,
        p99_us=latency.get("p99") or NAN,
        wall_s=result.get("wall_s") or 0.0,
        connect_s=result.get("connect_s") or 0.0,
        server_cpu_s=result.get("server_cpu_s") or 0.0,
        client_cpu_s=result.get("gen_cpu_s") or 0.0,
        rss_idle_kb=result.get("server_rss_before_kb") or 0,
        rss_held_kb=result.get("server_rss_after_kb") or 0,
        log_lines_turns=None,
        log_lines_total=log_lines,
        load=load_average(),
        notes=notes,
        generator="turns",
    )


def make_server(variant: Variant, config: Config, tmp: Path) -> Server | Any:
    """One server process, or the rig of several that *variant* names."""
    if variant.rig is None:
        return Server(variant, config, tmp)
    from broker import Rig

    cap = str(config.conns + 10)
    return Rig(
        variant.rig,
        variant.sockchat or (),
        ("--max-clients", cap, "--max-per-ip", cap),
        tmp,
        cpu_seconds,
        rss_kb,
    )


def _wait_for_ends(server: Server | Any, conns: int, timeout: float = 30.0) -> None:
    """Give sockchat time to log each conversation's end before it stops."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.ended() >= conns:
            return
        time.sleep(0.1)


def _transcript_size(path: Path) -> str:
    try:
        with path.open("rb") as f:
            count = sum(
                chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b"")
            )
    except OSError as e:
        return f"transcript: {e}"
    return f"transcript: {count} entries"


# -- Statistics and the table --------------------------------------------------


def median_range(values: Sequence[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def fmt(values: Sequence[float], digits: int = 1) -> str:
    values = [v for v in values if v == v]  # NaN: not measured
    if not values:
        return "—"
    med, lo, hi = median_range(values)
    if len(values) == 1 or lo == hi:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({lo:,.{digits}f}–{hi:,.{digits}f})"


MEASURES: dict[str, Callable[[Run], float]] = {
    "turns/s": lambda r: r.turns_per_s,
    "p50 µs": lambda r: r.p50_us,
    "p99 µs": lambda r: r.p99_us,
    "CPU µs/turn": lambda r: r.cpu_us_per_message,
    "RSS KB/conn": lambda r: r.rss_kb_per_conn,
}


def ratios(
    runs: Sequence[Run], config: str, variant: Variant, measure: Callable[[Run], float]
) -> list[float]:
    """Per round: this variant's figure over its reference's, same round."""
    mine = {
        r.round: r for r in runs if r.config == config and r.variant == variant.name
    }
    theirs = {
        r.round: r for r in runs if r.config == config and r.variant == variant.against
    }
    out = []
    for round_, run in sorted(mine.items()):
        other = theirs.get(round_)
        if other is not None and measure(other) > 0:
            out.append(measure(run) / measure(other))
    return out


def table(
    runs: Sequence[Run], configs: Sequence[str], variants: Sequence[Variant]
) -> str:
    lines = [
        "| configuration | server | turns/s | p50 µs | p99 µs | server CPU µs/turn "
        "(= ms/1000 turns) | RSS KB/conn | loadgen CPU µs/turn | errors | log lines "
        "in turns |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config in configs:
        for variant in variants:
            mine = [r for r in runs if r.config == config and r.variant == variant.name]
            if not mine:
                continue
            per = "message" if variant.mode == "pair" else "turn"
            lines.append(
                f"| {config} | {variant.name}"
                + (" (per relayed message)" if per == "message" else "")
                + f" | {fmt([r.turns_per_s for r in mine], 0)}"
                f" | {fmt([r.p50_us for r in mine])}"
                f" | {fmt([r.p99_us for r in mine])}"
                f" | {fmt([r.cpu_us_per_message for r in mine])}"
                f" | {fmt([r.rss_kb_per_conn for r in mine], 2)}"
                f" | {fmt([r.client_us_per_message for r in mine])}"
                f" | {sum(r.errors for r in mine)}"
                f" | {_log_lines(mine)} |"
            )
    lines += [
        "",
        "Ratios: the median of the per-round ratios (range across rounds).",
        "",
        "| configuration | server | against | CPU/turn | p99 | turns/s | RSS/conn |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for config in configs:
        for variant in variants:
            if variant.name == BASELINE.name:
                continue
            cells = [
                fmt(ratios(runs, config, variant, MEASURES[m]), 2)
                for m in ("CPU µs/turn", "p99 µs", "turns/s", "RSS KB/conn")
            ]
            if all(c == "—" for c in cells):
                continue
            lines.append(
                f"| {config} | {variant.name} | {variant.against} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)


def _log_lines(runs: Sequence[Run]) -> str:
    counts = [r.log_lines_turns for r in runs]
    if any(c is None for c in counts):
        return "n/a"  # turns.py: no sample at the turn phase's edges
    return str(sum(c or 0 for c in counts))


#: The load generators, by --generators key, as the report names them.
GENERATORS = {
    "loadgen": "loadgen.c (benchmarks/loadgen.c)",
    "turns": "turns.py (../shared/bench/turns.py, the independent generator)",
}


def logging_summary(runs: Sequence[Run], variants: Sequence[Variant]) -> str:
    """Log lines per connection, from the run with the most connections."""
    parts = []
    for variant in variants:
        mine = [r for r in runs if r.variant == variant.name]
        if not mine:
            continue
        most = max(r.conns for r in mine)
        per = [r.log_lines_total / r.conns for r in mine if r.conns == most]
        during = _log_lines([r for r in mine if r.log_lines_turns is not None])
        parts.append(
            f"{variant.name}: {statistics.median(per):.2f} per connection at "
            f"C={most}, {during} during turn phases"
        )
    return (
        "**Log lines** (default level; start-up and shutdown lines included): "
        + "; ".join(parts)
        + "."
    )


def report(
    where: str,
    runs: Sequence[Run],
    configs: Sequence[str],
    variants: Sequence[Variant],
    rounds: int,
    elapsed: float,
    missing: Sequence[str] = (),
) -> str:
    """The whole markdown report."""
    loads = [r.load[0] for r in runs]
    lines = [
        f"**Machine:** {where}.  ",
        f"**Load average** (1 min) during the runs: {fmt(loads, 2)}; "
        f"{rounds} round(s), {elapsed:.0f} s in all.  ",
    ]
    if missing:
        lines.append(f"**Not measured:** {'; '.join(missing)}.  ")
    generators = list(dict.fromkeys(r.generator for r in runs))
    for generator in generators:
        mine = [r for r in runs if r.generator == generator]
        if len(generators) > 1 or generator != "loadgen":
            lines += ["", f"#### Load generator: {GENERATORS[generator]}"]
        lines += ["", table(mine, configs, variants)]
    lines += ["", logging_summary(runs, variants)]
    if any(v.rig for v in variants):
        lines += ["", cpu_split(runs, configs, variants)]
    return "\n".join(lines)


#: How cpu_split groups a rig's processes (by the start of their names).
GROUPS = (
    ("instance", "server or instances"),
    ("redis-server", "redis-server"),
    ("worker", "workers"),
    ("haproxy", "haproxy"),
)


def _group_us(run: Run, group: str) -> float | None:
    if not run.cpu_parts:  # one server process
        return run.cpu_us_per_message if group == GROUPS[0][1] else None
    seconds = [
        v
        for k, v in run.cpu_parts.items()
        for p, g in GROUPS
        if g == group and k.startswith(p)
    ]
    if not seconds or not run.messages:
        return None
    return sum(seconds) / run.messages * 1e6


def cpu_split(
    runs: Sequence[Run], configs: Sequence[str], variants: Sequence[Variant]
) -> str:
    """Where the CPU of a turn went, per kind of process, and the load
    generator's share of all the CPU the run used (medians across rounds)."""
    groups = [g for _, g in GROUPS]
    lines = [
        "Where the CPU went (µs per turn, or per relayed message; medians), and "
        "the load generator's share of all the CPU used in the turn phase:",
        "",
        "| configuration | server | "
        + " | ".join(groups)
        + " | all servers | loadgen | loadgen share |",
        "|---|---|" + "---:|" * (len(groups) + 3),
    ]
    for config in configs:
        for variant in variants:
            mine = [r for r in runs if r.config == config and r.variant == variant.name]
            if not mine:
                continue
            cells = []
            for group in groups:
                values = [v for r in mine if (v := _group_us(r, group)) is not None]
                cells.append(fmt(values) if values else "—")
            shares = [
                100 * r.client_cpu_s / (r.client_cpu_s + r.server_cpu_s)
                for r in mine
                if r.client_cpu_s + r.server_cpu_s > 0
            ]
            lines.append(
                f"| {config} | {variant.name} | "
                + " | ".join(cells)
                + f" | {fmt([r.cpu_us_per_message for r in mine])}"
                f" | {fmt([r.client_us_per_message for r in mine])}"
                f" | {fmt(shares, 0)}% |"
            )
    return "\n".join(lines)


def from_json(path: Path) -> str:
    """The report again, from the runs that ``--json`` kept."""
    saved = json.loads(path.read_text())
    known = {v.name: v for v in VARIANTS.values()}
    fields = {f for f in Run.__dataclass_fields__}
    runs = [
        Run(**{k: v for k, v in r.items() if k in fields} | {"load": tuple(r["load"])})
        for r in saved["runs"]
    ]
    configs = saved.get("configs") or list(dict.fromkeys(r.config for r in runs))
    names = saved.get("variants") or list(dict.fromkeys(r.variant for r in runs))
    rounds = saved.get("rounds") or 1 + max(r.round for r in runs)
    return report(
        saved["machine"],
        runs,
        configs,
        [known[n] for n in names],
        rounds,
        saved.get("elapsed_s", 0.0),
        saved.get("missing", ()),
    )


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    import twisted

    return (
        f"{os.cpu_count()} cores, {model}; Linux {platform.release()}; "
        f"Python {platform.python_version()}; Twisted {twisted.__version__}"
    )


# -- Main ----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller counts, 3 rounds")
    size.add_argument("--tiny", action="store_true", help="a few hundred turns (tests)")
    parser.add_argument("--rounds", type=int, help="rounds per configuration")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="configurations whose name contains this (repeatable), e.g. --only C=100",
    )
    parser.add_argument(
        "--variants",
        default="baseline,echo,pair,transcript",
        help="comma-separated subset of " + ",".join(VARIANTS) + " (metrics, trace and "
        "the broker's, workers to cluster, run only when asked for; those need "
        "redis-server or haproxy)",
    )
    parser.add_argument(
        "--generators",
        default="loadgen",
        help="comma-separated: loadgen (benchmarks/loadgen.c) and turns "
        "(../shared/bench/turns.py, the independent generator); each server is "
        "driven by each, in the same rounds",
    )
    parser.add_argument("--json", type=Path, help="write every run here")
    parser.add_argument("--deadline", type=int, default=180, help="seconds per run")
    parser.add_argument(
        "--report",
        type=Path,
        help="print the table again from a --json file; run nothing",
    )
    args = parser.parse_args(argv)
    if args.report:
        print(from_json(args.report))
        return 0

    configs: tuple[Config, ...] = TINY if args.tiny else QUICK if args.quick else FULL
    if args.only:
        configs = tuple(c for c in configs if any(o in c.name for o in args.only))
    rounds = args.rounds or (1 if args.tiny else 3 if args.quick else 5)
    loadgen = build_loadgen()
    features = sockchat_features()
    chosen = set()
    for key in args.variants.split(","):
        chosen.update(SETS.get(key, (key,)))
    unknown = sorted(chosen - set(VARIANTS))
    if unknown:
        raise SystemExit(
            f"benchmarks: unknown --variants {','.join(unknown)}; choose from "
            + ",".join(VARIANTS)
        )
    generators = args.generators.split(",")
    if set(generators) - set(GENERATORS):
        raise SystemExit(
            f"benchmarks: --generators: choose from {','.join(GENERATORS)}"
        )
    if "turns" in generators and not (SHARED / "turns.py").exists():
        raise SystemExit(
            f"benchmarks: --generators turns needs {SHARED}/turns.py, from the "
            "project's shared folder (set SOCKCHAT_SHARED_BENCH to its bench folder)"
        )
    unavailable = programs_missing(chosen)
    variants = []
    missing = []
    for key, variant in VARIANTS.items():
        if key not in chosen:
            continue
        if key in unavailable:
            missing.append(f"{key} ({unavailable[key]})")
        elif key in ("baseline", "echo") or variant.program or key in features:
            variants.append(variant)
        else:
            missing.append(
                f"{key} (this sockchat's twistd plugin does not offer it, or a "
                "tool it starts is not installed: redis-server, haproxy)"
            )
    limit = raise_fd_limit(2 * max(c.conns for c in configs) + 200)
    for config in configs:
        if config.conns + 100 > limit:
            raise SystemExit(
                f"benchmarks: {config.name} needs about {config.conns + 100} open "
                f"files per process, and the hard limit is {limit}; raise it "
                "(ulimit -Hn, or nofile in /etc/security/limits.conf)"
            )

    print(f"machine: {machine()}", file=sys.stderr)
    print(f"load average at start: {load_average()}", file=sys.stderr)
    runs: list[Run] = []
    started = time.monotonic()
    for config in configs:
        for round_ in range(rounds):
            order = variants if round_ % 2 == 0 else variants[::-1]
            for generator, variant in itertools.product(generators, order):
                if (variant.mode == "pair" or variant.rig) and config.held:
                    continue
                if generator == "turns" and (
                    variant.mode == "pair" or variant.rig or variant.websocket
                ):
                    continue  # turns.py speaks lines, one client per server
                pair_config = config
                if variant.mode == "pair" and config.conns % 2:
                    # one client cannot make a pair: C=1 becomes one pair
                    pair_config = Config(config.name, config.conns + 1, config.turns)
                run = run_once(
                    loadgen, variant, pair_config, round_, args.deadline, generator
                )
                runs.append(run)
                print(
                    f"  {config.name:>16} round {round_ + 1} {generator:<7}"
                    f" {variant.name:<28}"
                    f" {run.cpu_us_per_message:7.1f} µs/turn, p99 {run.p99_us:9.1f} µs,"
                    f" {run.errors} errors, load {run.load[0]:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
    elapsed = time.monotonic() - started
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "missing": missing,
                    "rounds": rounds,
                    "elapsed_s": elapsed,
                    "configs": [c.name for c in configs],
                    "variants": [v.name for v in variants],
                    "runs": [asdict(r) for r in runs],
                },
                indent=1,
            )
        )
    print(
        report(
            machine(),
            runs,
            [c.name for c in configs],
            variants,
            rounds,
            elapsed,
            missing,
        )
    )
    return 1 if any(r.errors for r in runs) else 0


if __name__ == "__main__":
    ensure_venv()
    sys.exit(main())
