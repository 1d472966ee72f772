"""Run the real ``twistd -n sockchat`` and ``python -m sockchat.client``."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
TWISTD = str(BIN / "twistd")
CLIENT = [sys.executable, "-m", "sockchat.client"]
LISTENING = re.compile(rb'(?:sockchat listening on |"address": ")([^\s"]+):(\d+)')


#: How long to wait, by default, for a process to say something.  Long:
#: the suite runs in parallel (pytest-xdist) on machines shared with other
#: work, and every Python process under coverage; a child that takes 10 s
#: to import Twisted is slow, not broken.  A passing test never waits it out.
WAIT = 30.0


class Reader:
    """Read a pipe up to a pattern; what comes after waits for the next call."""

    def __init__(self, stream) -> None:
        self.stream = stream
        os.set_blocking(stream.fileno(), False)
        self.buffer = b""

    def until(self, pattern: bytes | re.Pattern[bytes], timeout: float = WAIT) -> bytes:
        if isinstance(pattern, bytes):
            pattern = re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.stream, selectors.EVENT_READ)
            while (match := pattern.search(self.buffer)) is None:
                left = deadline - time.monotonic()
                assert left > 0, (
                    f"timed out waiting for {pattern.pattern!r}; saw {self.buffer!r}"
                )
                if sel.select(left):
                    chunk = self.stream.read()
                    if chunk == b"":
                        raise AssertionError(
                            f"closed before {pattern.pattern!r}; saw {self.buffer!r}"
                        )
                    self.buffer += chunk or b""
        seen, self.buffer = self.buffer[: match.end()], self.buffer[match.end() :]
        return seen

    def rest(self) -> bytes:
        os.set_blocking(self.stream.fileno(), True)
        rest = self.buffer + self.stream.read()
        self.buffer = b""
        return rest


def read_until(
    stream, pattern: bytes | re.Pattern[bytes], timeout: float = WAIT
) -> bytes:
    """One-off read of *stream* up to *pattern*."""
    return Reader(stream).until(pattern, timeout)


class Server:
    """``twistd -n sockchat`` on a free loopback port, stopped on exit."""

    def __init__(
        self,
        *args: str,
        stdin: int | None = subprocess.DEVNULL,
        port: str = "tcp:0:interface=127.0.0.1",
        twistd_args: tuple[str, ...] = (),
        cwd: Path | None = None,
    ) -> None:
        self.args = args
        self.cwd = cwd
        self.stdin = stdin
        self.listen = port
        self.twistd_args = twistd_args
        self.output = b""

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                *self.twistd_args,
                "sockchat",
                "--port",
                self.listen,
                *self.args,
            ],
            stdin=self.stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
        )
        self.reader = Reader(self.proc.stdout)
        self.output = self.reader.until(LISTENING)
        self.port = int(LISTENING.search(self.output).group(2))
        return self

    def read_until(
        self, pattern: bytes | re.Pattern[bytes], timeout: float = WAIT
    ) -> bytes:
        more = self.reader.until(pattern, timeout)
        self.output += more
        return more

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self.output += self.reader.rest()
        return self.proc.returncode

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.stdout.close()


METRICS = re.compile(rb"sockchat metrics at http://127\.0\.0\.1:(\d+)/metrics")


class MetricsServer(Server):
    """twistd with --metrics; ``metrics_port`` is where it serves them."""

    def __init__(self, *args: str, **kw) -> None:
        super().__init__(*args, "--metrics", "tcp:0:interface=127.0.0.1", **kw)

    def __enter__(self) -> MetricsServer:
        super().__enter__()
        match = METRICS.search(self.read_until(METRICS))
        assert match is not None
        self.metrics_port = int(match.group(1))
        return self


CHROMIUM = Path("/usr/bin/chromium")
#: As root, offline, and with nothing in the background.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WEB = re.compile(rb"sockchat web page at (https?://127\.0\.0\.1:(\d+)/)")


class WebServer(Server):
    """twistd with --web; ``url`` is the page's address."""

    def __init__(
        self, *args: str, web: str = "tcp:0:interface=127.0.0.1", **kw
    ) -> None:
        super().__init__(*args, "--web", web, **kw)

    def __enter__(self) -> WebServer:
        super().__enter__()
        match = WEB.search(self.read_until(WEB))
        assert match is not None
        self.url = match.group(1).decode()
        self.web_port = int(match.group(2))
        return self


def run_client(
    port: int, stdin: bytes, *args: str, timeout: float = 20.0
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLIENT, "--port", str(port), *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )


def run_twistd(
    *args: str, cwd: Path | None = None, pidfile: bool = False
) -> subprocess.CompletedProcess[str]:
    """``twistd -n sockchat ARGS`` that is expected to exit by itself."""
    pid_option = [] if pidfile else ["--pidfile="]
    return subprocess.run(
        [TWISTD, "-n", *pid_option, "sockchat", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
    )


def start_client(port: int, *args: str) -> subprocess.Popen[bytes]:
    """``python -m sockchat.client`` with pipes for stdin, stdout and stderr."""
    return subprocess.Popen(
        [*CLIENT, "--port", str(port), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def raw_connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def recv_lines(sock: socket.socket, count: int) -> list[bytes]:
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n")[:count]


class Terminal:
    """Run a command with a pseudo-terminal as its stdin and stdout."""

    def __init__(self, *command: str) -> None:
        self.master, self.slave = pty.openpty()
        self.proc = subprocess.Popen(
            command, stdin=self.slave, stdout=self.slave, stderr=self.slave
        )
        self.screen = Reader(os.fdopen(self.master, "rb", buffering=0))

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> int:
        code = self.proc.wait(10)
        self.screen.stream.close()
        return code


def need_tool(name: str, package: str) -> str:
    """The path of a command-line tool the test drives.

    Where it is missing, the test is skipped and says why; but in CI
    (``CI=true``), where ``.ci/run`` installs it, a missing tool fails.
    """
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing in CI; .ci/run should install {package}")
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return path


def wait_for_connections(port: int, count: int = 1, timeout: float = 20.0) -> None:
    """Wait until *count* connections to local *port* are established.

    Read from the kernel (``/proc/net/tcp`` and ``tcp6``), for tests that
    must know a client is in before the next one comes, when the server
    logs nothing yet (it logs a conversation at its first line).
    """
    deadline = time.monotonic() + timeout
    while True:
        found = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as rows:
                next(rows)
                for row in rows:
                    local, state = row.split()[1], row.split()[3]
                    if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                        found += 1
        if found >= count:
            return
        assert time.monotonic() < deadline, f"no {count} connection(s) to {port}"
        time.sleep(0.05)


class Tmux:
    """A real terminal: a tmux session on its own socket, running *command*.

    Keys are typed with ``type`` (text, no Enter) and ``enter``; ``until``
    waits for text on the screen.  The session's tmux server is stopped, by
    its own socket and then by pid, on ``close``.
    """

    def __init__(self, command: str, width: int = 220) -> None:
        self.tmux = need_tool("tmux", "tmux")
        # A short path: a UNIX socket's name has room for about 100 bytes.
        self._dir = tempfile.mkdtemp(prefix="sockchat-tmux-")
        self.socket = os.path.join(self._dir, "s")
        self._tmux(
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-x",
            str(width),
            "-y",
            "50",
            command,
        )
        self._tmux("set-option", "-g", "remain-on-exit", "on")
        self.server_pid = int(self._tmux("display-message", "-p", "#{pid}").strip())

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            [self.tmux, "-S", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert done.returncode == 0, f"tmux {args[0]}: {done.stderr.strip()}"
        return done.stdout

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-l", text)

    def enter(self) -> None:
        self._tmux("send-keys", "Enter")

    def key(self, name: str) -> None:
        """A named key, e.g. ``C-c`` or ``C-d``."""
        self._tmux("send-keys", name)

    def screen(self) -> str:
        """The whole screen and its history, wrapped lines joined."""
        return self._tmux("capture-pane", "-p", "-J", "-S", "-")

    def until(self, text: str | re.Pattern[str], timeout: float = WAIT) -> str:
        """Wait until *text* is on the screen; return the screen."""
        deadline = time.monotonic() + timeout
        while True:
            shown = self.screen()
            found = text in shown if isinstance(text, str) else text.search(shown)
            if found:
                return shown
            assert time.monotonic() < deadline, (
                f"timed out waiting for {text!r}; the screen:\n{shown}"
            )
            time.sleep(0.05)

    def close(self) -> None:
        subprocess.run(
            [self.tmux, "-S", self.socket, "kill-server"],
            capture_output=True,
            timeout=10,
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.server_pid, signal.SIGKILL)
        shutil.rmtree(self._dir, ignore_errors=True)
