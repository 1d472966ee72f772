"""The instance side of broker protocol 1, as docs/broker.md says, for the
consumer tests: a test double, not the real ``sockchat._broker.instance``.

It does what an instance does on the broker (a heartbeat key, its clients'
hash, ``XADD`` of work items, reading its inbox, ``XDEL`` once a line is
answered), through any ``IRedis``, so that operators and workers are
tested against the protocol before (and besides) the real instance.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from sockchat._broker.consumer import Consumer
from sockchat._broker.wire import HEARTBEAT, HEARTBEAT_TTL, PROTOCOL, Keys, decode

from fakeredis import FakeRedisServer


def _now(d: Deferred[Any]) -> Any:
    """The result of a Deferred the fake has fired already."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the fake did not answer at once"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class FakeInstance:
    """One instance's doings on the broker, run by hand from a test."""

    def __init__(
        self,
        redis: Any,
        name: str = "i1",
        keys: Keys | None = None,
        *,
        ttl: float = HEARTBEAT_TTL,
    ) -> None:
        self.redis = redis
        self.name = name
        self.keys = keys or Keys()
        #: How long its heartbeat lasts: a test with real processes that
        #: does not beat every HEARTBEAT makes it longer.
        self.ttl = ttl
        self.beat()
        _now(self.redis.command("SADD", self.keys.instances, name))

    def run(self, *args: Any) -> Any:
        return _now(self.redis.command(*args))

    def beat(self) -> None:
        record = {"v": PROTOCOL, "name": self.name, "pid": 1, "host": "test"}
        ttl = int(self.ttl * 1000)
        self.run("SET", self.keys.instance(self.name), json.dumps(record), "PX", ttl)
        self.run("PEXPIRE", self.keys.clients(self.name), ttl)

    def die(self) -> None:
        """kill -9: the heartbeat key goes (it would expire)."""
        self.run("DEL", self.keys.instance(self.name))

    def connect(self, conv: int, peer: str = "127.0.0.1:5000") -> None:
        record = {"id": conv, "peer": peer, "since": 0, "waiting": None}
        self.run("HSET", self.keys.clients(self.name), str(conv), json.dumps(record))

    def leave(self, conv: int) -> None:
        self.run("HDEL", self.keys.clients(self.name), str(conv))

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
        """XADD a work item; its entry id."""
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
        entry = self.run("XADD", self.keys.work(group), "*", "m", json.dumps(message))
        return entry.decode()

    def inbox(self) -> list[dict[str, Any]]:
        """The messages in this instance's inbox (taken out)."""
        items = self.run("LPOP", self.keys.inbox(self.name), 1000)  # at once
        return [decode(i) for i in items or []]

    def done(self, group: str, entry: str) -> None:
        """Answered, timed out, or the client left: XDEL the entry."""
        self.run("XDEL", self.keys.work(group), entry)

    def stream_length(self, group: str) -> int:
        return int(self.run("XLEN", self.keys.work(group)))

    def pending(self, group: str) -> list[tuple[str, str]]:
        """(entry, consumer) of the lines held in *group*."""
        reply = self.run("XPENDING", self.keys.work(group), group, "-", "+", 100)
        return [(r[0].decode(), r[1].decode()) for r in reply]


class World:
    """A fake Redis, a clock, one instance, and consumers."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.server = FakeRedisServer(self.clock)
        self.instance = FakeInstance(self.server.client())
        self.consumers: list[Consumer] = []

    def consumer(
        self, handler: Any, *, capacity: int = 1, group: str = "operators"
    ) -> Consumer:
        shared, blocking = self.server.client(), self.server.client()
        c = Consumer(
            clock=self.clock,
            redis=shared,
            blocking=blocking,
            group=group,
            handler=handler,
            name=f"c{len(self.consumers) + 1}",
            by=f"operator c{len(self.consumers) + 1}",
            capacity=capacity,
        )
        c.clients = (shared, blocking)  # type: ignore[attr-defined]
        _now(c.start())
        self.consumers.append(c)
        return c

    def kill(self, consumer: Consumer) -> None:
        """kill -9: its connections go, and nothing more comes from it."""
        for client in consumer.clients:  # type: ignore[attr-defined]
            client.close()

    def run(self, seconds: float, step: float = 0.1) -> None:
        """Let *seconds* pass, with the instance's heartbeat going on."""
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            beat = round(self.clock.seconds() / step) % round(HEARTBEAT / step) == 0
            if beat and self.instance.redis.connected:
                self.instance.beat()
