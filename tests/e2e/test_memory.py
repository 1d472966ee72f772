"""Memory bounded by what it costs: each attack of a client that never reads
stays within about twice ``--max-output`` (docs/security.md).

Each attack runs in a fresh process (``tests/memory_attack.py``): a real
server on loopback, a real socket that sends and never reads, and
tracemalloc's peak of the server's Python memory while it held on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1]
MAX_OUTPUT = 256 * 1024  # the default


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["empty-lines", "two-byte-lines", "telnet", "pings"])
def test_a_client_that_never_reads_grows_the_server_by_about_twice_max_output(attack):
    done = subprocess.run(
        [sys.executable, str(HERE / "memory_attack.py"), attack, str(MAX_OUTPUT)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=HERE.parent,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["closed"] is None, "the server should hold it off, not close"
    assert result["sent"] > 4 * MAX_OUTPUT, "the attack was not made"
    assert result["peak"] <= 2.25 * MAX_OUTPUT, result
