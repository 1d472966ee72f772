"""The consumer loop (sockchat._broker.consumer.Consumer), in memory.

Against tests/fakeredis.py with a ``Clock``: each line to exactly one
consumer, oldest first; a live slow consumer keeps its line, a dead one's
is taken after CLAIM_AFTER, a clean quit hands it back at once; work of
another protocol is refused, work of a dead instance dropped; the broker
lost and back.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from broker_instance import World
from twisted.internet.defer import Deferred, succeed
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from sockchat._broker.consumer import (
    Consumer,
    ConsumerError,
    Outcome,
    WorkItem,
    check_protocol,
)
from sockchat._broker.redis import RedisError
from sockchat._broker.wire import CLAIM_AFTER, HEARTBEAT, Keys

from conftest import result_of

GROUP = "operators"


class Desk:
    """A handler whose answers the test gives by hand."""

    kinds = frozenset({"line"})

    def __init__(self) -> None:
        self.items: list[WorkItem] = []
        self.answers: dict[str, Deferred[Outcome | None]] = {}
        self.cancelled: list[str] = []
        self.gone_items: list[str] = []

    def handle(self, item: WorkItem) -> Deferred[Outcome | None]:
        self.items.append(item)
        d: Deferred[Outcome | None] = Deferred(
            lambda _: self.cancelled.append(item.entry)
        )
        self.answers[item.entry] = d
        return d

    def gone(self, item: WorkItem) -> None:
        self.gone_items.append(item.entry)

    def answer(self, entry: str, text: str) -> None:
        self.answers.pop(entry).callback(Outcome("answer", text))

    @property
    def texts(self) -> list[str]:
        return [i.text for i in self.items]


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def warnings():
    texts: list[str] = []

    def observe(event):
        if event.get("log_level") in (LogLevel.warn, LogLevel.error):
            texts.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield texts
    globalLogPublisher.removeObserver(observe)


def test_each_line_goes_to_exactly_one_consumer_oldest_first(world: World) -> None:
    a, b = Desk(), Desk()
    world.consumer(a)
    world.consumer(b)
    entries = [world.instance.work(GROUP, conv, f"line {conv}") for conv in (1, 2, 3)]
    world.run(0.5)
    assert a.texts + b.texts == ["line 1", "line 2"]  # each holds one
    first = a if a.texts == ["line 1"] else b
    first.answer(entries[0], "answer 1")
    world.run(1.5)
    assert sorted(a.texts + b.texts) == ["line 1", "line 2", "line 3"]
    assert first.texts == ["line 1", "line 3"]  # the one that was free
    answers = world.instance.inbox()
    assert [(m["kind"], m["entry"], m["text"]) for m in answers] == [
        ("answer", entries[0], "answer 1")
    ]
    world.run(30)
    assert len(a.items) + len(b.items) == 3  # never given twice


def test_an_answer_goes_to_the_instance_and_then_the_line_is_acknowledged(
    world: World,
) -> None:
    desk = Desk()
    consumer = world.consumer(desk)
    entry = world.instance.work(GROUP, 4, "hi")
    assert world.instance.pending(GROUP) == [(entry, consumer.name)]
    desk.answer(entry, "hello")
    assert world.instance.inbox() == [
        {
            "v": 1,
            "kind": "answer",
            "conv": 4,
            "entry": entry,
            "text": "hello",
            "by": "operator c1",
        }
    ]
    assert world.instance.pending(GROUP) == []
    assert consumer.held == []


def test_a_live_slow_consumer_keeps_its_line(world: World) -> None:
    slow, other = Desk(), Desk()
    world.consumer(slow)
    world.consumer(other)
    entry = world.instance.work(GROUP, 1, "slow one")
    assert slow.texts == ["slow one"]
    world.run(CLAIM_AFTER * 4)  # it touches the line every HEARTBEAT
    assert other.items == []
    slow.answer(entry, "at last")
    assert [m["text"] for m in world.instance.inbox()] == ["at last"]


def test_a_dead_consumers_line_is_taken_after_claim_after_and_not_before(
    world: World,
) -> None:
    doomed, other = Desk(), Desk()
    dead = world.consumer(doomed)
    world.consumer(other)
    entry = world.instance.work(GROUP, 1, "orphan")
    assert doomed.texts == ["orphan"]
    world.kill(dead)
    world.run(CLAIM_AFTER - 1)
    assert other.items == []
    world.run(2.5)
    assert other.texts == ["orphan"]
    other.answer(entry, "taken over")
    assert [(m["entry"], m["by"]) for m in world.instance.inbox()] == [
        (entry, "operator c2")
    ]


def test_a_clean_quit_hands_the_line_back_at_once(world: World) -> None:
    quitter, other = Desk(), Desk()
    leaving = world.consumer(quitter)
    world.consumer(other)
    entry = world.instance.work(GROUP, 1, "hand me back")
    stopped = leaving.stop()
    world.run(1.5)  # its blocking read ends; the next look takes it
    assert result_of(stopped) is None
    assert quitter.cancelled == [entry]
    assert other.texts == ["hand me back"]
    assert world.instance.pending(GROUP) == [(entry, "c2")]
    consumers = world.instance.run("HGETALL", Keys().consumers(GROUP))
    assert consumers[::2] == [b"c2"]  # the quitter said it is gone


class Lagging:
    """An IRedis whose replies come *lag* seconds late, as over a network."""

    def __init__(self, inner: Any, clock: Any, lag: float = 0.05) -> None:
        self._inner, self._clock, self._lag = inner, clock, lag

    @property
    def connected(self) -> bool:
        return bool(self._inner.connected)

    def command(self, *args: Any) -> Deferred[Any]:
        later: Deferred[Any] = Deferred()
        reply = self._inner.command(*args)
        self._clock.callLater(
            self._lag,
            lambda: reply.addBoth(later.callback),  # type: ignore[arg-type]
        )
        return later


def test_an_answer_given_before_quitting_is_sent(world: World) -> None:
    desk = Desk()
    consumer = Consumer(
        clock=world.clock,
        redis=Lagging(world.server.client(), world.clock),
        blocking=world.server.client(),
        group=GROUP,
        handler=desk,
        name="lagging",
        capacity=2,
    )
    consumer.start()
    world.run(0.5)
    entries = [world.instance.work(GROUP, conv, "last one") for conv in (1, 2)]
    world.run(0.5)
    for entry in entries:
        desk.answer(entry, "bye")  # on their way (one behind the other)
    stopped = consumer.stop()
    while not stopped.called:
        world.clock.advance(0.01)
    # Sent by the time it says it has stopped (the shell then disconnects).
    assert [m["entry"] for m in world.instance.inbox()] == entries
    assert world.instance.pending(GROUP) == []


def test_consumers_say_they_are_online(world: World) -> None:
    world.consumer(Desk())
    raw = world.instance.run("HGET", Keys().consumers(GROUP), "c1")
    record = json.loads(raw)
    assert record["v"] == 1
    assert record["name"] == "c1"
    assert record["until"] > world.clock.seconds()
    world.run(HEARTBEAT * 3)
    again = json.loads(world.instance.run("HGET", Keys().consumers(GROUP), "c1"))
    assert again["until"] >= record["until"] + HEARTBEAT * 3 - 0.2


def test_work_of_another_protocol_is_refused_with_one_log_line(
    world: World, warnings: list[str]
) -> None:
    desk = Desk()
    world.consumer(desk)
    raw = {"v": 2, "kind": "line", "instance": "i1", "conv": 7, "text": "hi"}
    first = world.instance.work(GROUP, 7, raw=raw)
    second = world.instance.work(GROUP, 7, raw=raw)
    world.run(0.5)
    assert desk.items == []
    refused = world.instance.inbox()
    assert [(m["kind"], m["conv"], m["entry"]) for m in refused] == [
        ("refused", 7, first),
        ("refused", 7, second),
    ]
    assert "broker protocol 2" in refused[0]["why"]
    assert [w for w in warnings if "refused" in w] == [
        "refused work from instance i1: the work item "
        f"{first} speaks broker protocol 2; this sockchat speaks 1: run the same "
        "sockchat version everywhere"
    ]
    assert world.instance.stream_length(GROUP) == 0
    assert world.instance.pending(GROUP) == []


def test_work_of_a_dead_instance_is_dropped(world: World) -> None:
    desk = Desk()
    world.consumer(desk)
    world.instance.die()
    world.instance.work(GROUP, 1, "from beyond")
    world.run(0.5)
    assert desk.items == []
    assert world.instance.stream_length(GROUP) == 0
    assert world.instance.pending(GROUP) == []
    assert world.instance.run("SMEMBERS", Keys().instances) == []


def test_a_line_deleted_while_held_is_cancelled_and_the_next_taken(
    world: World,
) -> None:
    desk = Desk()
    world.consumer(desk)
    entry = world.instance.work(GROUP, 1, "too late")
    world.instance.work(GROUP, 2, "next")
    world.instance.done(GROUP, entry)  # timed out, or the client left
    world.run(HEARTBEAT + 0.5)
    assert desk.gone_items == [entry]
    assert desk.cancelled == [entry]
    assert desk.texts == ["too late", "next"]


def test_capacity_is_how_many_lines_are_held_at_once(world: World) -> None:
    desk = Desk()
    consumer = world.consumer(desk, capacity=2)
    entries = [world.instance.work(GROUP, conv, f"{conv}") for conv in (1, 2, 3)]
    world.run(1.5)
    assert desk.texts == ["1", "2"]
    desk.answer(entries[1], "two")
    world.run(0.5)
    assert desk.texts == ["1", "2", "3"]
    assert consumer.held == [entries[0], entries[2]]


def test_the_broker_lost_and_back(world: World, warnings: list[str]) -> None:
    desk = Desk()
    consumer = world.consumer(desk)
    entry = world.instance.work(GROUP, 1, "during the outage")
    world.server.stop()
    world.run(5)
    desk.answer(entry, "sent later")  # answered while the broker is away
    world.run(5)
    assert [w for w in warnings if "lost the broker" in w] == [
        "lost the broker at redis://fake-redis:6379/0; holding 1 line(s), going on "
        "when it is back"
    ]
    world.server.start()
    world.instance.beat()  # the instance is back too
    world.run(1.5)
    assert [m["text"] for m in world.instance.inbox()] == ["sent later"]
    assert consumer.held == []
    world.instance.work(GROUP, 2, "after")
    world.run(1.5)
    assert desk.texts == ["during the outage", "after"]
    assert len([w for w in warnings if "lost the broker" in w]) == 1


def test_a_handler_that_fails_sends_failed(world: World) -> None:
    class Broken(Desk):
        def handle(self, item: WorkItem) -> Deferred[Outcome | None]:
            raise RuntimeError("oops")

    world.consumer(Broken())
    entry = world.instance.work(GROUP, 1, "boom")
    world.run(0.5)
    assert world.instance.inbox() == [
        {
            "v": 1,
            "kind": "failed",
            "conv": 1,
            "entry": entry,
            "why": "the operator failed: RuntimeError",
        }
    ]


def test_nothing_owed_acknowledges_and_deletes(world: World) -> None:
    class Quiet(Desk):
        def handle(self, item: WorkItem) -> Deferred[Outcome | None]:
            return succeed(None)

    world.consumer(Quiet())
    world.instance.work(GROUP, 1, "x")
    world.run(0.5)
    assert world.instance.inbox() == []
    assert world.instance.stream_length(GROUP) == 0


def test_the_broker_protocol_is_checked(world: World) -> None:
    redis = world.server.client()
    result_of(Deferred.fromCoroutine(check_protocol(redis, Keys(), where="here")))
    assert world.instance.run("GET", Keys().protocol) == b"1"
    world.instance.run("SET", Keys().protocol, "2")
    with pytest.raises(ConsumerError) as e:
        result_of(Deferred.fromCoroutine(check_protocol(redis, Keys(), where="here")))
    assert str(e.value) == (
        "the broker at here speaks broker protocol 2; this sockchat speaks 1: "
        "run the same sockchat version everywhere"
    )


def test_a_broker_that_restarts_empty_is_used_again(world: World) -> None:
    desk = Desk()
    world.consumer(desk)
    held = world.instance.work(GROUP, 1, "lost with the broker")
    world.server.stop()
    world.run(3)
    world.server.start(flush=True)  # no persistence: no stream, no group
    world.instance.beat()
    world.run(HEARTBEAT + 0.5)
    assert desk.cancelled == [held]  # nobody waits for it any more
    world.instance.work(GROUP, 2, "after the restart")
    world.run(1.5)
    assert desk.texts == ["lost with the broker", "after the restart"]


def test_a_group_the_broker_refuses_fails_the_start(world: World) -> None:
    world.instance.run("SET", Keys().work(GROUP), "not a stream")
    consumer = Consumer(
        clock=world.clock,
        redis=world.server.client(),
        blocking=world.server.client(),
        group=GROUP,
        handler=Desk(),
        name="c9",
    )
    with pytest.raises(RedisError):
        result_of(consumer.start())


def test_a_read_the_broker_refuses_is_logged_once(
    world: World, warnings: list[str]
) -> None:
    desk = Desk()
    world.consumer(desk)
    world.instance.run("DEL", Keys().work(GROUP))
    world.instance.run("SET", Keys().work(GROUP), "not a stream")
    world.run(5)
    assert [w for w in warnings if "refused a read" in w] == [
        "the broker refused a read: WRONGTYPE Operation against a key holding "
        "the wrong kind of value"
    ]
