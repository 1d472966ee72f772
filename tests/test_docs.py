"""The demonstration in docs/sticky-packets.md runs and prints what it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_sticky_packet_demonstration_prints_what_the_doc_says():
    doc = (ROOT / "docs" / "sticky-packets.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", doc, re.DOTALL)
    printed = re.search(r"It prints:\n\n```\n(.*?)```", doc, re.DOTALL)
    assert printed is not None
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == printed.group(1)
