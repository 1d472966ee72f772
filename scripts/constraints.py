#!/usr/bin/env python3
"""Refresh constraints.txt, on purpose: the versions CI installs.

    python3 scripts/constraints.py

``scripts/check.py`` (and so ``.ci/run``) installs sockchat's dev extras
with ``pip install -c constraints.txt -e '.[dev]'``, so that every run gets
the same mypy, ruff, hypothesis, playwright... and the versions change only
when someone runs this, reads the diff, and commits it with the fixes the
new versions ask for.

It makes a fresh virtualenv in a temporary folder, installs ``-e '.[dev]'``
there with no constraints (the newest versions setup.cfg allows, for this
Python), and writes what ``pip freeze`` says, sockchat itself left out.
``tests/project/test_constraints.py`` checks that every dependency that
setup.cfg names is pinned, within its bounds.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"

HEADER = """\
# The versions that scripts/check.py and .ci/run install, with
#     pip install -c constraints.txt -e '.[dev]'
# Made by `python3 scripts/constraints.py` (Python {version}); refresh it
# on purpose, with that command, and commit the diff with whatever the new
# versions ask for.  tests/project/test_constraints.py checks that every
# dependency in setup.cfg is pinned here.
"""


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sockchat-constraints-") as where:
        env = Path(where) / "venv"
        print(f"==> a fresh virtualenv in {env}", flush=True)
        venv.EnvBuilder(with_pip=True).create(env)
        python = str(env / "bin" / "python")
        pip = [python, "-m", "pip", "--disable-pip-version-check"]
        print("==> pip install -e '.[dev]' (no constraints: the newest allowed)")
        subprocess.run([*pip, "install", "-q", "-e", ".[dev]"], cwd=ROOT, check=True)
        frozen = subprocess.run(
            [*pip, "freeze", "--exclude-editable"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    pins = sorted(
        (line for line in frozen.splitlines() if "==" in line),
        key=str.lower,
    )
    version = ".".join(map(str, sys.version_info[:2]))
    CONSTRAINTS.write_text(HEADER.format(version=version) + "\n".join(pins) + "\n")
    print(f"==> wrote {len(pins)} pins to {CONSTRAINTS}; read the diff, then commit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
