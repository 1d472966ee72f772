"""From a bot to a person (``IConversation.handoff``), on the memory broker.

A bot in the server's own process, and one in a worker across the broker,
each answer what they know and hand the rest to the operators' queue: the
client is told, the line it waits on goes to the queue with the bot's part
of the history before it, an operator's answer reaches it, and the bot
hears no more of that conversation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from broker_instance import now
from hypothesis import given, settings
from hypothesis import strategies as st
from test_broker import Desk
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer

from sockchat import (
    ConversationInfo,
    IConversation,
    ILifecycle,
    IResponder,
    LineRefused,
)
from sockchat._broker.consumer import Consumer, Outbox
from sockchat._broker.handoff import (
    _MARGIN_ITEMS,
    HANDOFF_NOTICE,
    HandingConversation,
    HandoffResponder,
    _Talk,
)
from sockchat._broker.instance import BrokerInstance, QueueResponder
from sockchat._broker.memory import MemoryHub
from sockchat._broker.wire import (
    HEARTBEAT,
    HISTORY_BYTES,
    HISTORY_ITEMS,
    OPERATORS,
    WORKERS,
    decode,
)
from sockchat._broker.workers import WorkerHandler
from sockchat.testing import MemoryServer, NoResultYet

ANSWERS = {"hours": "We open at nine.", "price": "Ten euros."}


@implementer(IResponder, ILifecycle)
class Bot:
    """Answers what it knows; hands the rest over (or, with *later*, answers
    later, so that a test can hand over while it thinks)."""

    def __init__(self, *, later: bool = False) -> None:
        self.talks: dict[int, IConversation] = {}
        self.later = later
        self.pending: list[Deferred[str]] = []
        self.heard: list[str] = []
        self.endings: list[str] = []

    def started(self, conversation: IConversation) -> str:
        self.talks[conversation.info.id] = conversation
        return "Hello, I am a bot."

    def respond(self, conversation: ConversationInfo, text: str) -> Any:
        self.heard.append(text)
        if self.later:
            self.pending.append(Deferred())
            return self.pending[-1]
        if text in ANSWERS:
            return ANSWERS[text]
        self.talks[conversation.id].handoff(f"no answer to {len(text)} characters")
        return "this answer is never sent"

    def ended(self, conversation: IConversation, reason: str) -> None:
        self.endings.append(reason)


class InProcess:
    """One instance on a memory broker, and *bot* (or what *make* makes of
    the instance: the workers' queue) answering first."""

    def __init__(
        self,
        bot: IResponder | None = None,
        *,
        make: Callable[[BrokerInstance], IResponder] | None = None,
        **options: Any,
    ) -> None:
        self.clock = Clock()
        self.hub = MemoryHub(self.clock)
        self.broker = self.hub.broker()
        self.instance = BrokerInstance(
            self.broker, self.clock, now(self.broker.register_instance({}))
        )
        self.people = QueueResponder(self.instance, OPERATORS)
        first = bot if make is None else make(self.instance)
        assert first is not None
        self.router = HandoffResponder(
            first, self.people, self.clock, bot_timeout=options.pop("bot_timeout", None)
        )
        self.instance.start()
        self.desk = Desk(self.hub, OPERATORS)
        self.desk.online()
        self.server = MemoryServer(self.router, clock=self.clock, **options)
        self.server.advance(HEARTBEAT)  # the instance sees the desk online

    def history(self, conv: int = 1) -> list[tuple[str, str, str]]:
        kept = now(self.broker.history("i1", conv))
        return [(m["who"], m["by"], m["text"]) for m in (decode(k.data) for k in kept)]


def test_a_bot_answers_what_it_knows_and_hands_the_rest_to_a_person():
    bot = Bot()
    world = InProcess(bot)
    notices: list[Any] = []
    talk = world.server.connect(on_notice=notices.append)
    assert world.server.result(talk.listen()) == "Hello, I am a bot."
    assert world.server.say(talk, "hours") == ANSWERS["hours"]
    assert world.desk.length() == 0
    asked = talk.say("where is my parcel?")
    world.server.advance(0)
    assert [n.code for n in notices][-1] == "handoff"
    assert notices[-1].text == HANDOFF_NOTICE
    taken = world.desk.take_line()
    assert taken[1]["text"] == "where is my parcel?"
    assert world.history() == [
        ("bot", "", "Hello, I am a bot."),
        ("client", "", "hours"),
        ("bot", "", "We open at nine."),
        (
            "notice",
            "",
            "the bot handed it over: no answer to 19 characters",
        ),
        ("client", "", "where is my parcel?"),
    ]
    world.desk.answer(taken, "It left this morning.", by="operator ann")
    world.server.advance(1)
    assert world.server.result(asked) == "It left this morning."
    # From now on a person answers: the bot hears nothing more.
    again = talk.say("hours")
    world.server.advance(0)
    world.desk.answer(world.desk.take_line(), "Nine, as the bot said.")
    world.server.advance(1)
    assert world.server.result(again) == "Nine, as the bot said."
    assert bot.heard == ["hours", "where is my parcel?"]
    world.server.result(talk.quit())
    world.server.advance(1)
    assert bot.endings == ["quit"]
    assert world.history() == [], "the history goes with the conversation"


def test_a_handoff_while_the_bot_thinks_drops_its_late_answer():
    bot = Bot(later=True)
    world = InProcess(bot)
    talk = world.server.connect()
    world.server.result(talk.listen())
    asked = talk.say("hmm?")
    world.server.advance(0)
    bot.talks[1].handoff("it took too long")
    bot.talks[1].handoff("twice is once")
    assert bot.pending[0].called, "the bot's answer was cancelled"
    taken = world.desk.take_line()
    world.desk.answer(taken, "A person here.")
    world.server.advance(1)
    assert world.server.result(asked) == "A person here."
    assert [who for who, _, _ in world.history()].count("notice") == 1


def test_a_bot_has_its_own_answer_timeout_and_people_none():
    bot = Bot(later=True)
    world = InProcess(bot, bot_timeout=5, answer_timeout=5)
    talk = world.server.connect()
    world.server.result(talk.listen())
    late = talk.say("hello?")
    world.server.advance(6)
    with pytest.raises(LineRefused) as refused:
        world.server.result(late)
    assert refused.value.notice.code == "responder-timeout"
    assert "(no answer within 5 seconds)" in refused.value.notice.text
    bot.later = False
    asked = talk.say("something unknown")
    world.server.advance(600)  # a person takes their time
    with pytest.raises(NoResultYet):
        world.server.result(asked)
    world.desk.answer(world.desk.take_line(), "Sorry for the wait.")
    world.server.advance(1)
    assert world.server.result(asked) == "Sorry for the wait."


def test_a_client_that_leaves_takes_its_handed_over_line_off_the_queue():
    world = InProcess(Bot())
    talk = world.server.connect()
    world.server.result(talk.listen())
    talk.say("unknown")
    world.server.advance(0)
    assert world.desk.length() == 1
    talk.abort()
    world.server.advance(1)
    assert world.desk.length() == 0


def test_without_an_operators_queue_a_handoff_is_unavailable():
    server = MemoryServer(Bot())
    talk = server.connect()
    server.result(talk.listen())
    with pytest.raises(LineRefused) as refused:
        server.say(talk, "unknown")
    assert refused.value.notice.code == "unavailable"
    assert "no operators' queue" in refused.value.notice.text
    assert server.say(talk, "price") == ANSWERS["price"]


def with_a_worker(bot: Bot) -> InProcess:
    """The workers' queue answering first, and one worker running *bot*,
    counted by the instance (with its hooks)."""
    world = InProcess(
        make=lambda instance: QueueResponder(instance, WORKERS, lifecycle=True)
    )
    worker_broker = world.hub.broker()
    outbox = Outbox(worker_broker, WORKERS, world.clock)
    consumer = Consumer(
        clock=world.clock,
        broker=worker_broker,
        group=WORKERS,
        handler=WorkerHandler(bot, outbox),
        outbox=outbox,
        name="w1",
        by="worker w1",
        capacity=4,
    )
    now(consumer.start())
    world.server.advance(HEARTBEAT)
    return world


def test_a_worker_hands_over_across_the_broker():
    """The bot runs in a worker: its handoff is a message to the instance,
    whose line goes from the workers' queue to the operators'."""
    bot = Bot()
    world = with_a_worker(bot)
    talk = world.server.connect()
    world.server.advance(0.5)
    assert world.server.result(talk.listen()) == "Hello, I am a bot."
    assert world.server.say(talk, "price") == ANSWERS["price"]
    asked = talk.say("can I pay later?")
    world.server.advance(0.5)
    taken = world.desk.take_line()
    assert taken[1]["text"] == "can I pay later?"
    assert now(world.broker.queue_view(WORKERS, 10)) == [], "its entry is gone"
    assert world.history() == [
        ("bot", "worker w1", "Hello, I am a bot."),
        ("client", "", "price"),
        ("bot", "worker w1", "Ten euros."),
        (
            "notice",
            "",
            "the bot handed it over: no answer to 16 characters",
        ),
        ("client", "", "can I pay later?"),
    ]
    world.desk.answer(taken, "Yes, within 30 days.")
    world.server.advance(1)
    assert world.server.result(asked) == "Yes, within 30 days."
    talk.say("price")
    world.server.advance(0.5)
    assert world.desk.take_line()[1]["text"] == "price", "a person answers now"
    assert bot.heard == ["price", "can I pay later?"]


def test_the_example_bot_answers_what_it_knows_and_hands_over_the_rest():
    from examples.handoff_bot import ANSWERS as KNOWN
    from examples.handoff_bot import HandoffBot

    world = InProcess(HandoffBot())
    notices: list[Any] = []
    talk = world.server.connect(on_notice=notices.append)
    assert world.server.result(talk.listen()).startswith("Hello, I am the help bot.")
    assert world.server.say(talk, "Hours?") == KNOWN["hours"]
    asked = talk.say("Can I bring my dog?")
    world.server.advance(0)
    assert "handoff" in [n.code for n in notices]
    taken = world.desk.take_line()
    assert [text for _, _, text in world.history()][-2:] == [
        "the bot handed it over: the bot has no answer to 'Can I bring my dog?'",
        "Can I bring my dog?",
    ]
    world.desk.answer(taken, "Dogs are welcome.")
    world.server.advance(1)
    assert world.server.result(asked) == "Dogs are welcome."


def test_the_workers_queue_times_each_line_with_one_timer_for_all():
    """tap gives the workers' queue the answer timeout: each line fails at
    its own deadline (the client gets responder-timeout, its entry leaves
    the queue), and one timer waits, however many lines do."""
    world = InProcess(
        make=lambda instance: QueueResponder(instance, WORKERS, timeout=5),
        answer_timeout=5,
    )
    workers = Desk(world.hub, WORKERS)
    workers.online()
    world.server.advance(HEARTBEAT)  # the instance counts the worker
    talks = [world.server.connect() for _ in range(3)]
    world.server.advance(0)
    timers = len(world.clock.getDelayedCalls())
    first = talks[0].say("one")
    world.server.advance(1)
    second, third = talks[1].say("two"), talks[2].say("three")
    world.server.advance(0)
    assert len(world.clock.getDelayedCalls()) == timers + 1
    workers.answer(workers.take_line(), "answer to one")  # the first line's
    world.server.advance(0)
    assert world.server.result(first) == "answer to one"
    world.server.advance(4.5)
    with pytest.raises(NoResultYet):
        world.server.result(second)
    world.server.advance(0.5)  # 5 seconds after they were sent
    for late in (second, third):
        with pytest.raises(LineRefused) as refused:
            world.server.result(late)
        assert refused.value.notice.code == "responder-timeout"
        assert "(no answer within 5 seconds)" in refused.value.notice.text
    assert workers.length() == 0, "a timed-out line's entry is deleted"
    again = talks[0].say("four")
    world.server.advance(4.5)
    with pytest.raises(NoResultYet):
        world.server.result(again)
    world.server.advance(0.5)
    with pytest.raises(LineRefused):
        world.server.result(again)


def test_what_a_handoff_passes_on_is_the_bots_last_turns_within_bounds():
    world = InProcess(Bot())
    given: list[list[bytes]] = []
    add_history = world.broker.add_history

    def spy(instance: str, conv: int, items: list[bytes]) -> Any:
        given.append(list(items))
        return add_history(instance, conv, items)

    world.broker.add_history = spy  # type: ignore[method-assign]  # a spy
    talk = world.server.connect()
    world.server.result(talk.listen())
    turns = HISTORY_ITEMS // 2 + _MARGIN_ITEMS // 4  # past the bound, within its margin
    for n in range(turns):
        assert world.server.say(talk, "hours" if n % 2 else "price") in ANSWERS.values()
    talk.say("something else")
    world.server.advance(0)
    handed = [decode(item) for item in given[0]]
    assert len(handed) == HISTORY_ITEMS + 1, "the last items, and the handoff's note"
    assert [m["who"] for m in handed[-3:]] == ["client", "bot", "notice"]
    assert handed[-2]["text"] == ANSWERS["hours" if (turns - 1) % 2 else "price"]


def test_a_handoff_while_the_bot_thinks_ends_the_bots_timeout_not_the_persons():
    bot = Bot(later=True)
    world = InProcess(bot, bot_timeout=5, answer_timeout=5)
    talk = world.server.connect()
    world.server.result(talk.listen())
    asked = talk.say("hmm?")
    world.server.advance(1)
    bot.talks[1].handoff("it took too long")
    world.server.advance(600)  # the bot's timeout is long past: a person's time
    with pytest.raises(NoResultYet):
        world.server.result(asked)
    world.desk.answer(world.desk.take_line(), "A person, at last.")
    world.server.advance(1)
    assert world.server.result(asked) == "A person, at last."
    talk.say("and now?")
    world.server.advance(0)
    talk.abort()
    world.server.advance(1)
    assert world.desk.length() == 0, "the client left: its line left the queue"


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 40), st.none() | st.integers(0, 30)),
        min_size=1,
        max_size=6,
    )
)
def test_each_workers_line_times_out_exactly_at_its_own_deadline(
    plan: list[tuple[int, int | None]],
) -> None:
    """Client *i* says a line at step *s_i* (steps of 0.25 s); a worker
    answers it *w_i* steps later (or never). With one timer for all the
    lines, each line not answered within the timeout (4 s, 16 steps)
    fails at its own deadline, not a step before or after."""
    timeout = 16
    world = InProcess(
        make=lambda instance: QueueResponder(instance, WORKERS, timeout=timeout / 4),
        answer_timeout=timeout / 4,
    )
    workers = Desk(world.hub, WORKERS)
    workers.online()
    world.server.advance(HEARTBEAT)
    talks = [world.server.connect() for _ in plan]
    world.server.advance(0)
    asked: dict[int, Deferred[str]] = {}
    taken: dict[str, tuple[str, dict[str, Any]]] = {}
    for step in range(max(s + timeout + 2 for s, _ in plan)):
        for i, (said_at, _) in enumerate(plan):
            if step == said_at:
                asked[i] = talks[i].say(f"line {i}")
        world.server.advance(0)
        while (entry := workers.take()) is not None:
            taken[entry[1].get("text", "")] = entry
        for i, (said_at, wait) in enumerate(plan):
            if wait is not None and step == said_at + wait and wait < timeout:
                workers.answer(taken[f"line {i}"], f"answer {i}")
        world.server.advance(0)
        for i, (said_at, wait) in enumerate(plan):
            if i not in asked:
                continue
            answered = wait is not None and wait < timeout and step >= said_at + wait
            if answered:
                assert world.server.result(asked.pop(i)) == f"answer {i}"
            elif step >= said_at + timeout:
                with pytest.raises(LineRefused) as refused:
                    world.server.result(asked.pop(i))
                assert refused.value.notice.code == "responder-timeout"
            else:
                with pytest.raises(NoResultYet):
                    world.server.result(asked[i])
        world.server.advance(0.25)
    assert asked == {}


def _within_bounds(items: list[tuple[str, str, str, float]]) -> list[Any]:
    """The longest suffix of *items* within the history's bounds (the
    latest item always, whole)."""
    kept = list(items)
    while len(kept) > 1 and (
        len(kept) > HISTORY_ITEMS or sum(len(t[2]) for t in kept) > HISTORY_BYTES
    ):
        kept.pop(0)
    return kept


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 700), st.integers(0, 120))
        | st.tuples(st.just(1), st.integers(0, 70_000)),
        max_size=8,
    )
)
def test_a_bots_history_keeps_the_last_turns_within_bounds(
    batches: list[tuple[int, int]],
) -> None:
    """However the turns come (many small ones, a few huge), what a
    handoff passes on is the longest run of the last turns within the
    history's bounds, and its size is counted right."""
    talk = _Talk(IConversation, HandingConversation)  # type: ignore[arg-type]  # unused here
    everything: list[tuple[str, str, str, float]] = []
    for n, (count, size) in enumerate(batches):
        for _ in range(count):
            turn = ("client", "", "x" * size, float(n))
            everything.append(turn)
            talk.record(turn)
    talk.trim()
    assert talk.said == _within_bounds(everything)
    assert talk.size == sum(len(t[2]) for t in talk.said)


def test_a_client_that_leaves_while_a_worker_thinks_takes_its_line_off_the_queue():
    """The server waits on the workers' queue's answer directly (a
    ``Later``, not a Deferred, with no step of the handoff's between): a
    client that leaves cancels it, its entry leaves the workers' queue, and
    the worker's late answer is dropped; the next conversation is answered
    as usual."""
    bot = Bot(later=True)
    world = with_a_worker(bot)
    talk = world.server.connect()
    world.server.advance(0.5)
    world.server.result(talk.listen())
    talk.say("still there?")
    world.server.advance(0.5)
    assert bot.heard == ["still there?"], "the worker has the line"
    assert len(now(world.broker.queue_view(WORKERS, 10))) == 1
    talk.abort()
    world.server.advance(0.5)
    assert now(world.broker.queue_view(WORKERS, 10)) == [], "its entry is gone"
    bot.pending[0].callback("an answer nobody waits for")
    world.server.advance(0.5)
    again = world.server.connect()
    world.server.advance(0.5)
    world.server.result(again.listen())
    asked = again.say("and you?")
    world.server.advance(0.5)
    bot.pending[1].callback("here")
    world.server.advance(0.5)
    assert world.server.result(asked) == "here"
