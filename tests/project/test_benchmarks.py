"""The benchmark tool works: a tiny run of both servers, and a load generator
that notices wrong answers.  No timing is asserted: these only prove that
``benchmarks/run.py`` runs and that its output parses."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "benchmarks" / "run.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("cc") or shutil.which("gcc")),
        reason="the load generator is C: needs cc",
    ),
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="reads /proc; uses epoll"
    ),
]


@pytest.fixture(scope="module")
def loadgen() -> Path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import run
    finally:
        sys.path.pop(0)
    return run.build_loadgen()


def test_a_tiny_run_measures_both_servers_and_prints_a_table(tmp_path):
    raw = tmp_path / "runs.json"
    done = subprocess.run(
        [sys.executable, str(RUN), "--tiny", "--json", str(raw)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in done.stdout.splitlines()
        if line.startswith("| C=")
    ]
    servers = {(row[0], row[1]) for row in rows}
    for config in ("C=1 × 100", "C=10 × 20"):
        assert (config, "baseline") in servers
        assert (config, "sockchat echo") in servers
    # The first table: errors and log lines in the turn phase are zero (the
    # warm-up turn takes each conversation's started line).
    measured = [row for row in rows if len(row) == 10]
    assert measured
    assert all(row[8] == "0" and row[9] == "0" for row in measured)
    # The ratio table has a number for each sockchat row.
    ratio_rows = [row for row in rows if len(row) == 7]
    assert {row[1] for row in ratio_rows} >= {"sockchat echo"}
    assert all(float(row[4].split()[0]) > 0 for row in ratio_rows)  # p99

    runs = json.loads(raw.read_text())["runs"]
    for run in runs:
        assert run["errors"] == 0
        # Every line was carried: pair mode carries two per answer checked.
        per_conn = {"C=1 × 100": 100, "C=10 × 20": 20}[run["config"]]
        assert run["messages"] == run["conns"] * per_conn
        assert run["server_cpu_s"] >= 0
        assert run["rss_held_kb"] > 0
        assert run["log_lines_turns"] == 0, "a log line per turn"


def _tables(stdout: str) -> dict[str, list[list[str]]]:
    """The rows of each generator's tables, by generator heading."""
    tables: dict[str, list[list[str]]] = {}
    current = "loadgen"
    for line in stdout.splitlines():
        if line.startswith("#### Load generator: "):
            current = line.split(": ", 1)[1].split()[0]
        elif line.startswith("| C="):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            tables.setdefault(current, []).append(cells)
    return tables


def test_a_tiny_run_measures_every_server_with_both_generators(tmp_path):
    """sockchat against the C epoll, uvloop and asyncio servers and its own
    web door, in the same rounds, driven by loadgen.c and by turns.py."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import run
    finally:
        sys.path.pop(0)
    ci = bool(os.environ.get("CI"))
    shared = (run.SHARED / "turns.py").exists()
    if not shared and ci:
        pytest.fail(f"CI has the shared folder beside the clone: {run.SHARED}")
    raw = tmp_path / "runs.json"
    done = subprocess.run(
        [
            *(sys.executable, str(RUN), "--tiny", "--variants", "servers"),
            *("--generators", "loadgen,turns" if shared else "loadgen"),
            *("--json", str(raw)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    servers = {
        "baseline",
        "sockchat echo",
        "C epoll echo",
        "asyncio Protocol on uvloop",
        "asyncio streams",
        "sockchat web door (WebSocket)",
    }
    not_measured = [
        line for line in done.stdout.splitlines() if line.startswith("**Not measured")
    ]
    if not shared:  # one clear line, and the rest is measured
        assert "shared/bench/servers not found" in not_measured[0]
        servers -= {"C epoll echo", "asyncio Protocol on uvloop", "asyncio streams"}
    elif not_measured:
        # uvloop comes from PyPI: without it (offline), say so; CI has it.
        assert not ci, not_measured
        assert "uvloop (" in not_measured[0]
        assert "pip could not install uvloop" in not_measured[0]
        servers.discard("asyncio Protocol on uvloop")
    tables = _tables(done.stdout)
    assert set(tables) == ({"loadgen.c", "turns.py"} if shared else {"loadgen"})
    for generator, rows in tables.items():
        measured = {(row[0], row[1]) for row in rows if len(row) == 10}
        expected = servers - (
            {"sockchat web door (WebSocket)"} if generator == "turns.py" else set()
        )
        for config in ("C=1 × 100", "C=10 × 20"):
            assert {(config, server) for server in expected} <= measured
        ratios = [row for row in rows if len(row) == 7]
        assert {row[1] for row in ratios} == expected - {"baseline"}
        assert all(row[3] != "—" or generator == "loadgen.c" for row in ratios)
    for run_ in json.loads(raw.read_text())["runs"]:
        assert run_["errors"] == 0, run_
        assert (
            run_["turns"]
            == run_["conns"] * {"C=1 × 100": 100, "C=10 × 20": 20}[run_["config"]]
        )


class WrongEcho(threading.Thread):
    """Greets like sockchat, then answers every third line wrongly."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]

    def run(self) -> None:
        with self.listener:
            conn, _ = self.listener.accept()
        with conn, conn.makefile("rwb") as f:
            f.write(b"!info welcome: hello\n")
            f.flush()
            try:
                for n, line in enumerate(f):
                    f.write(line.upper() if n % 3 == 2 else line)
                    f.flush()
            except OSError:
                pass  # the load generator has gone


def test_the_load_generator_checks_every_answer(loadgen):
    server = WrongEcho()
    server.start()
    done = subprocess.run(
        [
            str(loadgen),
            *("--port", str(server.port), "--conns", "1", "--turns", "5"),
            *("--warmup", "0"),  # the third line is turn 2
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "wrong answer to turn 2" in done.stderr
    assert json.loads(done.stdout)["errors"] == 1


def test_the_load_generator_stops_at_its_deadline(loadgen):
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never greets
    with silent:
        done = subprocess.run(
            [
                str(loadgen),
                "--port",
                str(silent.getsockname()[1]),
                "--deadline",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1
    assert "greeted before the deadline" in done.stderr


def test_the_broker_probe_counts_a_brokered_turn():
    """benchmarks/broker_probe.py, as docs/performance.md runs it, tiny."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "broker_probe.py"),
            *("--setup", "workers", "--clients", "2", "--turns", "5"),
            *("--measure", "cpu", "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["turns"] == 10
    assert report["refused"] == 0
    assert set(report["cpu_us_per_turn"]) == {"redis", "instance", "worker", "all"}
    assert report["redis_per_turn"]["evalsha"] > 0  # ENQUEUE and POST
    assert report["lines_per_xreadgroup"] > 0
