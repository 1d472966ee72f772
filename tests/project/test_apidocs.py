"""The API reference builds with pydoctor, with warnings as errors, and
shows the public API only."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import sockchat
from sockchat import testing

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "apidocs.py"

#: The modules the reference shows: the public API and nothing else.
PUBLIC_MODULES = {"sockchat", "sockchat.testing", "sockchat.jsonlog"}


@dataclass
class Built:
    out: Path
    done: subprocess.CompletedProcess[str]

    def page(self, name: str) -> str:
        return (self.out / name).read_text()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The API reference, built once for the tests of this module."""
    out = tmp_path_factory.mktemp("apidocs")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return Built(out, done)


@pytest.mark.slow
def test_the_api_reference_builds_without_a_warning(built: Built):
    assert built.done.returncode == 0, built.done.stdout + built.done.stderr
    assert built.done.stderr == ""
    # Every public name has its page or its entry where users import it from.
    package_page = built.page("sockchat.html")
    for name in sockchat.__all__:
        page = built.out / f"sockchat.{name}.html"
        assert page.exists() or f'<a name="sockchat.{name}">' in package_page, name
    testing_page = built.page("sockchat.testing.html")
    for name in testing.__all__:
        page = built.out / f"sockchat.testing.{name}.html"
        assert page.exists() or f'<a name="sockchat.testing.{name}">' in (
            testing_page
        ), name


def modules_listed(index: str) -> set[str]:
    """The modules that pydoctor's module index links to; the top package's
    page is index.html, so it is known by its link's text."""
    listed = set(re.findall(r'href="(sockchat[\w.]*)\.html"', index))
    if re.search(r'href="index\.html"[^>]*>sockchat</a>', index):
        listed.add("sockchat")
    return listed


@pytest.mark.slow
def test_the_index_lists_the_public_modules_only(built: Built):
    assert modules_listed(built.page("moduleIndex.html")) == PUBLIC_MODULES
    pages = sorted(path.name for path in built.out.glob("sockchat*.html"))
    private = [
        name
        for name in pages
        if any(part.startswith("_") for part in name.split(".")[1:-1])
        or not name.startswith(tuple(f"{module}." for module in PUBLIC_MODULES))
    ]
    assert private == [], "pages of private modules or names"


@pytest.mark.slow
def test_no_page_links_to_a_page_that_is_not_there(built: Built):
    """A public class whose base class is private would link to its page,
    which is hidden."""
    dead = sorted(
        f"{page.name} -> {target}"
        for page in built.out.glob("*.html")
        for target in re.findall(r'href="([\w.]+\.html)', page.read_text())
        if not (built.out / target).exists()
    )
    assert dead == []


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
    text = SCRIPT.read_text()
    for old, new in [
        (
            "ROOT = Path(__file__).resolve().parent.parent",
            f"ROOT = Path({str(tmp_path / 'src')!r})",
        ),
        ("    from sockchat import __version__\n", '    __version__ = "0"\n'),
        (
            'PUBLIC_MODULES = ("sockchat", "sockchat.testing", "sockchat.jsonlog")',
            'PUBLIC_MODULES = ("sockchat",)',
        ),
    ]:
        assert old in text
        text = text.replace(old, new)
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
    assert "Traceback" not in done.stdout + done.stderr


def test_without_pydoctor_it_says_what_to_install_in_one_line() -> None:
    """README's first command installs no dev extras: a new user who runs
    the build gets one line that says what to install, not a traceback."""
    blocked = (
        "import runpy, sys; sys.modules['pydoctor'] = None; "
        f"sys.argv = [{str(SCRIPT)!r}]; runpy.run_path({str(SCRIPT)!r}, "
        "run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert "pydoctor" in line
    assert "pip install -c constraints.txt -e '.[dev]'" in line
