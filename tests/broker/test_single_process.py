"""A whole set-up in one process, on the memory broker: the real instance
(``BrokerInstance`` and ``QueueResponder``) and real consumers (workers,
an operator's desk) meeting at one ``MemoryHub``, with clients talking
through ``sockchat.testing.MemoryServer``.  No Redis, no test double on
either side: what a process with no ``--broker`` can run (the operators'
desk, issue 25, does)."""

from __future__ import annotations

from typing import Any

from broker_instance import now
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from sockchat import ConsoleResponder, ConversationInfo, as_responder
from sockchat._broker.consumer import Consumer, Handler, Outbox
from sockchat._broker.instance import BrokerInstance, QueueResponder
from sockchat._broker.interface import IBroker
from sockchat._broker.memory import MemoryBroker, MemoryHub
from sockchat._broker.operators import OperatorDesk
from sockchat._broker.wire import CLAIM_AFTER, HEARTBEAT, OPERATORS, WORKERS
from sockchat._broker.workers import WorkerHandler
from sockchat.testing import MemoryServer


class OneProcess:
    """An instance and its consumers on one hub and one clock."""

    def __init__(self, group: str, **options: Any) -> None:
        self.clock = Clock()
        self.hub = MemoryHub(self.clock)
        broker = self.hub.broker()
        self.instance = BrokerInstance(
            broker, self.clock, now(broker.register_instance({}))
        )
        self.instance.start()
        responder = QueueResponder(self.instance, group, lifecycle=group == WORKERS)
        self.server = MemoryServer(responder, clock=self.clock, **options)
        self.group = group

    def consumer(self, make: Any, *, name: str, capacity: int = 1) -> Consumer:
        broker: IBroker = self.hub.broker()
        outbox = Outbox(broker, self.group, self.clock)
        handler: Handler = make(broker, outbox)
        consumer = Consumer(
            clock=self.clock,
            broker=broker,
            group=self.group,
            handler=handler,
            outbox=outbox,
            name=name,
            by=f"{self.group[:-1]} {name}",
            capacity=capacity,
        )
        now(consumer.start())
        return consumer

    def run(self, seconds: float, step: float = 0.05) -> None:
        for _ in range(round(seconds / step)):
            self.server.advance(step)


def test_workers_in_the_same_process_answer_and_one_that_dies_is_replaced() -> None:
    world = OneProcess(WORKERS)
    stuck: list[Deferred[str]] = []

    def never(conversation: ConversationInfo, text: str) -> Deferred[str]:
        stuck.append(Deferred())
        return stuck[-1]

    doomed = world.consumer(
        lambda broker, outbox: WorkerHandler(as_responder(never), outbox), name="w1"
    )
    world.run(HEARTBEAT)  # the instance counts it
    talk = world.server.connect()
    said = talk.say("are you there?")
    world.run(0.5)
    assert len(stuck) == 1
    world.consumer(
        lambda broker, outbox: WorkerHandler(
            as_responder(lambda conversation, text: text.upper()), outbox
        ),
        name="w2",
    )
    broker = doomed.broker
    assert isinstance(broker, MemoryBroker)
    broker.kill()
    world.run(CLAIM_AFTER + 2.5)
    assert world.server.result(said) == "ARE YOU THERE?"
    assert world.server.say(talk, "again") == "AGAIN"


def test_an_operator_desk_in_the_same_process_answers_and_signs() -> None:
    from zope.interface import implementer

    from sockchat import ITranscript, TranscriptEntry

    @implementer(ITranscript)
    class Kept:
        def __init__(self) -> None:
            self.entries: list[TranscriptEntry] = []

        def record(self, entry: TranscriptEntry) -> None:
            self.entries.append(entry)

    kept = Kept()
    world = OneProcess(OPERATORS, transcript=kept)
    screen: list[str] = []
    console = ConsoleResponder(screen.append, world.clock)
    desks: list[OperatorDesk] = []

    def desk(broker: IBroker, outbox: Outbox) -> OperatorDesk:
        desks.append(OperatorDesk(console, broker, world.clock, outbox))
        return desks[0]

    world.consumer(desk, name="ann")
    desks[0].start()
    world.run(HEARTBEAT)
    talk = world.server.connect()
    said = talk.say("hello, anyone?")
    world.run(0.5)
    assert "client 1 (i1/1, 127.0.0.1:50000): hello, anyone?" in "".join(screen)
    console.operator_says("yes, me")
    world.run(0.5)
    assert world.server.result(said) == "yes, me"
    [answer] = [e for e in kept.entries if e.kind == "answer"]
    assert answer.by == "operator ann"


# -- Any order of lines, departures and delays ------------------------------------


_LATENCY = st.sampled_from([0.0, 0.001, 0.005, 0.02])


@settings(deadline=None, max_examples=60)
@given(
    latencies=st.tuples(_LATENCY, _LATENCY, _LATENCY),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["say", "say", "say", "abort", "pause"]),
            st.integers(0, 3),
        ),
        max_size=25,
    ),
)
# The worker's answer reaches the instance before the reply that names its
# entry (its commands are slower than its inbox's reads).
@example(latencies=(0.02, 0.0, 0.0), steps=[("say", 0)])
def test_every_line_gets_its_own_answer_once_whatever_the_delays(
    latencies: tuple[float, float, float], steps: list[tuple[str, int]]
) -> None:
    """The instance's commands, its inbox reads and the worker's calls each
    take their own time (replies pass each other); clients speak and leave
    in any order: each answer is the one for its own line, and comes once."""
    commands, reads, worker = latencies
    clock = Clock()
    hub = MemoryHub(clock)
    broker = hub.broker(latency=commands, read_latency=reads)
    instance = BrokerInstance(broker, clock, now(hub.broker().register_instance({})))
    instance.start()
    server = MemoryServer(
        QueueResponder(instance, WORKERS), clock=clock, answer_timeout=60
    )
    worker_broker = hub.broker(latency=worker)
    outbox = Outbox(worker_broker, WORKERS, clock)
    answered: list[str] = []

    def respond(conversation: ConversationInfo, text: str) -> str:
        answered.append(text)
        return f"re: {text}"

    consumer = Consumer(
        clock=clock,
        broker=worker_broker,
        group=WORKERS,
        handler=WorkerHandler(as_responder(respond), outbox),
        outbox=outbox,
        name="w",
        capacity=4,
    )
    consumer.start()
    for _ in range(30):
        server.advance(0.1)
    clients = [server.connect() for _ in range(4)]
    pending: dict[str, tuple[int, Deferred[str]]] = {}
    gone: set[int] = set()
    for n, (op, who) in enumerate(steps):
        talk = clients[who]
        if op == "pause":
            server.advance(0.005 * (who + 1))
        elif op == "abort" and who not in gone:
            gone.add(who)
            talk.abort()
        elif op == "say" and who not in gone and talk.my_turn:
            text = f"line {n} from {who}"
            pending[text] = (who, talk.say(text))
        server.flush()
    for _ in range(50):
        server.advance(0.1)
    for text, (who, said) in pending.items():
        outcome: list[Any] = []
        said.addBoth(outcome.append)
        assert outcome, f"{text!r} was never answered nor refused"
        if who not in gone:  # its client stayed: its own answer, once
            assert outcome[0] == f"re: {text}"
    assert len(answered) == len(set(answered))  # each line to the worker once
