"""The Redis client and the fake against a real redis-server.

The differential test runs each command sequence of SEQUENCES twice: against
a real ``redis-server`` through ``RedisClient``, and against
``tests/fakeredis.py`` with a Clock, and asserts the same replies.  Stream
ids differ between the two (they are times), so each side's ids are named
id1, id2, ... in the order they first appear; idle times and TTLs are
compared in half seconds.  Then the client's own promises on real
sockets: reconnection after a restart, AUTH, SELECT, a unix socket, TLS
with verification, and the one line when nothing listens.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from attrs import frozen
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure

from sockchat._broker.redis import (
    BrokerUnavailable,
    RedisClient,
    RedisError,
    parse_broker_url,
)
from sockchat._broker.scripts import POP_OR_WAIT, run_script

from fakeredis import FakeRedisServer
from processes import need_tool
from redis_server import RedisServer, free_port

pytestmark = pytest.mark.slow

# -- the sequences --------------------------------------------------------------


@frozen
class C:
    """A command on client *on*; *norm* says how to compare its reply."""

    args: tuple[Any, ...]
    on: str = "a"
    norm: str = ""


def c(*args: Any, on: str = "a", norm: str = "") -> C:
    return C(args, on, norm)


@frozen
class Send:
    """A command whose reply is awaited later, by Wait(name)."""

    name: str
    args: tuple[Any, ...]
    on: str = "a"


@frozen
class Wait:
    name: str


@frozen
class Sleep:
    seconds: float


@frozen
class Script:
    """POP_OR_WAIT through run_script."""

    args: tuple[str, ...]


LIVE = '{"instance": "i1", "conv": %d}'
DEAD = '{"instance": "i2", "conv": %d}'

SEQUENCES: dict[str, list[Any]] = {
    "strings": [
        c("PING"),
        c("PING", "hello"),
        c("SET", "k", "v"),
        c("GET", "k"),
        c("SET", "k", "w", "NX"),
        c("SET", "k", "w", "XX"),
        c("SET", "nope", "w", "XX"),
        c("GET", "k"),
        c("SET", "n", 10),
        c("INCR", "n"),
        c("INCR", "new"),
        c("INCR", "k"),
        c("GET", "missing"),
        c("DEL", "k", "n", "missing"),
        c("EXISTS", "k", "new", "new"),
        c("SET", "e", "v", "PX", 1000),
        c("PTTL", "e", norm="ttl"),
        c("PTTL", "missing"),
        c("SET", "p", "v"),
        c("PTTL", "p"),
        c("PEXPIRE", "p", 1000),
        c("PEXPIRE", "missing", 100),
        c("SET", "q", "v", "EX", 100),
        c("PTTL", "q", norm="ttl"),
        c("SET", "q", "v2"),
        c("PTTL", "q"),
        Sleep(0.5),
        c("PTTL", "e", norm="ttl"),
        Sleep(0.6),
        c("GET", "e"),
        c("EXISTS", "e", "p"),
        c("SET", "p", "v", "PX", 100),
        c("PEXPIRE", "p", 0),
        c("EXISTS", "p"),
        c("SET", "x", "v", "EX", 0),
        c("SET", "x", "v", "PX"),
        c("SET", "x", "v", "NX", "XX"),
        c("SET", "x", "v", "PX", "soon"),
        c("GET"),
        c("GET", "a", "b"),
        c("NOSUCHCOMMAND", "a"),
    ],
    "wrong types": [
        c("RPUSH", "l", "a"),
        c("GET", "l"),
        c("INCR", "l"),
        c("SADD", "l", "x"),
        c("HSET", "l", "f", "v"),
        c("XADD", "l", "*", "m", "1"),
        c("SET", "s", "v"),
        c("LLEN", "s"),
        c("LPUSH", "s", "x"),
        c("SMEMBERS", "s"),
        c("HGETALL", "s"),
        c("XLEN", "s"),
        c("XRANGE", "s", "-", "+"),
        c("BLPOP", "s", 1),
        c("SET", "l", "v"),
        c("GET", "l"),
    ],
    "sets and hashes": [
        c("SADD", "s", "a", "b", "c", "a"),
        c("SREM", "s", "a", "z"),
        c("SMEMBERS", "s", norm="sorted"),
        c("SMEMBERS", "missing"),
        c("SREM", "s", "b", "c"),
        c("EXISTS", "s"),
        c("SREM", "missing", "a"),
        c("HSET", "h", "f", 1, "g", 2),
        c("HSET", "h", "f", 3),
        c("HGET", "h", "f"),
        c("HGET", "h", "nope"),
        c("HGET", "missing", "f"),
        c("HGETALL", "h"),
        c("HDEL", "h", "f", "nope"),
        c("HGETALL", "h"),
        c("HDEL", "h", "g"),
        c("EXISTS", "h"),
        c("HGETALL", "missing"),
        c("HSET", "h", "f"),
        c("HSET", "h", "f", "v", "g"),
        c("SADD", "s"),
    ],
    "lists": [
        c("RPUSH", "l", "a", "b", "c"),
        c("LPUSH", "l", "z", "y"),
        c("LRANGE", "l", 0, -1),
        c("LRANGE", "l", 1, 2),
        c("LRANGE", "l", -2, -1),
        c("LRANGE", "l", -100, 1),
        c("LRANGE", "l", 5, 10),
        c("LRANGE", "l", 3, 1),
        c("LRANGE", "missing", 0, -1),
        c("LLEN", "l"),
        c("LREM", "l", 1, "a"),
        c("RPUSH", "l", "a", "a", "b", "a"),
        c("LREM", "l", -1, "a"),
        c("LRANGE", "l", 0, -1),
        c("LREM", "l", 0, "a"),
        c("LRANGE", "l", 0, -1),
        c("LREM", "missing", 0, "a"),
        c("LPOP", "l"),
        c("LPOP", "l", 2),
        c("LPOP", "l", 10),
        c("LPOP", "l"),
        c("LPOP", "missing", 2),
        c("LPOP", "l", -1),
        c("LLEN", "l"),
        c("EXISTS", "l"),
        c("LRANGE", "l", "x", 1),
        c("BLPOP", "l", 0.2),
        c("RPUSH", "l", "x"),
        c("BLPOP", "missing", "l", 1),
        c("BLPOP", "l", -1),
        c("BLPOP", "l", "soon"),
    ],
    "blocking pops": [
        Send("w", ("BLPOP", "q", "p", 5)),
        Sleep(0.2),
        c("RPUSH", "p", "hello", on="b"),
        Wait("w"),
        c("LLEN", "p", on="b"),
        Send("x", ("BLPOP", "q", 5), on="a"),
        Sleep(0.2),
        Send("y", ("PING",), on="a"),  # waits behind the BLPOP
        c("LPUSH", "q", "1", "2", on="b"),
        Wait("x"),
        Wait("y"),
        c("LRANGE", "q", 0, -1, on="b"),
    ],
    "streams": [
        c("XADD", "s", "*", "m", "a"),
        c("XADD", "s", "*", "m", "b", "f2", "v2"),
        c("XLEN", "s"),
        c("XLEN", "missing"),
        c("XRANGE", "s", "-", "+"),
        c("XRANGE", "s", "-", "+", "COUNT", 1),
        c("XRANGE", "s", "({id1}", "+"),
        c("XRANGE", "s", "{id2}", "{id2}"),
        c("XRANGE", "s", "-", "({id2}"),
        c("XRANGE", "missing", "-", "+"),
        c("XRANGE", "s", "-", "+", "COUNT", 0),
        c("XRANGE", "s", "x", "+"),
        c("XDEL", "s", "{id1}"),
        c("XLEN", "s"),
        c("XDEL", "s", "{id1}", "{id2}"),
        c("XLEN", "s"),
        c("EXISTS", "s"),
        c("XRANGE", "s", "-", "+"),
        c("XADD", "s", "0-0", "m", "x"),
        c("XADD", "s", "1-1", "m", "x"),
        c("XADD", "s", "*", "m"),
        c("XADD", "s", "*", "m", "c"),
        c("XADD", "s", "NOMKSTREAM", "*", "m", "d"),
        c("XADD", "new", "NOMKSTREAM", "*", "m", "d"),
        c("XDEL", "missing", "1-1"),
        c("XDEL", "s", "bad"),
    ],
    "consumer groups": [
        c("XGROUP", "CREATE", "s", "g", "$"),
        c("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"),
        c("XGROUP", "CREATE", "s", "g", "$"),
        c("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"),
        c("XPENDING", "s", "g"),
        c("XADD", "s", "*", "m", "0"),
        c("XADD", "s", "*", "m", "1"),
        c("XADD", "s", "*", "m", "2"),
        c("XREADGROUP", "GROUP", "g", "ann", "COUNT", 2, "STREAMS", "s", ">"),
        c("XREADGROUP", "GROUP", "g", "bob", "COUNT", 5, "STREAMS", "s", ">"),
        c("XREADGROUP", "GROUP", "g", "bob", "STREAMS", "s", ">"),
        c("XPENDING", "s", "g"),
        Sleep(0.5),
        c("XPENDING", "s", "g", "-", "+", 10, norm="idle"),
        c("XPENDING", "s", "g", "-", "+", 10, "ann", norm="idle"),
        c("XPENDING", "s", "g", "-", "+", 1, norm="idle"),
        c("XPENDING", "s", "g", "({id1}", "+", 10, norm="idle"),
        c("XPENDING", "s", "g", "-", "+", 10, "nobody"),
        c("XPENDING", "s", "g", "IDLE", 250, "-", "+", 10, norm="idle"),
        c("XPENDING", "s", "g", "-", "+"),
        c("XACK", "s", "g", "{id1}", "{id1}"),
        c("XACK", "s", "g", "{id1}"),
        c("XACK", "s", "nope", "{id1}"),
        c("XACK", "missing", "g", "{id1}"),
        c("XREADGROUP", "GROUP", "g", "ann", "STREAMS", "s", "0"),
        c("XPENDING", "s", "g", "-", "+", 10, norm="idle"),
        c("XPENDING", "s", "g", "IDLE", 250, "-", "+", 10, norm="idle"),
        c("XDEL", "s", "{id2}"),
        c("XREADGROUP", "GROUP", "g", "ann", "STREAMS", "s", "0"),
        c("XREADGROUP", "GROUP", "g", "ann", "STREAMS", "s", "{id2}"),
        c("XREADGROUP", "GROUP", "g", "ann", "COUNT", 1, "STREAMS", "s", "0"),
        c("XREADGROUP", "GROUP", "nope", "c", "STREAMS", "s", ">"),
        c("XREADGROUP", "GROUP", "g", "c", "STREAMS", "missing", ">"),
        c("XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">", "0"),
        c("XPENDING", "s", "nope"),
        c("XPENDING", "missing", "g"),
        c("XGROUP", "CREATE", "s", "g2", "0"),
        c("XREADGROUP", "GROUP", "g2", "c", "NOACK", "STREAMS", "s", ">"),
        c("XPENDING", "s", "g2"),
        c("XGROUP", "CREATE", "s", "g3", "{id1}"),
        c("XREADGROUP", "GROUP", "g3", "c", "STREAMS", "s", ">"),
        c("XADD", "s", "*", "m", "3"),
        c("XREADGROUP", "GROUP", "g", "ann", "STREAMS", "s", ">"),
        c("XPENDING", "s", "g"),
        c("XGROUP", "NOPE", "s", "g"),
    ],
    "blocking group reads": [
        c("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"),
        Send(
            "w",
            (
                *("XREADGROUP", "GROUP", "g", "c", "COUNT", 1, "BLOCK", 5000),
                *("STREAMS", "s", ">"),
            ),
        ),
        Sleep(0.2),
        c("XADD", "s", "*", "m", "late", on="b"),
        Wait("w"),
        c("XREADGROUP", "GROUP", "g", "c", "BLOCK", 200, "STREAMS", "s", ">"),
        c("XPENDING", "s", "g"),
        c("XREADGROUP", "GROUP", "g", "c", "BLOCK", -1, "STREAMS", "s", ">"),
    ],
    "claims": [
        c("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"),
        c("XADD", "s", "*", "m", "1"),
        c("XADD", "s", "*", "m", "2"),
        c("XADD", "s", "*", "m", "3"),
        c("XADD", "s", "*", "m", "4"),
        c("XREADGROUP", "GROUP", "g", "ann", "STREAMS", "s", ">"),
        Sleep(0.5),
        # ann keeps id1 (touched) and hands id2 back; id3 is deleted.
        c("XCLAIM", "s", "g", "ann", 0, "{id1}", "JUSTID"),
        c("XCLAIM", "s", "g", "ann", 0, "{id2}", "IDLE", 1000000000, "JUSTID"),
        c("XDEL", "s", "{id3}"),
        c("XPENDING", "s", "g", "-", "+", 10, norm="idle"),
        c("XAUTOCLAIM", "s", "g", "bob", 400, "0-0", "COUNT", 5),
        c("XPENDING", "s", "g", "-", "+", 10, norm="idle"),
        c("XCLAIM", "s", "g", "bob", 60000, "{id1}"),
        c("XCLAIM", "s", "g", "bob", 0, "{id1}"),
        c("XCLAIM", "s", "g", "bob", 0, "{id1}", "{id4}", "RETRYCOUNT", 7, "JUSTID"),
        c("XPENDING", "s", "g", "-", "+", 10, norm="idle"),
        c("XDEL", "s", "{id1}"),
        c("XCLAIM", "s", "g", "carl", 0, "{id1}", "{id2}"),
        c("XPENDING", "s", "g", "-", "+", 10, norm="idle"),
        c("XCLAIM", "s", "g", "carl", 0, "{id3}", "FORCE"),
        c("XADD", "s", "*", "m", "5"),
        c("XCLAIM", "s", "g", "carl", 0, "{id5}", "FORCE", "JUSTID"),
        c("XPENDING", "s", "g", "-", "+", 10, norm="idle"),
        c("XCLAIM", "s", "g", "carl", 0, "{id5}", "BOGUS"),
        c("XCLAIM", "s", "nope", "carl", 0, "{id5}"),
        c("XCLAIM", "s", "g", "carl", "x", "{id5}"),
        c("XADD", "s", "*", "m", "6"),
        c("XADD", "s", "*", "m", "7"),
        c("XREADGROUP", "GROUP", "g", "dan", "STREAMS", "s", ">"),
        c("XAUTOCLAIM", "s", "g", "eve", 0, "0-0", "COUNT", 1, "JUSTID"),
        c("XAUTOCLAIM", "s", "g", "eve", 0, "{id4}", "COUNT", 2),
        c("XAUTOCLAIM", "s", "g", "eve", 0, "({id4}", "COUNT", 100, "JUSTID"),
        # A young entry that was deleted: is it reported before the idle test?
        c("XDEL", "s", "{id7}"),
        c("XAUTOCLAIM", "s", "g", "fay", 100000, "0-0"),
        c("XPENDING", "s", "g"),
        c("XAUTOCLAIM", "s", "g", "fay", 0, "0-0", "COUNT", 0),
        c("XAUTOCLAIM", "s", "nope", "fay", 0, "0-0"),
        c("XAUTOCLAIM", "missing", "g", "fay", 0, "0-0"),
    ],
    "scripts": [
        c("EVALSHA", POP_OR_WAIT.sha1, 1, "w", LIVE % 1, "p:", "back"),
        c("SET", "p:i1", "{}"),
        Script((LIVE % 1, "p:", "back")),
        c("EVALSHA", POP_OR_WAIT.sha1, 1, "w", LIVE % 1, "p:", "back"),
        c("LRANGE", "w", 0, -1),
        c("DEL", "w"),
        c("RPUSH", "w", DEAD % 5, "not json", "[1, 2]", '{"instance": 3}'),
        c("RPUSH", "w", LIVE % 2, LIVE % 3),
        Script((LIVE % 9, "p:", "back")),
        c("LRANGE", "w", 0, -1),
        Script((LIVE % 3, "p:", "front")),
        c("LRANGE", "w", 0, -1),
        Script((LIVE % 4, "p:", "middle")),
        c("EVAL", POP_OR_WAIT.lua, -1),
        c("EVAL", POP_OR_WAIT.lua, 5, "w"),
        c("EVALSHA", "0" * 40, 0),
    ],
}


# -- running them -----------------------------------------------------------------

ID = re.compile(rb"^\d+-\d+$")


class Names:
    """Each side's stream ids, named id1, id2, ... as they first appear."""

    def __init__(self) -> None:
        self.by_id: dict[bytes, str] = {}
        self.by_name: dict[str, bytes] = {}

    def name(self, sid: bytes) -> str:
        if sid not in self.by_id:
            name = f"id{len(self.by_id) + 1}"
            self.by_id[sid] = name
            self.by_name[name] = sid
        return self.by_id[sid]

    def fill(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(
            re.sub(r"\{(id\d+)\}", lambda m: self.by_name[m[1]].decode(), a)
            if isinstance(a, str)
            else a
            for a in args
        )


def normalise(reply: Any, names: Names, norm: str) -> Any:
    if isinstance(reply, RedisError):
        return ("error", str(reply))
    if isinstance(reply, BaseException):
        return ("raised", type(reply).__name__, str(reply))

    def ids(value: Any) -> Any:
        if isinstance(value, list):
            return [ids(v) for v in value]
        if isinstance(value, bytes) and ID.match(value) and value != b"0-0":
            return names.name(value)
        return value

    reply = ids(reply)
    if norm == "sorted":
        return sorted(reply)
    if norm == "ttl" and isinstance(reply, int) and reply > 0:
        return ("ttl/500", (reply + 499) // 500)
    if norm == "idle" and isinstance(reply, list):
        return [[i, who, ("idle/500", idle // 500), n] for i, who, idle, n in reply]
    return reply


def describe(step: Any) -> str:
    if isinstance(step, C):
        return f"{step.on}: " + " ".join(map(str, step.args))
    return repr(step)


def run_on_fake(steps: list[Any]) -> list[tuple[str, Any]]:
    clock = Clock()
    server = FakeRedisServer(clock)
    clients = {"a": server.client(), "b": server.client()}
    names = Names()
    sent: dict[str, Deferred[Any]] = {}
    out: list[tuple[str, Any]] = []

    def settle(d: Deferred[Any]) -> Any:
        box: list[Any] = []
        d.addBoth(box.append)
        for _ in range(2000):
            if box:
                break
            clock.advance(0.01)
        assert box, "a fake command never finished"
        return box[0].value if isinstance(box[0], Failure) else box[0]

    for step in steps:
        if isinstance(step, Sleep):
            clock.advance(step.seconds)
        elif isinstance(step, Send):
            sent[step.name] = clients[step.on].command(*names.fill(step.args))
        elif isinstance(step, Wait):
            out.append((describe(step), normalise(settle(sent[step.name]), names, "")))
        elif isinstance(step, Script):
            d = run_script(clients["a"], POP_OR_WAIT, ["w"], list(step.args))
            out.append((describe(step), normalise(settle(d), names, "")))
        else:
            d = clients[step.on].command(*names.fill(step.args))
            out.append((describe(step), normalise(settle(d), names, step.norm)))
    return out


async def outcome(d: Deferred[Any]) -> Any:
    try:
        return await d
    except Exception as e:
        return e


async def run_on_real(
    steps: list[Any], clients: dict[str, RedisClient]
) -> list[tuple[str, Any]]:
    names = Names()
    sent: dict[str, Deferred[Any]] = {}
    out: list[tuple[str, Any]] = []
    for step in steps:
        if isinstance(step, Sleep):
            await deferLater(reactor, step.seconds, lambda: None)
        elif isinstance(step, Send):
            sent[step.name] = clients[step.on].command(*names.fill(step.args))
        elif isinstance(step, Wait):
            out.append(
                (describe(step), normalise(await outcome(sent[step.name]), names, ""))
            )
        elif isinstance(step, Script):
            d = run_script(clients["a"], POP_OR_WAIT, ["w"], list(step.args))
            out.append((describe(step), normalise(await outcome(d), names, "")))
        else:
            d = clients[step.on].command(*names.fill(step.args))
            out.append((describe(step), normalise(await outcome(d), names, step.norm)))
    return out


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


async def started(url: str, **kw: Any) -> RedisClient:
    client = RedisClient(reactor, parse_broker_url(url), **kw)
    await client.start()
    return client


@pytest.mark.parametrize("name", list(SEQUENCES))
@pytest_twisted.ensureDeferred
async def test_the_fake_answers_as_redis_does(
    name: str, shared_redis: RedisServer
) -> None:
    clients = {
        "a": await started(shared_redis.url),
        "b": await started(shared_redis.url),
    }
    try:
        await clients["a"].command("FLUSHALL")
        await clients["a"].command("SCRIPT", "FLUSH")
        real = await run_on_real(SEQUENCES[name], clients)
    finally:
        for client in clients.values():
            await client.stop()
    fake = run_on_fake(SEQUENCES[name])
    differences = [
        f"{step}\n    redis: {want!r}\n    fake:  {got!r}"
        for (step, want), (_, got) in zip(real, fake, strict=True)
        if want != got
    ]
    assert not differences, "\n".join(differences)


def test_every_command_of_the_fake_is_compared() -> None:
    from fakeredis import _COMMANDS

    compared = {
        str(step.args[0]).lower()
        for steps in SEQUENCES.values()
        for step in steps
        if isinstance(step, (C, Send))
    }
    assert set(_COMMANDS) <= compared


# -- the real client on real sockets -------------------------------------------------


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
