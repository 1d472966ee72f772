"""The demonstration in docs/sticky-packets.md runs and prints what it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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


def test_every_test_the_docs_name_exists():
    """docs/security.md and friends cite tests as ``file.py::name``."""
    named = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        named |= {
            (doc.name, file, name)
            for file, name in re.findall(r"(test_\w+\.py)::(test_\w+)", doc.read_text())
        }
    files = {path.name: path for path in (ROOT / "tests").glob("*/test_*.py")}
    missing = [
        f"{doc}: {file}::{name}"
        for doc, file, name in sorted(named)
        if file not in files or f"def {name}(" not in files[file].read_text()
    ]
    assert missing == []
