"""The release check: build the sdist and the wheel as a release would, check
them with twine, install the wheel in a fresh venv and run the examples
there; and one version, which both programs print."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import venv
from pathlib import Path

import pytest

import sockchat
from sockchat import client
from sockchat._version import __version__
from sockchat.tap import Options

from ports import free_port
from processes import LISTENING, Reader, raw_connect, recv_lines

ROOT = Path(__file__).resolve().parents[2]


def test_both_programs_print_the_one_version(capsys: pytest.CaptureFixture[str]):
    assert sockchat.__version__ == __version__
    with pytest.raises(SystemExit) as raised:
        Options().parseOptions(["--version"])
    assert raised.value.code == 0
    with pytest.raises(SystemExit) as raised:
        client._parser().parse_args(["--version"])
    assert raised.value.code == 0
    assert capsys.readouterr().out == f"sockchat {__version__}\n" * 2


def test_setup_cfg_reads_the_version_from_its_one_place():
    setup = (ROOT / "setup.cfg").read_text()
    assert "version = attr: sockchat._version.__version__\n" in setup
    written = [
        path.name
        for path in sorted((ROOT / "sockchat").glob("*.py"))
        if __version__ in path.read_text()
    ]
    assert written == ["_version.py"]


def test_the_changelog_has_a_heading_for_this_version():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    release = __version__.split(".dev")[0]
    assert re.search(rf"^## \[{re.escape(release)}\] - Unreleased$", changelog, re.M)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and wheel, built in isolation, and a venv with the wheel."""
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    where = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    bindir = where / "bin"
    (wheel,) = dist.glob("*.whl")
    installed = subprocess.run(
        [str(bindir / "python"), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # The examples, away from the source tree: sockchat comes from the wheel.
    work = tmp_path_factory.mktemp("work")
    shutil.copytree(ROOT / "examples", work / "examples")
    (sdist,) = dist.glob("*.tar.gz")
    return {"dist": dist, "wheel": wheel, "sdist": sdist, "bin": bindir, "work": work}


def _env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "COVERAGE_PROCESS_START")
    }


@pytest.mark.slow
def test_twine_check_passes_on_the_sdist_and_the_wheel(release):
    assert release["wheel"].name == f"sockchat-{__version__}-py3-none-any.whl"
    assert release["sdist"].name == f"sockchat-{__version__}.tar.gz"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "twine",
            "check",
            "--strict",
            *map(str, [release["sdist"], release["wheel"]]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 2, done.stdout
    with tarfile.open(release["sdist"]) as sdist:
        names = sdist.getnames()
    top = f"sockchat-{__version__}"
    for path in (
        "CHANGELOG.md",
        "contrib/systemd/sockchat.service",
        "contrib/systemd/sockchat.socket",
        "examples/bot.py",
        "twisted/plugins/sockchat_plugin.py",
    ):
        assert f"{top}/{path}" in names, path


@pytest.mark.slow
def test_the_installed_programs_print_the_version(release):
    for command in (
        [str(release["bin"] / "twistd"), "sockchat", "--version"],
        [str(release["bin"] / "python"), "-m", "sockchat.client", "--version"],
    ):
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=60, cwd="/", env=_env()
        )
        assert (done.returncode, done.stdout) == (0, f"sockchat {__version__}\n"), done


@pytest.mark.slow
def test_metrics_without_the_extra_is_one_line_naming_it(release):
    done = subprocess.run(
        [
            str(release["bin"] / "twistd"),
            "-n",
            "--pidfile=",
            "sockchat",
            "--responder",
            "echo",
            "--metrics",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=release["work"],
        env=_env(),
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "sockchat: --metrics needs prometheus-client, which is not installed; "
        "install it with: pip install 'sockchat[metrics]'"
    ]


def test_without_the_broker_extra_replies_are_parsed_in_python(release):
    # The wheel alone has no hiredis: the pure parser is the fallback.
    done = subprocess.run(
        [
            str(release["bin"] / "python"),
            "-c",
            "from sockchat._broker.resp import HIREDIS, new_reply_parser; "
            "p = new_reply_parser(); "
            "print(HIREDIS, type(p).__name__, p.feed(b'+OK\\r\\n:1\\r\\n'))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env=_env(),
    )
    assert (done.returncode, done.stdout) == (0, "False ReplyParser ['OK', 1]\n"), done


class _Twistd:
    """The venv's twistd, on a free loopback port, stopped by pid."""

    def __init__(self, release, *args: str, env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(
            [str(release["bin"] / "twistd"), "-n", "--pidfile=", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=release["work"],
            env=env or _env(),
        )
        self.reader = Reader(self.proc.stdout)

    def port(self) -> int:
        return int(LISTENING.search(self.reader.until(LISTENING)).group(2))

    def stop(self) -> bytes:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(15)
        output = self.reader.rest()
        self.proc.stdout.close()
        return output


@pytest.mark.slow
def test_the_examples_run_from_the_installed_wheel(release):
    python = str(release["bin"] / "python")
    # The bot, as a --responder from the current directory.
    bot = _Twistd(
        release,
        "sockchat",
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--responder",
        "examples.bot:FaqBot",
    )
    try:
        port = bot.port()
        done = subprocess.run(
            [python, "-m", "sockchat.client", "--port", str(port)],
            input=b"tcp\n",
            capture_output=True,
            timeout=30,
            env=_env(),
        )
        assert done.returncode == 0, done.stderr
        assert b"TCP" in done.stdout, done.stdout
    finally:
        assert b"Traceback" not in bot.stop()
    # say_hello.py, the README's client program, against an echo server.
    echo = _Twistd(
        release,
        "sockchat",
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--responder",
        "echo",
    )
    try:
        port = echo.port()
        done = subprocess.run(
            [python, "examples/say_hello.py", f"tcp:127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=release["work"],
            env=_env(),
        )
        assert (done.returncode, done.stdout) == (0, "hello -> hello\n你好 -> 你好\n")
    finally:
        assert b"Traceback" not in echo.stop()
    # multiservice.tac: sockchat beside another service.
    chat_port, status_port = free_port(), free_port()
    tac = _Twistd(
        release,
        "-y",
        "examples/multiservice.tac",
        env={
            **_env(),
            "SOCKCHAT_PORT": str(chat_port),
            "STATUS_PORT": str(status_port),
        },
    )
    try:
        sock = _connect_when_up(chat_port, tac.proc)
        with sock:
            assert recv_lines(sock, 1)[0].startswith(b"!info welcome: ")
            sock.sendall(b"hello\n")
            assert recv_lines(sock, 1) == [b"hello"]
    finally:
        assert b"Traceback" not in tac.stop()


def _connect_when_up(port: int, proc: subprocess.Popen[bytes]) -> socket.socket:
    deadline = time.monotonic() + 15
    while True:
        assert proc.poll() is None, "twistd exited"
        try:
            return raw_connect(port)
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {port}"
            time.sleep(0.1)
