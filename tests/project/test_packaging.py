"""Packaging is tested, not assumed: the plugin must reach twistd.

Twisted finds plugins by scanning ``twisted/plugins`` folders on sys.path.
A wheel must ship ``twisted/plugins/sockchat_plugin.py`` but never
``twisted/__init__.py`` or ``twisted/plugins/__init__.py`` (that would
shadow Twisted itself), and every install mode the README gives must leave
the plugin visible.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from sockchat._doors.web import ASSETS

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("sockchat-*.whl")
    return built


def test_wheel_ships_the_plugin_and_no_twisted_package_files(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/sockchat_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert "sockchat/__init__.py" in names
    assert "sockchat/py.typed" in names
    # The chat page of --web is package data.
    for asset in ("index.html", "app.js", "style.css", "favicon.svg"):
        assert f"sockchat/web/{asset}" in names
    # And the desk's (--desk), with its package.
    for asset in ("login.html", "desk.html", "login.js", "desk.js", "desk.css"):
        assert f"sockchat/web/desk/{asset}" in names
    assert "sockchat/_desk/door.py" in names
    assert not any(name.startswith("tests/") for name in names)


def _fresh_venv(where: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    return where / "bin"


def _pip(bindir: Path, *args: str) -> None:
    done = subprocess.run(
        [str(bindir / "python"), "-m", "pip", "install", "-q", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _twistd_lists_sockchat(bindir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(bindir / "twistd"), "--help"],
        capture_output=True,
        text=True,
        cwd="/",  # not the project folder: nothing may come from the cwd
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "sockchat" in done.stdout, done.stdout


def test_fresh_venv_with_the_wheel_lists_sockchat(wheel: Path, tmp_path: Path):
    bindir = _fresh_venv(tmp_path / "venv")
    _pip(bindir, str(wheel))
    _twistd_lists_sockchat(bindir)
    # --web works after the same plain install: wsproto came along, and the
    # page's files are found.
    done = subprocess.run(
        [
            str(bindir / "python"),
            "-c",
            "from sockchat._doors.web import ASSETS, _read_asset; import wsproto; "
            "print(sum(len(_read_asset(name)) > 0 for name, _ in ASSETS.values()))",
        ],
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert (done.returncode, done.stdout) == (0, f"{len(ASSETS)}\n"), done.stderr
    # The console script is the client.
    done = subprocess.run(
        [str(bindir / "sockchat"), "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert "--connect ENDPOINT" in done.stdout


def test_fresh_venv_with_an_editable_install_lists_sockchat(tmp_path: Path):
    # The trap: setuptools' default editable finder is invisible to Twisted's
    # plugin scan; setup.cfg's package_dir makes it a plain .pth instead.
    bindir = _fresh_venv(tmp_path / "venv")
    _pip(bindir, "-e", str(ROOT))
    _twistd_lists_sockchat(bindir)
