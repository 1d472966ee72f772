"""The instance side of the broker, in memory: a memory broker, a Clock,
and the consumer side played by the test through the same interface (the
broker protocol of docs/broker.md; sockchat.operator and sockchat.worker
have tests of their own)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from broker_instance import Counting, now
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from sockchat import LineRefused
from sockchat._broker.instance import BrokerInstance, QueueResponder
from sockchat._broker.interface import BrokerUnavailable, ClientRecord, ConsumerSeen
from sockchat._broker.memory import MemoryHub
from sockchat._broker.wire import HEARTBEAT, HEARTBEAT_TTL, PROTOCOL, decode, encode
from sockchat.testing import MemoryServer, NoResultYet


@pytest.fixture
def logged_events():
    """Every event logged while the test runs."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


class Desk:
    """The consumer side of one queue, played by the test: an operator or a
    worker, as the broker protocol has them take and answer lines."""

    def __init__(self, hub: MemoryHub, group: str) -> None:
        self.broker = hub.broker()
        self.clock = hub.clock
        self.group = group
        self.name = f"{group}-desk"
        now(self.broker.open_queue(group))

    def online(self, ttl: float = 1e6, *, greets: bool = False) -> None:
        until = self.clock.seconds() + ttl
        seen = ConsumerSeen(self.name, self.name, until, greets)
        now(self.broker.beat_consumer(self.group, seen))

    def offline(self) -> None:
        now(self.broker.leave_consumer(self.group, self.name))

    def take(self) -> tuple[str, dict[str, Any]] | None:
        taken = now(self.broker.take(self.group, self.name, 1, 0))
        if not taken:
            return None
        return taken[0].entry, decode(taken[0].data)

    def take_line(self, kind: str = "line") -> tuple[str, dict[str, Any]]:
        while True:
            taken = self.take()
            assert taken is not None, f"no {kind} was waiting"
            if taken[1]["kind"] == kind:
                return taken

    def send(self, instance: str, kind: str, **fields: Any) -> None:
        now(self.broker.post(instance, [encode(kind, **fields)]))

    def answer(
        self, taken: tuple[str, dict[str, Any]], text: str, by: str = "operator ann"
    ) -> None:
        entry, message = taken
        answer = encode("answer", conv=message["conv"], entry=entry, text=text, by=by)
        now(self.broker.finish(self.group, [entry], [(message["instance"], answer)]))

    def length(self) -> int:
        """How many lines (not lifecycle items) are in the queue."""
        view = now(self.broker.queue_view(self.group, 10))
        return sum(decode(q.data)["kind"] == "line" for q in view)


class Cluster:
    """One instance ("i1") on a memory broker, and a MemoryServer in front."""

    def __init__(self, group: str = "workers", **options: Any) -> None:
        self.clock = Clock()
        self.hub = MemoryHub(self.clock)
        self.broker = Counting(self.hub.broker())
        name = now(self.broker.register_instance({}))
        self.instance = BrokerInstance(self.broker, self.clock, name)  # type: ignore[arg-type]
        self.desk = Desk(self.hub, group)
        self.desk.online()
        self.responder = QueueResponder(
            self.instance, group, lifecycle=group == "workers"
        )
        self.instance.start()
        self.server = MemoryServer(self.responder, clock=self.clock, **options)

    def advance(self, seconds: float = 0) -> None:
        self.server.advance(seconds)


def test_a_line_goes_to_the_queue_and_its_answer_comes_back():
    c = Cluster()
    talk = c.server.connect()
    said = talk.say("hello")
    c.advance()
    entry, message = c.desk.take_line()
    assert message["instance"] == "i1"
    assert message["text"] == "hello"
    assert message["n"] == 1
    assert message["peer"].startswith("127.0.0.1:")
    c.desk.answer((entry, message), "hi there")
    c.advance(1)
    assert c.server.result(said) == "hi there"
    assert c.desk.length() == 0, "an answered line's entry is deleted"


def test_a_line_is_never_answered_twice_and_a_late_answer_is_ignored():
    c = Cluster(answer_timeout=30)
    talk = c.server.connect()
    first = talk.say("one")
    c.advance()
    taken = c.desk.take_line()
    c.desk.answer(taken, "first answer")
    c.desk.answer(taken, "second answer")  # a reclaimed copy, say
    c.advance(1)
    assert c.server.result(first) == "first answer"
    second = talk.say("two")
    c.advance()
    late = c.desk.take_line()
    c.advance(31)  # the answer timeout passes
    with pytest.raises(LineRefused) as refused:
        c.server.result(second)
    assert refused.value.notice.code == "responder-timeout"
    assert c.desk.length() == 0, "a timed-out line's entry is deleted"
    c.desk.answer(late, "too late")
    c.advance(1)
    third = talk.say("three")
    c.advance()
    c.desk.answer(c.desk.take_line(), "answer to three")
    c.advance(1)
    assert c.server.result(third) == "answer to three"


def test_a_client_that_leaves_takes_its_waiting_line_off_the_queue():
    c = Cluster()
    talk = c.server.connect()
    talk.say("anyone?")
    c.advance()
    assert c.desk.length() == 1
    talk.abort()
    c.advance()
    assert c.desk.length() == 0


def test_no_worker_running_is_said_at_once():
    c = Cluster()
    c.desk.offline()
    c.advance(HEARTBEAT)
    talk = c.server.connect()
    with pytest.raises(LineRefused) as refused:
        c.server.say(talk, "hello?")
    assert refused.value.notice.code == "unavailable"
    assert "no worker is running" in refused.value.notice.text
    assert talk.my_turn


def test_a_worker_whose_heartbeat_stopped_does_not_count():
    c = Cluster()
    c.desk.online(ttl=HEARTBEAT_TTL)
    c.advance(HEARTBEAT_TTL + HEARTBEAT)  # the desk never beat again
    talk = c.server.connect()
    with pytest.raises(LineRefused, match="no worker is running"):
        c.server.say(talk, "hello?")


def test_the_instance_logs_how_many_workers_it_sees_when_that_changes(
    logged_events,
):
    c = Cluster()
    c.advance(HEARTBEAT * 3)
    c.desk.offline()
    c.advance(HEARTBEAT * 3)
    c.desk.online()
    c.advance(HEARTBEAT)
    counts = [
        (e["count"], e["group"])
        for e in logged_events
        if e.get("log_format") == "{count} live consumer(s) of {group} at the broker"
    ]
    # Once at the first census, then at each change, not at every beat:
    # what a test (or an operator) waits for before a client speaks.
    assert counts == [(1, "workers"), (0, "workers"), (1, "workers")]


def test_with_no_operator_online_the_client_is_told_its_line_waits():
    c = Cluster("operators")
    c.desk.offline()
    c.advance(HEARTBEAT)
    notices = []
    talk = c.server.connect(on_notice=notices.append)
    said = talk.say("help!")
    c.advance(600)  # no answer timeout for people, and no idle timeout
    assert [n.code for n in notices][-1] == "queued"
    with pytest.raises(NoResultYet):
        c.server.result(said)
    c.desk.answer(c.desk.take_line(), "sorry for the wait")
    c.advance(1)
    assert c.server.result(said) == "sorry for the wait"


def test_broker_lost_new_lines_get_unavailable_then_it_comes_back(logged_events):
    c = Cluster()
    talk = c.server.connect()
    c.hub.lose()
    for _ in range(3):
        with pytest.raises(LineRefused) as refused:
            c.server.say(talk, "are you there?")
        assert refused.value.notice.code == "unavailable"
        assert "the broker is unreachable" in refused.value.notice.text
        # The broker's address (hosts, ports, user) is for the log only.
        assert "memory:" not in refused.value.notice.text
    lost = [e for e in logged_events if "lost the broker" in e["log_format"]]
    assert len(lost) == 1, "the loss is logged once, not once per line"
    c.hub.restore()
    c.advance(HEARTBEAT)
    said = talk.say("now?")
    c.advance()
    c.desk.answer(c.desk.take_line(), "yes")
    c.advance(1)
    assert c.server.result(said) == "yes"
    back = [e for e in logged_events if e["log_format"].startswith("the broker at")]
    assert len(back) == 1


def test_a_queued_line_the_broker_lost_gets_unavailable():
    c = Cluster("operators")
    talk = c.server.connect()
    said = talk.say("will you lose me?")
    c.advance()
    c.hub.lose()
    c.hub.restore(flush=True)  # restarted without its data
    c.advance(HEARTBEAT)
    with pytest.raises(LineRefused) as refused:
        c.server.result(said)
    assert refused.value.notice.code == "unavailable"
    assert "lost this line" in refused.value.notice.text
    assert talk.my_turn


def test_a_queued_line_the_broker_kept_is_still_answered():
    c = Cluster("operators")
    talk = c.server.connect()
    said = talk.say("still there?")
    c.advance()
    c.hub.lose()
    c.hub.restore()
    c.advance(HEARTBEAT)
    c.desk.answer(c.desk.take_line(), "kept")
    c.advance(1)
    assert c.server.result(said) == "kept"


class ShortOfReplicas(Counting):
    """A broker whose replicas fall short (``?wait=N`` on Redis): every
    enqueue fails as unavailable, as ``RedisBroker.enqueue`` does when
    ``WAIT`` says fewer replicas than asked have the entries."""

    def enqueue(self, group: str, messages: list[bytes]) -> Any:
        from twisted.internet.defer import fail

        from sockchat._broker.interface import NotReplicated

        self.calls.append("enqueue")
        return fail(NotReplicated("redis://r/0", 1, 1000, 0))

    def enqueue_held(self, group: str, message: bytes, holder: str) -> Any:
        return self.enqueue(group, [message])


def test_a_line_no_replica_has_in_time_is_unavailable_with_the_turn_back():
    c = Cluster()
    c.broker = c.instance.broker = c.responder.broker = ShortOfReplicas(  # type: ignore[assignment]
        c.hub.broker()
    )
    talk = c.server.connect()
    with pytest.raises(LineRefused) as refused:
        c.server.say(talk, "is this safe?")
    assert refused.value.notice.code == "unavailable"
    assert (
        "(the broker could not copy it to 1 replica(s) within 1000 ms (0 did); "
        "send it again)" in refused.value.notice.text
    ), "the client is not told the broker's address"
    assert talk.my_turn


def test_a_line_answered_while_the_broker_was_away_is_answered_not_lost():
    """A failover: the consumer's answer reached the broker (the entry is
    deleted, the answer waits in the inbox) while the instance was cut
    off.  When it is back, the entry is gone, but the line is not lost:
    the answer is read from the inbox."""
    c = Cluster("operators")
    talk = c.server.connect()
    said = talk.say("answered while you were away?")
    c.advance()
    entry, message = c.desk.take_line()
    c.hub.lose()
    answer = encode("answer", conv=message["conv"], entry=entry, text="yes", by="b")
    c.hub.post("i1", [answer])  # what the consumer did on the other side
    c.hub.delete("operators", [entry])
    c.hub.restore()
    c.advance(HEARTBEAT)
    assert c.server.result(said) == "yes"


def test_notices_and_kicks_from_the_consumer_side_reach_the_client():
    c = Cluster("operators")
    notices = []
    talk = c.server.connect(on_notice=notices.append)
    c.desk.send("i1", "notify", conv=1, code="hold-on", text="an operator is reading")
    c.advance(1)
    assert ("hold-on", "an operator is reading") in [(n.code, n.text) for n in notices]
    c.desk.send("i1", "end", conv=1, code="kicked", text="by the operator")
    c.advance(1)
    assert notices[-1].code == "kicked"
    assert c.server.result(talk.when_ended()).notice.code == "kicked"


def test_a_message_of_another_protocol_is_refused_and_logged_once(logged_events):
    c = Cluster()
    talk = c.server.connect()
    other = PROTOCOL + 1
    for _ in range(3):
        raw = json.dumps({"v": other, "kind": "answer", "conv": 1}).encode()
        now(c.desk.broker.post("i1", [raw]))
    c.advance(1)
    refused = [
        e for e in logged_events if f"broker protocol {other}" in e.get("what", "")
    ]
    assert len(refused) == 1
    assert talk.my_turn


def test_a_failed_answer_gives_the_client_its_turn_back():
    c = Cluster()
    talk = c.server.connect()
    said = talk.say("divide by zero")
    c.advance()
    entry, message = c.desk.take_line()
    c.desk.send(
        "i1",
        "failed",
        conv=message["conv"],
        entry=entry,
        why="the responder raised ZeroDivisionError",
    )
    c.advance(1)
    with pytest.raises(LineRefused) as refused:
        c.server.result(said)
    assert refused.value.notice.code == "responder-failed"
    assert "ZeroDivisionError" in refused.value.notice.text


def test_the_heartbeat_and_the_directory():
    c = Cluster("operators")
    broker = c.desk.broker
    assert now(broker.census([])).instances == {"i1"}
    talk = c.server.connect()
    talk.say("listed?")
    c.advance()
    assert now(broker.clients(["i1"])) == {
        "i1": [ClientRecord(1, talk_peer(c), "operators")]
    }
    [queued] = now(broker.queue_view("operators", 10))
    assert decode(queued.data)["text"] == "listed?"
    c.advance(HEARTBEAT_TTL * 3)  # it beats all along
    assert now(broker.instance_alive("i1"))
    now(c.instance.stop())
    assert not now(broker.instance_alive("i1"))
    assert now(broker.clients(["i1"])) == {"i1": []}


def talk_peer(c: Cluster) -> str:
    [conversation] = c.server.factory.conversations.values()
    return conversation.info.peer


def test_the_directory_is_written_when_a_client_comes_and_goes_not_per_line():
    c = Cluster()
    talk = c.server.connect()
    c.advance()
    assert c.broker.calls.count("set_client") == 1
    before = len(c.broker.calls)
    for n in range(5):
        said = talk.say(f"line {n}")
        c.advance()
        c.desk.answer(c.desk.take_line(), f"answer {n}")
        c.advance(0.01)
        assert c.server.result(said) == f"answer {n}"
    per_line = c.broker.calls[before:]
    assert per_line.count("enqueue") == 5
    assert [n for n in per_line if n not in ("enqueue", "next_messages")] == []
    c.server.result(talk.quit())
    c.advance()
    assert c.broker.calls.count("remove_client") == 1


def test_the_lines_of_one_reactor_turn_are_enqueued_together():
    """One enqueue for every line that came in one turn: a worker waiting
    on the queue takes them in one read."""
    c = Cluster()
    for _ in range(3):
        c.server.connect()
    c.advance()
    while c.desk.take() is not None:  # the started items
        pass
    infos = [talk.info for talk in c.server.factory.conversations.values()]
    before = len(c.broker.calls)
    waiting = c.desk.broker.take("workers", "w", 10, 5.0)
    # What the doors do when three clients' lines come in one reactor turn:
    said = [c.responder.respond(info, f"line {n}") for n, info in enumerate(infos)]
    assert "enqueue" not in c.broker.calls[before:], "not before the turn ends"
    c.clock.advance(0)
    assert c.broker.calls[before:].count("enqueue") == 1
    taken = now(waiting)
    texts = [decode(e.data)["text"] for e in taken]
    assert texts == ["line 0", "line 1", "line 2"], "one read takes them all"
    for entry in taken:
        c.desk.answer((entry.entry, decode(entry.data)), "ok")
    c.advance(0.01)
    assert [now(d).text for d in said] == ["ok"] * 3


def test_the_posts_of_one_turn_to_one_instance_are_one_call():
    """Pair relays, say: what one turn sends to an inbox goes in one post,
    and each sender hears how it went."""
    c = Cluster()
    other = Counting(c.hub.broker())
    name = now(other.register_instance({}))
    before = len(c.broker.calls)
    sent = [c.instance.post(name, b"%d" % n) for n in range(3)]
    sent.append(c.instance.post("i99", b"elsewhere"))
    assert "post" not in c.broker.calls[before:], "not before the turn ends"
    c.clock.advance(0)
    assert c.broker.calls[before:].count("post") == 2  # one an inbox
    assert [now(d) for d in sent] == [None] * 4
    assert now(other.next_messages(name, 0, 10)) == [b"0", b"1", b"2"]
    c.hub.lose()
    lost = c.instance.post(name, b"lost")
    c.clock.advance(0)
    with pytest.raises(BrokerUnavailable):
        now(lost)


def test_a_dead_instance_is_seen_at_the_next_heartbeat():
    c = Cluster()
    other_broker = c.hub.broker()
    name = now(other_broker.register_instance({}))
    other = BrokerInstance(other_broker, c.clock, name)
    other.start()
    c.advance(HEARTBEAT)
    assert c.instance.alive("i2")
    assert other._heart is not None
    other._heart.stop()  # killed: it beats no more
    c.advance(HEARTBEAT_TTL + HEARTBEAT)
    assert not c.instance.alive("i2")


def test_workers_whose_responder_has_hooks_speak_first():
    c = Cluster()
    c.desk.online(greets=True)
    c.advance(HEARTBEAT)
    notices = []
    talk = c.server.connect(on_notice=notices.append)
    assert notices[0].code == "listen"
    entry, message = c.desk.take_line("started")
    assert message["opening"] is True
    c.desk.answer((entry, message), "hello, I am the bot")
    c.advance(1)
    assert c.server.result(talk.listen()) == "hello, I am the bot"
    said = talk.say("and now?")
    c.advance()
    c.desk.answer(c.desk.take_line(), "now you")
    c.advance(1)
    assert c.server.result(said) == "now you"


def test_workers_without_hooks_let_the_client_speak_first():
    c = Cluster()
    notices = []
    talk = c.server.connect(on_notice=notices.append)
    assert notices[0].code == "welcome"
    assert talk.my_turn
    _, started = c.desk.take_line("started")
    assert "opening" not in started


def test_a_line_said_while_the_first_connections_are_made_waits_for_them():
    clock = Clock()
    hub = MemoryHub(clock)
    instance = BrokerInstance(hub.broker(), clock, "i1")
    desk = Desk(hub, "operators")
    desk.online()
    server = MemoryServer(QueueResponder(instance, "operators"), clock=clock)
    talk = server.connect()
    said = talk.say("early")
    server.advance(1)
    assert desk.length() == 0
    instance.start()
    server.advance(1)
    desk.answer(desk.take_line(), "not too early")
    server.advance(1)
    assert server.result(said) == "not too early"


def test_operators_take_their_time_and_workers_have_the_answer_timeout():
    operators, workers = Cluster("operators"), Cluster("workers")
    assert operators.server.factory.settings.answer_timeout is None
    assert workers.server.factory.settings.answer_timeout == 30


def test_an_answer_for_a_conversation_that_ended_says_nothing(logged_events):
    c = Cluster()
    talk = c.server.connect()
    talk.say("bye soon")
    c.advance()
    taken = c.desk.take_line()
    talk.abort()
    c.advance()
    logged_events.clear()
    c.desk.answer(taken, "too late")  # a worker that had it already
    c.desk.send("i1", "notify", conv=1, code="x", text="for nobody")
    c.advance(HEARTBEAT)
    assert [e["log_format"] for e in logged_events] == []


def test_who_answers_a_client_is_logged_when_it_changes(logged_events):
    c = Cluster("operators")
    talk = c.server.connect()
    for by in ("operator ann", "operator ann", "operator bob"):
        said = talk.say("hello")
        c.advance()
        c.desk.answer(c.desk.take_line(), f"{by} here", by=by)
        c.advance(0.1)
        assert c.server.result(said) == f"{by} here"
    said_by = [e["by"] for e in logged_events if "answers" in e.get("log_format", "")]
    assert said_by == ["operator ann", "operator bob"]


def test_an_answer_that_comes_before_the_queue_said_its_entry_is_taken():
    # The instance reads its inbox on a connection of its own: a quick
    # worker's answer can come there before the reply that named the entry.
    clock = Clock()
    hub = MemoryHub(clock)
    broker = hub.broker(latency=0.05, read_latency=0.001)
    name = now(hub.broker().register_instance({}))
    instance = BrokerInstance(broker, clock, name)
    desk = Desk(hub, "workers")
    desk.online()
    instance.start()
    server = MemoryServer(QueueResponder(instance, "workers"), clock=clock)
    server.advance(0.1)
    talk = server.connect()
    said = talk.say("quick!")
    server.advance(0.001)
    desk.answer(desk.take_line(), "quicker")
    server.advance(0.01)
    server.advance(0.1)
    assert server.result(said) == "quicker"


def test_who_answered_is_in_the_transcript():
    from zope.interface import implementer

    from sockchat import ITranscript, TranscriptEntry
    from sockchat._core.transcript import encode_entry

    @implementer(ITranscript)
    class Kept:
        def __init__(self) -> None:
            self.entries: list[TranscriptEntry] = []

        def record(self, entry: TranscriptEntry) -> None:
            self.entries.append(entry)

    kept = Kept()
    c = Cluster("operators", transcript=kept)
    talk = c.server.connect()
    said = talk.say("who is there?")
    c.advance()
    c.desk.answer(c.desk.take_line(), "ann is", by="operator ann")
    c.advance(0.1)
    assert c.server.result(said) == "ann is"
    [answer] = [e for e in kept.entries if e.kind == "answer"]
    assert answer.by == "operator ann"
    assert json.loads(encode_entry(answer))["by"] == "operator ann"
    [line] = [e for e in kept.entries if e.kind == "line"]
    assert "by" not in json.loads(encode_entry(line))


# -- The operators: holders, histories, what --metrics counts ------------------------


def _history(c: Cluster, conv: int) -> list[dict[str, Any]]:
    return [decode(k.data) for k in now(c.broker.history("i1", conv))]


def test_a_line_for_the_operators_goes_into_its_history_first():
    c = Cluster("operators")
    talk = c.server.connect()
    said = talk.say("hello, 你好")
    c.advance()
    taken = c.desk.take_line()
    assert taken[1]["h"] == 1  # the number of its item in the history
    [item] = _history(c, taken[1]["conv"])
    assert (item["kind"], item["who"], item["by"], item["text"]) == (
        "said",
        "client",
        "",
        "hello, 你好",
    )
    c.desk.answer(taken, "hi")
    c.advance(1)
    assert c.server.result(said) == "hi"
    talk.say("q")
    c.advance(1)
    assert _history(c, taken[1]["conv"]) == [], "it goes with the conversation"


def test_a_held_line_no_replica_has_in_time_is_unavailable_with_the_turn_back():
    c = Cluster("operators")
    talk = c.server.connect()
    first = talk.say("one")
    c.advance()
    taken = c.desk.take_line()
    c.desk.send("i1", "held", conv=taken[1]["conv"], holder="h-1/ann", by="Ann")
    c.desk.answer(taken, "yes?")
    c.advance(1)
    assert c.server.result(first) == "yes?"
    c.instance.broker = c.responder.broker = ShortOfReplicas(c.hub.broker())  # type: ignore[assignment]
    with pytest.raises(LineRefused) as refused:
        c.server.say(talk, "two")
    assert (
        "(the broker could not copy it to 1 replica(s) within 1000 ms (0 did); "
        "send it again)" in refused.value.notice.text
    ), "the client is not told the broker's address"
    assert talk.my_turn


def test_a_held_conversations_next_lines_are_its_holders():
    c = Cluster("operators")
    talk = c.server.connect()
    first = talk.say("one")
    c.advance()
    taken = c.desk.take_line()
    conv = taken[1]["conv"]
    c.desk.send("i1", "held", conv=conv, holder="host-1-ab12/ann", by="Ann")
    c.desk.answer(taken, "yes?")
    c.advance(1)
    assert c.server.result(first) == "yes?"
    [record] = now(c.broker.clients(["i1"]))["i1"]
    assert record.holder == "host-1-ab12/ann"
    talk.say("two")
    c.advance()
    assert c.desk.take() is None, "nobody else is given a held line"
    [queued] = now(c.broker.queue_view("operators", 10))
    assert queued.holder == "host-1-ab12/ann"
    assert decode(queued.data)["h"] == 2  # "one", "two" (this desk writes none)
    # Let go: the directory says so, and the next line is anyone's.
    c.desk.send("i1", "released", conv=conv)
    now(
        c.broker.finish(
            "operators",
            [queued.entry],
            [
                (
                    "i1",
                    encode(
                        "answer",
                        conv=conv,
                        entry=queued.entry,
                        text="ok",
                        by="operator ann",
                    ),
                )
            ],
        )
    )
    c.advance(1)
    assert now(c.broker.clients(["i1"]))["i1"][0].holder is None
    talk.say("three")
    c.advance()
    assert c.desk.take_line()[1]["text"] == "three"


def test_a_holder_that_stops_beating_lets_go_of_its_conversations():
    c = Cluster("operators")
    talk = c.server.connect()
    talk.say("one")
    c.advance()
    conv = c.desk.take_line()[1]["conv"]
    seen = ConsumerSeen("host-1-ab12/ann", "Ann", c.clock.seconds() + HEARTBEAT_TTL)
    now(c.broker.beat_consumer("operators", seen))
    c.desk.send("i1", "held", conv=conv, holder=seen.name, by="Ann")
    c.advance(1)
    assert now(c.broker.clients(["i1"]))["i1"][0].holder == seen.name
    for _ in range(int((2 * HEARTBEAT_TTL) / HEARTBEAT) + 1):
        c.advance(HEARTBEAT)
    assert now(c.broker.clients(["i1"]))["i1"][0].holder is None


def test_the_operators_queue_is_counted_for_metrics():
    c = Cluster("operators")
    stats = c.responder.stats
    assert stats is not None
    c.advance(HEARTBEAT)
    assert stats.online == 1  # the test's desk
    talks = [c.server.connect() for _ in range(2)]
    said = [t.say(f"line {n}") for n, t in enumerate(talks)]
    c.advance(4)
    c.advance(3)
    assert stats.depth() == 2
    assert stats.oldest(c.clock.seconds()) == pytest.approx(7)
    c.desk.answer(c.desk.take_line(), "first")
    c.advance(1)
    assert c.server.result(said[0]) == "first"
    assert stats.depth() == 1
    assert stats.first_answer.cumulative()[:3] == [("1.0", 0), ("5.0", 0), ("15.0", 1)]
    assert stats.first_answer.total == pytest.approx(7)
    talks[0].say("and again")
    c.advance(1)
    for _ in range(2):  # the other client's first line, then this second one
        c.desk.answer(c.desk.take_line(), "answered")
        c.advance(1)
    assert stats.depth() == 0
    assert sum(stats.first_answer.counts) == 2, "a conversation's first answer only"
    assert stats.first_answer.total == pytest.approx(7 + 9)
