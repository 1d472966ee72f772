"""The instance side of the broker protocol, as docs/broker.md says, for the
consumer tests: a test double, not the real ``sockchat._broker.instance``.

It does what an instance does at the broker (a heartbeat, its clients in
the directory, work items in a queue, reading its inbox, deleting an
entry it gave up on), through any ``IBroker`` that answers at once: the
memory broker, or a ``RedisBroker`` over ``redis_server.SyncRedis`` (the
tests with real processes).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from sockchat._broker.consumer import Consumer, Handler, Outbox
from sockchat._broker.interface import ClientRecord, IBroker
from sockchat._broker.memory import MemoryBroker, MemoryHub
from sockchat._broker.wire import PROTOCOL, Timings, decode
from sockchat._responders.contract import as_deferred
from sockchat._responders.later import Later


def now(d: Deferred[Any] | Later[Any]) -> Any:
    """The result of a Deferred (or a ``Later``) that has fired already."""
    out: list[Any] = []
    taken = as_deferred(d)
    assert taken is not None
    taken.addBoth(out.append)
    assert out, "the broker did not answer at once"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class FakeInstance:
    """One instance's doings at the broker, run by hand from a test."""

    def __init__(self, broker: IBroker, timings: Timings | None = None) -> None:
        self.broker = broker
        self.timings = timings or Timings()
        self.name: str = now(broker.register_instance({"pid": 1, "host": "test"}))
        self.dead = False

    def beat(self) -> None:
        if not self.dead:
            now(self.broker.beat_instance(self.name, {}))

    def die(self) -> None:
        """kill -9: its heartbeat goes (it would expire), and it beats no more."""
        self.dead = True
        now(self.broker.leave_instance(self.name))

    def connect(self, conv: int, peer: str = "127.0.0.1:5000") -> None:
        record = ClientRecord(conv, peer, "operators")
        now(self.broker.set_client(self.name, record))

    def leave(self, conv: int) -> None:
        now(self.broker.remove_client(self.name, conv))

    def work(
        self,
        group: str,
        conv: int,
        text: str = "",
        *,
        kind: str = "line",
        peer: str = "127.0.0.1:5000",
        raw: dict[str, Any] | None = None,
        **extra: Any,
    ) -> str:
        """Add a work item; its entry id."""
        message = raw or {
            "v": PROTOCOL,
            "kind": kind,
            "instance": self.name,
            "conv": conv,
            "peer": peer,
            "n": 1,
            "text": text,
            "at": 0,
            **extra,
        }
        entries: list[str] = now(
            self.broker.enqueue(group, [json.dumps(message).encode()])
        )
        return entries[0]

    def inbox(self) -> list[dict[str, Any]]:
        """The messages in this instance's inbox (taken out)."""
        return [decode(m) for m in now(self.broker.next_messages(self.name, 0, 1000))]

    def done(self, group: str, entry: str) -> None:
        """Timed out, or the client left: the entry goes."""
        now(self.broker.finish(group, [entry]))

    def queue_length(self, group: str) -> int:
        return len(now(self.broker.queue_view(group, self.timings.claim_after)))

    def pending(self, group: str) -> list[tuple[str, str]]:
        """(entry, consumer) of the lines held in *group*."""
        view = now(self.broker.queue_view(group, self.timings.claim_after))
        return [(q.entry, q.holder) for q in view if q.holder is not None]

    def consumers(self, group: str) -> list[str]:
        """The live consumers of *group*, by name."""
        census = now(self.broker.census([group]))
        return [seen.name for seen in census.of(group)]


class Counting:
    """A broker that counts the calls made to it, by name."""

    def __init__(self, inner: MemoryBroker) -> None:
        self._inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._inner, name)
        if callable(found) and not name.startswith("_"):

            def counted(*args: Any, **kwargs: Any) -> Any:
                self.calls.append(name)
                return found(*args, **kwargs)

            return counted
        return found


MakeHandler = Callable[[IBroker, Outbox], Handler]


class World:
    """A memory broker, a clock, one instance, and consumers."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.hub = MemoryHub(self.clock)
        self.instance = FakeInstance(self.hub.broker())
        self.consumers: list[Consumer] = []

    def consumer(
        self,
        make: MakeHandler,
        *,
        capacity: int = 1,
        group: str = "operators",
        latency: float = 0.0,
        started: bool = True,
    ) -> Consumer:
        """A consumer of *group* (named c1, c2...), started (unless not
        *started*), whose handler is ``make(broker, outbox)``; its broker's
        replies take *latency* seconds."""
        broker = self.hub.broker(latency=latency)
        outbox = Outbox(broker, group, self.clock)
        name = f"c{len(self.consumers) + 1}"
        c = Consumer(
            clock=self.clock,
            broker=broker,
            group=group,
            handler=make(broker, outbox),
            outbox=outbox,
            name=name,
            by=f"operator {name}",
            capacity=capacity,
        )
        if started:
            now(c.start())
        self.consumers.append(c)
        return c

    def kill(self, consumer: Consumer) -> None:
        """kill -9: nothing more comes from it."""
        broker = consumer.broker
        assert isinstance(broker, MemoryBroker)
        broker.kill()

    def run(self, seconds: float, step: float = 0.1) -> None:
        """Let *seconds* pass, with the instance's heartbeat going on."""
        beat = round(self.instance.timings.heartbeat / step)
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            if round(self.clock.seconds() / step) % beat == 0 and self.hub.running:
                self.instance.beat()
