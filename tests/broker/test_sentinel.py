"""The Redis client through Redis Sentinel, with real processes: a master,
a replica and three sentinels (tests/redis_sentinels.py).

- the master is found through the sentinels at start, by the Twisted
  client and by the blocking check ``twistd`` runs before it listens;
- the harness: a master stalled for 3 s (SIGSTOP) is not failed over
  unless the test asked for a fast failover;
- ``kill -9`` of the master (and of a sentinel too): the client follows
  the promotion, and commands work again within 15 s of it; that it
  followed is logged once per process, however many connections it has;
- the errors at start are one line: no sentinel reachable, an unknown
  master name, a wrong password;
- ``?wait=1``: ``replicated()`` fires while a replica has the writes, and
  fails as ``BrokerUnavailable`` once none does;
- ``rediss+sentinel://``: the sentinel and the master over TLS, their
  certificates verified.

The in-memory tests of the same logic are in tests/broker/test_redis.py.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from sockchat._broker.redis import BrokerUnavailable, RedisClient, parse_broker_url
from sockchat._broker.redisbroker import register_blocking as register
from sockchat._broker.wire import Keys

from ports import free_port
from redis_sentinels import Sentinel, SentinelSet, call

pytestmark = pytest.mark.slow

#: Seconds within which commands must work again after a promotion.
FOLLOW = 15.0


async def until(condition: Any, timeout: float, what: str) -> None:
    """Let the reactor run until *condition()* is true; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await deferLater(reactor, 0.05, lambda: None)


@pytest.fixture
def followed() -> Any:
    """The 'failed over' lines logged while the test runs."""
    lines: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "failed over" in event.get("log_format", ""):
            lines.append(event)

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_the_master_is_found_through_the_sentinels_at_start(
    sentinel_set: SentinelSet,
) -> None:
    address = parse_broker_url(sentinel_set.url())
    client = RedisClient(reactor, address)
    await client.start()
    try:
        assert client._proto is not None
        assert client._proto.where is not None
        assert client._proto.where.port == sentinel_set.master_port
        await client.command("SET", "k", "v")
        assert await client.command("GET", "k") == b"v"
    finally:
        await client.stop()
    # The blocking check at start goes to the same master.
    name = register(address, {"peer": "test"}, keys=Keys("t"))
    assert name == "i1"
    assert call(sentinel_set.master_port, "GET", "t:instance-counter") == b"1"


def test_a_master_stalled_for_seconds_is_not_failed_over_unasked(
    sentinel_set: SentinelSet,
) -> None:
    """The harness itself: a loaded machine may leave the master
    unscheduled for a second or more (at start, say); the sentinels fail it
    over only when a test asks them to (``fail_over_after``)."""
    started = sentinel_set.master_port
    pid = sentinel_set.servers[started].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(3)  # the stall itself: the master answers nothing
    finally:
        os.kill(pid, signal.SIGCONT)
    sentinel_set.wait_settled()
    assert sentinel_set.master_port == started
    for sentinel in sentinel_set.sentinels:
        assert b"+sdown master" not in sentinel.log.read_bytes()


@pytest.mark.parametrize("sentinel_killed", [False, True])
@pytest_twisted.ensureDeferred
async def test_a_killed_master_is_followed_within_15_s_of_the_promotion(
    sentinel_set: SentinelSet, followed: list[dict[str, Any]], sentinel_killed: bool
) -> None:
    address = parse_broker_url(sentinel_set.url())
    states: list[bool] = []
    # Two connections in one process, as an instance or a consumer has.
    client = RedisClient(reactor, address, on_state=states.append)
    other = RedisClient(reactor, address)
    await client.start()
    await other.start()
    try:
        assert await client.command("INCR", "n") == 1
        if sentinel_killed:
            # The first one: the one the clients ask first and listen to.
            # Two of three still make the quorum and elect a leader.
            sentinel_set.sentinels[0].stop(signal.SIGKILL)
        sentinel_set.fail_over_after(1000)  # the test needs a fast failover
        old = sentinel_set.kill_master()
        await until(lambda: states == [False], 5, "the loss is noticed")
        new = await deferToThread(sentinel_set.wait_for_promotion, old)
        promoted = time.monotonic()
        assert new != old

        async def works(c: RedisClient) -> bool:
            try:
                await c.command("SET", "after", "yes")
            except BrokerUnavailable:
                return False
            return True

        for c in (client, other):
            deadline = promoted + FOLLOW
            while not await works(c):
                assert time.monotonic() < deadline, "commands do not work again"
                await deferLater(reactor, 0.1, lambda: None)
            assert c._proto is not None
            assert c._proto.where is not None
            assert c._proto.where.port == new
        assert states == [False, True]
        # The replica had the write acknowledged before the kill.
        assert await client.command("GET", "n") == b"1"
        assert len(followed) == 1  # once per process, not per connection
        assert followed[0]["where"] == f"127.0.0.1:{new}"
        assert followed[0]["before"] == f"127.0.0.1:{old}"
    finally:
        await client.stop()
        await other.stop()


@pytest_twisted.ensureDeferred
async def test_no_sentinel_reachable_is_one_line_at_start() -> None:
    ports = [free_port(), free_port()]
    url = f"redis+sentinel://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/mymaster/0"
    address = parse_broker_url(url)
    why = (
        f"no sentinel answered (127.0.0.1:{ports[0]}: Connection refused; "
        f"127.0.0.1:{ports[1]}: Connection refused)"
    )
    with pytest.raises(BrokerUnavailable) as e:
        await RedisClient(reactor, address).start()
    assert str(e.value) == f"cannot reach the broker at {url}: {why}"
    with pytest.raises(SystemExit) as exit_:
        register(address, {})
    assert str(exit_.value) == f"sockchat: cannot use the broker at {url}: {why}"


@pytest_twisted.ensureDeferred
async def test_an_unknown_master_and_a_wrong_password_are_one_line_at_start(
    make_sentinel_set: Any,
) -> None:
    ha = make_sentinel_set(password="s3cret")
    unknown = parse_broker_url(ha.url().replace("/mymaster/", "/nosuch/"))
    wrong = parse_broker_url(ha.url().replace("s3cret", "hunter2"))
    cases = [
        (unknown, "the sentinels know no master named 'nosuch'"),
        (wrong, "WRONGPASS invalid username-password pair or user is disabled."),
    ]
    for address, why in cases:
        with pytest.raises(BrokerUnavailable) as e:
            await RedisClient(reactor, address).start()
        assert str(e.value) == f"cannot reach the broker at {address.display}: {why}"
        with pytest.raises(SystemExit) as exit_:
            register(address, {})
        said = str(exit_.value)
        assert said.startswith(
            f"sockchat: cannot use the broker at {address.display}: "
        )
        assert why in said
        assert "\n" not in said
        assert "hunter2" not in said + str(e.value)
    client = RedisClient(reactor, parse_broker_url(ha.url()))
    await client.start()
    await client.stop()


@pytest_twisted.ensureDeferred
async def test_wait_holds_a_write_until_a_replica_has_it(
    sentinel_set: SentinelSet,
) -> None:
    client = RedisClient(
        reactor, parse_broker_url(sentinel_set.url("?wait=1&wait_ms=300"))
    )
    await client.start()
    try:
        written = client.command("XADD", "s", "*", "m", "x")
        safe = client.replicated()
        entry = await written
        await safe
        assert call(sentinel_set.replica_port(), "XRANGE", "s", "-", "+")[0][0] == entry
        sentinel_set.servers[sentinel_set.replica_port()].stop()
        await until(
            lambda: (
                b"connected_slaves:0"
                in call(sentinel_set.master_port, "INFO", "replication")
            ),
            10,
            "the master sees its replica gone",
        )
        client.command("XADD", "s", "*", "m", "y")
        started = time.monotonic()
        with pytest.raises(
            BrokerUnavailable,
            match=r"could not copy it to 1 replica\(s\) within 300 ms \(0 did\)",
        ):
            await client.replicated()
        assert time.monotonic() - started >= 0.29
    finally:
        await client.stop()


@pytest_twisted.ensureDeferred
async def test_rediss_sentinel_reaches_the_sentinel_and_the_master_over_tls(
    make_redis_server: Any, tmp_path: Any
) -> None:
    master = make_redis_server(tls=True, tls_hostname="127.0.0.1")
    files = master.tls_files
    sentinel = Sentinel(tmp_path / "s", master.tls_port, tls_files=files).start()
    try:
        url = f"rediss+sentinel://127.0.0.1:{sentinel.tls_port}/mymaster/0"
        address = parse_broker_url(f"{url}?ca={files['ca']}")
        client = RedisClient(reactor, address)
        await client.start()
        try:
            assert client._proto is not None
            assert client._proto.where is not None
            assert client._proto.where.port == master.tls_port
            await client.command("SET", "k", "over tls")
        finally:
            await client.stop()
        assert call(master.port, "GET", "k") == b"over tls"
        assert register(address, {}, keys=Keys("t")) == "i1"
        # Without ?ca=, the sentinel's certificate is not trusted: one line.
        with pytest.raises(BrokerUnavailable) as e:
            await RedisClient(reactor, parse_broker_url(url)).start()
        assert str(e.value).startswith(
            f"cannot reach the broker at {url}: no sentinel answered "
            f"(127.0.0.1:{sentinel.tls_port}: TLS: "
        )
        assert "certificate verify failed" in str(e.value)
    finally:
        sentinel.stop()


@pytest_twisted.ensureDeferred
async def test_an_enqueue_with_wait_is_queued_when_a_replica_has_it_else_undone(
    make_redis_server: Any,
) -> None:
    """``?wait=1`` on the broker's queue: the lines of a turn count as
    queued once the replica has them; when it cannot have them in time,
    the enqueue fails as ``NotReplicated`` and the entries are deleted.
    The same for a line enqueued held (the desk's handover)."""
    from sockchat._broker.interface import NotReplicated
    from sockchat._broker.redisbroker import connect

    master = make_redis_server(extra=("--repl-diskless-sync-delay", "0"))
    replica = make_redis_server()
    replica.stop()
    replica.start(replica_of=master.port)
    await until(
        lambda: b"master_link_status:up" in call(replica.port, "INFO", "replication"),
        10,
        "the replica is in sync",
    )
    broker = await connect(reactor, f"{master.url}?wait=1&wait_ms=2000")
    try:
        await broker.open_queue("workers")
        ids = await broker.enqueue("workers", [b"a"])
        ids.append(await broker.enqueue_held("workers", b"b", "desk/ann"))
        seen = call(replica.port, "XRANGE", "sockchat:work:workers", "-", "+")
        assert [e[0].decode() for e in seen] == ids
        os.kill(replica.pid, signal.SIGSTOP)  # the replica lags: it acks nothing
        try:
            with pytest.raises(
                NotReplicated, match=r"could not copy it to 1 replica\(s\) within 2000"
            ):
                await broker.enqueue("workers", [b"c"])
            with pytest.raises(NotReplicated):
                await broker.enqueue_held("workers", b"d", "desk/ann")
            await until(
                lambda: call(master.port, "XLEN", "sockchat:work:workers") == 2,
                5,
                "the entries that no replica had are deleted",
            )
            # d is not left pending either: a (handed back on the way) and
            # b (held) are, as without ?wait.
            pending = call(
                master.port, "XPENDING", "sockchat:work:workers", "workers", "-", "+", 9
            )
            assert [p[0].decode() for p in pending] == ids
        finally:
            os.kill(replica.pid, signal.SIGCONT)
    finally:
        await broker.close()
