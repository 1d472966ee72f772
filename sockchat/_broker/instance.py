"""The instance side of the broker: one sockchat process among several.

With ``--broker URL``, the instance registers itself in Redis (a key with a
heartbeat), keeps a hash of its clients there for the operators' ``/list``,
and reads an inbox list of messages addressed to it.  Two responders send
lines away through it:

- ``QueueResponder(instance, "operators")``: each line waits in one shared
  stream until an operator, on any machine, takes it (``python -m
  sockchat.operator``); no answer timeout, as with the console.
- ``QueueResponder(instance, "workers")``: each line goes to one of the
  worker processes (``python -m sockchat.worker``) and the answer-timeout
  applies.

The answer comes back in the inbox, naming the stream entry it answers; the
instance takes the first answer for the entry it waits for and ignores any
other, so a line is never answered twice.  An entry is deleted once it is
answered, timed out, or its client has gone, so nobody takes it later.

When the broker is lost, connections stay up; a new line gets ``!error
unavailable`` and its turn back.  Lines already queued keep waiting: their
answers come when the broker is back, unless the broker lost them (it
restarted without its data), and then their clients get ``!error
unavailable`` too.  The loss and the return are logged once each.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from sockchat._broker.redis import BrokerUnavailable, IRedis
from sockchat._broker.wire import (
    HEARTBEAT,
    HEARTBEAT_TTL,
    INBOX_TTL,
    OPERATORS,
    WORKERS,
    Keys,
    WireError,
    decode,
    encode,
)
from sockchat._responders.contract import (
    AnswerFailed,
    ConversationInfo,
    IAnsweredByPeople,
    IConversation,
    ILifecycle,
    IResponder,
    Unavailable,
)
from sockchat._version import __version__

__all__ = ["BrokerInstance", "QueueResponder"]

log = Logger(namespace="sockchat.broker")

Handler = Callable[[dict[str, Any]], None]


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


@define(eq=False)
class BrokerInstance:
    """This process, as the broker's other processes see it.

    *redis* carries the commands; *inbox* is a second connection, kept for
    the inbox's blocking read.  *name* was given at registration
    (``register``); *about* is what the heartbeat key says of it.
    """

    redis: IRedis
    inbox: IRedis
    clock: IReactorTime
    name: str
    display: str
    keys: Keys = field(factory=Keys)
    about: dict[str, Any] = field(factory=dict)
    #: Whether the broker was reachable at the last look.
    up: bool = True
    _routes: dict[int, Handler] = field(factory=dict, init=False)
    _kinds: dict[str, Handler] = field(factory=dict, init=False)
    _back: list[Callable[[], None]] = field(factory=list, init=False)
    _beats: list[Callable[[], None]] = field(factory=list, init=False)
    _consumers: dict[str, int] = field(factory=dict, init=False)
    _greeting: dict[str, bool] = field(factory=dict, init=False)
    _groups: set[str] = field(factory=set, init=False)
    _alive: set[str] = field(factory=set, init=False)
    _heart: LoopingCall | None = field(default=None, init=False)
    _reading: Deferred[None] | None = field(default=None, init=False)
    _running: bool = field(default=False, init=False)
    _up_waiters: list[Deferred[None]] = field(factory=list, init=False)
    _refused: set[str] = field(factory=set, init=False)
    _lost_at: float = field(default=0.0, init=False)
    _starting: list[Deferred[None]] = field(factory=list, init=False)

    # -- Life ------------------------------------------------------------------

    def __attrs_post_init__(self) -> None:
        # Both clients say when they lose the broker and when it is back.
        self.redis.on_state = self.state_changed
        self.inbox.on_state = self.inbox_state_changed

    def ready(self) -> Deferred[None] | None:
        """None once started; before, a Deferred that fires when it is (the
        first connections are being made: a line then waits for them)."""
        if self._running:
            return None
        waiter: Deferred[None] = Deferred()
        self._starting.append(waiter)
        return waiter

    def start(self) -> None:
        """Begin the heartbeat and the inbox's reading."""
        self._running = True
        starting, self._starting = self._starting, []
        for waiter in starting:
            waiter.callback(None)
        self._alive.add(self.name)
        heart = LoopingCall(self.beat)
        heart.clock = self.clock
        self._heart = heart
        heart.start(HEARTBEAT, now=True).addErrback(
            lambda f: log.failure("the broker heartbeat stopped", f)
        )
        self._reading = Deferred.fromCoroutine(self._read_inbox())

    def stop(self) -> Deferred[Any]:
        """Stop beating and reading, and say this instance is gone."""
        self._running = False
        if self._heart is not None and self._heart.running:
            self._heart.stop()
        for waiter in self._up_waiters:
            waiter.callback(None)
        self._up_waiters.clear()
        if not self.redis.connected:
            return succeed(None)
        said = [
            self.redis.command("DEL", self.keys.instance(self.name)),
            self.redis.command("DEL", self.keys.clients(self.name)),
            self.redis.command("SREM", self.keys.instances, self.name),
        ]
        return DeferredList(said, consumeErrors=True)

    def state_changed(self, connected: bool) -> None:
        """The command connection was lost, or is back (``on_state``)."""
        if connected == self.up:
            return
        self.up = connected
        if not connected:
            self._lost_at = self.clock.seconds()
            log.warn(
                "lost the broker at {broker} ({why}); new lines get "
                "'unavailable' until it returns",
                broker=self.display,
                why=getattr(self.redis, "why", "unreachable"),
            )
            return
        log.info(
            "the broker at {broker} is back after {down:.1f} s",
            broker=self.display,
            down=self.clock.seconds() - self._lost_at,
        )
        self.beat()
        for back in list(self._back):
            back()

    def inbox_state_changed(self, connected: bool) -> None:
        """The inbox connection was lost, or is back."""
        if connected:
            waiters, self._up_waiters = self._up_waiters, []
            for w in waiters:
                w.callback(None)

    # -- Heartbeat -------------------------------------------------------------

    def beat(self) -> None:
        """Say this instance is alive; look at who else is."""
        if not self.redis.connected:
            return
        about = json.dumps({"v": 1, "name": self.name, **self.about})
        ttl = _ms(HEARTBEAT_TTL)
        self._quietly(
            self.redis.command("SET", self.keys.instance(self.name), about, "PX", ttl)
        )
        self._quietly(self.redis.command("SADD", self.keys.instances, self.name))
        self._quietly(self.redis.command("PEXPIRE", self.keys.clients(self.name), ttl))
        for group in self._groups:
            self._quietly(
                self.redis.command("HGETALL", self.keys.consumers(group)).addCallback(
                    self._count_consumers, group
                )
            )
        self._quietly(
            self.redis.command("SMEMBERS", self.keys.instances).addCallback(
                self._look_at_instances
            )
        )
        for beat in list(self._beats):
            beat()

    def _count_consumers(self, reply: list[bytes] | None, group: str) -> None:
        now = self.clock.seconds()
        live = 0
        greeting = False
        pairs = reply or []
        for name, value in zip(pairs[::2], pairs[1::2], strict=False):
            try:
                about = json.loads(value)
                until = float(about.get("until", 0))
            except (ValueError, AttributeError, TypeError):
                about, until = {}, 0
            if until > now:
                live += 1
                greeting = greeting or about.get("greets") is True
            else:
                self._quietly(
                    self.redis.command("HDEL", self.keys.consumers(group), name)
                )
        self._consumers[group] = live
        self._greeting[group] = greeting

    def _look_at_instances(self, members: list[bytes] | None) -> None:
        names = [m.decode() for m in members or []]
        checks = [self._exists(n) for n in names]

        def seen(results: list[tuple[bool, Any]]) -> None:
            alive = {self.name}
            for ok, value in results:
                if not ok:
                    return  # the broker went away meanwhile: look again later
                n, exists = value
                if exists:
                    alive.add(n)
                else:
                    self._quietly(self.redis.command("SREM", self.keys.instances, n))
            self._alive = alive

        DeferredList(checks, consumeErrors=True).addCallback(seen)

    def _exists(self, name: str) -> Deferred[tuple[str, bool]]:
        def said(exists: int) -> tuple[str, bool]:
            return name, bool(exists)

        return self.redis.command("EXISTS", self.keys.instance(name)).addCallback(said)

    def watch_consumers(self, group: str) -> None:
        """Count the live consumers of *group* at every heartbeat."""
        self._groups.add(group)

    def consumers(self, group: str) -> int | None:
        """How many consumers of *group* were alive at the last heartbeat
        (None before the first look)."""
        return self._consumers.get(group)

    def greeting(self, group: str) -> bool:
        """Whether a live consumer of *group* said its conversations begin
        with the server's line (a worker whose responder has hooks)."""
        return self._greeting.get(group, False)

    def alive(self, name: str) -> bool:
        """Whether instance *name* was alive at the last heartbeat."""
        return name in self._alive

    def on_beat(self, callback: Callable[[], None]) -> None:
        self._beats.append(callback)

    def on_back(self, callback: Callable[[], None]) -> None:
        """Call *callback* whenever the broker comes back after a loss."""
        self._back.append(callback)

    # -- The inbox -------------------------------------------------------------

    def route(self, conversation: int, handler: Handler) -> None:
        """Give the inbox's messages for *conversation* to *handler*."""
        self._routes[conversation] = handler

    def unroute(self, conversation: int) -> None:
        self._routes.pop(conversation, None)

    def on_kind(self, kind: str, handler: Handler) -> None:
        """Give messages of *kind* that name no routed conversation to
        *handler*."""
        self._kinds[kind] = handler

    def send(self, instance: str, data: bytes) -> Deferred[Any]:
        """Put a message in *instance*'s inbox."""
        key = self.keys.inbox(instance)
        sent = self.redis.command("RPUSH", key, data)
        self._quietly(self.redis.command("PEXPIRE", key, _ms(INBOX_TTL)))
        return sent

    async def _read_inbox(self) -> None:
        key = self.keys.inbox(self.name)
        while self._running:
            if not self.inbox.connected:
                waiter: Deferred[None] = Deferred()
                self._up_waiters.append(waiter)
                await waiter
                continue
            try:
                reply = await self.inbox.command("BLPOP", key, 1)
            except BrokerUnavailable:
                continue
            except Exception:
                log.failure("reading the broker inbox failed")
                continue
            if reply is not None:
                self.dispatch(reply[1])

    def dispatch(self, data: bytes) -> None:
        """Act on one message from the inbox."""
        try:
            message = decode(data, sender="a message in this instance's inbox")
        except WireError as e:
            why = str(e)
            if why not in self._refused:
                self._refused.add(why)
                log.warn("refused: {why}", why=why)
            return
        handler = self._routes.get(message.get("conv"))  # type: ignore[arg-type]
        if handler is None:
            handler = self._kinds.get(message["kind"])
        if handler is None:
            log.debug(
                "a {kind} message for conversation {cid}, which has ended",
                kind=message["kind"],
                cid=message.get("conv"),
            )
            return
        try:
            handler(message)
        except Exception:
            log.failure(
                "a message from the broker could not be taken: {kind}",
                kind=message["kind"],
            )

    def _quietly(self, d: Deferred[Any]) -> None:
        """A command whose loss needs no word: the broker's loss is logged once."""
        d.addErrback(_ignore_unavailable)


def _ignore_unavailable(failure: Failure) -> None:
    if not failure.check(BrokerUnavailable):
        log.failure("a broker command failed", failure)


@define(eq=False)
class _Line:
    """A client line sent away, until its answer comes."""

    conversation: ConversationInfo
    number: int
    text: str
    answer: Deferred[str] | None = None
    #: The stream entry, once the broker gave it.
    entry: str | None = None
    cancelled: bool = False


@implementer(IResponder, ILifecycle)
class QueueResponder:
    """Send each line to the shared queue of *group*: ``operators`` or
    ``workers``; the first answer for it comes back through the inbox."""

    def __init__(
        self, instance: BrokerInstance, group: str, *, lifecycle: bool = False
    ) -> None:
        if group not in (OPERATORS, WORKERS):
            raise ValueError(f"no such queue: {group!r}")
        self.instance = instance
        self.group = group
        if group == OPERATORS:  # people answer: no answer timeout by default
            alsoProvides(self, IAnsweredByPeople)
        #: Whether workers hear of starts and ends (their responder has hooks).
        self.lifecycle = lifecycle
        self._stream = instance.keys.work(group)
        self._conversations: dict[int, IConversation] = {}
        self._lines: dict[int, _Line] = {}
        self._counts: dict[int, int] = {}
        self._told_queued: set[int] = set()
        instance.watch_consumers(group)
        instance.on_back(self._broker_back)

    @property
    def _who(self) -> str:
        return "operator" if self.group == OPERATORS else "worker"

    # -- ILifecycle ------------------------------------------------------------

    def started(self, conversation: IConversation) -> Deferred[str] | None:
        info: ConversationInfo = conversation.info
        self._conversations[info.id] = conversation
        self.instance.route(info.id, lambda message: self._message(info.id, message))
        self._register(info, waiting=None)
        if not self.lifecycle:
            return None
        if not (self.instance.up and self.instance.greeting(self.group)):
            self._add_work("started", info)
            return None
        # The workers' responder has hooks: its started hook speaks first,
        # and its line is the answer to this entry.
        return self._send_away(info, 0, "", "started", opening=True)

    def ended(self, conversation: IConversation, reason: str) -> None:
        info: ConversationInfo = conversation.info
        self._conversations.pop(info.id, None)
        self._counts.pop(info.id, None)
        self._told_queued.discard(info.id)
        self.instance.unroute(info.id)
        if self.instance.redis.connected:
            self.instance._quietly(
                self.instance.redis.command(
                    "HDEL", self.instance.keys.clients(self.instance.name), info.id
                )
            )
        if self.lifecycle:
            self._add_work("ended", info, reason=str(reason))

    # -- IResponder ------------------------------------------------------------

    def respond(self, conversation: ConversationInfo, text: str) -> Deferred[str]:
        instance = self.instance
        ready = instance.ready()
        if ready is not None:  # the first connections are under way
            return ready.addCallback(lambda _: self.respond(conversation, text))
        if not instance.up or not instance.redis.connected:
            raise Unavailable(
                f"the broker at {instance.display} is unreachable; send it again soon"
            )
        online = instance.consumers(self.group)
        if self.group == WORKERS and online == 0:
            raise Unavailable("no worker is running")
        number = self._counts.get(conversation.id, 0) + 1
        self._counts[conversation.id] = number
        answer = self._send_away(
            conversation,
            number,
            text,
            "line",
            n=number,
            text=text,
            at=round(instance.clock.seconds(), 3),
        )
        if (
            self.group == OPERATORS
            and online == 0
            and conversation.id not in self._told_queued
        ):
            self._told_queued.add(conversation.id)
            talk = self._conversations.get(conversation.id)
            if talk is not None:
                talk.notify(
                    "queued",
                    "no operator is online yet; your line waits for the first one",
                )
        return answer

    def _send_away(
        self,
        conversation: ConversationInfo,
        number: int,
        said: str,
        kind: str,
        **fields: Any,
    ) -> Deferred[str]:
        """Put a work item on the queue; the Deferred fires with its answer."""
        line = _Line(conversation, number, said)
        answer: Deferred[str] = Deferred(lambda _: self._cancelled(line))
        line.answer = answer
        self._lines[conversation.id] = line
        added = self._add_work(kind, conversation, **fields)
        added.addCallbacks(
            self._added, self._not_added, callbackArgs=(line,), errbackArgs=(line,)
        )
        return answer

    def _add_work(
        self, kind: str, info: ConversationInfo, **fields: Any
    ) -> Deferred[Any]:
        data = encode(
            kind,
            instance=self.instance.name,
            conv=info.id,
            peer=info.peer,
            **fields,
        )
        added = self.instance.redis.command("XADD", self._stream, "*", "m", data)
        if kind != "line" and not fields.get("opening"):
            self.instance._quietly(added)
        return added

    def _added(self, entry: bytes, line: _Line) -> None:
        line.entry = entry.decode()
        if line.cancelled:
            self._forget_entry(line.entry)
            return
        self._register(line.conversation, waiting=line)

    def _not_added(self, failure: Failure, line: _Line) -> None:
        if self._lines.get(line.conversation.id) is line:
            del self._lines[line.conversation.id]
        answer, line.answer = line.answer, None
        if answer is None or line.cancelled:
            return
        if failure.check(BrokerUnavailable):
            answer.errback(
                Unavailable(
                    f"the broker at {self.instance.display} is unreachable; send it "
                    "again soon"
                )
            )
        else:
            answer.errback(failure)

    def _cancelled(self, line: _Line) -> None:
        """The client left, or the answer timed out: nobody may answer now."""
        line.cancelled = True
        line.answer = None
        if self._lines.get(line.conversation.id) is line:
            del self._lines[line.conversation.id]
        if line.entry is not None:
            self._forget_entry(line.entry)
            if line.conversation.id in self._conversations:
                self._register(line.conversation, waiting=None)

    def _forget_entry(self, entry: str) -> None:
        redis = self.instance.redis
        if not redis.connected:
            return
        self.instance._quietly(redis.command("XACK", self._stream, self.group, entry))
        self.instance._quietly(redis.command("XDEL", self._stream, entry))

    def _register(self, info: ConversationInfo, waiting: _Line | None) -> None:
        redis = self.instance.redis
        if not redis.connected:
            return
        about = {
            "id": info.id,
            "peer": info.peer,
            "responder": self.group,
            "waiting": None,
        }
        if waiting is not None:
            about["waiting"] = waiting.entry
            about["n"] = waiting.number
            about["text"] = waiting.text[:200]
        key = self.instance.keys.clients(self.instance.name)
        self.instance._quietly(redis.command("HSET", key, info.id, json.dumps(about)))
        self.instance._quietly(redis.command("PEXPIRE", key, _ms(HEARTBEAT_TTL)))

    # -- The inbox -------------------------------------------------------------

    def _message(self, cid: int, message: dict[str, Any]) -> None:
        kind = message["kind"]
        if kind in ("answer", "failed", "refused"):
            self._answer(cid, message)
        elif kind in ("notify", "end"):
            talk = self._conversations.get(cid)
            if talk is None:
                return
            code, text = str(message.get("code", "")), str(message.get("text", ""))
            try:
                if kind == "notify":
                    talk.notify(code, text)
                else:
                    talk.end(code, text)
            except ValueError as e:
                log.warn(
                    "a {who} sent a notice that was refused: {why}",
                    who=self._who,
                    why=str(e),
                )
        else:
            log.debug("an unknown message {kind} was ignored", kind=kind)

    def _answer(self, cid: int, message: dict[str, Any]) -> None:
        line = self._lines.get(cid)
        entry = message.get("entry")
        if line is None or line.entry is None or entry != line.entry:
            log.debug(
                "a late answer for conversation {cid} was ignored (entry {entry})",
                cid=cid,
                entry=entry,
            )
            return
        del self._lines[cid]
        answer, line.answer = line.answer, None
        self._forget_entry(line.entry)
        if cid in self._conversations:
            self._register(line.conversation, waiting=None)
        if answer is None:
            return
        kind = message["kind"]
        if kind == "answer" and isinstance(message.get("text"), str):
            answer.callback(message["text"])
        elif kind == "answer":
            answer.errback(AnswerFailed(f"the {self._who} sent an answer with no text"))
        else:
            why = str(message.get("why") or "no reason given")
            answer.errback(AnswerFailed(f"the {self._who} could not answer: {why}"))

    # -- The broker came back ----------------------------------------------------

    def _broker_back(self) -> None:
        """Lines queued before the loss: any the broker lost get an error."""
        for cid, talk in list(self._conversations.items()):
            self._register(talk.info, waiting=self._lines.get(cid))
        for line in list(self._lines.values()):
            if line.entry is None:
                continue
            self.instance.redis.command(
                "XRANGE", self._stream, line.entry, line.entry
            ).addCallbacks(self._still_there, _ignore_unavailable, (line,))

    def _still_there(self, found: list[Any] | None, line: _Line) -> None:
        if found:
            return
        cid = line.conversation.id
        if self._lines.get(cid) is not line:
            return
        del self._lines[cid]
        answer, line.answer = line.answer, None
        if answer is not None:
            answer.errback(
                Unavailable("the broker restarted and lost this line; send it again")
            )


def instance_about(port: str) -> dict[str, Any]:
    """What an instance's heartbeat says of it."""
    return {
        "version": __version__,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "port": port,
        "started": round(time.time(), 3),
    }
