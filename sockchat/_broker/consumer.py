"""The broker's consumer side: operators and workers that take lines.

An instance (``twistd sockchat --broker URL --responder operators`` or
``workers``) adds each line that wants an answer to a stream, and every
operator or worker process reads that stream in one consumer group, so
that each line goes to exactly one of them, oldest first.  ``Consumer``
is that loop, for one group; what it does with a line is its
``Handler``'s: ``OperatorDesk`` shows it on a ``ConsoleResponder``,
``WorkerHandler`` asks a responder.

The rules (docs/broker.md, "Operators and workers"):

- Lines abandoned by a consumer that died are taken first (``XAUTOCLAIM``
  after ``CLAIM_AFTER``), then new ones (``XREADGROUP >``, on a client of
  its own since it blocks).
- A consumer touches every line it holds every ``HEARTBEAT``, so a live
  one, however slow, is never robbed; one that quits cleanly hands its
  lines back at once, so the next consumer takes them without waiting.
- A work item of another protocol is refused (one log line per sender,
  and a ``refused`` message so that the client gets its turn back); one
  whose instance is dead (no heartbeat key) is dropped.
- The answer goes to the inbox of the instance that holds the client,
  and only then is the line acknowledged.  While the broker is away the
  consumer keeps what it holds and what it owes, says so once, and goes
  on when it returns.

Everything here takes its clock and its Redis connections as arguments,
so it runs in tests against ``tests/fakeredis.py`` and a ``Clock``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

from attrs import define, field, frozen
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockchat._broker.redis import BrokerUnavailable, IRedis, RedisError
from sockchat._broker.wire import (
    CLAIM_AFTER,
    HEARTBEAT,
    HEARTBEAT_TTL,
    INBOX_TTL,
    PROTOCOL,
    Keys,
    WireError,
    decode,
    encode,
)
from sockchat._console.responder import ConsoleResponder
from sockchat._core.render import safe_text
from sockchat._doors.runner import as_deferred
from sockchat._responders.contract import (
    ConversationInfo,
    IConversation,
    ILifecycle,
    IResponder,
)

__all__ = [
    "BLOCK",
    "POLL",
    "Consumer",
    "ConsumerError",
    "Handler",
    "OperatorDesk",
    "Outcome",
    "WorkItem",
    "WorkerHandler",
    "check_protocol",
    "consumer_name",
]

log = Logger(namespace="sockchat.consumer")

#: Seconds one ``XREADGROUP`` waits for a new line before the loop looks
#: for abandoned ones again.
BLOCK = 1.0
#: Seconds between retries while the broker is away.
RETRY = 1.0
#: Seconds between an operator's looks at who is connected (``/list``).
POLL = 1.0
#: ``XAUTOCLAIM`` calls per look for abandoned lines (each examines up to
#: ten held lines): enough for hundreds of lines held at once.
SCAN_ROUNDS = 50
#: The idle time (ms) a handed-back line is given: anyone's next
#: ``XAUTOCLAIM`` takes it.
HANDED_BACK_IDLE = 1_000_000_000
#: Conversations a worker remembers (their ids) at most.
REMEMBERED = 65_536


class ConsumerError(Exception):
    """Something that stops a consumer from starting; ``str()`` is one line."""


def consumer_name() -> str:
    """This process's consumer name: ``{host}-{pid}-{random4}``."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


async def check_protocol(redis: IRedis, keys: Keys, *, where: str) -> None:
    """Refuse a broker that speaks another protocol (``ConsumerError``).

    The first instance writes the protocol; a consumer that comes first
    writes it too (``SET NX``: the same value, whoever is first).
    """
    await redis.command("SET", keys.protocol, str(PROTOCOL), "NX")
    spoken = await redis.command("GET", keys.protocol)
    text = spoken.decode("utf-8", "replace") if isinstance(spoken, bytes) else spoken
    if text != str(PROTOCOL):
        raise ConsumerError(
            f"the broker at {where} speaks broker protocol {safe_text(str(text))}; "
            f"this sockchat speaks {PROTOCOL}: run the same sockchat version "
            "everywhere"
        )


@frozen
class WorkItem:
    """One entry of a work stream: a line, or (workers) a lifecycle event."""

    #: The stream entry id.
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

    def handle(self, item: WorkItem) -> Deferred[Outcome | None]:
        """Deal with *item*; ``None`` when nothing is owed for it.

        If the line stops being wanted first (the client left, or the
        instance gave up waiting), the Deferred is cancelled.
        """

    def gone(self, item: WorkItem) -> Deferred[None] | None:
        """*item* was deleted (the client left or its line timed out) while
        held: called before the handler's Deferred is cancelled."""


@define(eq=False)
class _Held:
    item: WorkItem
    outcome: Deferred[Outcome | None] | None = None
    #: The answer is given and on its way: only the acknowledgement is left.
    finishing: bool = False


@define(eq=False)
class _Send:
    """A group of commands sent together, in order, retried while the
    broker is away; then *done*."""

    commands: list[tuple[str | bytes | int | float, ...]]
    done: Callable[[], None] | None = None


class Consumer:
    """Take the lines of one group's stream and answer them through *handler*.

    *blocking* is a connection of its own for the blocking read; *redis*
    serves everything else (and may be shared).  *capacity* is how many
    lines it holds at once (``--hold`` for operators, ``--concurrency`` for
    workers); *display* is the name others see (``P:consumers:{group}``),
    *by* what its answers are signed with.
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        redis: IRedis,
        blocking: IRedis,
        group: str,
        handler: Handler,
        name: str | None = None,
        display: str = "",
        by: str = "",
        capacity: int = 1,
        keys: Keys | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be 1 or more, not {capacity}")
        self._clock = clock
        self._redis = redis
        self._blocking = blocking
        self.group = group
        self._handler = handler
        self.name = name or consumer_name()
        self.display = display or self.name
        self.by = by or self.name
        self.capacity = capacity
        self.keys = keys or Keys()
        self._stream = self.keys.work(group)
        self._held: dict[str, _Held] = {}
        self._outbox: deque[_Send] = deque()
        self._sending: Deferred[None] | None = None
        self._running = False
        self._stopping: Deferred[None] | None = None
        self._loop: Deferred[None] | None = None
        self._wake: Deferred[None] | None = None
        self._nap: IDelayedCall | None = None
        self._beat: IDelayedCall | None = None
        self._lost = False
        self._refused: set[str] = set()  # senders already logged
        self._refusal = ""  # the read error last logged

    # -- what the shell sees ------------------------------------------------

    @property
    def held(self) -> list[str]:
        """The entry ids of the lines this consumer holds, oldest first."""
        return list(self._held)

    def start(self) -> Deferred[None]:
        """Make the group if need be, say we are here, and start reading."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        await self._create_group()
        self._running = True
        await self._heartbeat_once()
        self._beat = self._clock.callLater(HEARTBEAT, self._heartbeat)
        self._loop = Deferred.fromCoroutine(self._read_loop())
        self._loop.addErrback(self._crashed, "the read loop")

    def stop(self) -> Deferred[None]:
        """Quit cleanly: send what is owed, hand back every line still held
        (others take them at once), and say we are gone."""
        if self._stopping is None:
            self._stopping = Deferred.fromCoroutine(self._stop())
        return self._stopping

    def broker_state(self, up: bool) -> None:
        """A connection's ``on_state``: the broker was lost, or is back."""
        if up:
            self._back()
        else:
            self._gone()

    def send(self, instance: str, kind: str, **fields: Any) -> None:
        """Put a message in *instance*'s inbox (kept and retried, in order,
        while the broker is away)."""
        self._queue(_Send(self._inbox_commands(instance, encode(kind, **fields))))

    # -- reading ------------------------------------------------------------

    async def _create_group(self) -> None:
        try:
            await self._redis.command(
                "XGROUP", "CREATE", self._stream, self.group, "0", "MKSTREAM"
            )
        except RedisError as e:
            if not str(e).startswith("BUSYGROUP"):
                raise

    async def _read_loop(self) -> None:
        while self._running:
            if len(self._held) >= self.capacity:
                await self._wait()
                continue
            try:
                found = await self._next_entry()
            except BrokerUnavailable:
                self._gone()
                await self._wait(RETRY)
                continue
            except RedisError as e:
                if "NOGROUP" in str(e):  # the broker restarted empty
                    log.info(
                        "the {group} group is gone; making it again", group=self.group
                    )
                    try:
                        await self._create_group()
                    except (BrokerUnavailable, RedisError):
                        await self._wait(RETRY)
                    continue
                if str(e) != self._refusal:  # once, not once a second
                    self._refusal = str(e)
                    log.error("the broker refused a read: {error}", error=str(e))
                await self._wait(RETRY)
                continue
            self._refusal = ""
            self._back()
            if found is None:
                continue
            entry, fields = found
            if self._quitting():  # read while stopping: hand it back too
                self._held[entry] = _Held(_placeholder(entry))
                continue
            try:
                await self._take(entry, fields)
            except Exception:  # a bug: say so, and go on with the next line
                log.failure("taking {entry} failed", entry=entry)

    def _quitting(self) -> bool:
        return not self._running

    async def _next_entry(self) -> tuple[str, dict[bytes, bytes]] | None:
        """The oldest abandoned line, or else a new one (or None)."""
        cursor: str | bytes = "0-0"
        for _ in range(SCAN_ROUNDS):
            reply = await self._redis.command(
                "XAUTOCLAIM",
                self._stream,
                self.group,
                self.name,
                int(CLAIM_AFTER * 1000),
                cursor,
                "COUNT",
                1,
            )
            cursor = reply[0]
            for raw in reply[1] or []:
                if raw is None:  # deleted (Redis 6.2 says so this way)
                    continue
                entry, fields = _entry(raw)
                if entry not in self._held:
                    return entry, fields
            if _text(cursor) == "0-0":
                break
        reading = self._blocking.command(
            "XREADGROUP",
            "GROUP",
            self.group,
            self.name,
            "COUNT",
            1,
            "BLOCK",
            int(BLOCK * 1000),
            "STREAMS",
            self._stream,
            ">",
        )
        at_once = reading.called
        reply = await reading
        if not reply:
            if at_once:  # a connection that does not block: do not spin
                await self._wait(BLOCK)
            return None
        _, entries = reply[0]
        if not entries:
            return None
        return _entry(entries[0])

    async def _take(self, entry: str, fields: dict[bytes, bytes]) -> None:
        """Check a work item just read, and give it to the handler."""
        raw = fields.get(b"m", b"")
        try:
            message = decode(raw, sender=f"the work item {entry}")
            item = _work_item(entry, message)
        except WireError as e:
            await self._refuse(entry, raw, str(e))
            return
        if item.kind not in self._handler.kinds:
            await self._refuse(
                entry, raw, f"{self.group} do not take {safe_text(item.kind)} items"
            )
            return
        try:
            alive = await self._redis.command(
                "EXISTS", self.keys.instance(item.instance)
            )
        except (BrokerUnavailable, RedisError):
            alive = 1  # find out later: the line stays ours until then
        if not alive:
            log.debug(
                "dropped {entry}: instance {instance} is gone",
                entry=entry,
                instance=item.instance,
            )
            self._queue(
                _Send(
                    [
                        ("SREM", self.keys.instances, item.instance),
                        *self._drop_commands(entry),
                    ]
                )
            )
            return
        held = self._held[entry] = _Held(item)
        outcome = maybeDeferred(self._handler.handle, item)
        held.outcome = outcome
        outcome.addCallbacks(
            self._handled, self._failed, callbackArgs=(held,), errbackArgs=(held,)
        )

    async def _refuse(self, entry: str, raw: bytes, why: str) -> None:
        sender = _sender(raw)
        if sender not in self._refused:
            self._refused.add(sender)
            log.warn(
                "refused work from {sender}: {why}",
                sender=sender or "an unknown sender",
                why=why,
            )
        commands = []
        instance, conv = _where(raw)
        if instance:
            message = encode("refused", conv=conv, entry=entry, why=why)
            commands += self._inbox_commands(instance, message)
        self._queue(_Send([*commands, *self._drop_commands(entry)]))

    # -- answering ----------------------------------------------------------

    def _handled(self, outcome: Outcome | None, held: _Held) -> None:
        if self._held.get(held.item.entry) is not held or held.finishing:
            return  # handed back or gone already
        held.finishing = True
        item = held.item
        commands = []
        if outcome is not None:
            extra = {"text": outcome.text, "by": self.by}
            if outcome.kind != "answer":
                extra = {"why": outcome.text}
            message = encode(outcome.kind, conv=item.conv, entry=item.entry, **extra)
            commands += self._inbox_commands(item.instance, message)
        if outcome is None or item.kind != "line":
            # Nothing waits for this entry's deletion (the instance deletes
            # the lines it waits for, not lifecycle events): delete it.
            commands += self._drop_commands(item.entry)
        else:
            commands.append(("XACK", self._stream, self.group, item.entry))
        self._queue(_Send(commands, lambda: self._release(held)))

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

    def _inbox_commands(
        self, instance: str, message: bytes
    ) -> list[tuple[str | bytes | int | float, ...]]:
        inbox = self.keys.inbox(instance)
        return [("RPUSH", inbox, message), ("PEXPIRE", inbox, int(INBOX_TTL * 1000))]

    def _drop_commands(self, entry: str) -> list[tuple[str | bytes | int | float, ...]]:
        return [
            ("XACK", self._stream, self.group, entry),
            ("XDEL", self._stream, entry),
        ]

    def _queue(self, send: _Send) -> None:
        self._outbox.append(send)
        if self._sending is None or self._sending.called:
            self._sending = Deferred.fromCoroutine(self._send_all())
            self._sending.addErrback(self._crashed, "sending")

    async def _send_all(self) -> None:
        """Send the outbox in order; wait while the broker is away."""
        while self._outbox:
            send = self._outbox[0]
            try:
                await self._pipeline(send.commands)
            except BrokerUnavailable:
                self._gone()
                if self._stopping is not None and not self._redis.connected:
                    return  # quitting: what cannot be sent now is lost
                await self._wait(RETRY, wake=False)
                continue
            self._back()
            self._outbox.popleft()
            if send.done is not None:
                send.done()

    async def _pipeline(
        self, commands: list[tuple[str | bytes | int | float, ...]]
    ) -> list[Any]:
        """Send *commands* together; their replies (a refused one logged,
        and None).  ``BrokerUnavailable`` if the broker is away."""
        return await _together([self._redis.command(*c) for c in commands])

    # -- staying alive ------------------------------------------------------

    def _heartbeat(self) -> None:
        self._beat = None
        if not self._running:
            return
        done = Deferred.fromCoroutine(self._heartbeat_once())
        done.addErrback(self._crashed, "the heartbeat")
        self._beat = self._clock.callLater(HEARTBEAT, self._heartbeat)

    async def _heartbeat_once(self) -> None:
        """Say we are here, and touch every line we hold."""
        seen = json.dumps(
            {
                "v": PROTOCOL,
                "name": self.display,
                "until": self._clock.seconds() + HEARTBEAT_TTL,
                "greets": bool(getattr(self._handler, "greets", False)),
            },
            ensure_ascii=True,
        )
        held = list(self._held.values())
        commands: list[tuple[str | bytes | int | float, ...]] = [
            ("HSET", self.keys.consumers(self.group), self.name, seen)
        ]
        commands += [
            ("XCLAIM", self._stream, self.group, self.name, 0, h.item.entry, "JUSTID")
            for h in held
        ]
        # Is each instance we hold lines of still alive?
        instances = sorted({h.item.instance for h in held if h.item.instance})
        commands += [("EXISTS", self.keys.instance(name)) for name in instances]
        try:
            replies = await self._pipeline(commands)
        except BrokerUnavailable:
            self._gone()
            return
        self._back()
        touched = replies[1 : 1 + len(held)]
        dead = {
            name
            for name, alive in zip(instances, replies[1 + len(held) :], strict=True)
            if alive == 0
        }
        for h, still in zip(held, touched, strict=True):
            if h.item.instance in dead and not h.finishing:
                # Nobody waits for it any more: drop it, as a new one would be.
                self._queue(_Send(self._drop_commands(h.item.entry)))
                self._vanished(h)
            elif not still and not h.finishing:  # deleted (or the group is gone)
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
            await self._loop  # at most one blocking read (BLOCK)
        if self._sending is not None:
            await self._sending  # what is owed first: answers given
        back = [h for h in self._held.values() if not h.finishing]
        self._held.clear()
        commands: list[tuple[str | bytes | int | float, ...]] = [
            (
                "XCLAIM",
                self._stream,
                self.group,
                self.name,
                0,
                h.item.entry,
                "IDLE",
                HANDED_BACK_IDLE,
                "JUSTID",
            )
            for h in back
        ]
        commands.append(("HDEL", self.keys.consumers(self.group), self.name))
        try:
            await self._pipeline(commands)
        except BrokerUnavailable as e:
            if back:
                log.warn(
                    "could not hand back {count} line(s) ({error}); others take "
                    "them after {after:g} s",
                    count=len(back),
                    error=str(e),
                    after=CLAIM_AFTER,
                )
        else:
            if back:
                log.info("handed back {count} line(s)", count=len(back))
        for h in back:
            if h.outcome is not None and not h.outcome.called:
                h.outcome.cancel()

    # -- the broker coming and going -----------------------------------------

    def _gone(self) -> None:
        """A command failed for want of the broker: say so once, if the
        main connection is down (the blocking one follows it)."""
        if not self._lost and not self._redis.connected:
            self._lost = True
            log.warn(
                "lost the broker at {broker}; holding {count} line(s), going on "
                "when it is back",
                broker=getattr(self._redis, "display", "?"),
                count=len(self._held),
            )

    def _back(self) -> None:
        if self._lost and self._redis.connected:
            self._lost = False
            log.info(
                "the broker is back at {broker}",
                broker=getattr(self._redis, "display", "?"),
            )
            self._wakeup()

    # -- waiting ------------------------------------------------------------

    def _wait(
        self, seconds: float | None = None, *, wake: bool = True
    ) -> Deferred[None]:
        """Fire after *seconds* (or never), or when woken (if *wake*)."""
        d: Deferred[None] = Deferred()
        call = None if seconds is None else self._clock.callLater(seconds, _fire, d)
        if wake:
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


async def _together(replies: list[Deferred[Any]]) -> list[Any]:
    """Wait for every one of *replies*; a refused command is logged (and
    None), ``BrokerUnavailable`` raised once all are in."""
    results: list[Any] = []
    lost: BrokerUnavailable | None = None
    for reply in replies:
        try:
            results.append(await reply)
        except BrokerUnavailable as e:
            lost = lost or e
            results.append(None)
        except RedisError as e:
            log.error("the broker refused a command: {error}", error=str(e))
            results.append(None)
    if lost is not None:
        raise lost
    return results


def _fire(d: Deferred[None]) -> None:
    if not d.called:
        d.callback(None)


def _named(failure: Failure) -> str:
    return failure.type.__name__ if failure.type is not None else "an error"


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _entry(raw: list[Any]) -> tuple[str, dict[bytes, bytes]]:
    """A stream entry ``[id, [field, value, ...]]`` as (id, fields)."""
    entry, flat = raw[0], raw[1] or []
    fields = {
        (k if isinstance(k, bytes) else str(k).encode()): (
            v if isinstance(v, bytes) else str(v).encode()
        )
        for k, v in zip(flat[::2], flat[1::2], strict=True)
    }
    return _text(entry), fields


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


# -- workers ----------------------------------------------------------------


@implementer(IConversation)
class RemoteConversation:
    """A conversation held by an instance, as a responder's hooks see it:
    ``notify`` and ``end`` become messages to that instance."""

    def __init__(
        self,
        info: ConversationInfo,
        instance: str,
        conv: int,
        send: Callable[..., None],
    ) -> None:
        self.info = info
        self.instance = instance
        self.conv = conv
        self._send = send

    @property
    def key(self) -> str:
        """Where the conversation lives: ``i2/5`` (instance/conversation),
        the same in every operator and worker."""
        return f"{self.instance}/{self.conv}"

    def notify(self, code: str, text: str) -> None:
        self._send(self.instance, "notify", conv=self.conv, code=code, text=text)

    def end(self, code: str, text: str) -> None:
        self._send(self.instance, "end", conv=self.conv, code=code, text=text)


class WorkerHandler:
    """Answer work items with a responder, as the server itself would.

    The responder sees each conversation with an id of this worker's own
    (instances' ids collide), counted from 1, and the client's address as
    its peer.  Its ``started`` and ``ended`` hooks run in the worker that
    takes those items, which need not be the one that answers the lines:
    state that must live across workers is the responder's business.
    """

    kinds = frozenset({"line", "started", "ended"})

    def __init__(self, responder: IResponder, send: Callable[..., None]) -> None:
        self.responder = responder
        #: Whether the conversations it serves begin with a line of the
        #: server's: its responder has lifecycle hooks (said at the heartbeat).
        self.greets = ILifecycle.providedBy(responder)
        self._send = send
        self._conversations: OrderedDict[tuple[str, int], RemoteConversation] = (
            OrderedDict()
        )
        self._count = 0

    def conversation(self, item: WorkItem) -> RemoteConversation:
        """The conversation of *item*, made when first seen."""
        where = (item.instance, item.conv)
        known = self._conversations.get(where)
        if known is None:
            self._count += 1
            info = ConversationInfo(self._count, item.peer)
            known = RemoteConversation(info, item.instance, item.conv, self._send)
            self._conversations[where] = known
            if len(self._conversations) > REMEMBERED:
                self._conversations.popitem(last=False)
        else:
            self._conversations.move_to_end(where)
        return known

    def handle(self, item: WorkItem) -> Deferred[Outcome | None]:
        conversation = self.conversation(item)
        lifecycle = ILifecycle.providedBy(self.responder)
        hooks = cast(ILifecycle, self.responder)
        if item.kind == "ended":
            del self._conversations[(item.instance, item.conv)]
            if lifecycle:
                reason = item.message.get("reason")
                try:
                    hooks.ended(conversation, str(reason or "unknown"))
                except Exception:
                    log.failure("the responder's ended hook failed")
            return succeed(None)
        try:
            if item.kind == "started":
                opening = bool(item.message.get("opening"))
                if not lifecycle:
                    if opening:
                        return succeed(
                            Outcome(
                                "failed", "this worker's responder has no started hook"
                            )
                        )
                    return succeed(None)
                reply = hooks.started(conversation)
                if reply is None:
                    if opening:
                        return succeed(
                            Outcome(
                                "failed",
                                "the responder's started hook gave no first line "
                                "(under --responder workers, a responder with "
                                "hooks speaks first)",
                            )
                        )
                    return succeed(None)
            else:
                reply = self.responder.respond(conversation.info, item.text)
        except Exception:
            return succeed(self._raised(Failure(), item))
        answer = as_deferred(reply)
        if answer is None:
            return succeed(self._answer(reply, item))
        result: Deferred[Outcome | None] = Deferred(lambda _: answer.cancel())

        def answered(text: object) -> None:
            if not result.called:
                result.callback(self._answer(text, item))

        def raised(failure: Failure) -> None:
            if not result.called and not failure.check(CancelledError):
                result.callback(self._raised(failure, item))

        answer.addCallbacks(answered, raised)
        return result

    def gone(self, item: WorkItem) -> None:
        return None

    def _answer(self, text: object, item: WorkItem) -> Outcome:
        if not isinstance(text, str):
            log.error(
                "the responder answered {entry} with {type}, not a str",
                entry=item.entry,
                type=type(text).__name__,
            )
            return Outcome(
                "failed", f"the responder answered with {type(text).__name__}"
            )
        return Outcome("answer", text)

    def _raised(self, failure: Failure, item: WorkItem) -> Outcome:
        log.failure("the responder failed on {entry}", failure, entry=item.entry)
        return Outcome("failed", f"the responder raised {_named(failure)}")


# -- operators --------------------------------------------------------------


@define(eq=False)
class _Client:
    conversation: RemoteConversation
    #: When it was mirrored because a line came (the poll may not see it yet).
    since: float = 0.0
    holding: set[str] = field(factory=set)


class OperatorDesk:
    """Show every client of every live instance on a ``ConsoleResponder``,
    and the lines this operator takes as its waiting lines.

    Polls ``P:instances`` and each live instance's ``P:clients:{name}``
    every ``POLL``, so that ``/list`` and ``/kick`` work as on one server.
    Client numbers are the operator's own; the peer part of a client's
    label says which instance and conversation it is:
    ``client 7 (i2/5, 127.0.0.1:50312)``.
    """

    kinds = frozenset({"line"})

    def __init__(
        self,
        console: ConsoleResponder,
        redis: IRedis,
        clock: IReactorTime,
        send: Callable[..., None],
        keys: Keys | None = None,
        *,
        shown: Callable[[], None] | None = None,
    ) -> None:
        self.console = console
        self._shown = shown
        self._redis = redis
        self._clock = clock
        self._send = send
        self.keys = keys or Keys()
        self._clients: dict[tuple[str, int], _Client] = {}
        self._count = 0
        self._poll: IDelayedCall | None = None
        self._polling = False

    def start(self) -> Deferred[None]:
        """Mirror the clients now, and every ``POLL`` from now on."""
        self._polling = True
        return self._run(self.refresh())

    def stop(self) -> None:
        self._polling = False
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        self._poll = None

    def _run(self, coroutine: Coroutine[Any, Any, None]) -> Deferred[None]:
        done = Deferred.fromCoroutine(coroutine)

        def again(result: object) -> None:
            if isinstance(result, Failure) and not result.check(BrokerUnavailable):
                log.failure("looking at the clients failed", result)
            if self._polling and (self._poll is None or not self._poll.active()):
                self._poll = self._clock.callLater(POLL, self._tick)

        return done.addBoth(again)

    def _tick(self) -> None:
        self._poll = None
        if self._polling:
            self._run(self.refresh())

    async def refresh(self) -> None:
        """Look at who is connected, on every live instance."""
        members = await self._redis.command("SMEMBERS", self.keys.instances)
        names = sorted(_text(n) for n in members or [])
        replies = await _together(
            [
                self._redis.command(*c)
                for n in names
                for c in (
                    ("EXISTS", self.keys.instance(n)),
                    ("HGETALL", self.keys.clients(n)),
                )
            ]
        )
        now: dict[tuple[str, int], str] = {}
        live: set[str] = set()
        for name, is_alive, flat in zip(
            names, replies[::2], replies[1::2], strict=True
        ):
            if is_alive == 0:
                self._redis.command("SREM", self.keys.instances, name).addErrback(
                    lambda _: None
                )
                continue
            if is_alive is None:  # refused: look again next time
                continue
            live.add(name)
            flat = flat or []
            for conv, value in zip(flat[::2], flat[1::2], strict=True):
                try:
                    number = int(conv)
                except ValueError:
                    continue
                peer = _loose(value).get("peer")
                now[(name, number)] = peer if isinstance(peer, str) else "unknown"
        for where, peer in sorted(now.items()):
            if where not in self._clients:
                self._mirror(where[0], where[1], peer)
        grace = self._clock.seconds() - HEARTBEAT_TTL
        for where, client in list(self._clients.items()):
            if where in now or client.holding:
                continue  # a held line's client goes when the line does
            if client.since > grace and where[0] in live:
                continue  # mirrored for a line: its instance may not list it yet
            self._forget(where, "left")

    def _mirror(self, instance: str, conv: int, peer: str) -> _Client:
        where = (instance, conv)
        client = self._clients.get(where)
        if client is None:
            self._count += 1
            label = f"{safe_text(instance)}/{conv}, {safe_text(peer)}"
            info = ConversationInfo(self._count, label)
            conversation = RemoteConversation(info, instance, conv, self._send)
            client = self._clients[where] = _Client(conversation)
            self.console.started(conversation)
        return client

    def _forget(self, where: tuple[str, int], reason: str) -> None:
        client = self._clients.pop(where, None)
        if client is not None:
            self.console.ended(client.conversation, reason)

    def handle(self, item: WorkItem) -> Deferred[Outcome | None]:
        where = (item.instance, item.conv)
        known = where in self._clients
        client = self._mirror(item.instance, item.conv, item.peer)
        if not known:
            client.since = self._clock.seconds()
        client.holding.add(item.entry)
        answer = self.console.respond(client.conversation.info, item.text)
        if self._shown is not None:
            self._shown()

        def answered(text: str) -> Outcome:
            client.holding.discard(item.entry)
            return Outcome("answer", text)

        def failed(failure: Failure) -> Failure:
            client.holding.discard(item.entry)
            return failure

        result: Deferred[Outcome | None] = answer.addCallbacks(answered, failed)
        return result

    def gone(self, item: WorkItem) -> Deferred[None]:
        """Did the client leave (then the console says so), or did its
        line time out?"""
        where = (item.instance, item.conv)
        client = self._clients.get(where)
        if client is not None:
            client.holding.discard(item.entry)

        async def look() -> None:
            try:
                there = await self._redis.command(
                    "HGET", self.keys.clients(item.instance), str(item.conv)
                )
            except (BrokerUnavailable, RedisError):
                return
            if not there:
                self._forget(where, "left")

        return Deferred.fromCoroutine(look())


# -- what the shells share --------------------------------------------------


@define(eq=False)
class Broker:
    """The two connections a consumer process uses, and where they go."""

    display: str
    #: For everything but the blocking read.
    shared: Any
    #: For the blocking read only.
    blocking: Any

    def stop(self) -> Deferred[None]:
        async def both() -> None:
            await self.blocking.stop()
            await self.shared.stop()

        return Deferred.fromCoroutine(both())


async def open_broker(
    reactor: Any,
    url: str,
    keys: Keys,
    on_state: Callable[[bool], None],
) -> Broker:
    """Connect twice to the broker at *url* and check its protocol.

    Every way this fails is a ``ConsumerError`` of one line: a bad URL, a
    broker that cannot be reached, one of another protocol.
    """
    from sockchat._broker.redis import RedisClient, parse_broker_url

    try:
        address = parse_broker_url(url)
    except ValueError as e:
        raise ConsumerError(f"--broker: {e}") from None
    # The consumer says once that the broker is lost, and once that it is
    # back, for both connections.
    shared = RedisClient(reactor, address, on_state=on_state, logged=False)
    blocking = RedisClient(reactor, address, logged=False)
    broker = Broker(address.display, shared, blocking)
    try:
        await shared.start()
        await blocking.start()
        await check_protocol(shared, keys, where=address.display)
    except BrokerUnavailable as e:
        await broker.stop()
        raise ConsumerError(str(e)) from None
    except ConsumerError:
        await broker.stop()
        raise
    return broker
