"""scripts/check.py: a run of some of the tests still reports coverage, but
does not fail on the whole suite's threshold."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check.py"
spec = importlib.util.spec_from_file_location("check_script", SCRIPT)
assert spec is not None
assert spec.loader is not None
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)

COVERAGE = ["python", "-m", "coverage"]


def test_the_whole_suite_is_held_to_the_threshold():
    assert check.coverage_report(COVERAGE, []) == [*COVERAGE, "report"]
    assert check.coverage_report(COVERAGE, ["-x", "-q"]) == [*COVERAGE, "report"]


@pytest.mark.parametrize(
    "args",
    [
        ["-k", "codec", "-m", "not slow"],  # README's example
        ["-k", "codec"],
        ["-m", "not slow"],
        ["-m=slow"],
        ["tests/core/test_codec.py"],
        ["tests/core/test_codec.py::test_empty_line_is_a_message"],
        ["--lf"],
        ["--deselect", "tests/core/test_codec.py::test_empty_line_is_a_message"],
    ],
)
def test_a_run_of_some_tests_reports_coverage_without_the_threshold(args):
    assert check.coverage_report(COVERAGE, args) == [
        *COVERAGE,
        "report",
        "--fail-under=0",
    ]


def test_readme_says_a_subset_run_skips_the_threshold():
    readme = (SCRIPT.parent.parent / "README.md").read_text()
    assert 'python3 scripts/check.py -- -k codec -m "not slow"' in readme
    assert "threshold" in readme


@pytest.mark.parametrize(
    "args",
    [
        ["-n", "0"],
        ["-n", "4", "-q"],
        ["--durations", "30"],
        ["--durations=30", "-x"],
        ["-p", "no:xdist"],
    ],
)
def test_options_that_take_a_value_select_no_tests(args):
    assert not check.selects_tests(args)
    assert check.coverage_report(COVERAGE, args) == [*COVERAGE, "report"]


def test_the_tests_run_in_parallel_unless_told_otherwise(monkeypatch):
    monkeypatch.setenv("SOCKCHAT_TEST_WORKERS", "3")
    assert check.parallel_args([]) == ["-n", "3", *check.PARALLEL]
    assert check.parallel_args(["-n", "0"]) == list(check.PARALLEL)
    assert check.parallel_args(["-n0"]) == list(check.PARALLEL)
    assert check.parallel_args(["--dist", "load"]) == ["-n", "3"]
    assert check.parallel_args(["-p", "no:xdist"]) == []


def test_the_workers_are_at_least_four(monkeypatch):
    monkeypatch.delenv("SOCKCHAT_TEST_WORKERS", raising=False)
    monkeypatch.setattr(check.os, "cpu_count", lambda: 1)
    assert check.workers() == check.WORKERS == 4
    monkeypatch.setattr(check.os, "cpu_count", lambda: 8)
    assert check.workers() == 16


def test_readme_says_how_to_run_in_one_process():
    readme = (SCRIPT.parent.parent / "README.md").read_text()
    assert "python3 scripts/check.py -- -n 0" in readme
