"""The operators' queue in one process, and the responder that feeds it.

The queue is checked against ``IDeskQueue`` and its promises (holding by
conversation, one answer per line, the history's bounds); the responder
with the real server in memory (``sockchat.testing.MemoryServer``).
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from sockchat import ChatServerFactory, ConversationEnded
from sockchat._desk.memory import NOBODY_ONLINE, DeskResponder, MemoryQueue
from sockchat._desk.queue import (
    HISTORY_CHARS,
    HISTORY_ITEMS,
    Answered,
    Closed,
    Dropped,
    HandedBack,
    IDeskQueue,
    Online,
    Opened,
    Operator,
    Queued,
    Refused,
    Spoken,
    Taken,
    Who,
)
from sockchat.testing import MemoryServer, NoResultYet, RecordingConversation

from conftest import result_of

ALICE = Operator("alice", "Alice")
BOB = Operator("bob", "Bob")


class Queue:
    """A MemoryQueue with its events recorded."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.queue = MemoryQueue(self.clock)
        self.events: list[object] = []
        self.stop = self.queue.subscribe(self.events.append)

    def client(self, cid: int = 1) -> RecordingConversation:
        talk = RecordingConversation(cid, f"127.0.0.1:5000{cid}")
        self.queue.open(talk)
        return talk

    def taken(self):
        events = list(self.events)
        self.events.clear()
        return events


def failure_of(d):
    with pytest.raises(Refused) as caught:
        result_of(d)
    return str(caught.value)


def test_the_memory_queue_provides_the_desks_interface():
    assert verifyObject(IDeskQueue, MemoryQueue(Clock()))


def test_a_person_answers_so_no_answer_timeout_by_default():
    factory = ChatServerFactory(DeskResponder(MemoryQueue(Clock())), clock=Clock())
    assert factory.settings.answer_timeout is None


def test_a_line_is_queued_taken_and_answered_once():
    q = Queue()
    talk = q.client()
    q.clock.advance(5)
    answer = q.queue.ask(talk.info, "hello?")
    events = q.taken()
    assert isinstance(events[0], Opened)
    assert events[0].client.label == "client 1 (127.0.0.1:50001)"
    (spoken,) = [e for e in events if isinstance(e, Spoken)]
    assert (spoken.said.who, spoken.said.text, spoken.said.n) == (
        Who.CLIENT,
        "hello?",
        1,
    )
    (queued,) = [e for e in events if isinstance(e, Queued)]
    assert queued.holder is None
    assert queued.line.since == 5
    entry = queued.line.entry
    assert failure_of(q.queue.answer(entry, "hi", ALICE)) == (
        "take the conversation before answering it"
    )
    result_of(q.queue.take(entry, ALICE))
    assert failure_of(q.queue.take(entry, BOB)) == "Alice holds that conversation"
    assert failure_of(q.queue.answer(entry, "hi", BOB)) == (
        "take the conversation before answering it"
    )
    result_of(q.queue.answer(entry, "hi, how can I help?", ALICE))
    assert result_of(answer) == "hi, how can I help?"
    assert failure_of(q.queue.answer(entry, "again", ALICE)) == (
        "that line is no longer waiting for an answer"
    )
    kinds = [type(e) for e in q.taken()]
    assert kinds == [Spoken, Taken, Answered, Spoken]


def test_a_held_conversations_next_line_is_queued_held_by_its_holder():
    q = Queue()
    talk = q.client()
    first = q.queue.ask(talk.info, "one")
    entry = next(e for e in q.taken() if isinstance(e, Queued)).line.entry
    q.queue.take(entry, ALICE)
    q.queue.answer(entry, "answer one", ALICE)
    result_of(first)
    q.taken()
    q.queue.ask(talk.info, "two")
    (queued,) = [e for e in q.taken() if isinstance(e, Queued)]
    assert queued.holder == ALICE
    assert failure_of(q.queue.take(queued.line.entry, BOB)) == (
        "Alice holds that conversation"
    )
    # Handed back, it is anyone's: its waiting line too.
    assert (
        failure_of(q.queue.hand_back("1", BOB)) == "you do not hold that conversation"
    )
    result_of(q.queue.hand_back("1", ALICE))
    assert HandedBack("1", ALICE) in q.taken()
    result_of(q.queue.take(queued.line.entry, BOB))


def test_a_client_that_leaves_drops_its_line_and_closes_its_conversation():
    q = Queue()
    talk = q.client()
    answer = q.queue.ask(talk.info, "anyone?")
    entry = next(e for e in q.taken() if isinstance(e, Queued)).line.entry
    q.queue.take(entry, ALICE)
    answer.cancel()  # what the server does when the client goes
    q.queue.close("1", "connection-lost")
    events = q.taken()
    assert Dropped(entry, "1", "left") in events
    assert Closed("1", "connection-lost") in events
    assert failure_of(q.queue.answer(entry, "too late", ALICE)) == (
        "that line is no longer waiting for an answer"
    )
    snapshot = result_of(q.queue.snapshot())
    assert snapshot.clients == ()
    assert snapshot.lines == ()
    assert snapshot.holders == ()


def test_end_says_goodbye_to_the_client():
    q = Queue()
    talk = q.client()
    q.queue.ask(talk.info, "bye?")
    entry = next(e for e in q.taken() if isinstance(e, Queued)).line.entry
    q.queue.take(entry, ALICE)
    assert failure_of(q.queue.end("1", BOB)) == "Alice holds that conversation"
    result_of(q.queue.end("1", ALICE))
    assert talk.ended.code == "kicked"
    assert talk.ended.text == "the operator ended this conversation."


def test_the_snapshot_and_history_say_what_is_open_held_and_said():
    q = Queue()
    talk = q.client()
    q.queue.ask(talk.info, "first")
    entry = next(e for e in q.taken() if isinstance(e, Queued)).line.entry
    q.queue.take(entry, ALICE)
    q.queue.answer(entry, "answered", ALICE)
    q.queue.ask(talk.info, "second")
    result_of(q.queue.online(ALICE))
    snapshot = result_of(q.queue.snapshot())
    assert [c.key for c in snapshot.clients] == ["1"]
    assert [line.text for line in snapshot.lines] == ["second"]
    assert snapshot.holders == (("1", ALICE),)
    assert snapshot.operators == (ALICE,)
    history = result_of(q.queue.history("1"))
    assert [(s.who, s.by, s.text) for s in history] == [
        (Who.CLIENT, "", "first"),
        (Who.NOTICE, "Alice", "Alice took it"),
        (Who.OPERATOR, "Alice", "answered"),
        (Who.CLIENT, "", "second"),
    ]
    assert [s.n for s in history] == [1, 2, 3, 4]


def test_the_history_keeps_its_last_items_within_its_bounds():
    q = Queue()
    talk = q.client()
    for n in range(HISTORY_ITEMS + 20):
        q.queue.ask(talk.info, f"line {n}")
    history = result_of(q.queue.history("1"))
    assert len(history) == HISTORY_ITEMS
    assert history[-1].text == f"line {HISTORY_ITEMS + 19}"
    assert history[-1].n == HISTORY_ITEMS + 20
    big = "x" * (HISTORY_CHARS // 3)
    for _ in range(5):
        q.queue.ask(talk.info, big)
    history = result_of(q.queue.history("1"))
    assert sum(len(s.text) for s in history) <= HISTORY_CHARS
    # A line bigger than the whole budget is still kept, alone.
    q.queue.ask(talk.info, "y" * (HISTORY_CHARS + 1))
    assert [len(s.text) for s in result_of(q.queue.history("1"))] == [HISTORY_CHARS + 1]


def test_presence_is_told_to_every_desk():
    q = Queue()
    q.queue.online(ALICE)
    q.queue.online(BOB)
    q.queue.offline(ALICE)
    q.queue.offline(ALICE)
    assert q.taken() == [Online((ALICE,)), Online((ALICE, BOB)), Online((BOB,))]
    q.stop()
    q.queue.online(ALICE)
    assert q.taken() == []


# The responder, with the real server in memory.


def test_a_client_line_waits_for_an_operator_and_gets_the_answer():
    clock = Clock()
    queue = MemoryQueue(clock)
    events: list[object] = []
    queue.subscribe(events.append)
    server = MemoryServer(DeskResponder(queue), clock=clock)
    notices = []
    client = server.connect(on_notice=notices.append)
    answer = client.say("where is my parcel?")
    server.flush()
    with pytest.raises(NoResultYet):
        server.result(answer)
    # Nobody was at the desk: the client was told once.
    assert [(n.code, n.text) for n in notices[1:]] == [("queued", NOBODY_ONLINE)]
    (queued,) = [e for e in events if isinstance(e, Queued)]
    queue.online(ALICE)
    queue.take(queued.line.entry, ALICE)
    queue.answer(queued.line.entry, "it left yesterday", ALICE)
    assert server.result(answer) == "it left yesterday"
    # An operator is online now: the next line is not announced.
    second = client.say("thanks")
    server.flush()
    assert len(notices) == 2
    (_, again) = [e for e in events if isinstance(e, Queued)]
    assert again.holder == ALICE
    queue.end("1", ALICE)
    server.flush()
    with pytest.raises(ConversationEnded):
        server.result(second)
    assert Closed("1", "kicked") in events


def test_a_client_that_leaves_while_waiting_drops_its_line():
    clock = Clock()
    queue = MemoryQueue(clock)
    events: list[object] = []
    queue.subscribe(events.append)
    server = MemoryServer(DeskResponder(queue), clock=clock)
    client = server.connect()
    client.say("hello")
    server.flush()
    (queued,) = [e for e in events if isinstance(e, Queued)]
    client.quit()
    server.flush()
    assert Dropped(queued.line.entry, "1", "left") in events
    assert any(isinstance(e, Closed) for e in events)
    assert failure_of(queue.take(queued.line.entry, ALICE)) == (
        "that line is no longer waiting"
    )
