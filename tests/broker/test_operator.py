"""The operator console across instances (sockchat._broker.operators.OperatorDesk),
in memory, driven through ``operator_says``: prompts that name the client
and its instance, /list of every client of every live instance and how
each one's line stands, /to (also for a line that waits in the queue),
/kick, a client that leaves while its line is on screen."""

from __future__ import annotations

import re

import pytest
from broker_instance import FakeInstance, World, now
from twisted.internet.task import Clock

from sockchat import ConsoleResponder
from sockchat._broker.consumer import Consumer
from sockchat._broker.operators import OperatorDesk
from sockchat._broker.wire import PROTOCOL
from sockchat.operator import QUIET_AT_END, OperatorLines

GROUP = "operators"
#: How the console says that client 1 left (its wording may change).
LEFT = re.compile(r"client 1\b[^\n]* left")


class Operator:
    def __init__(self, world: World, name: str = "ann", *, hold: int = 1) -> None:
        self.world = world
        self.screen: list[str] = []
        self.console = ConsoleResponder(self.screen.append, world.clock)

        def desk(broker, outbox) -> OperatorDesk:
            self.desk = OperatorDesk(self.console, broker, world.clock, outbox)
            return self.desk

        self.consumer: Consumer = world.consumer(desk, capacity=hold)
        self.consumer.by = f"operator {name}"
        self.consumer.display = name
        self.desk.start()

    def says(self, text: str) -> str:
        """What the screen shows after the operator typed *text*."""
        self.screen.clear()
        self.console.operator_says(text)
        return self.shown()

    def shown(self) -> str:
        shown = "".join(self.screen)
        self.screen.clear()
        return shown


def inbox(world: World) -> list[dict]:
    """What the instance was sent, once the operator's answers have gone."""
    world.clock.advance(0)
    return world.instance.inbox()


@pytest.fixture
def world() -> World:
    return World()


def test_a_line_is_shown_with_its_client_and_instance_and_answered(
    world: World,
) -> None:
    ann = Operator(world)
    world.instance.connect(3, "127.0.0.1:5000")
    world.run(1.5)
    entry = world.instance.work(GROUP, 3, "hi\x1b[2J there")
    assert ann.shown() == (
        "client 1 (i1/3, 127.0.0.1:5000): hi\\x1b[2J there\nserver --> client 1: "
    )
    ann.says("hello")
    assert inbox(world) == [
        {
            "v": PROTOCOL,
            "kind": "answer",
            "conv": 3,
            "entry": entry,
            "text": "hello",
            "by": "operator ann",
        }
    ]


def test_list_shows_every_client_of_every_live_instance(world: World) -> None:
    ann = Operator(world)
    other = FakeInstance(world.hub.broker())
    world.instance.connect(1, "10.0.0.1:1")
    other.connect(1, "10.0.0.2:2")
    world.run(1.5)
    world.instance.work(GROUP, 1, "first")
    ann.shown()
    assert ann.says("/list") == (
        "2 connected, 1 waiting for you:\n"
        '  client 1 (i1/1, 10.0.0.1:1) waiting #1: "first"\n'
        "  client 2 (i2/1, 10.0.0.2:2) their turn: (nothing yet)\n"
        "server --> client 1: "
    )
    other.die()
    world.run(1.5)
    assert "1 connected" in ann.says("/list")
    assert now(world.instance.broker.census([])).instances == {"i1"}


def test_to_answers_out_of_order_and_kick_ends_on_the_instance(world: World) -> None:
    ann = Operator(world, hold=2)
    for conv in (1, 2):
        world.instance.connect(conv)
    world.run(1.5)
    world.instance.work(GROUP, 1, "one")
    world.run(1.5)
    second = world.instance.work(GROUP, 2, "two")
    ann.says("/to 2 you first")
    ann.says("/kick 1")
    messages = inbox(world)
    assert [(m["kind"], m["conv"]) for m in messages] == [("answer", 2), ("end", 1)]
    assert messages[0]["entry"] == second
    assert messages[1]["code"] == "kicked"


def test_a_client_that_leaves_while_its_line_is_shown(world: World) -> None:
    ann = Operator(world)
    world.instance.connect(4)
    world.run(1.5)
    ann.desk.stop()  # no more looks at the clients: the deleted line tells
    entry = world.instance.work(GROUP, 4, "bye")
    world.instance.leave(4)
    world.instance.done(GROUP, entry)  # the instance gives up the line
    world.run(2.5)
    assert LEFT.search(ann.shown())
    assert "was not sent" in ann.says("too late")
    assert inbox(world) == []


def test_a_line_that_times_out_says_so(world: World) -> None:
    ann = Operator(world)
    world.instance.connect(4)
    world.run(1.5)
    entry = world.instance.work(GROUP, 4, "anyone?")
    world.instance.done(GROUP, entry)  # --answer-timeout: the client stays
    world.run(2.5)
    shown = ann.shown()
    assert "timed out" in shown
    assert not LEFT.search(shown)


def test_a_client_whose_line_comes_before_the_poll_sees_it(world: World) -> None:
    ann = Operator(world)
    world.instance.work(GROUP, 9, "quick", peer="10.9.9.9:9")
    assert "client 1 (i1/9, 10.9.9.9:9): quick" in ann.shown()
    world.run(3)  # not yet in the instance's hash: it stays
    assert "client 1 (i1/9" in ann.says("/list")


def test_two_operators_share_one_queue_oldest_first(world: World) -> None:
    ann, bob = Operator(world, "ann"), Operator(world, "bob")
    for conv in (1, 2, 3):
        world.instance.connect(conv)
    world.run(1.5)
    entries = [world.instance.work(GROUP, conv, f"line {conv}") for conv in (1, 2, 3)]
    ann_saw, bob_saw = ann.shown(), bob.shown()
    assert ("line 1" in ann_saw) != ("line 1" in bob_saw)
    assert ("line 2" in ann_saw) != ("line 2" in bob_saw)
    assert "line 3" not in ann_saw + bob_saw
    first = ann if "line 1" in ann_saw else bob
    shown = first.says("one")
    world.run(1.5)
    assert "line 3" in shown + first.shown()
    messages = inbox(world)
    assert [(m["entry"], m["text"]) for m in messages] == [(entries[0], "one")]


def test_what_the_broker_says_of_a_client_is_shown_safely(world: World) -> None:
    ann = Operator(world)
    world.instance.connect(1, "\x1b]0;owned\x07")
    world.run(1.5)
    assert "(i1/1, \\x1b]0;owned\\x07) their turn" in ann.says("/list")


def test_a_held_line_of_an_instance_that_dies_is_dropped(world: World) -> None:
    ann = Operator(world)
    world.instance.connect(4)
    world.run(1.5)
    ann.desk.stop()  # the held line tells, not the look at the clients
    world.instance.work(GROUP, 4, "and then it crashed")
    world.instance.die()  # its directory goes with it
    world.run(3)
    assert LEFT.search(ann.shown())
    assert world.instance.queue_length(GROUP) == 0
    assert ann.consumer.held == []


class Said:
    """A console stand-in that records what the operator said."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self.waiting = 0

    def operator_says(self, text: str) -> None:
        self.said.append(text)
        self.waiting -= 1 if not text.startswith("/") else 0


def test_piped_lines_wait_for_client_lines_and_commands_do_not() -> None:
    console, ended, clock = Said(), [], Clock()
    stdin = OperatorLines(console, clock, piped=True, on_end=lambda: ended.append(1))
    stdin.dataReceived(b"first\r\n/list\nsec")
    assert console.said == ["/list"]
    stdin.dataReceived(b"ond\n")
    stdin.connectionLost()
    assert ended == []  # two answers are still to be used
    clock.advance(QUIET_AT_END - 1)
    console.waiting = 1
    stdin.pump()
    assert console.said == ["/list", "first"]
    clock.advance(QUIET_AT_END - 1)  # a line came: the wait begins again
    assert ended == []
    console.waiting = 1
    stdin.pump()
    assert console.said == ["/list", "first", "second"]
    assert ended == [1]


def test_typed_lines_go_at_once_and_a_long_one_is_dropped_whole() -> None:
    console = Said()
    stdin = OperatorLines(
        console, Clock(), piped=False, on_end=lambda: None, max_line=10
    )
    stdin.dataReceived(b"short\n" + b"x" * 11)
    stdin.dataReceived(b"yy\nafter\n" + b"z" * 11 + b"\nlast")
    stdin.connectionLost()
    assert console.said == ["short", "after", "last"]


def test_piped_lines_nobody_asks_for_end_it_after_a_quiet_time() -> None:
    console, ended, clock = Said(), [], Clock()
    stdin = OperatorLines(console, clock, piped=True, on_end=lambda: ended.append(1))
    stdin.dataReceived(b"an answer nobody wants\n")
    stdin.connectionLost()
    clock.advance(QUIET_AT_END - 0.1)
    assert ended == []
    clock.advance(0.2)
    assert ended == [1]
    assert console.said == []


def _three_lines(world: World) -> tuple[Operator, Operator, list[str]]:
    """ann holds client 1's line, bob client 2's; client 3's waits."""
    ann = Operator(world, "ann")
    for conv in (1, 2, 3):
        world.instance.connect(conv, f"10.0.0.{conv}:{conv}")
    world.run(1.5)
    entries = [world.instance.work(GROUP, 1, "one")]  # ann is the only one
    world.run(0.5)
    bob = Operator(world, "bob")
    world.run(1.5)
    entries += [world.instance.work(GROUP, 2, "two")]  # ann is busy
    world.run(0.5)
    entries += [world.instance.work(GROUP, 3, "three")]  # both are
    world.run(1.5)  # a look at the queue
    assert "one" in ann.shown()
    assert "two" in bob.shown()
    return ann, bob, entries


def test_list_says_whose_line_waits_where(world: World) -> None:
    ann, bob, _ = _three_lines(world)
    assert ann.says("/list") == (
        "3 connected, 1 waiting for you:\n"
        '  client 1 (i1/1, 10.0.0.1:1) waiting #1: "one"\n'
        '  client 2 (i1/2, 10.0.0.2:2) held by operator bob: "two"\n'
        '  client 3 (i1/3, 10.0.0.3:3) waiting in the queue: "three"\n'
        "server --> client 1: "
    )
    assert 'client 1 (i1/1, 10.0.0.1:1) held by operator ann: "one"' in bob.says(
        "/list"
    )


def test_to_takes_a_line_that_waits_in_the_queue(world: World) -> None:
    ann, _bob, entries = _three_lines(world)
    ann.says("/to 3 here you are")
    messages = inbox(world)
    assert [
        (m["kind"], m["conv"], m["entry"], m["text"], m["by"]) for m in messages
    ] == [("answer", 3, entries[2], "here you are", "operator ann")]
    assert ann.consumer.held == [entries[0]]  # its own line is still its own
    world.run(1.5)
    assert "client 3 (i1/3, 10.0.0.3:3) their turn" in ann.says("/list")


def test_to_a_line_another_operator_holds_sends_nothing(world: World) -> None:
    ann, _bob, _ = _three_lines(world)
    assert ann.says("/to 2 mine!") == (
        "client 2's line is held by operator bob; nothing was sent\n"
        "server --> client 1: "
    )
    assert inbox(world) == []
    ann.says("/to 1 yours")  # its own line: answered as on one server
    assert [(m["conv"], m["text"]) for m in inbox(world)] == [(1, "yours")]
