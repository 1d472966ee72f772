"""The desk's queue at the broker (``BrokerQueue``), on the memory broker.

The set-up is what ``twistd sockchat --desk`` runs: the real instance side
(``BrokerInstance`` and ``QueueResponder``) with clients through
``sockchat.testing.MemoryServer``, and desks that are operators of the
broker's queue, on one clock.  Two desks on one hub are two desk
processes (two instances' desks, or ``python -m sockchat.desk serve``);
a terminal operator (``OperatorDesk``) shares the queue with them.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from sockchat import ConsoleResponder, ConversationEnded
from sockchat._broker.consumer import Consumer, Outbox
from sockchat._broker.instance import BrokerInstance, QueueResponder
from sockchat._broker.memory import MemoryBroker, MemoryHub
from sockchat._broker.operators import OperatorDesk
from sockchat._broker.wire import CLAIM_AFTER, HEARTBEAT, HEARTBEAT_TTL, OPERATORS
from sockchat._desk.brokered import POLL, BrokerQueue, announcement
from sockchat._desk.queue import (
    Answered,
    Closed,
    Dropped,
    HandedBack,
    IDeskQueue,
    Online,
    Operator,
    Queued,
    Refused,
    Spoken,
    Taken,
    Who,
)
from sockchat.testing import MemoryServer, NoResultYet

from conftest import result_of

ALICE = Operator("alice", "Alice")
BOB = Operator("bob", "Bob")


class World:
    """One instance and its clients; desks added with ``desk()``."""

    def __init__(self, latency: float = 0.0) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.hub = MemoryHub(self.clock)
        broker = self.hub.broker(latency=latency)
        self.broker = broker
        self.hub.register_instance()
        self.instance = BrokerInstance(broker, self.clock, "i1")
        self.people = QueueResponder(self.instance, OPERATORS)
        self.instance.start()
        self.server = MemoryServer(self.people, clock=self.clock)
        self.latency = latency

    def desk(self, name: str, **options: Any) -> Desk:
        return Desk(self, name, **options)

    def run(self, seconds: float, step: float = 0.05) -> None:
        for _ in range(round(seconds / step)):
            self.server.advance(step)


class Desk:
    """A desk process: a ``BrokerQueue`` of its own, its events recorded."""

    def __init__(self, world: World, name: str, **options: Any) -> None:
        self.broker = world.hub.broker(latency=world.latency)
        self.queue = BrokerQueue(self.broker, world.clock, name=name, **options)
        self.events: list[Any] = []
        self.queue.subscribe(self.events.append)
        self.started = self.queue.start()
        self.world = world

    def taken(self) -> list[Any]:
        events = list(self.events)
        self.events.clear()
        return events

    def queued(self) -> list[Queued]:
        return [e for e in self.taken() if isinstance(e, Queued)]

    def act(self, d: Deferred[None]) -> None:
        self.world.server.flush()
        result_of(d)

    def refused(self, d: Deferred[None]) -> str:
        self.world.server.flush()
        with pytest.raises(Refused) as caught:
            result_of(d)
        return str(caught.value)


def test_the_broker_queue_provides_the_desks_interface():
    world = World()
    assert verifyObject(IDeskQueue, world.desk("d").queue)


def test_a_line_is_shown_at_once_taken_and_answered_once():
    world = World()
    desk = world.desk("d")
    desk.act(desk.queue.online(ALICE))
    world.run(HEARTBEAT)  # the instance sees an operator online
    notices: list[Any] = []
    talk = world.server.connect(on_notice=notices.append)
    answer = talk.say("hello?")
    world.server.flush()
    (queued,) = desk.queued()  # at once: the desk follows the queue
    entry = queued.line.entry
    assert queued.line.conversation == "i1/1"
    assert queued.holder is None
    desk.act(desk.queue.take(entry, ALICE))
    events = desk.taken()
    assert Taken(entry, "i1/1", ALICE) in events
    assert [n.text for n in notices if n.code == "operator"] == [announcement("Alice")]
    assert "take the conversation" in desk.refused(
        desk.queue.answer(entry, "not yours", BOB)
    )
    desk.act(desk.queue.answer(entry, "hi, how can I help?", ALICE))
    assert world.server.result(answer) == "hi, how can I help?"
    assert desk.refused(desk.queue.answer(entry, "again", ALICE)) == (
        "that line is no longer waiting for an answer"
    )
    kinds = [type(e) for e in desk.taken()]
    assert kinds == [Answered, Spoken]
    # The transcript and the log have who answered: the answer is signed.
    assert world.people._by[1] == "operator alice"
    history = result_of(desk.queue.history("i1/1"))
    assert [(s.who, s.by, s.text) for s in history] == [
        (Who.CLIENT, "", "hello?"),
        (Who.NOTICE, "Alice", "Alice took it"),
        (Who.OPERATOR, "Alice", "hi, how can I help?"),
    ]


def test_a_held_conversations_next_line_is_its_holders_at_once():
    world = World()
    desk = world.desk("d")
    desk.act(desk.queue.online(ALICE))
    talk = world.server.connect()
    first = talk.say("one")
    world.server.flush()
    entry = desk.queued()[0].line.entry
    desk.act(desk.queue.take(entry, ALICE))
    desk.act(desk.queue.answer(entry, "answer one", ALICE))
    world.server.result(first)
    desk.taken()
    talk.say("two")
    world.server.flush()
    events = desk.taken()
    (queued,) = [e for e in events if isinstance(e, Queued)]
    assert queued.holder == ALICE
    (spoken,) = [e for e in events if isinstance(e, Spoken)]
    assert (spoken.said.who, spoken.said.text, spoken.said.n) == (Who.CLIENT, "two", 4)
    # Nobody else may take it, here or elsewhere.
    assert desk.refused(desk.queue.take(queued.line.entry, BOB)) == (
        "Alice holds that conversation"
    )
    other = world.desk("other")
    other.act(other.queue.online(BOB))
    world.run(POLL)
    assert other.refused(other.queue.take(queued.line.entry, BOB)) == (
        "Alice holds that conversation"
    )
    # Handed back, it is anyone's, its waiting line too.
    assert desk.refused(desk.queue.hand_back("i1/1", BOB)) == (
        "you do not hold that conversation"
    )
    desk.act(desk.queue.hand_back("i1/1", ALICE))
    assert HandedBack("i1/1", ALICE) in desk.taken()
    world.run(POLL)
    other.act(other.queue.take(queued.line.entry, BOB))


def test_two_desks_see_each_others_held_lines_and_operators():
    world = World()
    here, there = world.desk("here"), world.desk("there")
    here.act(here.queue.online(ALICE))
    there.act(there.queue.online(BOB))
    world.run(POLL)
    online = [e for e in here.taken() if isinstance(e, Online)][-1]
    assert [o.display for o in online.operators] == ["Alice", "Bob"]
    talk = world.server.connect()
    talk.say("a question")
    world.server.flush()
    entry = here.queued()[0].line.entry
    there.taken()
    here.act(here.queue.take(entry, ALICE))
    world.run(POLL)
    (taken,) = [e for e in there.taken() if isinstance(e, Taken)]
    assert taken.conversation == "i1/1"
    assert taken.by.display == "Alice"
    snapshot = result_of(there.queue.snapshot())
    assert [(k, o.display) for k, o in snapshot.holders] == [("i1/1", "Alice")]
    # Alice answers and hands back: Bob's desk sees it free again.
    here.act(here.queue.answer(entry, "answered", ALICE))
    here.act(here.queue.hand_back("i1/1", ALICE))
    world.run(POLL)
    assert HandedBack("i1/1", taken.by) in there.taken()


def test_a_terminal_operators_line_shows_as_held_by_them():
    world = World()
    desk = world.desk("d")
    desk.act(desk.queue.online(ALICE))
    screen: list[str] = []
    console = ConsoleResponder(screen.append, world.clock)
    terminal_broker = world.hub.broker()
    outbox = Outbox(terminal_broker, OPERATORS, world.clock)
    handler = OperatorDesk(console, terminal_broker, world.clock, outbox)
    consumer = Consumer(
        clock=world.clock,
        broker=terminal_broker,
        group=OPERATORS,
        handler=handler,
        outbox=outbox,
        name="host-1-ab12",
        display="olga",
        by="operator olga",
    )
    result_of(handler.start())
    result_of(consumer.start())
    talk = world.server.connect()
    answer = talk.say("for the terminal")
    world.run(POLL + 1.5)
    (taken,) = [e for e in desk.taken() if isinstance(e, Taken)]
    assert taken.by == Operator("host-1-ab12", "olga")
    console.operator_says("from the terminal")
    world.run(POLL + 0.5)
    assert world.server.result(answer) == "from the terminal"
    assert HandedBack("i1/1", taken.by) in desk.taken()
    # Its answer is in the history, for a desk that takes the next line.
    history = result_of(desk.queue.history("i1/1"))
    assert [(s.who, s.by) for s in history][-1] == (Who.OPERATOR, "operator olga")


def test_a_client_that_leaves_drops_its_line_and_closes_its_conversation():
    world = World()
    desk = world.desk("d")
    desk.act(desk.queue.online(ALICE))
    talk = world.server.connect()
    talk.say("anyone?")
    world.server.flush()
    entry = desk.queued()[0].line.entry
    desk.act(desk.queue.take(entry, ALICE))
    desk.taken()
    talk.abort()
    world.run(POLL)
    events = desk.taken()
    assert Dropped(entry, "i1/1", "left") in events
    assert Closed("i1/1", "left") in events
    assert desk.refused(desk.queue.answer(entry, "too late", ALICE)) == (
        "that line is no longer waiting for an answer"
    )
    snapshot = result_of(desk.queue.snapshot())
    assert (snapshot.clients, snapshot.lines, snapshot.holders) == ((), (), ())


def test_end_says_goodbye_and_anonymous_desks_name_nobody():
    world = World()
    desk = world.desk("d", announce=False)
    desk.act(desk.queue.online(ALICE))
    notices: list[Any] = []
    talk = world.server.connect(on_notice=notices.append)
    said = talk.say("bye?")
    world.server.flush()
    desk.act(desk.queue.take(desk.queued()[0].line.entry, ALICE))
    assert [n for n in notices if n.code == "operator"] == []
    assert desk.refused(desk.queue.end("i1/1", BOB)) == "Alice holds that conversation"
    desk.act(desk.queue.end("i1/1", ALICE))
    world.run(0.5)
    with pytest.raises(ConversationEnded) as ended:
        world.server.result(said)
    assert ended.value.notice.code == "kicked"
    assert ended.value.notice.text == "the operator ended this conversation."


def test_a_desk_that_dies_lets_its_conversations_go_to_another():
    world = World()
    dead, alive = world.desk("dead"), world.desk("alive")
    dead.act(dead.queue.online(ALICE))
    alive.act(alive.queue.online(BOB))
    talk = world.server.connect()
    first = talk.say("one")
    world.server.flush()
    entry = dead.queued()[0].line.entry
    dead.act(dead.queue.take(entry, ALICE))
    dead.act(dead.queue.answer(entry, "answer one", ALICE))
    world.server.result(first)
    second = talk.say("two")  # queued held by Alice's desk
    world.run(POLL)
    entry = alive.queued()[-1].line.entry
    assert (
        alive.refused(alive.queue.take(entry, BOB)) == "Alice holds that conversation"
    )
    assert isinstance(dead.broker, MemoryBroker)
    dead.broker.kill()
    dead.queue.stop()
    world.run(max(CLAIM_AFTER, HEARTBEAT_TTL) + 2 * HEARTBEAT + POLL)
    # The instance let go of the conversation, and its line was abandoned.
    assert world.people._holders == {}
    alive.act(alive.queue.take(entry, BOB))
    alive.act(alive.queue.answer(entry, "Bob here.", BOB))
    assert world.server.result(second) == "Bob here."


def test_a_desk_that_stops_hands_back_what_it_holds():
    world = World()
    desk = world.desk("d")
    desk.act(desk.queue.online(ALICE))
    talk = world.server.connect()
    answer = talk.say("help")
    world.server.flush()
    entry = desk.queued()[0].line.entry
    desk.act(desk.queue.take(entry, ALICE))
    desk.act(desk.queue.stop())
    other = world.desk("other")
    other.act(other.queue.online(BOB))
    world.run(POLL)
    assert [line.entry for line in result_of(other.queue.snapshot()).lines] == [entry]
    other.act(other.queue.take(entry, BOB))
    other.act(other.queue.answer(entry, "took over", BOB))
    assert world.server.result(answer) == "took over"


def test_an_answer_the_broker_cannot_take_is_refused_and_waits_again():
    world = World()
    desk = world.desk("d")
    desk.act(desk.queue.online(ALICE))
    talk = world.server.connect()
    answer = talk.say("hello?")
    world.server.flush()
    entry = desk.queued()[0].line.entry
    desk.act(desk.queue.take(entry, ALICE))
    desk.taken()
    world.hub.lose()
    assert desk.refused(desk.queue.answer(entry, "hi", ALICE)) == (
        "the broker cannot be reached; try again in a moment"
    )
    (queued,) = desk.queued()  # the page may answer it again
    assert (queued.line.entry, queued.holder) == (entry, ALICE)
    world.hub.restore()
    world.run(POLL)
    desk.act(desk.queue.answer(entry, "hi, at last", ALICE))
    assert world.server.result(answer) == "hi, at last"


def test_the_lines_of_an_instance_that_died_leave_the_desk():
    world = World()
    desk = world.desk("d")
    other = world.hub.broker()
    other_name = result_of(other.register_instance({}))
    gone = BrokerInstance(other, world.clock, other_name)
    gone_people = QueueResponder(gone, OPERATORS)
    gone.start()
    server = MemoryServer(gone_people, clock=world.clock)
    server.connect().say("from an instance about to die")
    server.flush()
    world.run(POLL)
    assert [line.text for line in result_of(desk.queue.snapshot()).lines] == [
        "from an instance about to die"
    ]
    assert isinstance(other, MemoryBroker)
    other.kill()  # kill -9: it beats no more
    world.run(HEARTBEAT_TTL + HEARTBEAT + POLL)
    snapshot = result_of(desk.queue.snapshot())
    assert (snapshot.lines, snapshot.clients) == ((), ())


# -- Any order of clients, desks and delays -------------------------------------------


_step = st.tuples(
    st.sampled_from(["say", "say", "leave", "take", "take", "answer", "back", "wait"]),
    st.integers(0, 2),  # which client, or which desk
    st.integers(0, 5),  # which line
)


@settings(deadline=None, max_examples=60)
@given(
    latency=st.sampled_from([0.0, 0.003, 0.02]),
    steps=st.lists(_step, max_size=30),
)
def test_two_desks_never_answer_a_line_twice_and_agree_at_rest(
    latency: float, steps: list[tuple[str, int, int]]
) -> None:
    """Clients speak and leave, two desks (Alice's, Bob's) take, answer and
    hand back lines they see, with replies that take time: every answer a
    client gets was given by the desk whose operator held the line, no line
    gets two, and once things rest both desks see the queue as it is."""
    world = World(latency)
    desks = [world.desk("a"), world.desk("b")]
    who = [ALICE, BOB]
    for desk, operator in zip(desks, who, strict=True):
        desk.queue.online(operator)
    world.run(1)
    clients = [world.server.connect() for _ in range(3)]
    gone: set[int] = set()
    asked: dict[str, Deferred[str]] = {}
    given: dict[str, list[str]] = {}
    for n, (op, x, y) in enumerate(steps):
        desk, operator = desks[x % 2], who[x % 2]
        lines = list(result_of(desk.queue.snapshot()).lines)
        line = lines[y % len(lines)] if lines else None
        if op == "say" and x not in gone and clients[x].my_turn:
            asked[f"line {n}"] = clients[x].say(f"line {n}")
        elif op == "leave" and x not in gone:
            gone.add(x)
            clients[x].abort()
        elif op == "take" and line is not None:
            desk.queue.take(line.entry, operator).addErrback(lambda f: f.trap(Refused))
        elif op == "answer" and line is not None:
            text = f"{operator.name} to {line.text}"
            done = desk.queue.answer(line.entry, text, operator)
            done.addCallback(
                lambda _, t=text, q=line.text: given.setdefault(q, []).append(t)
            )
            done.addErrback(lambda f: f.trap(Refused))
        elif op == "back":
            for key in {ln.conversation for ln in lines}:
                desk.queue.hand_back(key, operator).addErrback(
                    lambda f: f.trap(Refused)
                )
        world.run(0.1 if op == "wait" else 0.02, step=0.01)
    world.run(2 * POLL + 1)
    for text, answers in given.items():
        assert len(answers) == 1, f"{text!r} was answered {answers}"
    for text, d in asked.items():
        try:
            got = world.server.result(d)
        except NoResultYet:
            continue
        except Exception:  # the client left, say
            continue
        assert given.get(text) == [got]
    views = [result_of(d.queue.snapshot()) for d in desks]
    truth = result_of(world.hub.broker().queue_view(OPERATORS, CLAIM_AFTER))
    for view in views:
        assert sorted(line.entry for line in view.lines) == sorted(
            q.entry for q in truth
        )
    assert {k for k, _ in views[0].holders} == {k for k, _ in views[1].holders}
