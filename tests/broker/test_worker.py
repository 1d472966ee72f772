"""Workers (sockchat._broker.consumer.WorkerHandler), in memory: any responder that
``--responder`` takes answers through the broker, with its lifecycle hooks
and an ``IConversation`` whose notify/end reach the instance."""

from __future__ import annotations

from typing import Any

import pytest
from broker_instance import FakeInstance, World, now
from twisted.internet.defer import Deferred
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sockchat import (
    ConversationInfo,
    IConversation,
    ILifecycle,
    IResponder,
    as_responder,
)
from sockchat._broker.consumer import Consumer, RemoteConversation
from sockchat._broker.wire import PROTOCOL
from sockchat._broker.workers import WorkerHandler

GROUP = "workers"


@pytest.fixture
def world() -> World:
    return World()


def worker(world: World, responder: Any, concurrency: int = 4) -> Consumer:
    return world.consumer(
        lambda broker, outbox: WorkerHandler(as_responder(responder), outbox),
        capacity=concurrency,
        group=GROUP,
    )


def inbox(world: World, instance: FakeInstance | None = None) -> list[Any]:
    """What the instance was sent, once the worker's answers have gone."""
    world.clock.advance(0)
    return (instance or world.instance).inbox()


@implementer(IResponder, ILifecycle)
class Greeter:
    def __init__(self) -> None:
        self.talking: dict[int, IConversation] = {}
        self.endings: list[tuple[int, str]] = []

    def started(self, conversation: IConversation) -> str:
        self.talking[conversation.info.id] = conversation
        conversation.notify("welcome", "you are talking to a worker")
        return f"hello, {conversation.info.peer}"

    def ended(self, conversation: IConversation, reason: str) -> None:
        del self.talking[conversation.info.id]
        self.endings.append((conversation.info.id, reason))

    def respond(self, conversation: ConversationInfo, text: str) -> str:
        if text == "kick me":
            self.talking[conversation.id].end("kicked", "as you wished")
        return f"{conversation.id}: {text.upper()}"


def test_a_line_is_answered_by_the_responder(world: World) -> None:
    worker(world, lambda conversation, text: text[::-1])
    entry = world.instance.work(GROUP, 3, "olleh")
    assert inbox(world) == [
        {
            "v": PROTOCOL,
            "kind": "answer",
            "conv": 3,
            "entry": entry,
            "text": "hello",
            "by": "operator c1",
        }
    ]


def test_started_may_speak_first_and_its_conversation_notifies_and_ends(
    world: World,
) -> None:
    greeter = Greeter()
    worker(world, greeter)
    started = world.instance.work(GROUP, 5, kind="started", peer="10.0.0.1:99")
    line = world.instance.work(GROUP, 5, "kick me")
    messages = inbox(world)
    assert [(m["kind"], m.get("entry"), m.get("text")) for m in messages] == [
        ("notify", None, "you are talking to a worker"),
        ("answer", started, "hello, 10.0.0.1:99"),
        ("end", None, "as you wished"),
        ("answer", line, "1: KICK ME"),
    ]
    assert messages[0]["code"] == "welcome"
    assert messages[2]["code"] == "kicked"
    assert {m["conv"] for m in messages} == {5}
    world.instance.work(GROUP, 5, kind="ended", reason="kicked")
    assert greeter.endings == [(1, "kicked")]
    assert inbox(world) == []
    assert world.instance.queue_length(GROUP) == 0  # the worker deleted them


def test_started_that_returns_nothing_owes_nothing(world: World) -> None:
    @implementer(IResponder, ILifecycle)
    class Quiet:
        def started(self, conversation: IConversation) -> None:
            return None

        def ended(self, conversation: IConversation, reason: str) -> None:
            pass

        def respond(self, conversation: ConversationInfo, text: str) -> str:
            return text

    worker(world, Quiet())
    world.instance.work(GROUP, 1, kind="started")
    assert inbox(world) == []
    assert world.instance.queue_length(GROUP) == 0


def test_conversations_of_two_instances_get_ids_of_their_own(world: World) -> None:
    seen: list[ConversationInfo] = []

    def respond(conversation: ConversationInfo, text: str) -> str:
        seen.append(conversation)
        return "ok"

    worker(world, respond)
    other = FakeInstance(world.hub.broker())
    world.instance.work(GROUP, 1, "a", peer="1.1.1.1:1")
    other.work(GROUP, 1, "b", peer="2.2.2.2:2")
    world.instance.work(GROUP, 1, "c", peer="1.1.1.1:1")
    assert seen == [
        ConversationInfo(1, "1.1.1.1:1"),
        ConversationInfo(2, "2.2.2.2:2"),
        ConversationInfo(1, "1.1.1.1:1"),
    ]
    assert [m["text"] for m in inbox(world, other)] == ["ok"]


def test_a_responder_that_raises_sends_failed(world: World) -> None:
    def respond(conversation: ConversationInfo, text: str) -> str:
        raise ValueError("no")

    worker(world, respond)
    entry = world.instance.work(GROUP, 2, "x")
    assert inbox(world) == [
        {
            "v": PROTOCOL,
            "kind": "failed",
            "conv": 2,
            "entry": entry,
            "why": "the responder raised ValueError",
        }
    ]


def test_an_answer_that_is_not_a_str_is_failed(world: World) -> None:
    worker(world, lambda conversation, text: 42)
    world.instance.work(GROUP, 2, "x")
    assert [(m["kind"], m["why"]) for m in inbox(world)] == [
        ("failed", "the responder answered with int")
    ]


def test_async_and_deferred_answers(world: World) -> None:
    async def think(conversation: ConversationInfo, text: str) -> str:
        await later
        return f"thought about {text}"

    later: Deferred[None] = Deferred()
    worker(world, think)
    world.instance.work(GROUP, 1, "it")
    assert inbox(world) == []
    later.callback(None)
    assert [m["text"] for m in inbox(world)] == ["thought about it"]


def test_concurrency_lines_are_answered_at_once(world: World) -> None:
    waiting: list[Deferred[str]] = []

    def respond(conversation: ConversationInfo, text: str) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        waiting.append(d)
        return d

    worker(world, respond, concurrency=3)
    for conv in range(1, 6):
        world.instance.work(GROUP, conv, "x")
    world.run(0.5)
    assert len(waiting) == 3
    waiting[0].callback("one")
    world.run(0.5)
    assert len(waiting) == 4


def test_a_line_that_stops_being_wanted_cancels_the_answer(world: World) -> None:
    cancelled: list[str] = []

    def respond(conversation: ConversationInfo, text: str) -> Deferred[str]:
        return Deferred(lambda _: cancelled.append(text))

    worker(world, respond)
    entry = world.instance.work(GROUP, 1, "slow")
    world.instance.done(GROUP, entry)  # the client left
    world.run(2.5)
    assert cancelled == ["slow"]
    assert inbox(world) == []


def test_a_worker_killed_mid_answer_is_replaced_by_another(world: World) -> None:
    def never(conversation: ConversationInfo, text: str) -> Deferred[str]:
        return Deferred()

    doomed = worker(world, never)
    worker(world, lambda conversation, text: f"second worker: {text}")
    entry = world.instance.work(GROUP, 1, "are you there")
    assert world.instance.pending(GROUP) == [(entry, "c1")]
    world.kill(doomed)
    world.run(12)
    assert [(m["entry"], m["text"]) for m in inbox(world)] == [
        (entry, "second worker: are you there")
    ]


def test_the_remote_conversation_provides_iconversation() -> None:
    conversation = RemoteConversation(ConversationInfo(1, "x"), "i1", 3, None)  # type: ignore[arg-type]
    assert verifyObject(IConversation, conversation)
    assert conversation.key == "i1/3"


def test_a_worker_says_at_its_heartbeat_whether_its_responder_speaks_first(
    world: World,
) -> None:
    worker(world, Greeter())
    worker(world, lambda conversation, text: text)
    world.run(0.5)
    census = now(world.instance.broker.census([GROUP]))
    greets = sorted(seen.greets for seen in census.of(GROUP))
    assert greets == [False, True]


def test_an_opening_asked_for_but_not_given_is_said_to_have_failed(
    world: World,
) -> None:
    @implementer(IResponder, ILifecycle)
    class Quiet:
        def started(self, conversation: IConversation) -> None:
            return None

        def ended(self, conversation: IConversation, reason: str) -> None:
            pass

        def respond(self, conversation: ConversationInfo, text: str) -> str:
            return text

    worker(world, Quiet())
    started = world.instance.work(GROUP, 1, kind="started", opening=True)
    [message] = inbox(world)
    assert (message["kind"], message["entry"]) == ("failed", started)
    assert "gave no first line" in message["why"]


def test_a_bad_broker_url_is_one_line_that_names_the_option_once() -> None:
    """``python -m sockchat.worker --broker http://x ...``: the line said
    ``--broker: --broker http://x: ...``."""
    from twisted.internet.task import Clock

    from sockchat._broker.join import join

    from conftest import result_of

    joining = Deferred.fromCoroutine(
        join(
            Clock(),
            prog="sockchat.worker",
            url="http://example.com/",
            group="workers",
            handler=lambda broker, outbox: None,  # type: ignore[arg-type,return-value]
            capacity=1,
        )
    )
    with pytest.raises(SystemExit) as e:
        result_of(joining)
    assert str(e.value) == (
        "sockchat.worker: --broker http://example.com/: the scheme must be "
        "redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel://"
    )


def test_answers_given_at_once_go_just_before_the_next_read(world: World) -> None:
    """The answers to a batch that the responder gave at once are sent in
    the same reactor turn as the next read, and before it (so that the
    Redis broker carries both in one write: next test)."""
    consumer = worker(world, lambda conversation, text: text.upper(), 8)
    broker = consumer.broker
    calls: list[str] = []
    for name in ("finish", "take"):
        real = getattr(broker, name)

        def recorded(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            return _real(*args)

        setattr(broker, name, recorded)
    world.instance.work(GROUP, 1, "a")  # the waiting read takes it at once
    assert calls == ["finish", "take"], "in this turn, the answer first"
    assert [m["text"] for m in world.instance.inbox()] == ["A"]


class _Recorder:
    """An ``IRedis`` that records which connection each command went to."""

    connected = True
    display = "redis://test"
    on_state = None
    why = ""

    def __init__(self, name: str, sent: list[tuple[str, str]]) -> None:
        self.name, self.sent = name, sent
        self.replies: list[Deferred[Any]] = []

    def command(self, *args: Any) -> Deferred[Any]:
        self.sent.append((self.name, str(args[0])))
        reply: Deferred[Any] = Deferred()
        self.replies.append(reply)
        return reply

    command_now = command

    def replicated(self) -> Deferred[None]:
        return Deferred()


def test_on_redis_a_batch_s_answers_share_the_read_s_connection_when_free() -> None:
    from twisted.internet.task import Clock

    from sockchat._broker.redisbroker import RedisBroker

    sent: list[tuple[str, str]] = []
    commands, work = _Recorder("commands", sent), _Recorder("work", sent)
    broker = RedisBroker(Clock(), commands, work=work)  # type: ignore[arg-type]
    reading = broker.take(GROUP, "w", 8, 1.0)
    broker.finish(GROUP, ["1-1"], [("i1", b"answer")])
    assert sent == [("work", "XREADGROUP"), ("commands", "EVALSHA")], (
        "a read waits on the queue's connection: the answers take the other"
    )
    work.replies[0].callback(None)  # the read's time is up: nothing came
    assert now(reading) == []
    broker.finish(GROUP, ["1-2"], [("i1", b"answer")])
    broker.take(GROUP, "w", 8, 1.0)
    assert sent[2:] == [("work", "EVALSHA"), ("work", "XREADGROUP")], (
        "no read waits: the answers go first on the read's connection"
    )
