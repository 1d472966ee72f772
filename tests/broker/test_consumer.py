"""The consumer loop (sockchat._broker.consumer.Consumer), in memory.

On the memory broker with a ``Clock``: each line to exactly one consumer,
oldest first, taken in batches; a live slow consumer keeps its line, a
dead one's is taken after CLAIM_AFTER, a clean quit hands it back at
once; work of another protocol is refused, work of a dead instance
dropped; the broker lost and back.
"""

from __future__ import annotations

from typing import Any

import pytest
from broker_instance import Counting, World, now
from twisted.internet.defer import Deferred, succeed
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from sockchat._broker.consumer import HandlerBase, Outcome, WorkItem
from sockchat._broker.wire import CLAIM_AFTER, HEARTBEAT, PROTOCOL

GROUP = "operators"


class Desk(HandlerBase):
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


def given(handler: Any) -> Any:
    """A handler factory that gives *handler*."""
    return lambda broker, outbox: handler


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
    world.consumer(given(a))
    world.consumer(given(b))
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


def test_lines_are_taken_and_answered_in_batches_up_to_the_capacity(
    world: World,
) -> None:
    desk = Desk()
    consumer = world.consumer(given(desk), capacity=3, started=False)
    counted = Counting(consumer.broker)  # type: ignore[arg-type]
    consumer.broker = counted  # type: ignore[assignment]
    consumer._outbox._broker = counted  # type: ignore[assignment]
    entries = [world.instance.work(GROUP, conv, f"{conv}") for conv in range(1, 6)]
    now(consumer.start())
    world.run(0.5)
    assert desk.texts == ["1", "2", "3"]
    assert consumer.held == entries[:3]
    assert counted.calls.count("take") + counted.calls.count("take_abandoned") == 2
    for entry in entries[:3]:
        desk.answer(entry, "ok")
    world.run(0.5)
    assert desk.texts == ["1", "2", "3", "4", "5"]
    # The three answers went in one call, with their entries' deletion.
    assert counted.calls.count("finish") == 1
    assert [m["entry"] for m in world.instance.inbox()] == entries[:3]
    assert world.instance.queue_length(GROUP) == 2


class AtOnce(HandlerBase):
    """A handler that answers every line at once, as most bots do."""

    kinds = frozenset({"line"})

    def handle(self, item: WorkItem) -> Outcome:
        return Outcome("answer", item.text.upper())


def test_answers_given_at_once_go_together_before_the_next_read(
    world: World,
) -> None:
    consumer = world.consumer(given(AtOnce()), capacity=3, started=False)
    counted = Counting(consumer.broker)  # type: ignore[arg-type]
    consumer.broker = counted  # type: ignore[assignment]
    consumer._outbox._broker = counted  # type: ignore[assignment]
    entries = [world.instance.work(GROUP, conv, f"line {conv}") for conv in (1, 2, 3)]
    now(consumer.start())
    # No clock advanced: nothing waits for the end of the reactor's turn.
    assert [(m["entry"], m["text"]) for m in world.instance.inbox()] == [
        (entry, f"LINE {conv}") for conv, entry in enumerate(entries, 1)
    ]
    reads = [c for c in counted.calls if c in ("take", "take_abandoned", "finish")]
    assert reads[-2:] == ["finish", "take"]  # one call for the three, then a read
    assert reads.count("finish") == 1
    assert consumer.held == []
    assert world.instance.queue_length(GROUP) == 0


def test_an_answer_goes_to_the_instance_and_the_entry_is_deleted(
    world: World,
) -> None:
    desk = Desk()
    consumer = world.consumer(given(desk))
    entry = world.instance.work(GROUP, 4, "hi")
    assert world.instance.pending(GROUP) == [(entry, consumer.name)]
    desk.answer(entry, "hello")
    world.clock.advance(0)  # sent at the end of the reactor's turn
    assert world.instance.inbox() == [
        {
            "v": PROTOCOL,
            "kind": "answer",
            "conv": 4,
            "entry": entry,
            "text": "hello",
            "by": "operator c1",
        }
    ]
    assert world.instance.queue_length(GROUP) == 0
    assert consumer.held == []


def test_a_live_slow_consumer_keeps_its_line(world: World) -> None:
    slow, other = Desk(), Desk()
    world.consumer(given(slow))
    world.consumer(given(other))
    entry = world.instance.work(GROUP, 1, "slow one")
    assert slow.texts == ["slow one"]
    world.run(CLAIM_AFTER * 4)  # it touches the line every HEARTBEAT
    assert other.items == []
    slow.answer(entry, "at last")
    world.clock.advance(0)
    assert [m["text"] for m in world.instance.inbox()] == ["at last"]


def test_a_dead_consumers_line_is_taken_after_claim_after_and_not_before(
    world: World,
) -> None:
    doomed, other = Desk(), Desk()
    dead = world.consumer(given(doomed))
    world.consumer(given(other))
    entry = world.instance.work(GROUP, 1, "orphan")
    assert doomed.texts == ["orphan"]
    world.kill(dead)
    world.run(CLAIM_AFTER - 1)
    assert other.items == []
    world.run(2.5)
    assert other.texts == ["orphan"]
    other.answer(entry, "taken over")
    world.clock.advance(0)
    assert [(m["entry"], m["by"]) for m in world.instance.inbox()] == [
        (entry, "operator c2")
    ]


def test_a_clean_quit_hands_the_line_back_at_once(world: World) -> None:
    quitter, other = Desk(), Desk()
    leaving = world.consumer(given(quitter))
    world.consumer(given(other))
    entry = world.instance.work(GROUP, 1, "hand me back")
    stopped = leaving.stop()
    world.run(2.5)  # its read that waits ends; the next look takes it
    assert now(stopped) is None
    assert quitter.cancelled == [entry]
    assert other.texts == ["hand me back"]
    assert world.instance.pending(GROUP) == [(entry, "c2")]
    assert world.instance.consumers(GROUP) == ["c2"]  # the quitter said it is gone


def test_an_answer_given_before_quitting_is_sent(world: World) -> None:
    desk = Desk()
    consumer = world.consumer(given(desk), capacity=2, latency=0.05, started=False)
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
    world.consumer(given(Desk()))
    [seen] = now(world.instance.broker.census([GROUP])).of(GROUP)
    assert seen.name == seen.display == "c1"
    assert seen.until > world.clock.seconds()
    assert not seen.greets
    world.run(HEARTBEAT * 3)
    [again] = now(world.instance.broker.census([GROUP])).of(GROUP)
    assert again.until >= seen.until + HEARTBEAT * 3 - 0.2


def test_work_of_another_protocol_is_refused_with_one_log_line(
    world: World, warnings: list[str]
) -> None:
    desk = Desk()
    world.consumer(given(desk))
    other = PROTOCOL + 1
    raw = {"v": other, "kind": "line", "instance": "i1", "conv": 7, "text": "hi"}
    first = world.instance.work(GROUP, 7, raw=raw)
    second = world.instance.work(GROUP, 7, raw=raw)
    world.run(0.5)
    assert desk.items == []
    refused = world.instance.inbox()
    assert [(m["kind"], m["conv"], m["entry"]) for m in refused] == [
        ("refused", 7, first),
        ("refused", 7, second),
    ]
    assert f"broker protocol {other}" in refused[0]["why"]
    assert [w for w in warnings if "refused" in w] == [
        "refused work from instance i1: the work item "
        f"{first} speaks broker protocol {other}; this sockchat speaks {PROTOCOL}: "
        "run the same sockchat version everywhere"
    ]
    assert world.instance.queue_length(GROUP) == 0


def test_work_of_a_dead_instance_is_dropped(world: World) -> None:
    desk = Desk()
    world.consumer(given(desk))
    world.instance.die()
    world.run(HEARTBEAT)  # the consumer's next look at who is alive
    world.instance.work(GROUP, 1, "from beyond")
    world.run(0.5)
    assert desk.items == []
    assert world.instance.queue_length(GROUP) == 0


def test_work_of_an_instance_newer_than_the_last_look_is_taken(world: World) -> None:
    from broker_instance import FakeInstance

    desk = Desk()
    world.consumer(given(desk))
    newcomer = FakeInstance(world.hub.broker())  # came after the consumer looked
    newcomer.work(GROUP, 1, "hello from i2")
    world.run(0.5)
    assert desk.texts == ["hello from i2"]


def test_a_line_deleted_while_held_is_cancelled_and_the_next_taken(
    world: World,
) -> None:
    desk = Desk()
    world.consumer(given(desk))
    entry = world.instance.work(GROUP, 1, "too late")
    world.instance.work(GROUP, 2, "next")
    world.instance.done(GROUP, entry)  # timed out, or the client left
    world.run(HEARTBEAT + 0.5)
    assert desk.gone_items == [entry]
    assert desk.cancelled == [entry]
    assert desk.texts == ["too late", "next"]


def test_capacity_is_how_many_lines_are_held_at_once(world: World) -> None:
    desk = Desk()
    consumer = world.consumer(given(desk), capacity=2)
    entries = [world.instance.work(GROUP, conv, f"{conv}") for conv in (1, 2, 3)]
    world.run(1.5)
    assert desk.texts == ["1", "2"]
    desk.answer(entries[1], "two")
    world.run(0.5)
    assert desk.texts == ["1", "2", "3"]
    assert consumer.held == [entries[0], entries[2]]


def test_the_broker_lost_and_back(world: World, warnings: list[str]) -> None:
    desk = Desk()
    consumer = world.consumer(given(desk))
    entry = world.instance.work(GROUP, 1, "during the outage")
    world.hub.lose()
    world.run(5)
    desk.answer(entry, "sent later")  # answered while the broker is away
    world.run(5)
    assert [w for w in warnings if "lost the broker" in w] == [
        f"lost the broker at {consumer.broker.display}; holding 1 line(s), going "
        "on when it is back"
    ]
    world.hub.restore()
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

    world.consumer(given(Broken()))
    entry = world.instance.work(GROUP, 1, "boom")
    world.run(0.5)
    assert world.instance.inbox() == [
        {
            "v": PROTOCOL,
            "kind": "failed",
            "conv": 1,
            "entry": entry,
            "why": "the operator failed: RuntimeError",
        }
    ]


def test_nothing_owed_deletes_the_entry(world: World) -> None:
    class Quiet(Desk):
        def handle(self, item: WorkItem) -> Deferred[Outcome | None]:
            return succeed(None)

    world.consumer(given(Quiet()))
    world.instance.work(GROUP, 1, "x")
    world.run(0.5)
    assert world.instance.inbox() == []
    assert world.instance.queue_length(GROUP) == 0


def test_a_broker_that_restarts_empty_is_used_again(world: World) -> None:
    desk = Desk()
    world.consumer(given(desk))
    held = world.instance.work(GROUP, 1, "lost with the broker")
    world.hub.lose()
    world.run(3)
    world.hub.restore(flush=True)  # no persistence: no queue, no names
    world.instance = type(world.instance)(world.instance.broker)
    world.run(HEARTBEAT + 0.5)
    assert desk.cancelled == [held]  # nobody waits for it any more
    world.instance.work(GROUP, 2, "after the restart")
    world.run(1.5)
    assert desk.texts == ["lost with the broker", "after the restart"]


def test_a_given_line_is_taken_even_past_the_capacity(world: World) -> None:
    desk = Desk()
    consumer = world.consumer(given(desk))
    world.instance.work(GROUP, 1, "first")
    wanted = world.instance.work(GROUP, 2, "second")
    taken = now(consumer.take_entry(wanted))
    assert taken.entry is not None
    assert desk.texts == ["first", "second"]
    assert sorted(consumer.held) == sorted([wanted, desk.items[0].entry])


def test_abandoned_lines_are_looked_for_on_a_timer_and_nobody_asked_per_line(
    world: World,
) -> None:
    class Quick(Desk):
        def handle(self, item: WorkItem) -> Deferred[Outcome | None]:
            self.items.append(item)
            return succeed(Outcome("answer", "at once"))

    desk = Quick()
    consumer = world.consumer(given(desk), started=False)
    counted = Counting(consumer.broker)  # type: ignore[arg-type]
    consumer.broker = counted  # type: ignore[assignment]
    now(consumer.start())
    for conv in range(20):  # a line every 0.1 s, for 2 s
        world.instance.work(GROUP, conv, "hi")
        world.run(0.1)
    assert len(desk.items) == 20
    assert counted.calls.count("take") >= 20
    assert counted.calls.count("take_abandoned") <= 3  # once a second
    # Who is alive comes from the census at its heartbeat: no question per line.
    assert counted.calls.count("instance_alive") == 0
