"""The broker's benchmark set-ups work (issue 13, item 7): a tiny run of
each, through the same ``benchmarks/run.py`` as the rest.  No timing is
asserted: these prove that every process of a set-up is started, measured,
checked and stopped, and that the report says where the CPU went."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from processes import need_tool

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


def tiny_run(tmp_path: Path, variants: str) -> tuple[str, list[dict]]:
    raw = tmp_path / "runs.json"
    done = subprocess.run(
        [
            *(sys.executable, str(RUN), "--tiny", "--deadline", "60"),
            *("--variants", variants, "--json", str(raw)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    notes = (
        [r["notes"] for r in json.loads(raw.read_text())["runs"] if r["errors"]]
        if raw.exists()
        else []
    )
    assert done.returncode == 0, (notes, done.stderr + done.stdout)
    assert "Not measured" not in done.stdout, done.stdout
    return done.stdout, json.loads(raw.read_text())["runs"]


def check_runs(runs: list[dict], variant: str, processes: set[str]) -> None:
    mine = [r for r in runs if r["variant"] == variant]
    assert len(mine) == 2, [r["variant"] for r in runs]  # both configurations
    for run in mine:
        assert run["errors"] == 0
        per_conn = {"C=1 × 100": 100, "C=10 × 20": 20}[run["config"]]
        assert run["messages"] == run["conns"] * per_conn
        assert set(run["cpu_parts"]) == processes
        assert run["server_cpu_s"] == pytest.approx(sum(run["cpu_parts"].values()))
        assert run["log_lines_turns"] == 0, "a log line per turn"


def test_two_instances_behind_haproxy_against_one(tmp_path):
    need_tool("haproxy", "haproxy")
    out, runs = tiny_run(tmp_path, "echo,haproxy,cluster")
    check_runs(runs, "haproxy + 1 echo instance", {"instance one", "haproxy"})
    check_runs(
        runs,
        "haproxy + 2 echo instances",
        {"instance one", "instance two", "haproxy"},
    )
    assert "Where the CPU went" in out
    assert "| C=10 × 20 | haproxy + 2 echo instances | sockchat echo |" in out


def test_workers_and_pairs_through_redis_against_local_ones(tmp_path):
    need_tool("redis-server", "redis-server")
    out, runs = tiny_run(tmp_path, "echo,pair,workers,broker-pair")
    check_runs(
        runs,
        "sockchat workers (Redis + 1 echo worker)",
        {"redis-server", "instance one", "worker 1"},
    )
    check_runs(
        runs,
        "sockchat pair across 2 instances (Redis)",
        {"redis-server", "instance one", "instance two"},
    )
    ratio = "| C=1 × 100 | sockchat pair across 2 instances (Redis) | sockchat pair |"
    assert ratio in out
