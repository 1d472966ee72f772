"""The broker's contract (``IBroker``), held against both implementations.

Every test here runs twice: on the memory broker (a ``MemoryHub`` on a
``Clock``) and on the Redis one against a real redis-server (slow).  What
one says, the other says too: the memory broker is what the logic tests of
the instance, the consumers and the pairs run on, so where it differs from
Redis those tests would prove nothing.  A property test (at the end) runs
random sequences of queue calls on both and compares every reply.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from zope.interface.verify import verifyObject

from sockchat._broker.interface import (
    BrokerRefused,
    ClientRecord,
    ConsumerSeen,
    IBroker,
    Kept,
    QueuedEntry,
    Taken,
    WorkEntry,
)
from sockchat._broker.memory import MemoryHub
from sockchat._broker.redisbroker import RedisBroker, connect
from sockchat._broker.wire import (
    HISTORY_BYTES,
    HISTORY_ITEMS,
    PROTOCOL,
    Keys,
    Timings,
)

from redis_server import RedisServer, SyncRedis

#: Short times, so that the Redis runs wait little; long enough that a
#: busy machine's pause (the tests beat or touch every 0.1 s) does not make
#: a live one look dead.
TIMES = Timings(heartbeat=0.2, heartbeat_ttl=1.0, claim_after=0.8, inbox_ttl=1.0)
#: How often the tests beat and touch.
OFTEN = 0.1
G = "workers"


class Rig:
    """Brokers of one set-up, and time passing for them."""

    timings = TIMES

    async def broker(self) -> IBroker:
        raise NotImplementedError

    async def later(self, seconds: float) -> None:
        raise NotImplementedError

    def now(self) -> float:
        raise NotImplementedError


class MemoryRig(Rig):
    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.hub = MemoryHub(self.clock, TIMES)

    async def broker(self) -> IBroker:
        return self.hub.broker()

    async def later(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def now(self) -> float:
        return self.clock.seconds()


class RedisRig(Rig):
    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.made: list[RedisBroker] = []

    async def broker(self) -> IBroker:
        made = await connect(
            reactor, self.server.url, inbox=True, work=True, timings=TIMES
        )
        self.made.append(made)
        return made

    async def later(self, seconds: float) -> None:
        await deferLater(reactor, seconds, lambda: None)

    def now(self) -> float:
        return float(reactor.seconds())  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def _flush(server: RedisServer) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", server.port), 5) as s:
        s.sendall(b"FLUSHALL\r\nSCRIPT FLUSH\r\n")
        assert s.recv(100).startswith(b"+OK")


@pytest_twisted.async_yield_fixture(
    params=["memory", pytest.param("redis", marks=pytest.mark.slow)]
)
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    if request.param == "memory":
        yield MemoryRig()
        return
    server = request.getfixturevalue("shared_redis")
    _flush(server)
    made = RedisRig(server)
    yield made
    for broker in made.made:
        await broker.close()


def both(test: Callable[..., Any]) -> Callable[..., Any]:
    """An async test on the reactor (Redis needs it; the memory one does
    not mind)."""
    return pytest_twisted.ensureDeferred(test)


# -- The link ----------------------------------------------------------------------


@both
async def test_each_broker_provides_the_whole_interface(rig: Rig) -> None:
    assert verifyObject(IBroker, await rig.broker())


@both
async def test_the_first_to_look_writes_the_protocol_and_another_is_refused(
    rig: Rig,
) -> None:
    a = await rig.broker()
    await a.check_protocol()
    await a.check_protocol()
    other = str(PROTOCOL + 1)
    if isinstance(rig, MemoryRig):
        rig.hub._state.protocol = other
    else:
        await a._redis.command("SET", Keys().protocol, other)  # type: ignore[attr-defined]
    with pytest.raises(BrokerRefused) as refused:
        await a.check_protocol()
    assert str(refused.value) == (
        f"the broker at {a.display} speaks broker protocol {other}; this sockchat "
        f"speaks {PROTOCOL}: run the same sockchat version everywhere"
    )


# -- Presence ----------------------------------------------------------------------


@both
async def test_instances_are_named_once_and_alive_while_they_beat(rig: Rig) -> None:
    a, b = await rig.broker(), await rig.broker()
    first = await a.register_instance({"port": "1"})
    second = await b.register_instance({"port": "2"})
    assert (first, second) == ("i1", "i2")
    assert (await a.census([])).instances == {"i1", "i2"}
    for _ in range(round(TIMES.heartbeat_ttl / OFTEN) + 2):
        await rig.later(OFTEN)
        await a.beat_instance("i1", {})
    census = await b.census([])
    assert census.instances == {"i1"}
    assert await b.instance_alive("i1")
    assert not await b.instance_alive("i2")
    await a.leave_instance("i1")
    assert (await b.census([])).instances == set()
    assert await b.register_instance({}) == "i3"


@both
async def test_consumers_live_until_their_time_and_are_swept(rig: Rig) -> None:
    a = await rig.broker()
    now = rig.now()
    await a.beat_consumer(G, ConsumerSeen("c2", "bob", now + 10, greets=True))
    await a.beat_consumer(G, ConsumerSeen("c1", "ann", now + 10))
    await a.beat_consumer(G, ConsumerSeen("c3", "gone", now - 1))
    await a.beat_consumer("operators", ConsumerSeen("o1", "olga", now + 10))
    census = await a.census([G])
    assert census.of(G) == (
        ConsumerSeen("c1", "ann", now + 10),
        ConsumerSeen("c2", "bob", now + 10, greets=True),
    )
    assert census.of("operators") == ()
    await a.leave_consumer(G, "c1")
    assert [c.name for c in (await a.census([G, "operators"])).of(G)] == ["c2"]


# -- Inboxes -----------------------------------------------------------------------


@both
async def test_an_inbox_gives_every_waiting_message_in_order(rig: Rig) -> None:
    a, b = await rig.broker(), await rig.broker()
    await a.post("i1", [b"one", b"two"])
    await a.post("i1", [b"three"])
    await a.post("i2", [b"other"])
    assert await b.next_messages("i1", 0.5, 2) == [b"one", b"two"]
    assert await b.next_messages("i1", 0.5, 100) == [b"three"]
    assert await b.next_messages("i2", 0, 100) == [b"other"]


@both
async def test_a_read_of_an_empty_inbox_waits_for_a_post(rig: Rig) -> None:
    a, b = await rig.broker(), await rig.broker()
    reading = b.next_messages("i1", 2.0, 100)
    await rig.later(0.1)
    assert not reading.called
    await a.post("i1", [b"hello"])
    await rig.later(0.1)
    assert await reading == [b"hello"]
    quiet = b.next_messages("i1", 0.2, 100)
    await rig.later(0.4)
    assert await quiet == []


@both
async def test_an_inbox_nobody_reads_goes(rig: Rig) -> None:
    a = await rig.broker()
    await a.post("i9", [b"for nobody"])
    await rig.later(TIMES.inbox_ttl + 0.2)
    assert await a.next_messages("i9", 0, 100) == []


# -- Work queues ---------------------------------------------------------------------


async def _queue(rig: Rig, *texts: bytes) -> tuple[IBroker, list[str]]:
    broker = await rig.broker()
    await broker.open_queue(G)
    await broker.open_queue(G)  # a second time is no error
    return broker, await broker.enqueue(G, list(texts))


@both
async def test_entries_go_oldest_first_each_to_one_consumer(rig: Rig) -> None:
    broker, entries = await _queue(rig, b"a", b"b", b"c")
    assert entries == sorted(entries, key=lambda e: tuple(map(int, e.split("-"))))
    first = await broker.take(G, "c1", 2, 0)
    assert first == [WorkEntry(entries[0], b"a"), WorkEntry(entries[1], b"b")]
    assert await broker.take(G, "c2", 5, 0) == [WorkEntry(entries[2], b"c")]
    assert await broker.take(G, "c2", 5, 0) == []


@both
async def test_a_take_waits_for_an_entry(rig: Rig) -> None:
    broker, _ = await _queue(rig)
    other = await rig.broker()
    waiting = broker.take(G, "c1", 5, 2.0)
    await rig.later(0.1)
    assert not waiting.called
    [entry] = await other.enqueue(G, [b"late"])
    await rig.later(0.1)
    assert await waiting == [WorkEntry(entry, b"late")]
    nothing = broker.take(G, "c1", 5, 0.2)
    await rig.later(0.4)
    assert await nothing == []


@both
async def test_a_waiting_take_is_given_one_enqueue_s_entries_together(
    rig: Rig,
) -> None:
    """The lines of one turn reach a consumer that waits in one read (Redis
    serves a waiting reader after each command: one XADD a line would give
    it the first alone)."""
    broker, _ = await _queue(rig)
    other = await rig.broker()
    waiting = broker.take(G, "c1", 10, 2.0)
    await rig.later(0.1)
    entries = await other.enqueue(G, [b"a", b"b", b"c"])
    await rig.later(0.1)
    assert await waiting == [
        WorkEntry(entries[0], b"a"),
        WorkEntry(entries[1], b"b"),
        WorkEntry(entries[2], b"c"),
    ]
    assert await other.enqueue(G, []) == []


@both
async def test_finish_posts_then_deletes(rig: Rig) -> None:
    broker, (entry, other) = await _queue(rig, b"line", b"other")
    await broker.take(G, "c1", 5, 0)
    assert await broker.touch(G, "c1", [entry, other]) == {entry, other}
    await broker.finish(G, [entry], [("i1", b"answer"), ("i2", b"x"), ("i1", b"2")])
    assert await broker.next_messages("i1", 0, 10) == [b"answer", b"2"]
    assert await broker.next_messages("i2", 0, 10) == [b"x"]
    assert await broker.touch(G, "c1", [entry, other]) == {other}
    assert await broker.still_there(G, [entry, other]) == {other}
    assert [q.entry for q in await broker.queue_view(G, 10)] == [other]


@both
async def test_a_large_batch_is_finished_whole_and_in_order(rig: Rig) -> None:
    """More than a Lua call's arguments go in one finish (it sends them a
    thousand at a time)."""
    texts = [b"%d" % i for i in range(2100)]
    broker, entries = await _queue(rig, *texts)
    assert len(await broker.take(G, "c1", 3000, 0)) == 2100
    posts = [("i1" if i % 3 else "i2", t) for i, t in enumerate(texts)]
    await broker.finish(G, entries[:2050], posts)
    assert await broker.next_messages("i1", 0, 3000) == [
        t for i, t in enumerate(texts) if i % 3
    ]
    assert await broker.next_messages("i2", 0, 3000) == texts[::3]
    assert await broker.still_there(G, entries) == set(entries[2050:])


@both
async def test_a_touched_entry_is_kept_and_an_untouched_one_taken(rig: Rig) -> None:
    broker, (kept, abandoned) = await _queue(rig, b"kept", b"abandoned")
    await broker.take(G, "slow", 1, 0)
    await broker.take(G, "dead", 1, 0)
    idle = TIMES.claim_after
    assert await broker.take_abandoned(G, "c2", idle, 10) == []
    for _ in range(round(idle / OFTEN) + 2):
        await rig.later(OFTEN)
        await broker.touch(G, "slow", [kept])
    taken = await broker.take_abandoned(G, "c2", idle, 10)
    assert taken == [WorkEntry(abandoned, b"abandoned")]
    view = await broker.queue_view(G, idle)
    assert view == [
        QueuedEntry(kept, b"kept", "slow"),
        QueuedEntry(abandoned, b"abandoned", "c2"),
    ]


@both
async def test_an_entry_handed_back_is_taken_at_once(rig: Rig) -> None:
    broker, (entry,) = await _queue(rig, b"back")
    await broker.take(G, "quitter", 1, 0)
    await broker.hand_back(G, "quitter", [entry])
    assert await broker.queue_view(G, TIMES.claim_after) == [
        QueuedEntry(entry, b"back", None)
    ]
    taken = await broker.take_abandoned(G, "next", TIMES.claim_after, 10)
    assert taken == [WorkEntry(entry, b"back")]


@both
async def test_a_given_entry_is_taken_unless_another_holds_it(rig: Rig) -> None:
    broker, entries = await _queue(rig, b"1", b"2", b"3", b"4")
    held = (await broker.take(G, "bob", 1, 0))[0].entry
    assert held == entries[0]
    assert await broker.take_entry(G, "ann", held, TIMES.claim_after) == Taken(
        holder="bob"
    )
    # The third, which nobody took yet: the second is handed back on the
    # way (as Redis must), the fourth is left as it was.
    taken = await broker.take_entry(G, "ann", entries[2], TIMES.claim_after)
    assert taken == Taken(WorkEntry(entries[2], b"3"))
    view = await broker.queue_view(G, TIMES.claim_after)
    assert [(q.entry, q.holder) for q in view] == [
        (entries[0], "bob"),
        (entries[1], None),
        (entries[2], "ann"),
        (entries[3], None),
    ]
    assert await broker.take(G, "carl", 5, 0) == [WorkEntry(entries[3], b"4")]
    again = await broker.take_abandoned(G, "carl", TIMES.claim_after, 5)
    assert again == [WorkEntry(entries[1], b"2")]
    await broker.finish(G, [entries[1]])
    assert await broker.take_entry(G, "ann", entries[1], 1) == Taken()
    # One abandoned by its holder is taken too.
    await rig.later(TIMES.claim_after + 0.1)
    taken = await broker.take_entry(G, "ann", held, TIMES.claim_after)
    assert taken == Taken(WorkEntry(held, b"1"))


@both
async def test_an_entry_enqueued_held_is_its_holders_alone(rig: Rig) -> None:
    broker, (waiting,) = await _queue(rig, b"waiting")
    held = await broker.enqueue_held(G, b"held", "desk/ann")
    idle = TIMES.claim_after
    # Nobody else is given it, as new or as abandoned; the line that
    # waited before it is handed back on the way (as take_entry does).
    assert await broker.take(G, "bob", 5, 0) == []
    assert await broker.take_abandoned(G, "bob", idle, 5) == [
        WorkEntry(waiting, b"waiting")
    ]
    assert await broker.take_entry(G, "carl", held, idle) == Taken(holder="desk/ann")
    assert [(q.entry, q.holder) for q in await broker.queue_view(G, idle)] == [
        (waiting, "bob"),
        (held, "desk/ann"),
    ]
    assert await broker.touch(G, "desk/ann", [held]) == {held}
    # Untouched, it is abandoned like any other.
    await rig.later(idle + 0.1)
    assert await broker.take_abandoned(G, "carl", idle, 5) == [
        WorkEntry(waiting, b"waiting"),
        WorkEntry(held, b"held"),
    ]


@both
async def test_a_read_of_a_queue_that_is_gone_makes_it_again(rig: Rig) -> None:
    broker = await rig.broker()  # a broker that restarted empty: no queue
    assert await broker.take(G, "c1", 5, 0) == []
    (entry,) = await broker.enqueue(G, [b"after"])
    assert await broker.take(G, "c1", 5, 0) == [WorkEntry(entry, b"after")]
    # A queue whose entries came back without its group (an old snapshot).
    other = await rig.broker()
    (lost,) = await other.enqueue("elsewhere", [b"lost"])
    assert await other.take("elsewhere", "c1", 5, 0) == [WorkEntry(lost, b"lost")]


@both
async def test_a_queue_with_no_group_yet_takes_a_held_entry(rig: Rig) -> None:
    broker = await rig.broker()  # a broker that restarted empty: no queue
    held = await broker.enqueue_held(G, b"first", "desk/ann")
    assert await broker.queue_view(G, TIMES.claim_after) == [
        QueuedEntry(held, b"first", "desk/ann")
    ]


@both
async def test_a_follower_sees_each_new_entry_whoever_holds_it(rig: Rig) -> None:
    broker, (first, second) = await _queue(rig, b"1", b"2")
    other = await rig.broker()
    await broker.take(G, "bob", 1, 0)
    assert await other.follow(G, "0-0", 0, 10) == [
        WorkEntry(first, b"1"),
        WorkEntry(second, b"2"),
    ]
    assert await other.follow(G, first, 0, 10) == [WorkEntry(second, b"2")]
    assert await other.follow(G, "0-0", 0, 1) == [WorkEntry(first, b"1")]
    waiting = other.follow(G, second, 2.0, 10)
    await rig.later(0.1)
    assert not waiting.called
    third = await broker.enqueue_held(G, b"3", "desk/ann")
    await rig.later(0.1)
    assert await waiting == [WorkEntry(third, b"3")]
    await broker.finish(G, [first])
    assert [e.entry for e in await other.follow(G, "0-0", 0, 10)] == [second, third]
    quiet = other.follow(G, third, 0.2, 10)
    await rig.later(0.4)
    assert await quiet == []


# -- The directory ---------------------------------------------------------------------


@both
async def test_the_directory_lists_each_instances_clients(rig: Rig) -> None:
    a = await rig.broker()
    for name in ("i1", "i2"):
        assert await a.register_instance({}) == name
    await a.set_client("i1", ClientRecord(2, "10.0.0.2:2", "operators"))
    await a.set_client("i1", ClientRecord(1, "10.0.0.1:1", "operators"))
    await a.set_client("i2", ClientRecord(1, "10.0.0.3:3", "pair", "i1/1"))
    await a.set_client("i1", ClientRecord(2, "10.0.0.2:2", "operators", None))
    assert await a.clients(["i1", "i2"]) == {
        "i1": [
            ClientRecord(1, "10.0.0.1:1", "operators"),
            ClientRecord(2, "10.0.0.2:2", "operators"),
        ],
        "i2": [ClientRecord(1, "10.0.0.3:3", "pair", "i1/1")],
    }
    assert await a.has_client("i1", 2)
    await a.remove_client("i1", 2)
    assert not await a.has_client("i1", 2)
    await a.leave_instance("i2")
    assert await a.clients(["i2"]) == {"i2": []}


@both
async def test_the_directory_keeps_who_holds_a_conversation(rig: Rig) -> None:
    a = await rig.broker()
    assert await a.register_instance({}) == "i1"
    await a.set_client("i1", ClientRecord(1, "10.0.0.1:1", "operators"))
    held = ClientRecord(1, "10.0.0.1:1", "operators", holder="host-1-ab12/ann")
    await a.set_client("i1", held)
    assert await a.clients(["i1"]) == {"i1": [held]}
    await a.set_client("i1", ClientRecord(1, "10.0.0.1:1", "operators"))
    assert (await a.clients(["i1"]))["i1"][0].holder is None


# -- Histories -------------------------------------------------------------------------


@both
async def test_a_history_numbers_its_items_and_keeps_their_order(rig: Rig) -> None:
    a = await rig.broker()
    assert await a.register_instance({}) == "i1"
    assert await a.history("i1", 1) == []
    assert await a.add_history("i1", 1, [b'{"t":"hello"}', b"x y z"]) == 1
    assert await a.add_history("i1", 2, [b"other"]) == 1
    assert await a.add_history("i1", 1, [b"\xe4\xbd\xa0 \xe5\xa5\xbd"]) == 3
    assert await a.history("i1", 1) == [
        Kept(1, b'{"t":"hello"}'),
        Kept(2, b"x y z"),
        Kept(3, b"\xe4\xbd\xa0 \xe5\xa5\xbd"),
    ]
    await a.drop_history("i1", 1)
    assert await a.history("i1", 1) == []
    assert await a.history("i1", 2) == [Kept(1, b"other")]
    # A conversation's numbers start again only with a new history.
    assert await a.add_history("i1", 1, [b"again"]) == 1


@both
async def test_a_history_keeps_its_last_items_within_its_bounds(rig: Rig) -> None:
    a = await rig.broker()
    assert await a.register_instance({}) == "i1"
    many = [b"%d" % n for n in range(1, HISTORY_ITEMS + 11)]
    assert await a.add_history("i1", 1, many) == 1
    kept = await a.history("i1", 1)
    assert [k.n for k in kept] == list(range(11, HISTORY_ITEMS + 11))
    assert kept[-1] == Kept(HISTORY_ITEMS + 10, many[-1])
    # Bytes: the oldest go, so that what is kept fits.
    big = b"x" * 1000
    count = HISTORY_BYTES // 1000
    first = await a.add_history("i1", 2, [big] * (count + 5))
    kept = await a.history("i1", 2)
    assert len(kept) == count
    assert sum(len(k.data) for k in kept) <= HISTORY_BYTES
    assert kept[-1].n == first + count + 4
    # The latest is kept whole, however long.
    huge = b"y" * (HISTORY_BYTES + 1)
    n = await a.add_history("i1", 2, [huge])
    assert await a.history("i1", 2) == [Kept(n, huge)]
    assert await a.add_history("i1", 2, [b"after"]) == n + 1
    assert await a.history("i1", 2) == [Kept(n + 1, b"after")]


@both
async def test_histories_go_with_their_instance(rig: Rig) -> None:
    a = await rig.broker()
    for name in ("i1", "i2", "i3"):
        assert await a.register_instance({}) == name
        await a.add_history(name, 1, [b"said"])
    await a.leave_instance("i1")
    assert await a.history("i1", 1) == []
    # i2 beats on and keeps its history past the heartbeat's life; i3 stops.
    for _ in range(round(TIMES.heartbeat_ttl / OFTEN) + 2):
        await rig.later(OFTEN)
        await a.beat_instance("i2", {})
    assert await a.history("i2", 1) == [Kept(1, b"said")]
    await a.census([])
    assert await a.history("i3", 1) == []


# -- Pairing -----------------------------------------------------------------------


def _waiter(instance: str, conv: int) -> bytes:
    return json.dumps({"v": PROTOCOL, "instance": instance, "conv": conv}).encode()


@both
async def test_pairing_takes_the_first_live_waiter_or_waits(rig: Rig) -> None:
    a = await rig.broker()
    assert await a.register_instance({}) == "i1"
    first, second = _waiter("i1", 1), _waiter("i1", 2)
    dead, broken = _waiter("i7", 1), b"not json"
    assert await a.pair_or_wait(first, front=False) is None
    assert await a.pair_or_wait(first, front=False) is None  # never itself
    assert await a.waiting() == [first]
    assert await a.pair_or_wait(second, front=False) == first
    assert await a.waiting() == []
    # Each waits in turn; the next pops it: a dead instance's entry and one
    # that is not JSON are dropped.
    assert await a.pair_or_wait(dead, front=False) is None
    assert await a.pair_or_wait(broken, front=False) is None
    assert await a.waiting() == [broken]
    assert await a.pair_or_wait(second, front=False) is None
    assert await a.waiting() == [second]
    third = _waiter("i1", 3)
    assert await a.pair_or_wait(third, front=False) == second
    assert await a.pair_or_wait(first, front=True) is None
    assert await a.waiting() == [first]
    await a.stop_waiting(third)  # not there: nothing happens
    await a.stop_waiting(first)
    assert await a.waiting() == []


@both
async def test_one_may_wait_again_at_the_head_taking_nobody(rig: Rig) -> None:
    a = await rig.broker()
    assert await a.register_instance({}) == "i1"
    first, second, third = _waiter("i1", 1), _waiter("i1", 2), _waiter("i1", 3)
    await a.start_waiting(second, front=False)
    await a.start_waiting(first, front=True)  # takes nobody
    await a.start_waiting(third, front=False)
    assert await a.waiting() == [first, second, third]
    await a.start_waiting(third, front=True)  # once: it moves
    assert await a.waiting() == [third, first, second]
    assert await a.pair_or_wait(_waiter("i1", 4), front=False) == third


# -- Both, call by call ----------------------------------------------------------------


_who = st.sampled_from(["c1", "c2"])
_which = st.integers(0, 9)
_calls = st.lists(
    st.one_of(
        st.tuples(st.just("enqueue"), _which, st.integers(1, 3)),
        st.tuples(st.just("enqueue_held"), _who, _which),
        st.tuples(st.just("follow"), _which),
        st.tuples(st.just("take"), _who, st.integers(1, 3)),
        st.tuples(st.just("take_entry"), _who, _which),
        st.tuples(st.just("touch"), _who, _which),
        st.tuples(st.just("finish"), _which),
        st.tuples(st.just("hand_back"), _who, _which),
        st.tuples(st.just("take_abandoned"), _who, st.sampled_from([0, 3600])),
        st.tuples(st.just("still_there"), _which),
        st.tuples(st.just("view")),
    ),
    max_size=25,
)


async def _play(broker: IBroker, calls: list[tuple[Any, ...]]) -> list[Any]:
    """Run *calls*, with entries named by the order they were made."""
    await broker.open_queue(G)
    made: list[str] = []

    def named(entry: str) -> str:
        return f"e{made.index(entry)}"

    def pick(n: int) -> str:
        return made[n % len(made)] if made else "1-1"

    said: list[Any] = []
    for call in calls:
        kind = call[0]
        if kind == "enqueue":
            texts = [b"m%d" % (call[1] + i) for i in range(call[2])]
            made += await broker.enqueue(G, texts)
            said.append([named(e) for e in made[len(made) - call[2] :]])
        elif kind == "enqueue_held":
            made.append(await broker.enqueue_held(G, b"h%d" % call[2], call[1]))
            said.append(named(made[-1]))
        elif kind == "follow":
            after = pick(call[1]) if call[1] % 3 else "0-0"
            got = await broker.follow(G, after, 0, 4)
            said.append([(named(e.entry), e.data) for e in got])
        elif kind == "take":
            got = await broker.take(G, call[1], call[2], 0)
            said.append([named(e.entry) for e in got])
        elif kind == "take_entry":
            taken = await broker.take_entry(G, call[1], pick(call[2]), 3600)
            said.append((taken.entry and named(taken.entry.entry), taken.holder))
        elif kind == "touch":
            got_ = await broker.touch(G, call[1], [pick(call[2])])
            said.append(sorted(named(e) for e in got_))
        elif kind == "finish":
            said.append(await broker.finish(G, [pick(call[1])]))
        elif kind == "hand_back":
            said.append(await broker.hand_back(G, call[1], [pick(call[2])]))
        elif kind == "take_abandoned":
            got = await broker.take_abandoned(G, call[1], call[2], 10)
            said.append([named(e.entry) for e in got])
        elif kind == "still_there":
            there = await broker.still_there(G, [pick(call[1])])
            said.append(sorted(named(e) for e in there))
        else:
            view = await broker.queue_view(G, 3600)
            said.append([(named(q.entry), q.data, q.holder) for q in view])
    return said


def _now(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "no answer at once"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def _run_on_memory(calls: list[tuple[Any, ...]]) -> list[Any]:
    rig = MemoryRig()
    return _now(Deferred.fromCoroutine(_play(rig.hub.broker(), calls)))


@pytest.mark.slow
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(calls=_calls)
def test_the_memory_broker_answers_as_the_redis_one(
    shared_redis: RedisServer, calls: list[tuple[Any, ...]]
) -> None:
    """Random sequences of queue calls, on both: the same replies."""
    _flush(shared_redis)
    redis = SyncRedis(shared_redis.port)
    try:
        broker = RedisBroker(Clock(), redis, timings=TIMES)  # type: ignore[arg-type]
        on_redis = _now(Deferred.fromCoroutine(_play(broker, calls)))
    finally:
        redis.stop()
    assert on_redis == _run_on_memory(calls)


def test_a_memory_broker_answers_at_once() -> None:
    hub = MemoryHub(Clock())
    replies: list[Any] = []
    hub.broker().enqueue(G, [b"x"]).addCallback(replies.append)
    assert replies == [["0-1"]]  # as Redis would at time 0
