"""A highly available Redis for slow tests: a master, a replica (or more)
and three sentinels, on free loopback ports, in a temp directory, stopped
by pid.

    from redis_sentinels import sentinel_set  # noqa: F401  (a fixture)

    def test_something(sentinel_set):
        url = sentinel_set.url()             # redis+sentinel://.../mymaster/0
        sentinel_set.fail_over_after(1000)   # a fast failover, from now on
        old = sentinel_set.kill_master()     # kill -9; returns its port
        new = sentinel_set.wait_for_promotion(old)
        sentinel_set.restart_as_replica(old)  # the old master comes back

The sentinels are ``redis-server --sentinel`` (no redis-sentinel package
needed).  They start with ``down-after-milliseconds`` at a minute
(DOWN_AFTER_MS): a server that a loaded machine leaves unscheduled for a
second is not taken for dead, so no failover happens at start.  (With 1000,
a master stalled 1 s just after the sentinels began was failed over, and
the set never settled on the master it had started: seen at load 10, and
made at will by stopping the master for 3 s.)  A test that kills the
master asks for a fast failover itself, with ``fail_over_after(1000)``
just before: a failover then takes a few seconds.  Every wait is on a
condition, polled until a deadline; none is a bare sleep.  ``call()``
talks to any of them with a blocking socket.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sockchat._broker.resp import ErrorReply, ReplyParser, encode_command

from ports import free_port
from redis_server import STARTUP, RedisServer

__all__ = ["Sentinel", "SentinelSet", "call", "sentinel_set", "wait_until"]

MASTER = "mymaster"
#: Seconds the set has to settle (replication up, sentinels agreed).
SETTLE = 30.0
#: How long a server may be silent before a sentinel holds it down, until
#: a test asks for less (``SentinelSet.fail_over_after``): longer than any
#: stall of a loaded machine, so that nothing fails over unasked.
DOWN_AFTER_MS = 60_000


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05
) -> Any:
    """Poll *condition* until it returns something true; its value.
    ``AssertionError`` naming *what* at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(every)


def call(port: int, *args: Any, password: str | None = None, timeout: float = 2) -> Any:
    """One command to the server (or sentinel) on *port*; its reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        commands = [("AUTH", password)] if password is not None else []
        commands.append(args)
        sock.sendall(b"".join(encode_command(*c) for c in commands))
        parser, replies = ReplyParser(), []
        while len(replies) < len(commands):
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"port {port} closed the connection")
            replies += parser.feed(data)
        return replies[-1]


def info(port: int, section: str, password: str | None = None) -> dict[str, str]:
    text = call(port, "INFO", section, password=password)
    assert isinstance(text, bytes), text
    pairs = (line.split(":", 1) for line in text.decode().splitlines())
    return {p[0]: p[1] for p in pairs if len(p) == 2}


class Sentinel:
    """One ``redis-server --sentinel``, watching the master named MASTER."""

    def __init__(
        self,
        where: Path,
        master_port: int,
        *,
        password: str | None = None,
        down_after_ms: int = DOWN_AFTER_MS,
        failover_timeout_ms: int = 2000,
        tls_files: dict[str, Path] | None = None,
    ) -> None:
        self.binary = RedisServer.binary_path()
        self.where = where
        self.where.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = where / "sentinel.log"
        self.config = where / "sentinel.conf"
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "daemonize no",
            f"logfile {self.log}",
            f"dir {where}",
            f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 2",
            f"sentinel down-after-milliseconds {MASTER} {down_after_ms}",
            f"sentinel failover-timeout {MASTER} {failover_timeout_ms}",
            f"sentinel parallel-syncs {MASTER} 1",
        ]
        if password is not None:
            lines.append(f"sentinel auth-pass {MASTER} {password}")
        #: With TLS files: clients reach it on this port, over TLS, and it
        #: reaches the servers over TLS (``tls-replication``).
        self.tls_port: int | None = None
        if tls_files is not None:
            self.tls_port = free_port()
            lines += [
                f"tls-port {self.tls_port}",
                f"tls-cert-file {tls_files['cert']}",
                f"tls-key-file {tls_files['key']}",
                f"tls-ca-cert-file {tls_files['ca']}",
                "tls-auth-clients optional",
                "tls-replication yes",
            ]
        # Sentinel rewrites its file as it learns: a fresh one each start.
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the sentinel is not running"
        return self.proc.pid

    def start(self) -> Sentinel:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            [self.binary, str(self.config), "--sentinel"],
            cwd=self.where,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            lambda: call(self.port, "PING") == "PONG",
            STARTUP,
            f"the sentinel on port {self.port} answers",
        )
        return self

    def master(self) -> int | None:
        """The master's port, as this sentinel says."""
        reply = call(self.port, "SENTINEL", "get-master-addr-by-name", MASTER)
        return int(reply[1]) if isinstance(reply, list) else None

    def down_after(self, ms: int) -> None:
        """Hold the master (and its replicas) down after *ms* of silence."""
        reply = call(
            self.port, "SENTINEL", "SET", MASTER, "down-after-milliseconds", str(ms)
        )
        assert reply == "OK", reply

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            try:
                proc.wait(STARTUP)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(STARTUP)


class SentinelSet:
    """A master, its *replicas* (one by default) and three sentinels (see
    the module's doc).  A replica starts its sync at once (no diskless
    delay), so that it is in step within a second of its start or of a
    failover."""

    def __init__(
        self, where: Path, *, password: str | None = None, replicas: int = 1
    ) -> None:
        self.password = password
        made = [
            RedisServer(
                where / "abcdefgh"[n],
                password=password,
                extra=("--repl-diskless-sync-delay", "0"),
            )
            for n in range(1 + replicas)
        ]
        self.servers = {server.port: server for server in made}
        self.master_port = made[0].port
        self.sentinels = [
            Sentinel(where / f"s{n}", made[0].port, password=password) for n in range(3)
        ]

    def start(self) -> SentinelSet:
        master, *replicas = self.servers
        self.servers[master].start()
        for port in replicas:
            self.servers[port].start(replica_of=master)
        for port in replicas:
            self.wait_for_replica(port)
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_settled()
        return self

    def url(self, query: str = "", scheme: str = "redis+sentinel") -> str:
        auth = f":{self.password}@" if self.password is not None else ""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"{scheme}://{auth}{hosts}/{MASTER}/0{query}"

    def replica_ports(self) -> list[int]:
        """The replicas that run."""
        return [
            p
            for p, server in self.servers.items()
            if p != self.master_port and server.proc is not None
        ]

    def replica_port(self) -> int:
        """The replica, of a set that has one."""
        (port,) = (p for p in self.servers if p != self.master_port)
        return port

    def wait_for_replica(self, port: int, timeout: float = SETTLE) -> None:
        """Until the server on *port* replicates from the master."""
        wait_until(
            lambda: (
                info(port, "replication", self.password).get("master_link_status")
                == "up"
            ),
            timeout,
            f"the replica on port {port} is in sync",
        )

    def fail_over_after(self, ms: int) -> None:
        """Every live sentinel holds a server down after *ms* of silence
        (a fast failover, for a test that kills the master)."""
        for sentinel in self.sentinels:
            if sentinel.proc is not None:
                sentinel.down_after(ms)

    def wait_settled(self, timeout: float = SETTLE) -> None:
        """Until every live sentinel names the same master, one that says
        it is the master, sees every other running server as its replica,
        in sync, and knows the other live sentinels: a failover can happen.
        That master becomes ``master_port`` (the one started, unless the
        sentinels failed it over meanwhile)."""

        def agreed() -> int | None:
            named = {s.master() for s in self.sentinels if s.proc is not None}
            if len(named) != 1:
                return None
            (port,) = named
            if port not in self.servers or self.servers[port].proc is None:
                return None
            role = call(port, "ROLE", password=self.password)
            if not (isinstance(role, list) and role[0] == b"master"):
                return None
            return port

        def settled(sentinel: Sentinel, master_port: int) -> bool:
            replicas = call(sentinel.port, "SENTINEL", "replicas", MASTER)
            up = {
                _field(r, "port")
                for r in replicas
                if _field(r, "flags") == "slave"
                and _field(r, "master-link-status") == "ok"
            }
            master = call(sentinel.port, "SENTINEL", "master", MASTER)
            others = int(_field(master, "num-other-sentinels") or 0)
            live = sum(1 for s in self.sentinels if s.proc is not None)
            wanted = {
                str(p)
                for p, server in self.servers.items()
                if p != master_port and server.proc is not None
            }
            return bool(wanted) and wanted <= up and others >= live - 1

        def whole() -> int | None:
            port = agreed()
            if port is None:
                return None
            live = (s for s in self.sentinels if s.proc is not None)
            return port if all(settled(s, port) for s in live) else None

        def views() -> list[str]:
            """What each live sentinel says, for a set that does not settle."""
            said = []
            for sentinel in self.sentinels:
                if sentinel.proc is None:
                    continue
                try:
                    master = call(sentinel.port, "SENTINEL", "master", MASTER)
                    replicas = call(sentinel.port, "SENTINEL", "replicas", MASTER)
                except OSError as e:
                    said.append(f"{sentinel.port}: {e}")
                    continue
                seen = [
                    f"{_field(r, 'port')} {_field(r, 'flags')} "
                    f"{_field(r, 'master-link-status')}"
                    for r in replicas
                ]
                said.append(
                    f"{sentinel.port}: master {_field(master, 'port')} "
                    f"{_field(master, 'flags')}, "
                    f"{_field(master, 'num-other-sentinels')} other sentinels, "
                    f"replicas {seen}"
                )
            return said

        try:
            self.master_port = wait_until(
                whole,
                timeout,
                "the sentinels agree on the master and see its replica",
                every=0.2,
            )
        except AssertionError as e:
            raise AssertionError(
                f"{e} (master {self.master_port}, replicas "
                f"{self.replica_ports()}; the sentinels say: {views()})"
            ) from None

    def kill_master(self) -> int:
        """``kill -9`` of the master; its port."""
        port = self.master_port
        self.servers[port].kill()
        return port

    def wait_for_promotion(self, old: int, timeout: float = SETTLE) -> int:
        """Until the sentinels name another master, and it says it is one;
        its port."""

        def promoted() -> int | None:
            for sentinel in self.sentinels:
                if sentinel.proc is None:
                    continue
                port = sentinel.master()
                if port is None or port == old:
                    return None
                role = call(port, "ROLE", password=self.password)
                if not (isinstance(role, list) and role[0] == b"master"):
                    return None
            return port

        self.master_port = wait_until(promoted, timeout, "a replica is promoted")
        return self.master_port

    def restart_as_replica(self, port: int) -> None:
        """Start the server of *port* again, as the new master's replica,
        and wait until the set is whole again."""
        self.servers[port].start(replica_of=self.master_port)
        self.wait_for_replica(port)
        self.wait_settled()

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers.values():
            server.stop()


def _field(flat: Any, name: str) -> str | None:
    """A field of a sentinel's flat name/value list."""
    if isinstance(flat, ErrorReply) or not isinstance(flat, list):
        return None
    pairs = dict(zip(flat[::2], flat[1::2], strict=False))
    value = pairs.get(name.encode())
    return value.decode() if isinstance(value, bytes) else None


@pytest.fixture
def make_sentinel_set(tmp_path: Path) -> Iterator[Callable[..., SentinelSet]]:
    """Start sets with options (``password=``, ``replicas=``); all stopped
    after the test."""
    sets: list[SentinelSet] = []

    def make(**options: Any) -> SentinelSet:
        made = SentinelSet(tmp_path / f"ha{len(sets)}", **options)
        sets.append(made)
        try:
            return made.start()
        except BaseException:
            made.stop()
            raise

    yield make
    for made in sets:
        made.stop()


@pytest.fixture
def sentinel_set(make_sentinel_set: Callable[..., SentinelSet]) -> SentinelSet:
    """A started set with no password, stopped after the test."""
    return make_sentinel_set()
