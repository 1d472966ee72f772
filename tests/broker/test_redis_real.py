"""The Redis client against a real redis-server: its promises on real
sockets (reconnection after a restart, AUTH, SELECT, a unix socket, TLS
with verification, the one line when nothing listens).  The broker on top
of it is held to the broker's contract in test_broker_contract.py.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from sockchat._broker.redis import BrokerUnavailable, RedisClient, parse_broker_url

from ports import free_port
from processes import need_tool
from redis_server import RedisServer

pytestmark = pytest.mark.slow


async def started(url: str, **kw: Any) -> RedisClient:
    client = RedisClient(reactor, parse_broker_url(url), **kw)
    await client.start()
    return client


async def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await deferLater(reactor, 0.05, lambda: None)


def keepalive(client: RedisClient) -> int:
    """SO_KEEPALIVE on the client's socket (under TLS too)."""
    proto = client._proto
    assert proto is not None
    transport: Any = proto.transport
    handle = transport.getHandle()
    if not isinstance(handle, socket.socket):  # TLS: the TCP transport is under it
        handle = transport.transport.getHandle()
    return int(handle.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))


@pytest_twisted.ensureDeferred
async def test_reconnects_after_redis_server_restarts(
    redis_server: RedisServer,
) -> None:
    states: list[bool] = []
    client = await started(redis_server.url, on_state=states.append)
    blocker = await started(redis_server.url)
    try:
        assert await client.command("SET", "k", "v") == "OK"
        blocked = blocker.command("BLPOP", "q", 0)
        redis_server.stop()
        await wait_until(lambda: states == [False])
        with pytest.raises(BrokerUnavailable, match="lost the broker at redis://"):
            await blocked
        began = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="is unavailable"):
            await client.command("GET", "k")
        assert time.monotonic() - began < 0.1  # fails fast
        redis_server.start()
        await wait_until(lambda: states == [False, True])
        assert client.connected
        # No persistence: the restart lost the data.
        assert await client.command("GET", "k") is None
    finally:
        await client.stop()
        await blocker.stop()


@pytest_twisted.ensureDeferred
async def test_auth_with_a_password(make_redis_server) -> None:
    server = make_redis_server(password="s3cret")
    client = await started(server.url)
    assert await client.command("PING") == "PONG"
    await client.stop()
    with pytest.raises(BrokerUnavailable) as e:
        await started(f"redis://:wrong@127.0.0.1:{server.port}/0")
    assert str(e.value) == (
        f"cannot reach the broker at redis://127.0.0.1:{server.port}/0: WRONGPASS "
        "invalid username-password pair or user is disabled."
    )
    with pytest.raises(BrokerUnavailable, match="NOAUTH Authentication required"):
        await started(f"redis://127.0.0.1:{server.port}/0")


@pytest_twisted.ensureDeferred
async def test_select_a_database(redis_server: RedisServer) -> None:
    one = await started(f"redis://127.0.0.1:{redis_server.port}/1")
    zero = await started(redis_server.url)
    try:
        await one.command("SET", "where", "one")
        assert await zero.command("GET", "where") is None
        assert await one.command("GET", "where") == b"one"
        assert keepalive(one) == 1
    finally:
        await one.stop()
        await zero.stop()


@pytest_twisted.ensureDeferred
async def test_a_unix_socket(make_redis_server) -> None:
    server = make_redis_server(unix=True, password="pw")
    client = await started(server.unix_url)
    try:
        assert await client.command("SET", "k", "v") == "OK"
        assert client.display == f"unix://{server.socket}"
    finally:
        await client.stop()


@pytest_twisted.ensureDeferred
async def test_rediss_verifies_the_certificate_and_the_host_name(
    make_redis_server,
) -> None:
    server = make_redis_server(tls=True)
    client = await started(server.tls_url())
    assert await client.command("PING") == "PONG"
    assert keepalive(client) == 1
    await client.stop()
    mutual = await started(server.tls_url(client_cert=True))
    assert await mutual.command("PING") == "PONG"
    await mutual.stop()
    # The certificate is for localhost, not 127.0.0.1.
    with pytest.raises(BrokerUnavailable) as e:
        await started(server.tls_url("127.0.0.1"))
    assert str(e.value) == (
        f"cannot reach the broker at rediss://127.0.0.1:{server.tls_port}/0: "
        "TLS: the server's certificate is not for 127.0.0.1"
    )
    # Without ?ca=, the test CA is not trusted.
    with pytest.raises(BrokerUnavailable, match="TLS: certificate verify failed"):
        await started(f"rediss://localhost:{server.tls_port}/0")
    # A plain client on the TLS port hears no Redis.
    with pytest.raises(BrokerUnavailable, match="cannot reach the broker"):
        await started(f"redis://localhost:{server.tls_port}/0", connect_timeout=1.0)


@pytest_twisted.ensureDeferred
async def test_nothing_listening_is_one_line() -> None:
    port = free_port()
    with pytest.raises(BrokerUnavailable) as e:
        await started(f"redis://127.0.0.1:{port}/0")
    assert str(e.value) == (
        f"cannot reach the broker at redis://127.0.0.1:{port}/0: Connection refused"
    )
    with pytest.raises(BrokerUnavailable) as e:
        await started("unix:///nonexistent/redis.sock")
    assert str(e.value) == (
        "cannot reach the broker at unix:///nonexistent/redis.sock: "
        "No such file or directory"
    )


@pytest_twisted.ensureDeferred
async def test_stop_fails_a_blocking_command(redis_server: RedisServer) -> None:
    client = await started(redis_server.url)
    blocked = client.command("BLPOP", "q", 0)
    await client.stop()
    with pytest.raises(BrokerUnavailable, match="was stopped"):
        await blocked
    assert not client.connected


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_commands_of_one_turn_leave_in_one_send_as_strace_sees(
    make_redis_server, tmp_path, tls: bool
) -> None:
    """strace, an outside witness: 5 turns of 10 commands are 5 sends of
    the socket after the hello's one, each one TLS record under TLS.

    (Twisted's own write buffering makes a turn one send too; the client's
    batching is what makes it one ``transport.write``, shown in
    tests/broker/test_redis.py with a transport that counts them.)
    """
    import subprocess
    import sys
    from pathlib import Path

    strace = need_tool("strace", "strace")
    server = make_redis_server(tls=tls)
    url = server.tls_url() if tls else server.url
    trace = tmp_path / "strace.txt"
    helper = Path(__file__).resolve().parents[1] / "batches.py"
    done = subprocess.run(
        [
            *(strace, "-f", "-qq", "-e", "trace=sendto,sendmsg,write,writev"),
            *("-o", str(trace), sys.executable, str(helper), url, "10", "5"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    fd = re.search(r"^fd (\d+)$", done.stdout, re.MULTILINE)
    assert fd
    assert "done" in done.stdout
    sends = [
        int(m.group(1))
        for m in re.finditer(
            rf"(?:sendto|sendmsg|write|writev)\({fd.group(1)}, .*= (\d+)$",
            trace.read_text(),
            re.MULTILINE,
        )
        if int(m.group(1)) > 0
    ]
    ten_echoes = sum(len(f"*2\r\n$4\r\nECHO\r\n$4\r\nt0c{n}\r\n") for n in range(10))
    # After the hello (and under TLS the handshake), before TLS's goodbye.
    turns = sends[-6:-1] if tls else sends[1:6]
    assert len(turns) == 5, sends
    if tls:
        # One record: its header, tag and type are under 30 bytes; ten
        # records would add ten of them.
        assert all(ten_echoes < n < ten_echoes + 30 for n in turns), sends
    else:
        assert turns == [ten_echoes] * 5, sends
