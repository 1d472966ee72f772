"""The API reference builds with pydoctor, with warnings as errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import sockchat
from sockchat import testing

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "apidocs.py"


@pytest.mark.slow
def test_the_api_reference_builds_without_a_warning(tmp_path: Path):
    out = tmp_path / "apidocs"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    # Every public name has its page or its entry where users import it from.
    package_page = (out / "sockchat.html").read_text()
    for name in sockchat.__all__:
        page = out / f"sockchat.{name}.html"
        assert page.exists() or f'<a name="sockchat.{name}">' in package_page, name
    testing_page = (out / "sockchat.testing.html").read_text()
    for name in testing.__all__:
        page = out / f"sockchat.testing.{name}.html"
        assert page.exists() or f'<a name="sockchat.testing.{name}">' in (
            testing_page
        ), name


@pytest.mark.slow
def test_a_broken_cross_reference_fails_the_build(tmp_path: Path):
    package = tmp_path / "src" / "sockchat"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        '"""A package."""\n\nfrom ._x import thing\n\n__all__ = ["thing"]\n'
    )
    (package / "_x.py").write_text(
        '"""Private."""\n\n__all__ = ["thing"]\n\n\n'
        'def thing() -> None:\n    """Calls `no_such_name`."""\n'
    )
    # The same script, run on a package whose one docstring links nowhere.
    text = SCRIPT.read_text().replace(
        "ROOT = Path(__file__).resolve().parent.parent",
        f"ROOT = Path({str(tmp_path / 'src')!r})",
    )
    text = text.replace(
        "    from sockchat import __version__\n", '    __version__ = "0"\n'
    )
    text = text.replace(
        'PUBLIC_MODULES = ("sockchat", "sockchat.testing")',
        'PUBLIC_MODULES = ("sockchat",)',
    )
    script = tmp_path / "apidocs.py"
    script.write_text(text)
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert 'Cannot find link target for "no_such_name"' in done.stdout + done.stderr
