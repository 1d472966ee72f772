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
