"""The instance side of the broker: one sockchat process among several.

With ``--broker URL``, the instance keeps a heartbeat at the broker, lists
its clients in the broker's directory (when they come and go, not at
every line), and reads its inbox, where answers, notices, kicks and pair
relays arrive, every message waiting at once.  Two responders send lines
away through it:

- ``QueueResponder(instance, "operators")``: each line waits in one shared
  queue until an operator, on any machine, takes it (``python -m
  sockchat.operator``); no answer timeout, as with the console.
- ``QueueResponder(instance, "workers")``: each line goes to one of the
  worker processes (``python -m sockchat.worker``) and the answer-timeout
  applies.

For the operators, a conversation may be *held* by one (an operator at a
desk took it): the desk says so in the inbox (``held``, ``released``),
the instance writes it in the directory, and the conversation's next
lines are queued already held by that operator (``enqueue_held``), until
it lets go or stops beating.  Each client line for the operators goes into
the conversation's history first (``add_history``), and the line carries
the item's number (``h``); the history is dropped when the conversation
ends.  A worker's responder may hand its conversation to the operators
(``handoff``), through ``sockchat._broker.handoff``.

The answer comes back in the inbox, naming the queue entry it answers; the
instance takes the first answer for the entry it waits for and ignores any
other, so a line is never answered twice.  The consumer that answered
deletes the entry; the instance deletes one that timed out or whose client
left, so nobody takes it later.

When the broker is lost, connections stay up; a new line gets ``!error
unavailable`` and its turn back.  Lines already queued keep waiting: their
answers come when the broker is back, unless the broker lost them (it
restarted without its data), and then their clients get ``!error
unavailable`` too.  The loss and the return are logged once each.

Everything goes through ``IBroker`` (``sockchat._broker.interface``): the
logic is tested on the memory broker, with a clock.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from sockchat._broker.interface import (
    BROKER_FOR_CLIENTS,
    BrokerRefused,
    BrokerUnavailable,
    Census,
    ClientRecord,
    IBroker,
    NotReplicated,
    quietly,
    unless_unavailable,
)
from sockchat._broker.wire import (
    OPERATORS,
    WORKERS,
    Timings,
    WireError,
    decode,
    encode,
    encode_line,
    said,
)
from sockchat._core.queuestats import QueueStats
from sockchat._core.render import safe_text
from sockchat._responders.contract import (
    AnswerFailed,
    ConversationInfo,
    IAnsweredByPeople,
    IConversation,
    ILifecycle,
    IResponder,
    Signed,
    Unavailable,
    as_deferred,
)
from sockchat._responders.later import Later
from sockchat._version import __version__

__all__ = ["BrokerInstance", "QueueResponder", "instance_about"]

log = Logger(namespace="sockchat.broker")

#: What handles one message of the instance's inbox (not a consumer's
#: ``Handler``, in ``sockchat._broker.consumer``).
InboxHandler = Callable[[dict[str, Any]], None]

#: Seconds one read of the inbox waits for a message.
READ_WAIT = 1.0
#: Messages one read of the inbox takes at most.
READ_MOST = 256
#: Seconds between tries to read the inbox while the broker is away.
RETRY = 0.5
#: Seconds before its deadline that a line counts as timed out (clocks
#: are floats: a timer set for a deadline may fire a hair before it).
EARLY = 1e-6


@define(eq=False)
class BrokerInstance:
    """This process, as the broker's other processes see it.

    *name* was given at registration; *about* is what its heartbeat says
    of it.  ``up`` is whether the broker was reachable at the last look.
    """

    broker: IBroker
    clock: IReactorTime
    name: str
    about: dict[str, Any] = field(factory=dict)
    timings: Timings = field(factory=Timings)
    up: bool = True
    _routes: dict[int, InboxHandler] = field(factory=dict, init=False)
    _kinds: dict[str, InboxHandler] = field(factory=dict, init=False)
    _back: list[Callable[[], None]] = field(factory=list, init=False)
    _beats: list[Callable[[], None]] = field(factory=list, init=False)
    _censuses: list[Callable[[Census], None]] = field(factory=list, init=False)
    _census: Census = field(factory=Census, init=False)
    _groups: set[str] = field(factory=set, init=False)
    _heart: LoopingCall | None = field(default=None, init=False)
    _reading: Deferred[None] | None = field(default=None, init=False)
    _pause: IDelayedCall | None = field(default=None, init=False)
    #: Whether it has started (before, the first connections are being
    #: made: a line waits for them, ``ready``).
    running: bool = field(default=False, init=False)
    _refused: set[str] = field(factory=set, init=False)
    _lost_at: float = field(default=0.0, init=False)
    _starting: list[Deferred[None]] = field(factory=list, init=False)
    _after_read: list[Callable[[], None]] = field(factory=list, init=False)
    #: This turn's messages for other instances, by instance, and who waits.
    _posts: dict[str, tuple[list[bytes], list[Deferred[None]]]] = field(
        factory=dict, init=False
    )
    _posting: IDelayedCall | None = field(default=None, init=False)

    # -- Life ------------------------------------------------------------------

    def __attrs_post_init__(self) -> None:
        self.broker.on_change(self.state_changed)

    def ready(self) -> Deferred[None]:
        """Fires once it has started (at once if it has)."""
        if self.running:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._starting.append(waiter)
        return waiter

    def start(self) -> None:
        """Begin the heartbeat and the inbox's reading."""
        self.running = True
        starting, self._starting = self._starting, []
        for waiter in starting:
            waiter.callback(None)
        self._census = Census(frozenset({self.name}))
        heart = LoopingCall(self.beat)
        heart.clock = self.clock
        self._heart = heart
        heart.start(self.timings.heartbeat, now=True).addErrback(
            lambda f: log.failure("the broker heartbeat stopped", f)
        )
        self._reading = Deferred.fromCoroutine(self._read_inbox())

    def stop(self) -> Deferred[None]:
        """Stop beating and reading, and say this instance is gone."""
        self.running = False
        if self._heart is not None and self._heart.running:
            self._heart.stop()
        if not self.broker.up:
            return succeed(None)
        return quietly(self.broker.leave_instance(self.name))

    def state_changed(self, up: bool) -> None:
        """The broker was lost, or is back."""
        if up == self.up:
            return
        self.up = up
        if not up:
            self._lost_at = self.clock.seconds()
            log.warn(
                "lost the broker at {broker} ({why}); new lines get "
                "'unavailable' until it returns",
                broker=self.broker.display,
                why=self.broker.why,
            )
            return
        log.info(
            "the broker at {broker} is back after {down:.1f} s",
            broker=self.broker.display,
            down=self.clock.seconds() - self._lost_at,
        )
        # Alive again first (a broker that restarted empty does not know
        # this instance), then what was waiting for the return, then a look
        # at who else is alive (after: a return's grace counts for it).
        quietly(self.broker.beat_instance(self.name, self.about))
        for back in list(self._back):
            back()
        self.beat()

    # -- Heartbeat -------------------------------------------------------------

    def beat(self) -> None:
        """Say this instance is alive; look at who else is."""
        if not self.broker.up:
            return
        quietly(self.broker.beat_instance(self.name, self.about))
        quietly(self.broker.census(sorted(self._groups)).addCallback(self._took_census))
        for beat in list(self._beats):
            beat()

    def _took_census(self, census: Census) -> None:
        before = self._census
        self._census = Census(census.instances | {self.name}, census.consumers)
        for group in sorted(self._census.consumers):
            count = len(self._census.of(group))
            if group not in before.consumers or count != len(before.of(group)):
                log.info(
                    "{count} live consumer(s) of {group} at the broker",
                    count=count,
                    group=group,
                )
        for callback in list(self._censuses):
            callback(self._census)

    def watch_consumers(self, group: str) -> None:
        """Count the live consumers of *group* at every heartbeat."""
        self._groups.add(group)

    def consumers(self, group: str) -> int | None:
        """How many consumers of *group* were alive at the last heartbeat
        (None before the first look)."""
        if group not in self._census.consumers:
            return None
        return len(self._census.of(group))

    def greeting(self, group: str) -> bool:
        """Whether a live consumer of *group* said its conversations begin
        with the server's line (a worker whose responder has hooks)."""
        return any(seen.greets for seen in self._census.of(group))

    def alive(self, name: str) -> bool:
        """Whether instance *name* was alive at the last heartbeat."""
        return name in self._census.instances

    def on_beat(self, callback: Callable[[], None]) -> None:
        """Call *callback* at every heartbeat that finds the broker up."""
        self._beats.append(callback)

    def on_census(self, callback: Callable[[Census], None]) -> None:
        """Call *callback* with what each heartbeat learnt of who is alive."""
        self._censuses.append(callback)

    def on_back(self, callback: Callable[[], None]) -> None:
        """Call *callback* whenever the broker comes back after a loss."""
        self._back.append(callback)

    # -- The inbox -------------------------------------------------------------

    def route(self, conversation: int, handler: InboxHandler) -> None:
        """Give the inbox's messages for *conversation* to *handler*."""
        self._routes[conversation] = handler

    def unroute(self, conversation: int) -> None:
        self._routes.pop(conversation, None)

    def on_kind(self, kind: str, handler: InboxHandler) -> None:
        """Give messages of *kind* that name no routed conversation to
        *handler*."""
        self._kinds[kind] = handler

    def post(self, instance: str, data: bytes) -> Deferred[None]:
        """Put a message in *instance*'s inbox, with the others of this
        reactor turn for it: one call to the broker an inbox a turn."""
        waiter: Deferred[None] = Deferred()
        batch = self._posts.get(instance)
        if batch is None:
            batch = self._posts[instance] = ([], [])
            if self._posting is None:
                self._posting = self.clock.callLater(0, self._send_posts)
        batch[0].append(data)
        batch[1].append(waiter)
        return waiter

    def _send_posts(self) -> None:
        self._posting = None
        posts, self._posts = self._posts, {}
        for instance, (messages, waiters) in posts.items():
            self.broker.post(instance, messages).addBoth(_tell, waiters)

    def after_read(self, callback: Callable[[], None]) -> None:
        """Call *callback* once the inbox has been read to its end by a read
        that began after now (what was in it then has been dispatched)."""
        self._after_read.append(callback)

    async def _read_inbox(self) -> None:
        while self.running:
            waiting, self._after_read = self._after_read, []
            try:
                messages = await self.broker.next_messages(
                    self.name, READ_WAIT, READ_MOST
                )
            except (BrokerUnavailable, BrokerRefused) as e:
                self._after_read[:0] = waiting  # not read: the next read
                if isinstance(e, BrokerRefused):
                    self._say_once(f"the broker refused to read the inbox: {e}")
                await self._until_up()
                continue
            for data in messages:
                self.dispatch(data)
            if len(messages) == READ_MOST:  # more may wait: the next read
                self._after_read[:0] = waiting
                continue
            for callback in waiting:
                callback()

    async def _until_up(self) -> None:
        """Wait until the broker is back; if it seems to be there already,
        a moment, so as not to spin."""
        up = self.broker.when_up()
        if not up.called:
            await up
        elif self.running:
            pause: Deferred[None] = Deferred()
            self._pause = self.clock.callLater(RETRY, pause.callback, None)
            await pause

    def dispatch(self, data: bytes) -> None:
        """Act on one message from the inbox."""
        try:
            message = decode(data, sender="a message in this instance's inbox")
        except WireError as e:
            self._say_once(f"refused: {e}")
            return
        conv = message.get("conv")
        handler = self._routes.get(conv) if type(conv) is int else None
        if handler is None:
            handler = self._kinds.get(message["kind"])
        if handler is None:
            # For a conversation that has ended: an answer that came after
            # its client left (a health check that a worker greeted), a
            # notice.  Nothing to do, and nothing worth a log line.
            return
        try:
            handler(message)
        except Exception:
            log.failure(
                "a message from the broker could not be taken: {kind}",
                kind=message["kind"],
            )

    def _say_once(self, what: str) -> None:
        if what not in self._refused:
            self._refused.add(what)
            log.warn("{what}", what=what)


def _tell(result: object, waiters: list[Deferred[None]]) -> None:
    """Give a batch's result (None or a Failure) to each of *waiters*."""
    for waiter in waiters:
        if isinstance(result, Failure):
            waiter.errback(result)
        else:
            waiter.callback(None)


@define(eq=False)
class _Line:
    """A client line sent away, until its answer comes."""

    conversation: ConversationInfo
    number: int
    text: str
    #: When it was sent away.
    asked: float = 0.0
    answer: Later[str | Signed] | None = None
    #: The queue entry, once the broker gave it.
    entry: str | None = None
    cancelled: bool = False
    #: Answers that came before the broker said which entry is this line's
    #: (the inbox has a connection of its own): looked at when it says.
    early: list[dict[str, Any]] = field(factory=list)


@implementer(IResponder, ILifecycle)
class QueueResponder:
    """Send each line to the shared queue of *group*: ``operators`` or
    ``workers``; the first answer for it comes back through the inbox.

    With a *timeout*, a line not answered within that many seconds fails
    with ``TimeoutError`` (the client gets ``responder-timeout``) and
    leaves the queue: one timer for all the lines, set for the oldest.
    """

    def __init__(
        self,
        instance: BrokerInstance,
        group: str,
        *,
        lifecycle: bool = False,
        timeout: float | None = None,
    ) -> None:
        if group not in (OPERATORS, WORKERS):
            raise ValueError(f"no such queue: {group!r}")
        self.instance = instance
        self.broker = instance.broker
        self.group = group
        if group == OPERATORS:  # people answer: no answer timeout by default
            alsoProvides(self, IAnsweredByPeople)
        #: Whether workers hear of starts and ends (their responder has hooks).
        self.lifecycle = lifecycle
        self.timeout = timeout
        #: Set for the answer timeout of the oldest line (with a *timeout*).
        self._timer: IDelayedCall | None = None
        self._conversations: dict[int, IConversation] = {}
        self._lines: dict[int, _Line] = {}
        self._counts: dict[int, int] = {}
        self._told_queued: set[int] = set()
        #: The work items of this reactor turn, enqueued together at its end
        #: (with the line each is, if it is one).
        self._unsent: list[tuple[bytes, _Line | None]] = []
        self._sending: IDelayedCall | None = None
        #: Who answered each conversation last (operators: logged when it
        #: changes).
        self._by: dict[int, str] = {}
        #: Operators: who holds each conversation held, and since when.
        self._holders: dict[int, tuple[str, float]] = {}
        #: Operators: when each conversation's first line was queued (None
        #: once it has had its first answer).
        self._first: dict[int, float | None] = {}
        #: What ``--metrics`` shows of the operators' queue (operators only).
        self.stats: QueueStats | None = None
        #: Told of each line's answer (not the opening's) before the client:
        #: its conversation, text, when it was asked, and the answer (the
        #: handoff responder keeps the bot's part of the history so).
        self.answered_hook: Callable[[int, str, float, str | Signed], None] | None = (
            None
        )
        instance.watch_consumers(group)
        instance.on_back(self._broker_back)
        if group == OPERATORS:
            self.stats = QueueStats()
            instance.on_census(self._census)

    @property
    def _who(self) -> str:
        return "operator" if self.group == OPERATORS else "worker"

    # -- ILifecycle ------------------------------------------------------------

    def started(self, conversation: IConversation) -> Deferred[str | Signed] | None:
        info: ConversationInfo = conversation.info
        self._conversations[info.id] = conversation
        self.instance.route(info.id, self._message)
        self._list(info)
        if not self.lifecycle:
            return None
        if not (self.instance.up and self.instance.greeting(self.group)):
            self._add_work("started", info)
            return None
        # The workers' responder has hooks: its started hook speaks first,
        # and its line is the answer to this entry.
        return as_deferred(self._send_away(info, 0, "", "started", opening=True))

    def ended(self, conversation: IConversation, reason: str) -> None:
        info: ConversationInfo = conversation.info
        self._conversations.pop(info.id, None)
        self._counts.pop(info.id, None)
        self._told_queued.discard(info.id)
        self._by.pop(info.id, None)
        self._holders.pop(info.id, None)
        self._first.pop(info.id, None)
        if self.stats is not None:
            self.stats.waiting.pop(info.id, None)
        self.instance.unroute(info.id)
        if self.broker.up:
            quietly(self.broker.remove_client(self.instance.name, info.id))
            if self.group == OPERATORS:
                quietly(self.broker.drop_history(self.instance.name, info.id))
        if self.lifecycle:
            self._add_work("ended", info, reason=str(reason))

    def _list(self, info: ConversationInfo) -> None:
        """Put the client in the broker's directory."""
        if self.broker.up:
            holder = self._holders.get(info.id)
            record = ClientRecord(
                info.id,
                info.peer,
                self.group,
                holder=holder[0] if holder is not None else None,
            )
            quietly(self.broker.set_client(self.instance.name, record))

    # -- IResponder ------------------------------------------------------------

    def respond(
        self, conversation: ConversationInfo, text: str
    ) -> Later[str | Signed] | Deferred[str | Signed]:
        instance = self.instance
        if not instance.running:  # the first connections are under way
            return instance.ready().addCallback(
                lambda _: as_deferred(self.respond(conversation, text))
            )
        if not instance.up or not self.broker.up:
            raise Unavailable(
                f"{BROKER_FOR_CLIENTS} is unreachable; send it again soon"
            )
        online = instance.consumers(self.group)
        if self.group == WORKERS and online == 0:
            raise Unavailable("no worker is running")
        cid = conversation.id
        number = self._counts[cid] = self._counts.get(cid, 0) + 1
        now = instance.clock.seconds()
        if self.group == WORKERS:  # the usual item, in fewer steps
            line, answer = self._new_line(conversation, number, text, now)
            data = encode_line(instance.name, cid, conversation.peer, number, text, now)
            self._unsent.append((data, line))
            if self._sending is None:
                self._sending = instance.clock.callLater(0, self._send_work)
            return answer
        answer = self._send_away(
            conversation, number, text, "line", n=number, text=text, at=now
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
    ) -> Later[str | Signed]:
        """Put a work item on the queue; its answer comes later."""
        now = self.instance.clock.seconds()
        line, answer = self._new_line(conversation, number, said, now)
        self._add_work(kind, conversation, line, **fields)
        return answer

    def _new_line(
        self, conversation: ConversationInfo, number: int, said: str, now: float
    ) -> tuple[_Line, Later[str | Signed]]:
        """A line sent away *now*, and its answer to come."""
        line = _Line(conversation, number, said, now)
        answer: Later[str | Signed] = Later(lambda: self._cancelled(line))
        line.answer = answer
        lines = self._lines
        if self.timeout is not None:
            lines.pop(conversation.id, None)  # the oldest first, for the timer
            if self._timer is None:
                self._timer = self.instance.clock.callLater(
                    self.timeout, self._time_out
                )
        lines[conversation.id] = line
        if self.stats is not None:
            self.stats.waiting[conversation.id] = now
            self._first.setdefault(conversation.id, now)
        return line, answer

    def _add_work(
        self,
        kind: str,
        info: ConversationInfo,
        line: _Line | None = None,
        **fields: Any,
    ) -> None:
        """Enqueue a work item at the end of this reactor turn, with the
        others of the turn: a consumer that waits takes them together.  A
        line for the operators goes alone, after its history item."""
        if kind == "line" and self.group == OPERATORS:
            batch = [(b"", line)]
            added = Deferred.fromCoroutine(self._add_line(info, fields))
            added.addCallback(lambda entry: [entry]).addCallbacks(
                self._added,
                self._not_added,
                callbackArgs=(batch,),
                errbackArgs=(batch,),
            )
            return
        data = encode(
            kind,
            instance=self.instance.name,
            conv=info.id,
            peer=info.peer,
            **fields,
        )
        self._unsent.append((data, line))
        if self._sending is None:
            self._sending = self.instance.clock.callLater(0, self._send_work)

    async def _add_line(self, info: ConversationInfo, fields: dict[str, Any]) -> str:
        """A line for the operators: its history item first, then the line,
        held by the conversation's holder if it has one."""
        at = round(fields.pop("at", 0.0), 3)
        item = said("client", "", str(fields.get("text", "")), at)
        h = await self.broker.add_history(self.instance.name, info.id, [item])
        data = encode(
            "line",
            instance=self.instance.name,
            conv=info.id,
            peer=info.peer,
            h=h,
            **fields,
            at=at,
        )
        holder = self._holders.get(info.id)
        if holder is None:
            return (await self.broker.enqueue(self.group, [data]))[0]
        return await self.broker.enqueue_held(self.group, data, holder[0])

    def _send_work(self) -> None:
        self._sending = None
        batch, self._unsent = self._unsent, []
        added = self.broker.enqueue(self.group, [data for data, _ in batch])
        added.addCallbacks(
            self._added, self._not_added, callbackArgs=(batch,), errbackArgs=(batch,)
        )

    def _added(
        self, entries: list[str], batch: list[tuple[bytes, _Line | None]]
    ) -> None:
        for entry, (_, line) in zip(entries, batch, strict=True):
            if line is None:
                continue
            line.entry = entry
            if line.cancelled:
                self._drop(entry)
                continue
            early, line.early = line.early, []
            for message in early:
                self._answer(line.conversation.id, message)

    def _not_added(
        self, failure: Failure, batch: list[tuple[bytes, _Line | None]]
    ) -> None:
        if not failure.check(BrokerUnavailable) and any(
            item is None for _, item in batch
        ):
            log.failure("a work item could not be enqueued", failure)
        for _, line in batch:
            if line is None:
                continue
            if self._lines.get(line.conversation.id) is line:
                del self._lines[line.conversation.id]
                if self.stats is not None:
                    self.stats.waiting.pop(line.conversation.id, None)
            answer, line.answer = line.answer, None
            if answer is None or line.cancelled:
                continue
            if isinstance(failure.value, NotReplicated):  # ?wait=N: not in time
                answer.fail(
                    Unavailable(
                        f"{BROKER_FOR_CLIENTS} {failure.value.short}; send it again"
                    )
                )
            elif failure.check(BrokerUnavailable):
                answer.fail(
                    Unavailable(
                        f"{BROKER_FOR_CLIENTS} is unreachable; send it again soon"
                    )
                )
            else:
                answer.fail(failure)

    def _cancelled(self, line: _Line) -> None:
        """The client left, or the answer timed out: nobody may answer now."""
        line.cancelled = True
        line.answer = None
        if self._lines.get(line.conversation.id) is line:
            del self._lines[line.conversation.id]
            if self.stats is not None:
                self.stats.waiting.pop(line.conversation.id, None)
        if line.entry is not None:
            self._drop(line.entry)

    def hand_over(
        self, cid: int, to: Callable[[ConversationInfo, str], Deferred[Any]]
    ) -> None:
        """Conversation *cid*'s waiting line, if it has one, is answered by
        *to* (the operators' queue, in a handoff) instead: it leaves this
        queue, and what the client waits on gets *to*'s answer."""
        line = self._lines.get(cid)
        if line is None or line.answer is None or not line.number:
            return
        answer = line.answer
        self._cancelled(line)  # off this queue, without failing *answer*
        answer.follow(to(line.conversation, line.text))

    def _time_out(self) -> None:
        """The oldest line's answer timeout has come: it, and any other
        line as old, fail; the timer is set again for the oldest left."""
        self._timer = None
        timeout = self.timeout
        assert timeout is not None  # only set with one
        clock = self.instance.clock
        now = clock.seconds()
        late = []
        for line in self._lines.values():  # the oldest first
            left = line.asked + timeout - now
            if left > EARLY:
                self._timer = clock.callLater(left, self._time_out)
                break
            late.append(line)
        for line in late:
            answer = line.answer
            self._cancelled(line)
            if answer is not None:
                answer.fail(TimeoutError(timeout, "the answer"))

    def _drop(self, entry: str) -> None:
        if self.broker.up:
            quietly(self.broker.finish(self.group, [entry]))

    # -- The inbox -------------------------------------------------------------

    def _message(self, message: dict[str, Any]) -> None:
        cid: int = message["conv"]  # routed by it: an int
        kind = message["kind"]
        if kind in ("answer", "failed", "refused"):
            self._answer(cid, message)
        elif kind in ("held", "released") and self.group == OPERATORS:
            holder = message.get("holder")
            if kind == "held" and isinstance(holder, str) and holder:
                self._hold(cid, holder, str(message.get("by") or holder))
            elif kind == "released":
                self._release(cid, "let go")
        elif kind == "handoff":
            self._handoff(cid, str(message.get("reason") or "no reason given"))
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
        if line is not None and line.entry is None:
            line.early.append(message)  # before the broker said its entry
            return
        if line is None or entry != line.entry:
            return  # late (timed out, or answered already): the first one won
        del self._lines[cid]
        if self.stats is not None:
            self.stats.waiting.pop(cid, None)
        answer, line.answer = line.answer, None
        if answer is None:
            return
        kind = message["kind"]
        if kind == "answer" and isinstance(message.get("text"), str):
            by = message.get("by")
            reply: str | Signed = message["text"]
            if isinstance(by, str):
                if self.group == OPERATORS:
                    self._answered_by(cid, by)
                reply = Signed(message["text"], by[:200])
            hook = self.answered_hook
            if hook is not None and line.number:
                hook(cid, line.text, line.asked, reply)
            answer.answer(reply)
        elif kind == "answer":
            answer.fail(AnswerFailed(f"the {self._who} sent an answer with no text"))
        else:
            why = str(message.get("why") or "no reason given")
            answer.fail(AnswerFailed(f"the {self._who} could not answer: {why}"))

    def _answered_by(self, cid: int, by: str) -> None:
        """Say who answers a conversation of the operators, when it changes."""
        first = self._first.get(cid)
        if first is not None and self.stats is not None:
            self._first[cid] = None
            self.stats.first_answer.observe(self.instance.clock.seconds() - first)
        if self._by.get(cid) != by:
            self._by[cid] = by
            log.info(
                "conversation {cid}: {by} answers", cid=cid, by=by[:100], answered=by
            )

    # -- Holders (operators) and handoffs -----------------------------------------

    def _hold(self, cid: int, holder: str, by: str) -> None:
        """An operator took the conversation: its next lines are theirs."""
        talk = self._conversations.get(cid)
        if talk is None or self._holders.get(cid, ("",))[0] == holder:
            return
        self._holders[cid] = (holder, self.instance.clock.seconds())
        log.info(
            "conversation {cid}: held by {by}",
            cid=cid,
            by=safe_text(by[:100]),
            holder=holder,
        )
        self._list(talk.info)

    def _release(self, cid: int, why: str) -> None:
        """Nobody holds the conversation any more."""
        held = self._holders.pop(cid, None)
        talk = self._conversations.get(cid)
        if held is None or talk is None:
            return
        log.info("conversation {cid}: no longer held ({why})", cid=cid, why=why)
        self._list(talk.info)

    def _census(self, census: Census) -> None:
        """Operators online; holders that have stopped beating let go."""
        live = {seen.name for seen in census.of(OPERATORS)}
        if self.stats is not None:
            self.stats.online = len(live)
        # A hold newer than a heartbeat's life may postdate the census.
        settled = self.instance.clock.seconds() - self.instance.timings.heartbeat_ttl
        for cid, (holder, since) in list(self._holders.items()):
            if holder not in live and since < settled:
                self._release(cid, "its operator is gone")

    def _handoff(self, cid: int, reason: str) -> None:
        """A worker's responder hands its conversation to the operators."""
        talk = self._conversations.get(cid)
        if talk is None:
            return
        try:
            talk.handoff(reason)
        except Exception as e:
            self._handoff_refused(str(e))

    def _handoff_refused(self, why: str) -> None:
        log.warn(
            "a {who} asked to hand a conversation to the operators, and it "
            "could not be: {why}",
            who=self._who,
            why=why,
        )

    # -- The broker came back ----------------------------------------------------

    def _broker_back(self) -> None:
        """Lines queued before the loss: any the broker lost get an error."""
        for talk in list(self._conversations.values()):
            self._list(talk.info)
        lines = [line for line in self._lines.values() if line.entry is not None]
        if not lines:
            return
        looked = self.broker.still_there(
            self.group, [line.entry for line in lines if line.entry is not None]
        )
        looked.addCallbacks(self._still_there, unless_unavailable, (lines,))

    def _still_there(self, found: set[str], lines: list[_Line]) -> None:
        gone = [line for line in lines if line.entry not in found]
        if gone:
            # Gone from the queue: answered (the answer waits in the inbox:
            # a consumer posts before it deletes, in one command) or lost.
            # Which, the inbox says, once read.
            self.instance.after_read(lambda: self._lost(gone))

    def _lost(self, lines: list[_Line]) -> None:
        for line in lines:
            cid = line.conversation.id
            if self._lines.get(cid) is not line:
                continue  # answered meanwhile (or its client left)
            del self._lines[cid]
            answer, line.answer = line.answer, None
            if answer is not None:
                answer.fail(
                    Unavailable(
                        "the broker restarted and lost this line; send it again"
                    )
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
