#!/usr/bin/env python3
"""Run every check that CI runs: lint, types, and the tests with coverage.

    python3 scripts/check.py                # everything
    python3 scripts/check.py -- -k codec    # arguments after -- go to pytest
    python3 scripts/check.py -- -n 0        # the tests in one process

The tests run in parallel, with pytest-xdist (``-n``): see ``workers()``.

A run that selects some of the tests (``-k``, ``-m``, test files...) still
reports coverage, but does not hold it to the threshold: only the whole
suite can meet that.

Needs only Python 3.10+: it makes .venv beside this folder (or reuses it),
installs sockchat there in editable mode with its dev extras, at the
versions pinned in constraints.txt (``scripts/constraints.py`` refreshes
them, on purpose), and prints each command before it runs it.  Exit status
0 means every step passed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


#: The pinned versions of every dependency (scripts/constraints.py).
CONSTRAINTS = "constraints.txt"

#: pytest options that run only some of the tests.
SELECTING = ("-k", "-m", "--lf", "--last-failed", "--sw", "--stepwise", "--deselect")

#: pytest options whose value is the next argument and selects nothing.
TAKES_A_VALUE = (
    "-n",
    "--numprocesses",
    "--dist",
    "--maxprocesses",
    "-p",
    "--durations",
    "--junitxml",
    "--junit-xml",
    "-W",
    "--basetemp",
    "--timeout",
    "--hypothesis-profile",
    "--hypothesis-seed",
)

#: pytest-xdist's workers.  Most of the slow tests wait (for a process to
#: start, a browser, a deadline), so that four workers keep two cores busy
#: (README, Development, has the times); the tests of a module that sets
#: up something once for all of them run on one worker (``loadgroup``, see
#: tests/conftest.py), in the order conftest.py gives them.
WORKERS = 4
PARALLEL = ("--dist", "loadgroup", "--no-loadscope-reorder")


def selects_tests(pytest_args: list[str]) -> bool:
    """Whether *pytest_args* run only some of the tests: a selecting option,
    or a test file or node id."""
    after_option = False
    for arg in pytest_args:
        option = arg.split("=", 1)[0]
        if option in SELECTING:
            return True
        if not arg.startswith("-") and not after_option:
            return True
        after_option = option in TAKES_A_VALUE and "=" not in arg
    return False


def workers() -> int:
    """How many xdist workers: ``SOCKCHAT_TEST_WORKERS``, or twice the
    cores, at least ``WORKERS``."""
    wanted = os.environ.get("SOCKCHAT_TEST_WORKERS")
    if wanted:
        return int(wanted)
    return max(WORKERS, 2 * (os.cpu_count() or 1))


def parallel_args(pytest_args: list[str]) -> list[str]:
    """The xdist options, but those that *pytest_args* give themselves (a
    ``-n 0`` runs the tests in one process), and none with ``-p no:xdist``."""
    given = {arg.split("=", 1)[0] for arg in pytest_args}
    if "no:xdist" in pytest_args or "-pno:xdist" in given:
        return []
    found: list[str] = []
    if not given & {"-n", "--numprocesses"} and not any(
        arg.startswith("-n") and arg[2:].isdigit() for arg in pytest_args
    ):
        found += ["-n", str(workers())]
    if "--dist" not in given:
        found += PARALLEL
    return found


def coverage_report(coverage: list[str], pytest_args: list[str]) -> list[str]:
    """The report command: the threshold (``fail_under``) only for the whole
    suite."""
    if selects_tests(pytest_args):
        return [*coverage, "report", "--fail-under=0"]
    return [*coverage, "report"]


def install_command(pip: list[str]) -> list[str]:
    """sockchat, editable, with its dev extras, at the pinned versions."""
    return [*pip, "install", "-q", "-c", CONSTRAINTS, "-e", ".[dev]"]


def run(*command: str, step: str, failures: list[str]) -> bool:
    print(f"\n==> {step}: {' '.join(command)}", flush=True)
    ok = subprocess.run(command, cwd=ROOT).returncode == 0
    if not ok:
        failures.append(step)
    return ok


def main(pytest_args: list[str]) -> int:
    if sys.version_info < (3, 10):  # noqa: UP036 (this runs before the venv)
        sys.exit("sockchat needs Python 3.10 or newer")
    if not (BIN / "python").exists():
        print(f"==> creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    python = str(BIN / "python")
    failures: list[str] = []
    pip = [python, "-m", "pip", "--disable-pip-version-check"]
    if not run(*install_command(pip), step="install", failures=failures):
        return 1
    run(python, "-m", "ruff", "check", ".", step="ruff check", failures=failures)
    run(
        python,
        "-m",
        "ruff",
        "format",
        "--check",
        ".",
        step="ruff format",
        failures=failures,
    )
    run(python, "-m", "mypy", "sockchat", step="mypy --strict", failures=failures)
    coverage = [python, "-m", "coverage"]
    run(*coverage, "erase", step="coverage erase", failures=failures)
    tested = run(
        *coverage,
        "run",
        "-m",
        "pytest",
        *parallel_args(pytest_args),
        *pytest_args,
        step="pytest",
        failures=failures,
    )
    if tested:
        run(*coverage, "combine", "-q", step="coverage combine", failures=failures)
        report = coverage_report(coverage, pytest_args)
        step = "coverage report"
        if "--fail-under=0" in report:
            step += " (some tests only: the threshold is not checked)"
        run(*report, step=step, failures=failures)
    print()
    if failures:
        print(f"FAILED: {', '.join(failures)}")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    sys.exit(main(args))
