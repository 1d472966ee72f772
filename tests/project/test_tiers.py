"""The tests by tier: each test file is in a tier's folder, and the fast
tiers (core, doors, teaching, desk) start no sockchat process, so that ``pytest
tests/core`` and the like stay fast and need no twistd."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
TIERS = ("core", "doors", "teaching", "desk", "broker", "e2e", "project")
FAST_TIERS = ("core", "doors", "teaching", "desk")
#: What the fast tiers may take from tests/processes.py: nothing that
#: starts twistd or the client.
FAST_MAY_TAKE = {"need_tool"}


def test_every_test_file_is_in_a_tier():
    misplaced = sorted(
        path.relative_to(TESTS).as_posix()
        for path in TESTS.rglob("test_*.py")
        if path.relative_to(TESTS).parts[0] not in TIERS
    )
    assert misplaced == []


def test_the_fast_tiers_start_no_sockchat_process():
    found = []
    for tier in FAST_TIERS:
        for path in sorted((TESTS / tier).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module == "processes":
                    taken = {alias.name for alias in node.names} - FAST_MAY_TAKE
                    found += [f"{tier}/{path.name} takes {n}" for n in sorted(taken)]
                elif isinstance(node, ast.Import):
                    found += [
                        f"{tier}/{path.name} imports processes"
                        for alias in node.names
                        if alias.name == "processes"
                    ]
    assert found == []
