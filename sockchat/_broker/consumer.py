"""The broker's consumer side: operators and workers that take lines.

An instance (``twistd sockchat --broker URL --responder operators`` or
``workers``) adds each line that wants an answer to its group's work
queue, and every operator or worker process takes from that queue, so
that each line goes to exactly one of them, oldest first.  ``Consumer``
is that loop, for one group; what it does with a line is its
``Handler``'s: ``OperatorDesk`` (``sockchat._broker.operators``) shows it
on a console, ``WorkerHandler`` (``sockchat._broker.workers``) asks a
responder.  What a consumer sends (answers, notices) goes through its
``Outbox``, in order.

The rules (docs/broker.md, "Operators and workers"):

- New lines are taken in batches (as many as the consumer has room for);
  lines abandoned by a consumer that died are looked for on a timer
  (``CLAIM_EVERY``), not before every read.
- A consumer touches every line it holds at every heartbeat, so a live
  one, however slow, is never robbed; one that quits cleanly hands its
  lines back, so the next consumer takes them without waiting for them to
  be abandoned.
- A work item of another protocol is refused (one log line per sender,
  and a ``refused`` message so that the client gets its turn back); one
  whose instance is dead is dropped.  Who is alive is known from the
  heartbeats (a census at each of the consumer's own); only an instance
  that the last census did not name is asked about.
- The answer goes to the inbox of the instance that holds the client,
  and the entry is deleted in the same batch, after it.  While the broker
  is away the consumer keeps what it holds and what it owes, says so
  once, and goes on when it returns.

Everything here takes its clock and its broker (an ``IBroker``) as
arguments, so it runs in tests on the memory broker and a ``Clock``.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from attrs import Factory, define, frozen
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockchat._broker.interface import (
    BrokerRefused,
    BrokerUnavailable,
    Census,
    ConsumerSeen,
    IBroker,
    Taken,
    WorkEntry,
)
from sockchat._broker.wire import Timings, WireError, decode, encode, encode_answer
from sockchat._core.render import safe_text
from sockchat._responders.contract import ConversationInfo, IConversation

__all__ = [
    "BLOCK",
    "CLAIM_EVERY",
    "Consumer",
    "Handler",
    "HandlerBase",
    "Outbox",
    "Outcome",
    "RemoteConversation",
    "WorkItem",
    "consumer_name",
]

log = Logger(namespace="sockchat.consumer")

#: Seconds one read waits for a new line.
BLOCK = 1.0
#: Seconds between looks for lines abandoned by dead consumers.
CLAIM_EVERY = 1.0
#: Seconds between retries while the broker is away.
RETRY = 1.0


def consumer_name() -> str:
    """This process's consumer name: ``{host}-{pid}-{random4}``."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


@frozen
class WorkItem:
    """One entry of a work queue: a line, or (workers) a lifecycle event."""

    #: The queue entry's id.
    entry: str
    #: ``line``, ``started`` or ``ended``.
    kind: str
    #: The instance that holds the client, and its conversation id there.
    instance: str
    conv: int
    peer: str
    #: The whole message (``text``, ``n``, ``reason``...).
    message: dict[str, Any]

    @property
    def text(self) -> str:
        text = self.message.get("text", "")
        return text if isinstance(text, str) else str(text)

    @property
    def where(self) -> tuple[str, int]:
        """(instance, conversation): the client, the same for everyone."""
        return (self.instance, self.conv)


@frozen
class Outcome:
    """What a handler sends back for a work item: ``answer`` (with the
    answer's ``text``) or ``failed`` (``text`` says why)."""

    kind: str
    text: str


class Handler(Protocol):
    """What a ``Consumer`` does with the work items it takes."""

    #: The kinds of work item it takes; any other is refused.
    kinds: frozenset[str]
    #: Whether the conversations it serves begin with its line (said at
    #: the heartbeat, for the instances).
    greets: bool

    def attach(self, consumer: Consumer) -> None:
        """The consumer that gives it items (made after the handler)."""

    def start(self) -> Deferred[None]:
        """Before the consumer takes its first item."""

    def stop(self) -> None:
        """The consumer quits."""

    def handle(self, item: WorkItem) -> Outcome | Deferred[Outcome | None] | None:
        """Deal with *item*: its outcome, ``None`` when nothing is owed for
        it, or a Deferred of either when it must wait (for a person, a
        bot's reply).

        If the line stops being wanted first (the client left, or the
        instance gave up waiting), the Deferred is cancelled.
        """

    def gone(self, item: WorkItem) -> Deferred[None] | None:
        """*item* was deleted (the client left or its line timed out) while
        held: called before the handler's Deferred is cancelled."""


class HandlerBase:
    """What a handler need not do: nothing before it starts, at its stop, or
    when an item goes; it does not speak first."""

    greets = False
    kinds: frozenset[str] = frozenset()

    def attach(self, consumer: Consumer) -> None:
        pass

    def start(self) -> Deferred[None]:
        return succeed(None)

    def stop(self) -> None:
        pass

    def gone(self, item: WorkItem) -> Deferred[None] | None:
        return None


# -- The outbox ---------------------------------------------------------------


@define(eq=False)
class _Send:
    """Messages to post, then entries to delete; then *done*."""

    posts: list[tuple[str, bytes]]
    entries: list[str]
    done: Callable[[], None] | None = None


class Outbox:
    """What a consumer sends, in order: messages to instances' inboxes and
    the entries it finished.

    Everything given in one reactor turn goes in one call to the broker
    (``IBroker.finish``), which posts every message before it deletes any
    entry.  While the broker is away, it is kept and sent, in order, when
    it is back.
    """

    def __init__(self, broker: IBroker, group: str, clock: IReactorTime) -> None:
        self._broker = broker
        self._group = group
        self._clock = clock
        self._queue: deque[_Send] = deque()
        self._flush: IDelayedCall | None = None
        self._sending: Deferred[None] | None = None
        self._wake: Deferred[None] | None = None
        #: Once set, what cannot be sent because the broker is away is lost.
        self.quitting = False

    def post(self, instance: str, kind: str, **fields: Any) -> None:
        """A message for *instance*'s inbox."""
        self._add(_Send([(instance, encode(kind, **fields))], []))

    def finish(
        self,
        entries: Sequence[str],
        posts: Sequence[tuple[str, bytes]] = (),
        done: Callable[[], None] | None = None,
        *,
        now: bool = False,
    ) -> None:
        """Post *posts*, then delete *entries*; then call *done*.  *now*:
        send it (and what waits for the end of this turn) at once."""
        self._add(_Send(list(posts), list(entries), done), now)

    def _add(self, send: _Send, now: bool = False) -> None:
        self._queue.append(send)
        if self._sending is not None and not self._sending.called:
            return  # sent after the call in flight
        if now:
            if self._flush is not None and self._flush.active():
                self._flush.cancel()
            self._start()
        elif self._flush is None:
            self._flush = self._clock.callLater(0, self._start)

    def _start(self) -> None:
        self._flush = None
        self._sending = Deferred()
        self._send_next()

    def send_now(self) -> None:
        """Send what waits for the end of this turn now: a consumer about
        to read sends its answers first, so that the broker may carry
        both in one write (``RedisBroker`` sends them on the read's
        connection when it is free)."""
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
            self._start()

    def drain(self) -> Deferred[None]:
        """Fires once everything given so far was sent (or, ``quitting``,
        could not be)."""
        self.send_now()
        self._flush = None
        if self._queue and (self._sending is None or self._sending.called):
            self._start()
        if self._sending is None or self._sending.called:
            return succeed(None)
        drained: Deferred[None] = Deferred()

        def sent(result: object) -> object:
            drained.callback(None)
            return result

        self._sending.addBoth(sent)
        return drained

    def wake(self) -> None:
        """The broker is back: try again now."""
        wake, self._wake = self._wake, None
        if wake is not None and not wake.called:
            wake.callback(None)

    # Callbacks rather than a coroutine: this is every batch's answer.

    def _send_next(self) -> None:
        """Send everything queued in one call; then what came meanwhile."""
        batch = list(self._queue)
        if not batch:
            sending, self._sending = self._sending, None
            if sending is not None:
                sending.callback(None)
            return
        if len(batch) == 1:
            posts, entries = batch[0].posts, batch[0].entries
        else:
            posts = [post for send in batch for post in send.posts]
            entries = [entry for send in batch for entry in send.entries]
        try:
            sent = self._broker.finish(self._group, entries, posts)
        except Exception:
            sent = fail()
        sent.addCallbacks(
            self._sent, self._not_sent, callbackArgs=(batch,), errbackArgs=(batch,)
        )

    def _sent(self, _: object, batch: list[_Send]) -> None:
        for _send in batch:
            self._queue.popleft()
        for send in batch:
            if send.done is not None:
                try:
                    send.done()
                except Exception:  # a bug: say so, and go on sending
                    log.failure("after sending a batch")
        self._send_next()

    def _not_sent(self, failure: Failure, batch: list[_Send]) -> None:
        if failure.check(BrokerRefused):
            log.error("the broker refused a batch: {error}", error=str(failure.value))
            self._sent(None, batch)
        elif not failure.check(BrokerUnavailable):
            log.failure("sending failed", failure)  # a bug: kept for the next send
            sending, self._sending = self._sending, None
            if sending is not None:
                sending.callback(None)
        elif self.quitting:
            self._queue.clear()  # quitting: what cannot be sent now is lost
            self._send_next()
        else:
            retry = self._clock.callLater(RETRY, self.wake)
            self._wake = Deferred()

            def again(_: object) -> None:
                if retry.active():
                    retry.cancel()
                self._send_next()

            self._wake.addCallback(again)


@implementer(IConversation)
class RemoteConversation:
    """A conversation held by an instance, as a responder's hooks or a
    console see it: ``notify`` and ``end`` become messages to that
    instance."""

    def __init__(
        self, info: ConversationInfo, instance: str, conv: int, outbox: Outbox
    ) -> None:
        self.info = info
        self.instance = instance
        self.conv = conv
        self._outbox = outbox

    @property
    def key(self) -> str:
        """Where the conversation lives: ``i2/5`` (instance/conversation),
        the same in every operator and worker."""
        return f"{self.instance}/{self.conv}"

    def notify(self, code: str, text: str) -> None:
        self._outbox.post(self.instance, "notify", conv=self.conv, code=code, text=text)

    def end(self, code: str, text: str) -> None:
        self._outbox.post(self.instance, "end", conv=self.conv, code=code, text=text)

    def handoff(self, reason: str) -> None:
        self._outbox.post(self.instance, "handoff", conv=self.conv, reason=reason)


# -- The loop -------------------------------------------------------------------


@define(eq=False)
class _Batch:
    """What the handler answered at once, of one read: sent together."""

    entries: list[str] = Factory(list)
    posts: list[tuple[str, bytes]] = Factory(list)
    held: list[_Held] = Factory(list)


@define(eq=False)
class _Held:
    item: WorkItem
    outcome: Deferred[Outcome | None] | None = None
    #: The answer is given and on its way: only the deletion is left.
    finishing: bool = False


class Consumer:
    """Take the lines of one group's queue and answer them through *handler*.

    *capacity* is how many lines it holds at once (``--hold`` for
    operators, ``--concurrency`` for workers); *name* is unique, *display*
    the name others see, *by* what its answers are signed with.
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        broker: IBroker,
        group: str,
        handler: Handler,
        outbox: Outbox,
        name: str | None = None,
        display: str = "",
        by: str = "",
        capacity: int = 1,
        timings: Timings | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be 1 or more, not {capacity}")
        self._clock = clock
        self.broker = broker
        self.group = group
        self._handler = handler
        self._outbox = outbox
        self.name = name or consumer_name()
        self.display = display or self.name
        self.by = by or self.name
        self.capacity = capacity
        self.timings = timings or Timings()
        self._held: dict[str, _Held] = {}
        self._running = False
        self._stopping: Deferred[None] | None = None
        self._loop: Deferred[None] | None = None
        self._wake: Deferred[None] | None = None
        self._nap: IDelayedCall | None = None
        self._beat: IDelayedCall | None = None
        self._claimed_at = float("-inf")
        self._lost = False
        self._refused: set[str] = set()  # senders already logged
        self._refusal = ""  # the read error last logged
        #: The last census: who is alive; and instances asked about since.
        self.census = Census()
        self._asked: dict[str, bool] = {}
        #: While a read's lines are handed out: the answers given at once.
        self._batch: _Batch | None = None
        broker.on_change(self.broker_state)
        handler.attach(self)

    # -- what the shell sees ------------------------------------------------

    @property
    def held(self) -> list[str]:
        """The entry ids of the lines this consumer holds, oldest first."""
        return list(self._held)

    def start(self) -> Deferred[None]:
        """Make the queue if need be, say we are here, and start reading."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        await self.broker.open_queue(self.group)
        self._running = True
        await self._heartbeat_once()
        self._beat = self._clock.callLater(self.timings.heartbeat, self._heartbeat)
        self._loop = Deferred.fromCoroutine(self._read_loop())
        self._loop.addErrback(self._crashed, "the read loop")

    def stop(self) -> Deferred[None]:
        """Quit cleanly: send what is owed, hand back every line still held
        (others take them at once), and say we are gone."""
        if self._stopping is None:
            self._stopping = Deferred.fromCoroutine(self._stop())
        return self._stopping

    def broker_state(self, up: bool) -> None:
        """The broker was lost, or is back."""
        if not up and not self._lost:
            self._lost = True
            log.warn(
                "lost the broker at {broker}; holding {count} line(s), going on "
                "when it is back",
                broker=self.broker.display,
                count=len(self._held),
            )
        elif up and self._lost:
            self._lost = False
            log.info("the broker is back at {broker}", broker=self.broker.display)
            self._outbox.wake()
            self._wakeup()

    def take_entry(self, entry: str) -> Deferred[Taken]:
        """Take one given entry (an operator's ``/to`` for a line that waits
        in the queue): handled as any line taken, even past *capacity*."""

        async def take() -> Taken:
            taken = await self.broker.take_entry(
                self.group, self.name, entry, self.timings.claim_after
            )
            if taken.entry is not None and taken.entry.entry not in self._held:
                await self._take(taken.entry)
            return taken

        return Deferred.fromCoroutine(take())

    # -- reading ------------------------------------------------------------

    async def _read_loop(self) -> None:
        while self._running:
            room = self.capacity - len(self._held)
            if room <= 0:
                await self._wait()
                continue
            try:
                entries = await self._next(room)
            except BrokerUnavailable:
                await self._wait(RETRY)
                continue
            except BrokerRefused as e:
                if str(e) != self._refusal:  # once, not once a second
                    self._refusal = str(e)
                    log.error("the broker refused a read: {error}", error=str(e))
                await self._wait(RETRY)
                continue
            self._refusal = ""
            # The answers given at once go out together, before the next
            # read (in the same write, with a RedisBroker).
            self._batch = batch = _Batch()
            try:
                await self._hand_all(entries)
            finally:
                self._batch = None
                if batch.entries:
                    done = functools.partial(self._release_all, batch.held)
                    self._outbox.finish(batch.entries, batch.posts, done, now=True)
                else:
                    self._outbox.send_now()

    async def _hand_all(self, entries: list[WorkEntry]) -> None:
        """Check and hand each of *entries* (a read's) to the handler."""
        for entry in entries:
            if not self._running:  # read while stopping: hand it back too
                self._held[entry.entry] = _Held(_placeholder(entry.entry))
                continue
            try:
                item = self._check(entry)
                if item is None:
                    continue
                # Who is alive is known from the census; only an
                # instance it did not name is asked about (once).
                if item.instance in self.census.instances or await self._alive(
                    item.instance
                ):
                    self._hand(item)
                else:
                    self._drop_dead(item)
            except Exception:  # a bug: say so, and go on with the next line
                log.failure("taking {entry} failed", entry=entry.entry)

    async def _next(self, room: int) -> list[WorkEntry]:
        """Lines abandoned by dead consumers (at most every CLAIM_EVERY),
        or else new ones, up to *room*."""
        now = self._clock.seconds()
        if now - self._claimed_at >= CLAIM_EVERY:
            self._claimed_at = now
            abandoned = await self.broker.take_abandoned(
                self.group, self.name, self.timings.claim_after, room
            )
            fresh = [e for e in abandoned if e.entry not in self._held]
            if fresh:
                return fresh
        return await self.broker.take(self.group, self.name, room, BLOCK)

    async def _take(self, entry: WorkEntry) -> None:
        """Check a work item just taken, and give it to the handler."""
        item = self._check(entry)
        if item is None:
            return
        if await self._alive(item.instance):
            self._hand(item)
        else:
            self._drop_dead(item)

    def _check(self, entry: WorkEntry) -> WorkItem | None:
        """The work item in *entry*; None if it was refused."""
        try:
            message = decode(entry.data, sender=f"the work item {entry.entry}")
            item = _work_item(entry.entry, message)
        except WireError as e:
            self._refuse(entry, str(e))
            return None
        if item.kind not in self._handler.kinds:
            self._refuse(
                entry, f"{self.group} do not take {safe_text(item.kind)} items"
            )
            return None
        return item

    def _drop_dead(self, item: WorkItem) -> None:
        log.debug(
            "dropped {entry}: instance {instance} is gone",
            entry=item.entry,
            instance=item.instance,
        )
        self._outbox.finish([item.entry])

    def _hand(self, item: WorkItem) -> None:
        """Give *item* to the handler; its outcome, now or later, is sent."""
        held = self._held[item.entry] = _Held(item)
        try:
            outcome = self._handler.handle(item)
        except Exception:
            self._failed(Failure(), held)
            return
        if outcome is None or type(outcome) is Outcome:  # at once: most bots
            self._handled(outcome, held)
        elif isinstance(outcome, Deferred):
            held.outcome = outcome
            outcome.addCallbacks(
                self._handled, self._failed, callbackArgs=(held,), errbackArgs=(held,)
            )
        else:
            self._handled(outcome, held)

    async def _alive(self, instance: str) -> bool:
        """Whether *instance* is alive: from the last census, or (one it did
        not name: new since) asked once until the next."""
        if instance in self.census.instances:
            return True
        if instance not in self._asked:
            try:
                self._asked[instance] = await self.broker.instance_alive(instance)
            except (BrokerUnavailable, BrokerRefused):
                return True  # find out later: the line stays ours until then
        return self._asked[instance]

    def _refuse(self, entry: WorkEntry, why: str) -> None:
        sender = _sender(entry.data)
        if sender not in self._refused:
            self._refused.add(sender)
            log.warn(
                "refused work from {sender}: {why}",
                sender=sender or "an unknown sender",
                why=why,
            )
        instance, conv = _where(entry.data)
        posts = []
        if instance:
            message = encode("refused", conv=conv, entry=entry.entry, why=why)
            posts.append((instance, message))
        self._outbox.finish([entry.entry], posts)

    # -- answering ----------------------------------------------------------

    def _handled(self, outcome: Outcome | None, held: _Held) -> None:
        if self._held.get(held.item.entry) is not held or held.finishing:
            return  # handed back or gone already
        held.finishing = True
        item = held.item
        message = None
        if outcome is None:
            pass
        elif outcome.kind == "answer":
            message = encode_answer(item.conv, item.entry, outcome.text, self.by)
        else:
            message = encode(
                outcome.kind, conv=item.conv, entry=item.entry, why=outcome.text
            )
        batch = self._batch
        if batch is not None:  # taken in this read: sent with the others
            batch.entries.append(item.entry)
            batch.held.append(held)
            if message is not None:
                batch.posts.append((item.instance, message))
            return
        posts = [] if message is None else [(item.instance, message)]
        self._outbox.finish([item.entry], posts, functools.partial(self._release, held))

    def _failed(self, failure: Failure, held: _Held) -> None:
        if failure.check(CancelledError):
            return
        log.failure("handling {entry} failed", failure, entry=held.item.entry)
        why = f"the {self.group[:-1]} failed: {_named(failure)}"
        self._handled(Outcome("failed", why), held)

    def _release(self, held: _Held) -> None:
        if self._held.get(held.item.entry) is held:
            del self._held[held.item.entry]
        self._wakeup()

    def _release_all(self, done: list[_Held]) -> None:
        for held in done:
            if self._held.get(held.item.entry) is held:
                del self._held[held.item.entry]
        self._wakeup()

    # -- staying alive ------------------------------------------------------

    def _heartbeat(self) -> None:
        self._beat = None
        if not self._running:
            return
        done = Deferred.fromCoroutine(self._heartbeat_once())
        done.addErrback(self._crashed, "the heartbeat")
        self._beat = self._clock.callLater(self.timings.heartbeat, self._heartbeat)

    async def _heartbeat_once(self) -> None:
        """Say we are here, touch every line we hold, and look at who is
        alive."""
        seen = ConsumerSeen(
            self.name,
            self.display,
            self._clock.seconds() + self.timings.heartbeat_ttl,
            bool(getattr(self._handler, "greets", False)),
        )
        held = [h for h in self._held.values() if not h.finishing]
        try:
            _, still, self.census = await _all(
                self.broker.beat_consumer(self.group, seen),
                self.broker.touch(self.group, self.name, [h.item.entry for h in held]),
                self.broker.census([self.group]),
            )
        except BrokerUnavailable:
            return
        except BrokerRefused as e:
            log.error("the broker refused a heartbeat: {error}", error=str(e))
            return
        self._asked.clear()
        for h in held:
            if h.finishing:
                continue
            if not await self._alive(h.item.instance):
                # Nobody waits for it any more: drop it, as a new one would be.
                self._outbox.finish([h.item.entry])
                self._vanished(h)
            elif h.item.entry not in still:  # deleted: the client left or gave up
                self._vanished(h)

    def _vanished(self, held: _Held) -> None:
        """A held line was deleted: the client left, or its instance gave
        up waiting."""
        if self._held.get(held.item.entry) is not held:
            return
        del self._held[held.item.entry]
        log.debug("{entry} is no longer wanted", entry=held.item.entry)
        told = self._handler.gone(held.item)

        def cancel(_: object) -> None:
            if held.outcome is not None and not held.outcome.called:
                held.outcome.cancel()

        if told is None:
            cancel(None)
        else:
            told.addBoth(cancel)
        self._wakeup()

    # -- quitting -----------------------------------------------------------

    async def _stop(self) -> None:
        self._running = False
        if self._beat is not None and self._beat.active():
            self._beat.cancel()
        self._wakeup()
        if self._loop is not None:
            await self._loop  # at most one read that waits (BLOCK)
        self._outbox.quitting = True  # what cannot be sent now is lost
        await self._outbox.drain()  # what is owed first: answers given
        back = [h for h in self._held.values() if not h.finishing]
        self._held.clear()
        try:
            await _all(
                self.broker.hand_back(
                    self.group, self.name, [h.item.entry for h in back]
                ),
                self.broker.leave_consumer(self.group, self.name),
            )
        except (BrokerUnavailable, BrokerRefused) as e:
            if back:
                log.warn(
                    "could not hand back {count} line(s) ({error}); others take "
                    "them after {after:g} s",
                    count=len(back),
                    error=str(e),
                    after=self.timings.claim_after,
                )
        else:
            if back:
                log.info("handed back {count} line(s)", count=len(back))
        for h in back:
            if h.outcome is not None and not h.outcome.called:
                h.outcome.cancel()

    # -- waiting ------------------------------------------------------------

    def _wait(self, seconds: float | None = None) -> Deferred[None]:
        """Fire after *seconds* (or never), or when woken."""
        d: Deferred[None] = Deferred()
        call = None if seconds is None else self._clock.callLater(seconds, _fire, d)
        self._wake = d
        self._nap = call
        return d

    def _wakeup(self) -> None:
        d, self._wake = self._wake, None
        nap, self._nap = self._nap, None
        if nap is not None and nap.active():
            nap.cancel()
        if d is not None:
            _fire(d)

    def _crashed(self, failure: Failure, what: str) -> None:
        log.failure("{what} failed", failure, what=what)


async def _all(*calls: Deferred[Any]) -> list[Any]:
    """Every call's result, in order; if any failed, the first failure is
    raised once all are in (none is left unhandled)."""
    results: list[Any] = []
    first: BaseException | None = None
    for call in calls:
        try:
            results.append(await call)
        except Exception as e:
            first = first or e
            results.append(None)
    if first is not None:
        raise first
    return results


def _fire(d: Deferred[None]) -> None:
    if not d.called:
        d.callback(None)


def _named(failure: Failure) -> str:
    return failure.type.__name__ if failure.type is not None else "an error"


def _placeholder(entry: str) -> WorkItem:
    return WorkItem(entry, "line", "", 0, "", {})


def _work_item(entry: str, message: dict[str, Any]) -> WorkItem:
    instance, conv, peer = (
        message.get("instance"),
        message.get("conv"),
        message.get("peer"),
    )
    if not isinstance(instance, str) or not instance:
        raise WireError(f"the work item {entry} names no instance")
    if not isinstance(conv, int) or isinstance(conv, bool):
        raise WireError(f"the work item {entry} names no conversation")
    return WorkItem(
        entry,
        message["kind"],
        instance,
        conv,
        peer if isinstance(peer, str) else "unknown",
        message,
    )


def _loose(raw: bytes) -> dict[str, Any]:
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return message if isinstance(message, dict) else {}


def _where(raw: bytes) -> tuple[str, int | None]:
    """The instance and conversation a work item we cannot read is from."""
    message = _loose(raw)
    instance, conv = message.get("instance"), message.get("conv")
    return (
        instance if isinstance(instance, str) else "",
        conv if isinstance(conv, int) else None,
    )


def _sender(raw: bytes) -> str:
    instance, _ = _where(raw)
    return f"instance {safe_text(instance)}" if instance else ""
