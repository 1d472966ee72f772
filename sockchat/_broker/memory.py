"""The broker in one process: ``MemoryBroker``, an ``IBroker`` with no Redis.

A ``MemoryHub`` holds what Redis would hold (who is alive, the inboxes,
the work queues, the directory, the pair waiting list), on a clock; each
process that meets at it gets a ``MemoryBroker`` of its own from
``hub.broker()``, as each would have its own connection to Redis.  An
instance and its consumers (operators, workers) in one process share a hub
and need nothing else; the logic tests of the instance, the consumers and
the pairs run on it, with a ``Clock``.

It keeps the interface's promises as the Redis one does, and is checked
against the same contract (``tests/broker/test_broker_contract.py``).
Replies come at once (the Deferred has fired when the method returns),
or *latency* seconds later on the clock, in order; a read that waits is
woken by a ``post`` or ``enqueue`` (after *read_latency*: as with Redis,
reads that wait have a connection of their own, so their replies and the
others' may pass each other), or gives ``[]`` when its time is up.

Faults, for tests: ``hub.lose()`` (the broker is unreachable: what waits
fails with ``BrokerUnavailable``, every ``MemoryBroker`` says so once, and
calls fail at once), ``hub.restore(flush=...)`` (it is back; with
*flush*, without its data, as a Redis restarted with no persistence),
``hub.refuse(call, error)`` (the broker says no to a call, as Redis does
to a key of the wrong type), and ``broker.kill()`` (its process died:
nothing more from it, and its held entries are left for others to take).
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from attrs import define, field
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from sockchat._broker.interface import (
    BrokerRefused,
    BrokerUnavailable,
    Census,
    ClientRecord,
    ConsumerSeen,
    IBroker,
    Kept,
    QueuedEntry,
    Taken,
    WorkEntry,
)
from sockchat._broker.wire import HISTORY_BYTES, HISTORY_ITEMS, PROTOCOL, Timings

__all__ = ["MemoryBroker", "MemoryHub"]

_T = TypeVar("_T")

#: When a handed-back entry was last touched: long ago, so anyone takes it.
_LONG_AGO = float("-inf")


@define(eq=False)
class _Item:
    data: bytes
    #: The consumer holding it, and when it last touched it.
    holder: str | None = None
    touched: float = 0.0


@define(eq=False)
class _Queue:
    items: dict[str, _Item] = field(factory=dict)
    #: Entries nobody has taken yet, oldest first.
    fresh: deque[str] = field(factory=deque)


@define(eq=False)
class _History:
    """One conversation's history: the next number, and the items kept."""

    next_n: int = 1
    items: deque[Kept] = field(factory=deque)
    size: int = 0

    def add(self, data: bytes) -> None:
        self.items.append(Kept(self.next_n, data))
        self.next_n += 1
        self.size += len(data)
        while len(self.items) > 1 and (
            len(self.items) > HISTORY_ITEMS or self.size > HISTORY_BYTES
        ):
            self.size -= len(self.items.popleft().data)


@define(eq=False)
class _Waiter:
    """A read that waits: for an inbox (*key* is its instance) or a queue
    (*key* is its group: a consumer's take, or a follower's read after the
    entry *after*)."""

    broker: MemoryBroker
    key: str
    most: int
    reply: Deferred[Any]
    consumer: str = ""
    after: str = ""
    timeout: IDelayedCall | None = None


@define(eq=False)
class _State:
    protocol: str | None = None
    counter: int = 0
    #: Instance name -> when its heartbeat runs out.
    instances: dict[str, float] = field(factory=dict)
    consumers: dict[str, dict[str, ConsumerSeen]] = field(factory=dict)
    #: Instance name -> its messages, and when the inbox runs out.
    inboxes: dict[str, tuple[deque[bytes], float]] = field(factory=dict)
    queues: dict[str, _Queue] = field(factory=dict)
    directory: dict[str, dict[int, ClientRecord]] = field(factory=dict)
    waiting: list[bytes] = field(factory=list)
    last_id: tuple[int, int] = (0, 0)
    #: Instance name -> its conversations' histories, and when they run out.
    histories: dict[str, tuple[dict[int, _History], float]] = field(factory=dict)


class MemoryHub:
    """What the processes of one set-up share, in memory, on *clock*."""

    def __init__(self, clock: IReactorTime, timings: Timings | None = None) -> None:
        self.clock = clock
        self.timings = timings or Timings()
        self.running = True
        self._state = _State()
        self._brokers: list[MemoryBroker] = []
        self._inbox_waiters: list[_Waiter] = []
        self._queue_waiters: list[_Waiter] = []
        self._follow_waiters: list[_Waiter] = []
        self._names = itertools.count(1)
        #: Calls the broker refuses (as a Redis that says no), by name.
        self.refusals: dict[str, str] = {}

    def refuse(self, call: str, error: str) -> None:
        """Make the broker refuse every *call* (``pair_or_wait``, ``take``...)
        with *error*, as a Redis that says no; ``allow`` ends it."""
        self.refusals[call] = error

    def allow(self, call: str) -> None:
        self.refusals.pop(call, None)

    def broker(
        self,
        *,
        latency: float = 0.0,
        read_latency: float | None = None,
        display: str = "",
    ) -> MemoryBroker:
        """A process's own view of the hub (as its connections to Redis):
        replies take *latency* seconds, those of reads that wait
        *read_latency* (by default the same)."""
        made = MemoryBroker(
            self,
            latency=latency,
            read_latency=latency if read_latency is None else read_latency,
            display=display or f"memory:{next(self._names)}",
        )
        self._brokers.append(made)
        return made

    # -- Faults ----------------------------------------------------------------

    def lose(self) -> None:
        """The broker is unreachable: every broker says so, and what waits
        fails."""
        if not self.running:
            return
        self.running = False
        for broker in list(self._brokers):
            broker._lost()

    def restore(self, *, flush: bool = False) -> None:
        """The broker is back; with *flush*, without its data."""
        if self.running:
            return
        if flush:
            self._state = _State()
        self.running = True
        for broker in list(self._brokers):
            broker._back()

    # -- What the brokers do -----------------------------------------------------

    def now(self) -> float:
        return self.clock.seconds()

    def alive(self, name: str) -> bool:
        return self._state.instances.get(name, _LONG_AGO) > self.now()

    def check_protocol(self) -> str:
        state = self._state
        if state.protocol is None:
            state.protocol = str(PROTOCOL)
        return state.protocol

    def register_instance(self) -> str:
        state = self._state
        state.counter += 1
        name = f"i{state.counter}"
        self.beat_instance(name)
        return name

    def beat_instance(self, name: str) -> None:
        until = self.now() + self.timings.heartbeat_ttl
        self._state.instances[name] = until
        histories = self._state.histories.get(name)
        if histories is not None:
            self._state.histories[name] = (histories[0], until)

    def leave_instance(self, name: str) -> None:
        self._state.instances.pop(name, None)
        self._state.directory.pop(name, None)
        self._state.histories.pop(name, None)

    def beat_consumer(self, group: str, seen: ConsumerSeen) -> None:
        self._state.consumers.setdefault(group, {})[seen.name] = seen

    def leave_consumer(self, group: str, name: str) -> None:
        self._state.consumers.get(group, {}).pop(name, None)

    def census(self, groups: Sequence[str]) -> Census:
        state, now = self._state, self.now()
        for name in [n for n in state.instances if not self.alive(n)]:
            self.leave_instance(name)
        live: dict[str, tuple[ConsumerSeen, ...]] = {}
        for group in groups:
            known = state.consumers.get(group, {})
            for name in [n for n, seen in known.items() if seen.until <= now]:
                del known[name]
            live[group] = tuple(known[n] for n in sorted(known))
        return Census(frozenset(state.instances), live)

    # Inboxes.

    def _inbox(self, instance: str) -> deque[bytes]:
        found = self._state.inboxes.get(instance)
        if found is None or found[1] <= self.now():
            self._state.inboxes.pop(instance, None)
            return deque()
        return found[0]

    def post(self, instance: str, messages: Sequence[bytes]) -> None:
        box = self._inbox(instance)
        box.extend(messages)
        self._state.inboxes[instance] = (box, self.now() + self.timings.inbox_ttl)
        self._serve(self._inbox_waiters, instance)

    def take_messages(self, instance: str, most: int) -> list[bytes]:
        box = self._inbox(instance)
        return [box.popleft() for _ in range(min(most, len(box)))]

    # Work queues.

    def queue(self, group: str) -> _Queue:
        return self._state.queues.setdefault(group, _Queue())

    def enqueue(
        self, group: str, messages: Sequence[bytes], holder: str | None = None
    ) -> list[str]:
        state = self._state
        queue = self.queue(group)
        entries = []
        for data in messages:
            ms = int(self.now() * 1000)
            last_ms, last_seq = state.last_id
            entry_id = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
            state.last_id = entry_id
            entry = f"{entry_id[0]}-{entry_id[1]}"
            queue.items[entry] = _Item(data)
            queue.fresh.append(entry)
            if holder is not None:  # as one Redis script: nobody else sees it new
                self.take_entry(group, holder, entry, 0.0)
            entries.append(entry)
        self._serve(self._queue_waiters, group)
        self._serve(self._follow_waiters, group)
        return entries

    def follow(self, group: str, after: str, most: int) -> list[WorkEntry]:
        start = _entry_id(after)
        found: list[WorkEntry] = []
        for entry, item in self.queue(group).items.items():
            if len(found) >= most:
                break
            if _entry_id(entry) > start:
                found.append(WorkEntry(entry, item.data))
        return found

    def take_fresh(self, group: str, consumer: str, most: int) -> list[WorkEntry]:
        queue = self.queue(group)
        taken: list[WorkEntry] = []
        while queue.fresh and len(taken) < most:
            entry = queue.fresh.popleft()
            item = queue.items[entry]
            item.holder, item.touched = consumer, self.now()
            taken.append(WorkEntry(entry, item.data))
        return taken

    def take_abandoned(
        self, group: str, consumer: str, idle: float, most: int
    ) -> list[WorkEntry]:
        queue, now = self.queue(group), self.now()
        taken: list[WorkEntry] = []
        for entry, item in queue.items.items():
            if len(taken) >= most:
                break
            if item.holder is not None and item.touched <= now - idle:
                item.holder, item.touched = consumer, now
                taken.append(WorkEntry(entry, item.data))
        return taken

    def take_entry(self, group: str, consumer: str, entry: str, idle: float) -> Taken:
        queue, now = self.queue(group), self.now()
        item = queue.items.get(entry)
        if item is None:
            return Taken()
        if (
            item.holder is not None
            and item.holder != consumer
            and item.touched > now - idle
        ):
            return Taken(holder=item.holder)
        if entry in queue.fresh:
            # As Redis does it: the new entries before it are taken too, and
            # handed back at once.
            while (first := queue.fresh.popleft()) != entry:
                before = queue.items[first]
                before.holder, before.touched = consumer, _LONG_AGO
        item.holder, item.touched = consumer, now
        return Taken(WorkEntry(entry, item.data))

    def touch(self, group: str, consumer: str, entries: Sequence[str]) -> set[str]:
        queue, now = self.queue(group), self.now()
        there = set()
        for entry in entries:
            item = queue.items.get(entry)
            if item is not None and item.holder is not None:
                item.holder, item.touched = consumer, now
                there.add(entry)
        return there

    def delete(self, group: str, entries: Sequence[str]) -> None:
        queue = self.queue(group)
        for entry in entries:
            if queue.items.pop(entry, None) is not None and entry in queue.fresh:
                queue.fresh.remove(entry)

    def hand_back(self, group: str, consumer: str, entries: Sequence[str]) -> None:
        queue = self.queue(group)
        for entry in entries:
            item = queue.items.get(entry)
            if item is not None and item.holder is not None:  # as Redis: whoever
                item.holder, item.touched = consumer, _LONG_AGO

    def queue_view(self, group: str, idle: float) -> list[QueuedEntry]:
        now = self.now()
        return [
            QueuedEntry(
                entry,
                item.data,
                item.holder if item.touched > now - idle else None,
            )
            for entry, item in self.queue(group).items.items()
        ]

    # The directory.

    def set_client(self, instance: str, client: ClientRecord) -> None:
        self._state.directory.setdefault(instance, {})[client.conv] = client

    def remove_client(self, instance: str, conv: int) -> None:
        self._state.directory.get(instance, {}).pop(conv, None)

    def clients_of(self, instance: str) -> list[ClientRecord]:
        if not self.alive(instance):
            return []
        known = self._state.directory.get(instance, {})
        return [known[conv] for conv in sorted(known)]

    # Histories.

    def _histories(self, instance: str) -> dict[int, _History]:
        found = self._state.histories.get(instance)
        if found is None or found[1] <= self.now():
            self._state.histories.pop(instance, None)
            return {}
        return found[0]

    def add_history(self, instance: str, conv: int, items: Sequence[bytes]) -> int:
        histories = self._histories(instance)
        history = histories.setdefault(conv, _History())
        first = history.next_n
        for data in items:
            history.add(data)
        until = self.now() + self.timings.heartbeat_ttl
        self._state.histories[instance] = (histories, until)
        return first

    def history(self, instance: str, conv: int) -> list[Kept]:
        history = self._histories(instance).get(conv)
        return list(history.items) if history is not None else []

    def drop_history(self, instance: str, conv: int) -> None:
        self._histories(instance).pop(conv, None)

    # Pairing.

    def pair_or_wait(self, entry: bytes, front: bool) -> bytes | None:
        waiting = self._state.waiting
        while waiting:
            first = waiting.pop(0)
            if first != entry and self.alive(_instance_named(first)):
                return first
        if front:
            waiting.insert(0, entry)
        else:
            waiting.append(entry)
        return None

    def start_waiting(self, entry: bytes, front: bool) -> None:
        self.stop_waiting(entry)
        self._state.waiting.insert(0 if front else len(self._state.waiting), entry)

    def stop_waiting(self, entry: bytes) -> None:
        self._state.waiting = [e for e in self._state.waiting if e != entry]

    def waiting(self) -> list[bytes]:
        return list(self._state.waiting)

    # Reads that wait.

    def wait(self, waiters: list[_Waiter], waiter: _Waiter, seconds: float) -> None:
        waiters.append(waiter)

        def time_up() -> None:
            waiter.timeout = None
            if waiter in waiters:
                waiters.remove(waiter)
                waiter.broker._deliver(waiter.reply, [], read=True)

        waiter.timeout = self.clock.callLater(seconds, time_up)

    def _serve(self, waiters: list[_Waiter], key: str) -> None:
        for waiter in [w for w in waiters if w.key == key]:
            if waiters is self._inbox_waiters:
                found: list[Any] = self.take_messages(key, waiter.most)
            elif waiters is self._follow_waiters:
                found = self.follow(key, waiter.after, waiter.most)
                if not found:
                    continue  # others may follow from further back
            else:
                found = self.take_fresh(key, waiter.consumer, waiter.most)
            if not found:
                return
            waiters.remove(waiter)
            if waiter.timeout is not None and waiter.timeout.active():
                waiter.timeout.cancel()
            waiter.broker._deliver(waiter.reply, found, read=True)

    def forget_waiters(self, broker: MemoryBroker) -> list[_Waiter]:
        """*broker*'s reads that wait, taken away."""
        gone = []
        for waiters in (
            self._inbox_waiters,
            self._queue_waiters,
            self._follow_waiters,
        ):
            for waiter in [w for w in waiters if w.broker is broker]:
                waiters.remove(waiter)
                if waiter.timeout is not None and waiter.timeout.active():
                    waiter.timeout.cancel()
                gone.append(waiter)
        return gone


def _entry_id(entry: str) -> tuple[int, int]:
    """An entry id (``1718000000000-0``) as a pair that sorts as Redis's
    do; a malformed one sorts first."""
    ms, _, seq = entry.partition("-")
    try:
        return (int(ms), int(seq or 0))
    except ValueError:
        return (-1, -1)


def _instance_named(entry: bytes) -> str:
    """The instance a pair entry names ("" if it names none)."""
    try:
        decoded = json.loads(entry)
    except (ValueError, UnicodeDecodeError):
        return ""
    instance = decoded.get("instance") if isinstance(decoded, dict) else None
    return instance if isinstance(instance, str) else ""


@implementer(IBroker)
class MemoryBroker:
    """One process's ``IBroker`` on a ``MemoryHub`` (``hub.broker()``)."""

    def __init__(
        self, hub: MemoryHub, *, latency: float, read_latency: float, display: str
    ) -> None:
        self._hub = hub
        self._latency = latency
        self._read_latency = read_latency
        self.display = display
        self.up = hub.running
        self.why = "" if hub.running else "the memory broker is down"
        self._closed = False
        self._callbacks: list[Callable[[bool], object]] = []
        self._in_flight: dict[Deferred[Any], IDelayedCall] = {}
        self._up_waiters: list[Deferred[None]] = []

    # -- What tests do to it -------------------------------------------------

    def kill(self) -> None:
        """Its process died: nothing more comes from it."""
        self._closed = True
        self.up = False
        self._fail_all("the process was killed")

    def _lost(self) -> None:
        if self._closed:
            return
        self.up = False
        self.why = "the memory broker is down"
        for callback in list(self._callbacks):
            callback(False)
        self._fail_all("the broker was lost")

    def _back(self) -> None:
        if self._closed:
            return
        self.up = True
        for callback in list(self._callbacks):
            callback(True)
        waiters, self._up_waiters = self._up_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _fail_all(self, why: str) -> None:
        for waiter in self._hub.forget_waiters(self):
            waiter.reply.errback(BrokerUnavailable(f"{self.display}: {why}"))
        in_flight, self._in_flight = self._in_flight, {}
        for d, call in in_flight.items():
            if call.active():
                call.cancel()
            d.errback(BrokerUnavailable(f"{self.display}: {why}"))

    # -- Replies ---------------------------------------------------------------

    def _unavailable(self) -> Deferred[Any]:
        return fail(BrokerUnavailable(f"the broker at {self.display} is unavailable"))

    def _refusal(self, call: str) -> Deferred[Any] | None:
        if not self.up:
            return self._unavailable()
        refused = self._hub.refusals.get(call)
        return None if refused is None else fail(BrokerRefused(refused))

    def _call(self, f: Callable[..., _T], *args: Any) -> Deferred[_T]:
        refused = self._refusal(getattr(f, "__name__", ""))
        if refused is not None:
            return refused
        reply: Deferred[_T] = Deferred()
        self._deliver(reply, f(*args))
        return reply

    def _deliver(
        self, reply: Deferred[Any], value: object, *, read: bool = False
    ) -> None:
        latency = self._read_latency if read else self._latency
        if latency <= 0:
            reply.callback(value)
            return

        def fire() -> None:
            self._in_flight.pop(reply, None)
            reply.callback(value)

        self._in_flight[reply] = self._hub.clock.callLater(latency, fire)

    def _read(
        self, waiter: _Waiter, waiters: list[_Waiter], wait: float, found: list[Any]
    ) -> Deferred[Any]:
        """What was found at once, or *waiter*'s reply once something comes
        (``[]`` after *wait* seconds)."""
        if found or wait <= 0:
            self._deliver(waiter.reply, found, read=wait > 0)
        else:
            self._hub.wait(waiters, waiter, wait)
        return waiter.reply

    # -- IBrokerLink -------------------------------------------------------------

    def on_change(self, callback: Callable[[bool], object]) -> None:
        self._callbacks.append(callback)

    def when_up(self) -> Deferred[None]:
        if self.up or self._closed:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._up_waiters.append(waiter)
        return waiter

    def check_protocol(self) -> Deferred[None]:
        if not self.up:
            return self._unavailable()
        theirs = self._hub.check_protocol()
        if theirs != str(PROTOCOL):
            return fail(
                BrokerRefused(
                    f"the broker at {self.display} speaks broker protocol {theirs}; "
                    f"this sockchat speaks {PROTOCOL}: run the same sockchat version "
                    "everywhere"
                )
            )
        return self._call(lambda: None)

    def close(self) -> Deferred[None]:
        self._closed = True
        self.up = False
        self._fail_all("the broker was closed")
        waiters, self._up_waiters = self._up_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        return succeed(None)

    # -- IPresence ---------------------------------------------------------------

    def register_instance(self, about: Mapping[str, Any]) -> Deferred[str]:
        return self._call(self._hub.register_instance)

    def beat_instance(self, name: str, about: Mapping[str, Any]) -> Deferred[None]:
        return self._call(self._hub.beat_instance, name)

    def leave_instance(self, name: str) -> Deferred[None]:
        return self._call(self._hub.leave_instance, name)

    def instance_alive(self, name: str) -> Deferred[bool]:
        return self._call(self._hub.alive, name)

    def beat_consumer(self, group: str, seen: ConsumerSeen) -> Deferred[None]:
        return self._call(self._hub.beat_consumer, group, seen)

    def leave_consumer(self, group: str, name: str) -> Deferred[None]:
        return self._call(self._hub.leave_consumer, group, name)

    def census(self, groups: Sequence[str]) -> Deferred[Census]:
        return self._call(self._hub.census, groups)

    # -- IInbox ------------------------------------------------------------------

    def post(self, instance: str, messages: Sequence[bytes]) -> Deferred[None]:
        return self._call(self._hub.post, instance, list(messages))

    def next_messages(
        self, instance: str, wait: float, most: int
    ) -> Deferred[list[bytes]]:
        refused = self._refusal("next_messages")
        if refused is not None:
            return refused
        found = self._hub.take_messages(instance, most)
        waiter = _Waiter(self, instance, most, Deferred())
        return self._read(waiter, self._hub._inbox_waiters, wait, found)

    # -- IWorkQueue ----------------------------------------------------------------

    def open_queue(self, group: str) -> Deferred[None]:
        def made() -> None:
            self._hub.queue(group)

        return self._call(made)

    def enqueue(self, group: str, messages: Sequence[bytes]) -> Deferred[list[str]]:
        return self._call(self._hub.enqueue, group, list(messages))

    def enqueue_held(self, group: str, message: bytes, holder: str) -> Deferred[str]:
        held = self._call(self._hub.enqueue, group, [message], holder)
        return held.addCallback(lambda entries: entries[0])

    def follow(
        self, group: str, after: str, wait: float, most: int
    ) -> Deferred[list[WorkEntry]]:
        refused = self._refusal("follow")
        if refused is not None:
            return refused
        found = self._hub.follow(group, after, most)
        waiter = _Waiter(self, group, most, Deferred(), after=after)
        return self._read(waiter, self._hub._follow_waiters, wait, found)

    def take(
        self, group: str, consumer: str, most: int, wait: float
    ) -> Deferred[list[WorkEntry]]:
        refused = self._refusal("take")
        if refused is not None:
            return refused
        found = self._hub.take_fresh(group, consumer, most)
        waiter = _Waiter(self, group, most, Deferred(), consumer)
        return self._read(waiter, self._hub._queue_waiters, wait, found)

    def take_abandoned(
        self, group: str, consumer: str, idle: float, most: int
    ) -> Deferred[list[WorkEntry]]:
        return self._call(self._hub.take_abandoned, group, consumer, idle, most)

    def take_entry(
        self, group: str, consumer: str, entry: str, idle: float
    ) -> Deferred[Taken]:
        return self._call(self._hub.take_entry, group, consumer, entry, idle)

    def touch(
        self, group: str, consumer: str, entries: Sequence[str]
    ) -> Deferred[set[str]]:
        return self._call(self._hub.touch, group, consumer, list(entries))

    def finish(
        self,
        group: str,
        entries: Sequence[str],
        posts: Sequence[tuple[str, bytes]] = (),
    ) -> Deferred[None]:
        def both() -> None:
            for instance, message in posts:
                self._hub.post(instance, [message])
            self._hub.delete(group, list(entries))

        return self._call(both)

    def hand_back(
        self, group: str, consumer: str, entries: Sequence[str]
    ) -> Deferred[None]:
        return self._call(self._hub.hand_back, group, consumer, list(entries))

    def still_there(self, group: str, entries: Sequence[str]) -> Deferred[set[str]]:
        items = self._hub.queue(group).items
        return self._call(lambda: {e for e in entries if e in items})

    # -- IDirectory ----------------------------------------------------------------

    def set_client(self, instance: str, client: ClientRecord) -> Deferred[None]:
        return self._call(self._hub.set_client, instance, client)

    def remove_client(self, instance: str, conv: int) -> Deferred[None]:
        return self._call(self._hub.remove_client, instance, conv)

    def has_client(self, instance: str, conv: int) -> Deferred[bool]:
        return self._call(
            lambda: any(c.conv == conv for c in self._hub.clients_of(instance))
        )

    def clients(
        self, instances: Sequence[str]
    ) -> Deferred[dict[str, list[ClientRecord]]]:
        return self._call(lambda: {n: self._hub.clients_of(n) for n in instances})

    def queue_view(self, group: str, idle: float) -> Deferred[list[QueuedEntry]]:
        return self._call(self._hub.queue_view, group, idle)

    # -- IHistory ------------------------------------------------------------------

    def add_history(
        self, instance: str, conv: int, items: Sequence[bytes]
    ) -> Deferred[int]:
        return self._call(self._hub.add_history, instance, conv, list(items))

    def history(self, instance: str, conv: int) -> Deferred[list[Kept]]:
        return self._call(self._hub.history, instance, conv)

    def drop_history(self, instance: str, conv: int) -> Deferred[None]:
        return self._call(self._hub.drop_history, instance, conv)

    # -- IPairing ------------------------------------------------------------------

    def pair_or_wait(self, entry: bytes, front: bool) -> Deferred[bytes | None]:
        return self._call(self._hub.pair_or_wait, entry, front)

    def start_waiting(self, entry: bytes, front: bool) -> Deferred[None]:
        return self._call(self._hub.start_waiting, entry, front)

    def stop_waiting(self, entry: bytes) -> Deferred[None]:
        return self._call(self._hub.stop_waiting, entry)

    def waiting(self) -> Deferred[list[bytes]]:
        return self._call(self._hub.waiting)
