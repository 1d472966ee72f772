"""The operators' queue at the broker, as the desk uses it: ``BrokerQueue``.

The desk is an operator of the broker's ``operators`` queue, like
``python -m sockchat.operator``, through ``IBroker`` only: on the memory
broker in one process (no ``--broker``), on Redis across instances.  Each
operator logged in at this desk is a consumer of the queue of their own
(``{this desk}/{login}``), beating while they are online, so that every
other desk, terminal operator and instance sees who holds what.

What the desk needs, and where it comes from:

- **the queue and who holds what**: a look every ``POLL`` at who is alive
  (``census``), the operators' clients with the holder of each
  conversation (``clients``), and the queue with the holder of each line
  (``queue_view``), compared with the last look to make the desk's events;
- **a new line at once**: the queue is followed (``follow``, a read that
  waits), so that a client's line reaches the desk without waiting for
  the next look; its history item's number comes with it (``h``);
- **what this desk's operators do**: taking a line (``take_entry``, then
  ``held`` to the client's instance, and a notice naming the operator to
  the client unless the desk is anonymous), answering (``finish``: the
  answer to the instance, signed ``operator NAME``, then the entry
  deleted), handing back (``hand_back``, ``released``), ending (``end``);
  each is an event at once, and a note in the conversation's history
  (``add_history``).

So a client's line costs the desk one ``follow`` read; an answer, one
``finish`` and one history item; and the looks, a few commands a second
whatever the load (docs/desk.md, "The desk and the broker").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockchat._broker.consumer import consumer_name
from sockchat._broker.interface import (
    BrokerRefused,
    BrokerUnavailable,
    Census,
    ClientRecord,
    ConsumerSeen,
    IBroker,
    QueuedEntry,
    WorkEntry,
    quietly,
)
from sockchat._broker.wire import OPERATORS, Timings, WireError, decode, encode, said
from sockchat._core.render import safe_text
from sockchat._desk.queue import (
    Answered,
    Client,
    Closed,
    DeskEvent,
    Dropped,
    HandedBack,
    IDeskQueue,
    Line,
    Online,
    Opened,
    Operator,
    Queued,
    Refused,
    Said,
    Snapshot,
    Spoken,
    Taken,
    Who,
)

__all__ = ["POLL", "BrokerQueue", "announcement"]

log = Logger(namespace="sockchat.desk")

_T = TypeVar("_T")

#: Seconds between the desk's looks at the queue, its clients and who is
#: online.
POLL = 1.0
#: Seconds one read of the queue's new lines waits, and lines it takes.
FOLLOW_WAIT = 1.0
FOLLOW_MOST = 256
#: Seconds between tries while the broker is away.
RETRY = 1.0
#: The client's conversation is ended with this.
ENDED = ("kicked", "the operator ended this conversation.")


def announcement(display: str) -> str:
    """What a client is told when an operator takes its conversation."""
    return f"{display} is answering you now."


@frozen
class _Look:
    """What one look at the broker found."""

    clients: dict[str, Client]
    #: Who holds each conversation between its lines (a consumer).
    holders: dict[str, str]
    #: The waiting lines, oldest first, with the consumer holding each.
    lines: dict[str, tuple[Line, str | None]]
    consumers: tuple[tuple[str, str], ...]


def _key(instance: str, conv: int) -> str:
    return f"{instance}/{conv}"


def _where(key: str) -> tuple[str, int]:
    instance, _, conv = key.rpartition("/")
    return instance, int(conv) if conv.isdigit() else -1


def _line(entry: str, data: bytes) -> tuple[Line, int | None, str] | None:
    """A queued line, its history item's number and its client's address;
    None if it is not one."""
    try:
        message = decode(data, sender=f"the queued entry {entry}")
    except WireError:
        return None
    instance, conv, text, at = (
        message.get("instance"),
        message.get("conv"),
        message.get("text"),
        message.get("at"),
    )
    if message["kind"] != "line" or not isinstance(instance, str):
        return None
    if type(conv) is not int:
        return None
    h, peer = message.get("h"), message.get("peer")
    return (
        Line(
            entry,
            _key(instance, conv),
            text if isinstance(text, str) else "",
            float(at) if isinstance(at, (int, float)) else 0.0,
        ),
        h if type(h) is int else None,
        peer if isinstance(peer, str) else "",
    )


@implementer(IDeskQueue)
class BrokerQueue:
    """The ``operators`` queue of *broker*, for the desk of this process.

    *announce*: tell a client who takes its conversation (the display
    name).  *name* is this desk's part of its consumers' names (default:
    ``host-pid-random``, as for any consumer).
    """

    def __init__(
        self,
        broker: IBroker,
        clock: IReactorTime,
        *,
        announce: bool = True,
        name: str | None = None,
        timings: Timings | None = None,
    ) -> None:
        self._broker = broker
        self._clock = clock
        self._announce = announce
        self.name = name or consumer_name()
        self._timings = timings or Timings()
        self._observers: list[Callable[[DeskEvent], None]] = []
        #: Operators online at this desk, by login name.
        self._here: dict[str, Operator] = {}
        self._clients: dict[str, Client] = {}
        self._lines: dict[str, Line] = {}
        #: Who holds each conversation, as the desk was last told.
        self._holders: dict[str, Operator] = {}
        #: Conversations this desk's operators hold (theirs to say).
        self._mine: dict[str, Operator] = {}
        #: Lines this desk's operators hold: entry -> consumer.
        self._held: dict[str, str] = {}
        #: Lines answered or let go here, until a look no longer shows them.
        self._done: set[str] = set()
        self._others: tuple[Operator, ...] = ()
        #: The consumers online at the last look: (name, display).
        self._consumers: tuple[tuple[str, str], ...] = ()
        #: Lines that came while a look was under way (it may not show them).
        self._fresh: set[str] = set()
        self._after = "0-0"
        self._running = False
        self._looking = False
        self._timers: dict[str, IDelayedCall] = {}
        self._follow: Deferred[None] | None = None
        self._wake: Deferred[None] | None = None

    # -- Life ------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Make the queue if need be, look once, then follow it."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        self._running = True
        try:
            await self._broker.open_queue(OPERATORS)
            await self.look()
        except (BrokerUnavailable, BrokerRefused) as e:
            log.warn(
                "desk: the broker at {broker} cannot be used yet ({why}); "
                "the desk looks again every {poll:g} s",
                broker=self._broker.display,
                why=str(e),
                poll=POLL,
            )
        self._later("look", POLL, self._tick)
        self._later("beat", self._timings.heartbeat, self._beat)
        self._follow = Deferred.fromCoroutine(self._follow_queue())
        self._follow.addErrback(lambda f: log.failure("desk: following failed", f))

    def stop(self) -> Deferred[None]:
        """Stop looking; hand back what this desk's operators hold, and say
        they are gone."""
        self._running = False
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        if self._wake is not None and not self._wake.called:
            self._wake.callback(None)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if not self._broker.up:
            return
        for key, operator in list(self._mine.items()):
            with suppress(BrokerUnavailable, BrokerRefused, Refused):
                await self._let_go(key, operator, "the desk stopped")
        for operator in list(self._here.values()):
            await quietly(
                self._broker.leave_consumer(OPERATORS, self._consumer(operator))
            )

    def _later(self, what: str, seconds: float, call: Callable[[], object]) -> None:
        if self._running:
            self._timers[what] = self._clock.callLater(seconds, call)

    def _consumer(self, operator: Operator) -> str:
        return f"{self.name}/{operator.name}"

    def _operator(self, consumer: str) -> Operator:
        """Another's consumer, as an operator with the name others see."""
        return Operator(consumer, dict(self._consumers).get(consumer, consumer))

    # -- Looking ---------------------------------------------------------------

    def _tick(self) -> None:
        d = Deferred.fromCoroutine(self.look())
        d.addErrback(self._look_failed)
        d.addBoth(lambda _: self._later("look", POLL, self._tick))

    def _look_failed(self, failure: Failure) -> None:
        if not failure.check(BrokerUnavailable, BrokerRefused):
            log.failure("desk: looking at the queue failed", failure)

    async def look(self) -> None:
        """Look at the broker, and tell the desk what changed since."""
        if self._looking:
            return
        self._looking = True
        self._fresh = set()
        try:
            census: Census = await self._broker.census([OPERATORS])
            directory = await self._broker.clients(sorted(census.instances))
            view = await self._broker.queue_view(OPERATORS, self._timings.claim_after)
        finally:
            self._looking = False
        self._apply(self._seen(census, directory, view))

    def _seen(
        self,
        census: Census,
        directory: dict[str, list[ClientRecord]],
        view: list[QueuedEntry],
    ) -> _Look:
        clients: dict[str, Client] = {}
        holders: dict[str, str] = {}
        alive = census.instances
        for instance in sorted(directory):
            for record in directory[instance]:
                if record.responder != OPERATORS:
                    continue  # a bot's, until it hands over; pair mode's
                key = _key(instance, record.conv)
                known = self._clients.get(key)
                clients[key] = known or _client(key, record.peer, self._clock)
                if record.holder is not None:
                    holders[key] = record.holder
        lines: dict[str, tuple[Line, str | None]] = {}
        for queued in view:
            found = _line(queued.entry, queued.data)
            # A dead instance's lines wait for a consumer to drop them:
            # nobody waits for their answers.
            if found is not None and _where(found[0].conversation)[0] in alive:
                lines[queued.entry] = (found[0], queued.holder)
        consumers = tuple((s.name, s.display) for s in census.of(OPERATORS))
        return _Look(clients, holders, lines, consumers)

    def _apply(self, look: _Look) -> None:
        self._consumers = look.consumers
        for key, client in look.clients.items():
            if key not in self._clients:
                self._clients[key] = client
                self._emit(Opened(client))
        for entry, (line, _) in look.lines.items():
            if entry not in self._lines and entry not in self._done:
                self._arrived(line, None, "")
        for entry in [e for e in self._lines if e not in look.lines]:
            if entry in self._fresh:
                continue  # it came after the look read the queue
            line = self._lines.pop(entry)
            self._held.pop(entry, None)
            gone = line.conversation not in look.clients
            why = "left" if gone else "the line was withdrawn"
            self._emit(Dropped(entry, line.conversation, why))
        self._done &= set(look.lines)
        for key in list(self._clients):
            if key in look.clients:
                self._settle(key, look)
        # A conversation whose line came after the look read the directory
        # is there: the look may not show it yet.
        newer = {self._lines[e].conversation for e in self._fresh if e in self._lines}
        for key in [k for k in self._clients if k not in look.clients]:
            if key in newer:
                continue
            del self._clients[key]
            self._mine.pop(key, None)
            self._holders.pop(key, None)
            self._emit(Closed(key, "left"))
        others = tuple(
            Operator(name, display)
            for name, display in look.consumers
            if not name.startswith(f"{self.name}/")
        )
        if others != self._others:
            self._others = others
            self._emit(Online(self._online()))

    def _settle(self, key: str, look: _Look) -> None:
        """Who holds conversation *key* now: this desk's operator if it says
        so, unless another has taken a line of it meanwhile; else who the
        broker says, if they are online."""
        ours = f"{self.name}/"
        live = {name for name, _ in look.consumers}
        on_lines = [
            h
            for line, h in look.lines.values()
            if line.conversation == key and h is not None and not h.startswith(ours)
        ]
        mine = self._mine.get(key)
        if mine is not None:
            if not on_lines:
                return  # ours, whatever a look made before it says
            # Another took a line of it: this desk's operator stopped beating.
            del self._mine[key]
            self._holders.pop(key, None)
            for entry in [
                e for e, c in self._held.items() if c == self._consumer(mine)
            ]:
                if self._lines.get(entry, Line("", "", "", 0)).conversation == key:
                    del self._held[entry]
            self._emit(HandedBack(key, mine))
        kept = look.holders.get(key)
        others = [c for c in [kept, *on_lines] if c is not None and c in live]
        holder = (
            self._operator(others[0])
            if others and not others[0].startswith(ours)
            else None
        )
        before = self._holders.get(key)
        if holder == before:
            return
        if holder is None:
            assert before is not None
            del self._holders[key]
            self._emit(HandedBack(key, before))
            return
        self._holders[key] = holder
        waiting = [e for e, line in self._lines.items() if line.conversation == key]
        self._emit(Taken(waiting[0] if waiting else "", key, holder))

    def _arrived(self, line: Line, h: int | None, peer: str) -> None:
        """A line to show: a new one (*h*: its history item), or one seen
        first by a look."""
        key = line.conversation
        if key not in self._clients:
            client = _client(key, peer, self._clock)
            self._clients[key] = client
            self._emit(Opened(client))
        self._lines[line.entry] = line
        mine = self._mine.get(key)
        if mine is not None:  # queued held, for its holder here
            self._held[line.entry] = self._consumer(mine)
        self._emit(Queued(line, mine or self._holders.get(key)))
        if h is not None:
            said_ = Said(key, h, Who.CLIENT, "", line.text, line.since)
            self._emit(Spoken(said_))

    async def _follow_queue(self) -> None:
        """New lines as they come (between two looks)."""
        while self._running:
            try:
                entries = await self._broker.follow(
                    OPERATORS, self._after, FOLLOW_WAIT, FOLLOW_MOST
                )
            except (BrokerUnavailable, BrokerRefused):
                await self._pause(RETRY)
                continue
            self._followed(entries)

    def _followed(self, entries: list[WorkEntry]) -> None:
        for entry in entries:
            self._after = entry.entry
            if entry.entry in self._lines or entry.entry in self._done:
                continue
            found = _line(entry.entry, entry.data)
            if found is not None:
                self._fresh.add(entry.entry)
                self._arrived(*found)

    def _pause(self, seconds: float) -> Deferred[None]:
        wake: Deferred[None] = Deferred()
        self._wake = wake
        self._timers["pause"] = self._clock.callLater(seconds, _fire, wake)
        return wake

    def _beat(self) -> None:
        """This desk's operators are online; the lines they hold are theirs
        still."""
        until = self._clock.seconds() + self._timings.heartbeat_ttl
        for operator in self._here.values():
            quietly(self._say_online(operator, until))
            consumer = self._consumer(operator)
            entries = [e for e, c in self._held.items() if c == consumer]
            if entries:
                quietly(self._broker.touch(OPERATORS, consumer, entries))
        self._later("beat", self._timings.heartbeat, self._beat)

    def _say_online(self, operator: Operator, until: float) -> Deferred[None]:
        seen = ConsumerSeen(self._consumer(operator), operator.display, until)
        return self._broker.beat_consumer(OPERATORS, seen)

    def _online(self) -> tuple[Operator, ...]:
        return tuple(self._here.values()) + self._others

    # -- IDeskQueue ------------------------------------------------------------

    def snapshot(self) -> Deferred[Snapshot]:
        return succeed(
            Snapshot(
                clients=tuple(self._clients.values()),
                lines=tuple(self._lines.values()),
                holders=tuple(self._holders.items()),
                operators=self._online(),
            )
        )

    def history(self, conversation: str) -> Deferred[Sequence[Said]]:
        instance, conv = _where(conversation)

        def items(kept: list[Any]) -> Sequence[Said]:
            found = []
            for k in kept:
                item = _said(conversation, k.n, k.data)
                if item is not None:
                    found.append(item)
            return tuple(found)

        return self._broker.history(instance, conv).addCallback(items)

    def take(self, entry: str, by: Operator) -> Deferred[None]:
        return self._acting(self._take(entry, by))

    async def _take(self, entry: str, by: Operator) -> None:
        line = self._lines.get(entry)
        if line is None:
            raise Refused("that line is no longer waiting")
        key = line.conversation
        holder = self._holders.get(key)
        if holder is not None and holder.name != by.name:
            raise Refused(f"{holder.display} holds that conversation")
        consumer = self._consumer(by)
        taken = await self._broker.take_entry(
            OPERATORS, consumer, entry, self._timings.claim_after
        )
        if taken.entry is None:
            if taken.holder is not None:
                other = self._operator(taken.holder)
                raise Refused(f"{other.display} holds that line")
            raise Refused("that line is no longer waiting")
        self._held[entry] = consumer
        first = self._mine.get(key) != by
        self._mine[key] = self._holders[key] = by
        instance, conv = _where(key)
        messages = [encode("held", conv=conv, holder=consumer, by=by.display)]
        if first and self._announce:
            text = announcement(by.display)
            messages.append(encode("notify", conv=conv, code="operator", text=text))
        quietly(self._broker.post(instance, messages))
        log.info("desk: {operator} took conversation {key}", operator=by.name, key=key)
        if first:  # in the history before the desk fetches it
            await self._note(key, Who.NOTICE, by, f"{by.display} took it")
        self._emit(Taken(entry, key, by))

    def answer(self, entry: str, text: str, by: Operator) -> Deferred[None]:
        return self._acting(self._answer(entry, text, by))

    async def _answer(self, entry: str, text: str, by: Operator) -> None:
        line = self._lines.get(entry)
        if line is None:
            raise Refused("that line is no longer waiting for an answer")
        key = line.conversation
        if self._mine.get(key) != by:
            raise Refused("take the conversation before answering it")
        instance, conv = _where(key)
        message = encode(
            "answer", conv=conv, entry=entry, text=text, by=f"operator {by.name}"
        )
        try:
            await self._broker.finish(OPERATORS, [entry], [(instance, message)])
        except (BrokerUnavailable, BrokerRefused):
            self._emit(Queued(line, by))  # not sent: the line waits again
            raise
        self._lines.pop(entry, None)
        self._held.pop(entry, None)
        self._done.add(entry)
        self._emit(Answered(entry, key, by))
        await self._note(key, Who.OPERATOR, by, text)

    def hand_back(self, conversation: str, by: Operator) -> Deferred[None]:
        return self._acting(self._hand_back(conversation, by))

    async def _hand_back(self, key: str, by: Operator) -> None:
        if self._mine.get(key) != by:
            raise Refused("you do not hold that conversation")
        await self._let_go(key, by, "handed back")

    async def _let_go(self, key: str, by: Operator, why: str) -> None:
        consumer = self._consumer(by)
        entries = [
            e
            for e, c in self._held.items()
            if c == consumer and e in self._lines and self._lines[e].conversation == key
        ]
        instance, conv = _where(key)
        await self._broker.hand_back(OPERATORS, consumer, entries)
        quietly(self._broker.post(instance, [encode("released", conv=conv)]))
        for entry in entries:
            del self._held[entry]
        self._mine.pop(key, None)
        self._holders.pop(key, None)
        log.info(
            "desk: {operator} let go of {key} ({why})",
            operator=by.name,
            key=key,
            why=why,
        )
        self._emit(HandedBack(key, by))
        await self._note(key, Who.NOTICE, by, f"{by.display} handed it back")

    def end(self, conversation: str, by: Operator) -> Deferred[None]:
        if conversation not in self._clients:
            return _refused("that conversation is over already")
        holder = self._holders.get(conversation)
        if holder is not None and holder != by:
            return _refused(f"{holder.display} holds that conversation")
        instance, conv = _where(conversation)
        code, text = ENDED
        log.info(
            "desk: {operator} ended conversation {key}",
            operator=by.name,
            key=conversation,
        )
        message = encode("end", conv=conv, code=code, text=text)
        return self._acting(self._broker.post(instance, [message]))

    def online(self, operator: Operator) -> Deferred[None]:
        self._here[operator.name] = operator
        until = self._clock.seconds() + self._timings.heartbeat_ttl
        self._emit(Online(self._online()))
        return quietly(self._say_online(operator, until))

    def offline(self, operator: Operator) -> Deferred[None]:
        if self._here.pop(operator.name, None) is None:
            return succeed(None)
        self._emit(Online(self._online()))
        return quietly(self._broker.leave_consumer(OPERATORS, self._consumer(operator)))

    def subscribe(self, observer: Callable[[DeskEvent], None]) -> Callable[[], None]:
        self._observers.append(observer)

        def stop() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return stop

    # -- Helpers ---------------------------------------------------------------

    async def _note(self, key: str, who: Who, by: Operator, text: str) -> None:
        """Put an item in the conversation's history, and tell the desk."""
        instance, conv = _where(key)
        at = self._clock.seconds()
        try:
            n = await self._broker.add_history(
                instance, conv, [said(who.value, by.display, text, at)]
            )
        except (BrokerUnavailable, BrokerRefused):
            return  # the history misses it; the action itself is done
        self._emit(Spoken(Said(key, n, who, by.display, text, at)))

    def _acting(self, d: Deferred[_T] | Any) -> Deferred[None]:
        """An action's outcome: the broker's loss as a refusal, in one line."""
        action: Deferred[Any] = (
            d if isinstance(d, Deferred) else Deferred.fromCoroutine(d)
        )

        def failed(failure: Failure) -> Failure:
            if failure.check(BrokerUnavailable):
                return Failure(
                    Refused("the broker cannot be reached; try again in a moment")
                )
            if failure.check(BrokerRefused):
                return Failure(Refused(f"the broker refused it: {failure.value}"))
            return failure

        return action.addCallbacks(lambda _: None, failed)

    def _emit(self, event: DeskEvent) -> None:
        for observer in list(self._observers):
            observer(event)


def _client(key: str, peer: str, clock: IReactorTime) -> Client:
    shown = safe_text(peer) if peer else "?"
    return Client(key, f"client {key} ({shown})", peer, clock.seconds())


def _said(key: str, n: int, data: bytes) -> Said | None:
    try:
        item = decode(data, sender="a history item")
        who = Who(item.get("who"))
    except (WireError, ValueError):
        return None
    at = item.get("at")
    return Said(
        key,
        n,
        who,
        str(item.get("by") or ""),
        str(item.get("text") or ""),
        float(at) if isinstance(at, (int, float)) else 0.0,
    )


def _refused(why: str) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    d.errback(Refused(why))
    return d


def _fire(d: Deferred[None]) -> None:
    if not d.called:
        d.callback(None)
