"""The in-memory Redis (tests/fakeredis.py): its commands, blocking, faults.

Its replies are checked against a real redis-server in
tests/broker/test_redis_real.py; these tests pin down what the broker tests rely
on and run without one.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from sockchat._broker.redis import BrokerUnavailable, IRedis, RedisError
from sockchat._broker.scripts import POP_OR_WAIT, SCRIPTS, run_script

from conftest import has_fired, result_of
from fakeredis import TWINS, FakeRedisClient, FakeRedisServer


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(clock: Clock) -> FakeRedisServer:
    return FakeRedisServer(clock)


@pytest.fixture
def redis(server: FakeRedisServer) -> FakeRedisClient:
    return server.client()


def run(redis: IRedis, *args: Any) -> Any:
    return result_of(redis.command(*args))


def error(redis: IRedis, *args: Any) -> str:
    with pytest.raises(RedisError) as e:
        run(redis, *args)
    return str(e.value)


def test_the_fake_client_is_an_iredis(redis: FakeRedisClient) -> None:
    client: IRedis = redis
    assert client.connected
    assert run(client, "PING") == "PONG"


def test_strings_and_expiry_by_the_clock(redis: FakeRedisClient, clock: Clock) -> None:
    assert run(redis, "SET", "k", "v", "PX", 1500) == "OK"
    assert run(redis, "SET", "k", "w", "NX") is None
    assert run(redis, "GET", "k") == b"v"
    assert run(redis, "PTTL", "k") == 1500
    clock.advance(1.0)
    assert run(redis, "PTTL", "k") == 500
    clock.advance(0.5)
    assert run(redis, "GET", "k") is None
    assert run(redis, "PTTL", "k") == -2
    assert run(redis, "SET", "k", "x", "XX") is None
    assert run(redis, "INCR", "n") == 1
    assert run(redis, "INCR", "n") == 2
    assert run(redis, "PTTL", "n") == -1
    assert run(redis, "PEXPIRE", "n", 100) == 1
    clock.advance(0.1)
    assert run(redis, "EXISTS", "n", "k") == 0


def test_errors_are_redis_errors_with_redis_text(redis: FakeRedisClient) -> None:
    run(redis, "RPUSH", "list", "a")
    assert error(redis, "GET", "list") == (
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    )
    assert error(redis, "GET") == "ERR wrong number of arguments for 'get' command"
    run(redis, "SET", "s", "x")
    assert error(redis, "INCR", "s") == "ERR value is not an integer or out of range"
    assert error(redis, "SET", "a", "b", "NX", "XX") == "ERR syntax error"


def test_lists_and_hashes_and_sets(redis: FakeRedisClient) -> None:
    assert run(redis, "RPUSH", "l", "a", "b") == 2
    assert run(redis, "LPUSH", "l", "z", "y") == 4
    assert run(redis, "LRANGE", "l", 0, -1) == [b"y", b"z", b"a", b"b"]
    assert run(redis, "LREM", "l", 0, "z") == 1
    assert run(redis, "LPOP", "l") == b"y"
    assert run(redis, "LLEN", "l") == 2
    assert run(redis, "LPOP", "l", 5) == [b"a", b"b"]
    assert run(redis, "EXISTS", "l") == 0
    assert run(redis, "HSET", "h", "f", "1", "g", "2") == 2
    assert run(redis, "HGETALL", "h") == [b"f", b"1", b"g", b"2"]
    assert run(redis, "HDEL", "h", "f", "nope") == 1
    assert run(redis, "HGET", "h", "g") == b"2"
    assert run(redis, "SADD", "s", "a", "b", "a") == 2
    assert run(redis, "SREM", "s", "a") == 1
    assert run(redis, "SMEMBERS", "s") == [b"b"]


def test_blpop_blocks_until_data_and_later_commands_wait_behind_it(
    server: FakeRedisServer, clock: Clock
) -> None:
    waiter, pusher = server.client(), server.client()
    popped = waiter.command("BLPOP", "q", 1)
    behind = waiter.command("PING")
    assert not has_fired(popped)
    assert not has_fired(behind)
    assert run(pusher, "RPUSH", "q", "hello") == 1
    assert result_of(popped) == [b"q", b"hello"]
    assert result_of(behind) == "PONG"
    assert run(pusher, "LLEN", "q") == 0


def test_blpop_times_out_by_the_clock(server: FakeRedisServer, clock: Clock) -> None:
    waiter = server.client()
    popped = waiter.command("BLPOP", "q", 1)
    clock.advance(0.999)
    assert not has_fired(popped)
    clock.advance(0.001)
    assert result_of(popped) is None


def test_two_blocked_clients_are_served_in_order(server: FakeRedisServer) -> None:
    first, second, pusher = server.client(), server.client(), server.client()
    a = first.command("BLPOP", "q", 0)
    b = second.command("BLPOP", "q", 0)
    run(pusher, "RPUSH", "q", "1", "2")
    assert result_of(a) == [b"q", b"1"]
    assert result_of(b) == [b"q", b"2"]


def stream_with_group(redis: IRedis) -> list[bytes]:
    assert run(redis, "XGROUP", "CREATE", "w", "g", "$", "MKSTREAM") == "OK"
    return [run(redis, "XADD", "w", "*", "m", str(i)) for i in range(3)]


def test_stream_ids_follow_the_clock(redis: FakeRedisClient, clock: Clock) -> None:
    first = run(redis, "XADD", "s", "*", "m", "a")
    second = run(redis, "XADD", "s", "*", "m", "b")
    clock.advance(0.005)
    third = run(redis, "XADD", "s", "*", "m", "c")
    ms = int(first.split(b"-")[0])
    assert (first, second, third) == (
        b"%d-0" % ms,
        b"%d-1" % ms,
        b"%d-0" % (ms + 5),
    )
    assert run(redis, "XRANGE", "s", "-", "+", "COUNT", 1) == [[first, [b"m", b"a"]]]
    assert run(redis, "XDEL", "s", second) == 1
    assert run(redis, "XLEN", "s") == 2


def test_consumer_groups_deliver_once_and_track_pending(
    redis: FakeRedisClient, clock: Clock
) -> None:
    ids = stream_with_group(redis)
    assert error(redis, "XGROUP", "CREATE", "w", "g", "$") == (
        "BUSYGROUP Consumer Group name already exists"
    )
    got = run(redis, "XREADGROUP", "GROUP", "g", "ann", "COUNT", 2, "STREAMS", "w", ">")
    assert got == [[b"w", [[ids[0], [b"m", b"0"]], [ids[1], [b"m", b"1"]]]]]
    got = run(redis, "XREADGROUP", "GROUP", "g", "bob", "COUNT", 5, "STREAMS", "w", ">")
    assert got == [[b"w", [[ids[2], [b"m", b"2"]]]]]
    assert run(redis, "XREADGROUP", "GROUP", "g", "bob", "STREAMS", "w", ">") is None
    assert run(redis, "XPENDING", "w", "g") == [
        3,
        ids[0],
        ids[2],
        [[b"ann", b"2"], [b"bob", b"1"]],
    ]
    clock.advance(1)
    assert run(redis, "XPENDING", "w", "g", "-", "+", 10, "ann") == [
        [ids[0], b"ann", 1000, 1],
        [ids[1], b"ann", 1000, 1],
    ]
    assert run(redis, "XACK", "w", "g", ids[0], ids[0]) == 1
    # ann reads her own pending lines again: the delivery count goes up.
    own = run(redis, "XREADGROUP", "GROUP", "g", "ann", "STREAMS", "w", "0")
    assert own == [[b"w", [[ids[1], [b"m", b"1"]]]]]
    assert run(redis, "XPENDING", "w", "g", "IDLE", 0, "-", "+", 10) == [
        [ids[1], b"ann", 0, 2],
        [ids[2], b"bob", 1000, 1],
    ]


def test_xreadgroup_block_waits_for_xadd(server: FakeRedisServer, clock: Clock) -> None:
    reader, writer = server.client(), server.client()
    stream_with_group(writer)
    run(reader, "XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "STREAMS", "w", ">")
    d = reader.command(
        "XREADGROUP", "GROUP", "g", "c", "COUNT", 1, "BLOCK", 1000, "STREAMS", "w", ">"
    )
    assert not has_fired(d)
    new = run(writer, "XADD", "w", "*", "m", "late")
    assert result_of(d) == [[b"w", [[new, [b"m", b"late"]]]]]
    timed = reader.command(
        "XREADGROUP", "GROUP", "g", "c", "BLOCK", 1000, "STREAMS", "w", ">"
    )
    clock.advance(1)
    assert result_of(timed) is None


def test_xclaim_keeps_or_hands_back_and_xautoclaim_takes_old_ones(
    redis: FakeRedisClient, clock: Clock
) -> None:
    ids = stream_with_group(redis)
    run(redis, "XREADGROUP", "GROUP", "g", "ann", "COUNT", 3, "STREAMS", "w", ">")
    clock.advance(5)
    # ann touches ids[0] (idle back to 0) and hands ids[1] back.
    assert run(redis, "XCLAIM", "w", "g", "ann", 0, ids[0], "JUSTID") == [ids[0]]
    assert run(
        redis, "XCLAIM", "w", "g", "ann", 0, ids[1], "IDLE", 1000000000, "JUSTID"
    ) == [ids[1]]
    run(redis, "XDEL", "w", ids[2])
    clock.advance(5)
    # bob reclaims what idled 10 s: ids[1] (handed back); ids[2] is deleted.
    assert run(redis, "XAUTOCLAIM", "w", "g", "bob", 10000, "0-0", "COUNT", 5) == [
        b"0-0",
        [[ids[1], [b"m", b"1"]]],
        [ids[2]],
    ]
    assert run(redis, "XPENDING", "w", "g", "-", "+", 10) == [
        [ids[0], b"ann", 5000, 1],
        [ids[1], b"bob", 0, 2],
    ]
    assert run(redis, "XCLAIM", "w", "g", "bob", 60000, ids[0]) == []


def test_xautoclaim_cursor_continues_where_count_stopped(
    redis: FakeRedisClient, clock: Clock
) -> None:
    ids = stream_with_group(redis)
    run(redis, "XREADGROUP", "GROUP", "g", "ann", "STREAMS", "w", ">")
    clock.advance(1)
    reply = run(redis, "XAUTOCLAIM", "w", "g", "bob", 0, "0-0", "COUNT", 1, "JUSTID")
    assert reply == [ids[1], [ids[0]], []]


def test_stop_fails_in_flight_and_blocked_commands_and_start_brings_clients_back(
    server: FakeRedisServer, clock: Clock
) -> None:
    states: list[bool] = []
    waiter = server.client(on_state=states.append)
    blocked = waiter.command("BLPOP", "q", 0)
    queued = waiter.command("PING")
    server.stop()
    for d in (blocked, queued):
        with pytest.raises(BrokerUnavailable, match="lost the broker at redis://"):
            result_of(d)
    assert not waiter.connected
    with pytest.raises(BrokerUnavailable, match="unavailable"):
        run(waiter, "PING")
    server.start()
    assert states == [False, True]
    assert waiter.connected
    assert run(waiter, "PING") == "PONG"


def test_start_with_flush_loses_the_data_and_any_start_the_scripts(
    server: FakeRedisServer, redis: FakeRedisClient
) -> None:
    run(redis, "SET", "k", "v")
    run(redis, "EVAL", POP_OR_WAIT.lua, 1, "wait", "{}", "p:", "back")
    server.stop()
    server.start()
    assert run(redis, "GET", "k") == b"v"
    assert error(redis, "EVALSHA", POP_OR_WAIT.sha1, 1, "wait", "{}", "p:", "back") == (
        "NOSCRIPT No matching script. Please use EVAL."
    )
    server.stop()
    server.start(flush=True)
    assert run(redis, "GET", "k") is None


def test_kill_reconnects_after_a_delay_and_close_is_for_good(
    server: FakeRedisServer, clock: Clock
) -> None:
    states: list[bool] = []
    c = server.client(on_state=states.append)
    c.kill()
    assert not c.connected
    clock.advance(c.reconnect_delay)
    assert c.connected
    c.close()
    assert not c.connected
    server.stop()
    server.start()
    assert not c.connected
    assert states == [False, True]


def entry(instance: str, conv: int) -> str:
    return json.dumps({"instance": instance, "conv": conv})


def test_every_script_has_a_python_twin() -> None:
    assert set(TWINS) == set(SCRIPTS)


def test_pop_or_wait_skips_dead_instances_and_waits_when_nobody_is_left(
    redis: FakeRedisClient,
) -> None:
    run(redis, "SET", "sockchat:instance:i1", "{}")
    me = entry("i1", 9)

    def pop_or_wait(who: str, where: str = "back") -> Deferred[Any]:
        return run_script(
            redis,
            POP_OR_WAIT,
            ["sockchat:pair:waiting"],
            [who, "sockchat:instance:", where],
        )

    assert result_of(pop_or_wait(entry("i1", 1))) is None
    run(redis, "LPUSH", "sockchat:pair:waiting", entry("i2", 5), "not json")
    # The dead i2 entry and the bad one are dropped; i1's conv 1 is taken.
    assert result_of(pop_or_wait(me)) == entry("i1", 1).encode()
    assert run(redis, "LLEN", "sockchat:pair:waiting") == 0
    assert result_of(pop_or_wait(me)) is None
    assert result_of(pop_or_wait(entry("i1", 2), "front")) == me.encode()
    assert result_of(pop_or_wait(entry("i1", 3), "front")) is None
    assert run(redis, "LRANGE", "sockchat:pair:waiting", 0, -1) == [
        entry("i1", 3).encode()
    ]
    # A client is never its own partner: its own entry is dropped.
    assert result_of(pop_or_wait(entry("i1", 3))) is None
    assert run(redis, "LRANGE", "sockchat:pair:waiting", 0, -1) == [
        entry("i1", 3).encode()
    ]
    with pytest.raises(RedisError, match="front or back"):
        result_of(pop_or_wait(me, "middle"))


def test_run_script_falls_back_to_eval_only_on_noscript(
    redis: FakeRedisClient, server: FakeRedisServer
) -> None:
    d = run_script(redis, POP_OR_WAIT, ["w"], [entry("i1", 1), "p:", "back"])
    assert result_of(d) is None
    sent = [args[0] for args in server.log]
    assert sent == [b"EVALSHA", b"EVAL", b"LPOP", b"RPUSH"]
    server.log.clear()
    result_of(run_script(redis, POP_OR_WAIT, ["w"], [entry("i1", 2), "p:", "back"]))
    assert [args[0] for args in server.log][:1] == [b"EVALSHA"]


def test_kill_fails_a_blocked_command_and_start_fails_while_the_server_is_down(
    server: FakeRedisServer, clock: Clock
) -> None:
    c = server.client()
    blocked = c.command(
        "XREADGROUP", "GROUP", "g", "c", "BLOCK", 0, "STREAMS", "s", ">"
    )
    with pytest.raises(RedisError, match=r"^NOGROUP"):
        result_of(blocked)
    run(c, "XGROUP", "CREATE", "s", "g", "$", "MKSTREAM")
    blocked = c.command(
        "XREADGROUP", "GROUP", "g", "c", "BLOCK", 0, "STREAMS", "s", ">"
    )
    c.kill()
    with pytest.raises(BrokerUnavailable, match="killed"):
        result_of(blocked)
    # Nothing is left waiting on the server for the killed command.
    other = server.client()
    run(other, "XADD", "s", "*", "m", "x")
    clock.advance(c.reconnect_delay)
    assert run(c, "XPENDING", "s", "g") == [0, None, None, None]
    server.stop()
    with pytest.raises(BrokerUnavailable, match="Connection refused"):
        result_of(server.client().start())
