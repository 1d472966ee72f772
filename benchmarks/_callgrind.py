"""The instructions a Python snippet runs, counted by valgrind's callgrind.

Instructions, unlike CPU time, hardly move with the machine's load, so that
a before/after of a few per cent can be read on a busy machine.  Used by
``inprocess.py`` and ``capture_cost.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def python_instructions(code: str, args: list[str], tree: Path) -> int:
    """Instructions of ``python -c CODE ARGS...`` run with *tree* first on
    ``sys.path`` (and a fixed hash seed), as callgrind's summary gives them."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0")
    with tempfile.TemporaryDirectory() as where:
        out = Path(where) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-c",
                code,
                *args,
            ],
            env=env,
            check=True,
            capture_output=True,
            cwd=where,
        )
        summary = re.search(r"^summary: (\d+)", out.read_text(), re.MULTILINE)
        assert summary, "callgrind wrote no summary"
        return int(summary.group(1))
