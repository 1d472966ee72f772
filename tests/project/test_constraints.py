"""CI's dependencies are pinned: constraints.txt covers every one that
setup.cfg names, within its bounds, and check.py installs with it
(issue 24, item 12)."""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, equals, version = line.partition("==")
            assert equals, f"not a pin: {line!r}"
            found[canonicalize_name(name)] = version
    return found


def requirements() -> list[Requirement]:
    """install_requires and every extra, as setup.cfg says them."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "setup.cfg")
    texts = config["options"]["install_requires"].splitlines()
    for extra in config["options.extras_require"].values():
        texts += extra.splitlines()
    found = []
    for text in texts:
        text = text.split("#", 1)[0].strip()
        if text and not text.startswith("%("):  # %(test)s: another extra
            found.append(Requirement(text))
    return found


def test_every_dependency_is_pinned_within_its_bounds():
    pinned = pins()
    wanted = requirements()
    assert {r.name for r in wanted} >= {"mypy", "ruff", "hypothesis", "playwright"}
    missing = [r.name for r in wanted if canonicalize_name(r.name) not in pinned]
    assert missing == [], f"not in constraints.txt: {missing}"
    outside = [
        f"{r} (pinned {pinned[canonicalize_name(r.name)]})"
        for r in wanted
        if not r.specifier.contains(pinned[canonicalize_name(r.name)])
    ]
    assert outside == []


def test_the_extras_of_pinned_dependencies_are_pinned_too():
    # twisted[tls,websocket] brings pyopenssl, service-identity, wsproto...
    pinned = pins()
    for name in ("pyopenssl", "service-identity", "wsproto", "idna"):
        assert canonicalize_name(name) in pinned, name


def test_check_py_installs_with_the_constraints():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import check
    finally:
        sys.path.pop(0)
    command = check.install_command(["pip"])
    assert command[command.index("-c") + 1] == "constraints.txt"
    assert command[-2:] == ["-e", ".[dev]"]
    assert (ROOT / check.CONSTRAINTS).is_file()


def test_readme_says_how_to_refresh_them():
    readme = (ROOT / "README.md").read_text()
    assert "python3 scripts/constraints.py" in readme
    assert (ROOT / "scripts" / "constraints.py").is_file()
