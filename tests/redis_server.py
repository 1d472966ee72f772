"""A real redis-server for slow tests: on a free loopback port, in a temp
directory, with no persistence, stopped by its pid.

Use the fixtures (import them into a test module, or from conftest)::

    from redis_server import make_redis_server, redis_server  # noqa: F401

    def test_something(redis_server):        # started, stopped after the test
        ... redis_server.url, .port, .pid ...
        redis_server.stop(); redis_server.start()   # a restart, same port

    def test_other(make_redis_server):       # with options
        server = make_redis_server(password="s3cret", unix=True, tls=True)

Where ``redis-server`` is missing the test is skipped, saying why; with
``CI=true`` it fails (``.ci/run`` installs it).  A restart has no data: no
persistence.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from certs import make_tls_files
from ports import free_port
from processes import need_tool

__all__ = ["RedisServer", "make_redis_server", "redis_server"]

#: Seconds to wait for the server to answer, or to exit.
STARTUP = 10.0


class RedisServer:
    """One redis-server process in *where*; ``start()`` and ``stop()`` may
    be called again (the same port, socket and certificates)."""

    def __init__(
        self,
        where: Path,
        *,
        password: str | None = None,
        unix: bool = False,
        tls: bool = False,
        tls_hostname: str = "localhost",
        replica_of: int | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.binary = self.binary_path()
        self.where = where
        self.where.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.socket: Path | None = None
        if unix:
            # A socket's path must be short (108 bytes); pytest's are long.
            self.socket = where / "redis.sock"
            if len(str(self.socket)) > 100:
                self.socket = Path(tempfile.mkdtemp(prefix="redis-")) / "redis.sock"
        self.tls_port = free_port() if tls else None
        self.tls_files = make_tls_files(where, tls_hostname) if tls else None
        self.log = where / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        #: The master's port, for a replica (``start()`` may change it).
        self.replica_of = replica_of
        self.extra = extra

    @staticmethod
    def binary_path() -> str:
        """redis-server's path (the test is skipped, or fails in CI, without)."""
        return need_tool("redis-server", "redis-server")

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the redis-server is not running"
        return self.proc.pid

    def _auth(self) -> str:
        return f":{self.password}@" if self.password is not None else ""

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:PORT/0``."""
        return f"redis://{self._auth()}127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        assert self.socket is not None, "started without unix=True"
        query = f"&password={self.password}" if self.password is not None else ""
        return f"unix://{self.socket}?db=0{query}"

    def tls_url(self, host: str = "localhost", *, client_cert: bool = False) -> str:
        """``rediss://`` to the TLS port, trusting the test CA."""
        assert self.tls_files is not None, "started without tls=True"
        files = self.tls_files
        query = f"?ca={files['ca']}"
        if client_cert:
            query += f"&cert={files['client_cert']}&key={files['client_key']}"
        return f"rediss://{self._auth()}{host}:{self.tls_port}/0{query}"

    def command_line(self) -> list[str]:
        args = [
            self.binary,
            "--save",
            "",
            "--appendonly",
            "no",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.where),
            "--logfile",
            str(self.log),
            "--daemonize",
            "no",
        ]
        if self.password is not None:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        args += self.extra
        if self.socket is not None:
            args += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        if self.tls_files is not None:
            files = self.tls_files
            args += [
                "--tls-port",
                str(self.tls_port),
                "--tls-cert-file",
                str(files["cert"]),
                "--tls-key-file",
                str(files["key"]),
                "--tls-ca-cert-file",
                str(files["ca"]),
                "--tls-auth-clients",
                "optional",
            ]
        return args

    def start(self, replica_of: int | None = None) -> RedisServer:
        """Start it and wait until it answers PING (as a replica of the
        server on port *replica_of*, if given)."""
        assert self.proc is None, "already running"
        if replica_of is not None:
            self.replica_of = replica_of
        self.proc = subprocess.Popen(
            self.command_line(),
            cwd=self.where,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + STARTUP
        while not self._answers():
            if self.proc.poll() is not None:
                log = self.log.read_text() if self.log.exists() else ""
                self.proc = None
                raise RuntimeError(f"redis-server exited at start:\n{log[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer in {STARTUP} s")
            time.sleep(0.02)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(100).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self) -> None:
        """Stop it (SIGTERM to its pid, SIGKILL if it lingers) and wait."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STARTUP)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(STARTUP)

    def kill(self) -> None:
        """``kill -9`` it."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(STARTUP)


@pytest.fixture
def make_redis_server(
    tmp_path: Path,
) -> Iterator[Callable[..., RedisServer]]:
    """Start redis-servers with options (see ``RedisServer``); all are
    stopped after the test."""
    servers: list[RedisServer] = []

    def make(**options: object) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(servers)}", **options)  # type: ignore[arg-type]
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def redis_server(make_redis_server: Callable[..., RedisServer]) -> RedisServer:
    """A started redis-server with no password, stopped after the test."""
    return make_redis_server()


class SyncRedis:
    """A blocking connection with the ``IRedis`` shape: its Deferreds have
    fired when ``command`` returns, so that a ``RedisBroker`` over it
    answers at once, with no reactor (for property tests and for tests that
    play a process's part from a plain thread)."""

    connected = True
    on_state = None
    why = ""

    def __init__(self, port: int) -> None:
        from sockchat._broker.resp import ReplyParser

        self.display = f"redis://127.0.0.1:{port}/0"
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._parser = ReplyParser()

    def command(self, *args: object) -> object:
        from twisted.internet.defer import fail, succeed

        from sockchat._broker.redis import RedisError
        from sockchat._broker.resp import ErrorReply, encode_command

        self._sock.sendall(encode_command(*args))  # type: ignore[arg-type]
        replies: list[object] = []
        while not replies:  # one command at a time: one reply
            data = self._sock.recv(65536)
            assert data, "redis-server closed the connection"
            replies = self._parser.feed(data)
        reply = replies[0]
        if isinstance(reply, ErrorReply):
            return fail(RedisError(reply.message))
        return succeed(reply)

    command_now = command  # each is written at once here

    def replicated(self) -> object:
        from twisted.internet.defer import succeed

        return succeed(None)  # no ?wait=: nothing to wait for

    def start(self) -> object:
        from twisted.internet.defer import succeed

        return succeed(None)

    def stop(self) -> object:
        from twisted.internet.defer import succeed

        self._sock.close()
        return succeed(None)
