"""Operators: people answer the lines of every instance's clients.

``python -m sockchat.operator`` runs a ``Consumer`` of the ``operators``
group whose handler is an ``OperatorDesk``: it shows the lines this
operator takes on a ``ConsoleResponder``, as the console of ``--responder
console`` shows its own clients' lines, and tells the console how every
other client stands.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from sockchat._broker.consumer import (
    Consumer,
    HandlerBase,
    Outbox,
    Outcome,
    RemoteConversation,
    WorkItem,
)
from sockchat._broker.interface import (
    BrokerRefused,
    BrokerUnavailable,
    IBroker,
    Taken,
    quietly,
)
from sockchat._broker.wire import OPERATORS, Timings, WireError, decode, said
from sockchat._console.responder import ConsoleResponder
from sockchat._core.render import safe_text
from sockchat._responders.contract import ConversationInfo

__all__ = ["POLL", "OperatorDesk"]

log = Logger(namespace="sockchat.consumer")

#: Seconds between an operator's looks at who is connected (``/list``).
POLL = 1.0


@define(eq=False)
class _Client:
    conversation: RemoteConversation
    #: When it was mirrored because a line came (the poll may not see it yet).
    since: float = 0.0
    holding: set[str] = field(factory=set)


@frozen
class _Elsewhere:
    """A client's line that is not on this operator's console: it waits in
    the queue (*holder* None), or another operator holds it."""

    entry: str
    text: str
    holder: str | None


class OperatorDesk(HandlerBase):
    """Show every client of every live instance on a ``ConsoleResponder``,
    and the lines this operator takes as its waiting lines.

    Looks at who is alive, their clients and the operators' queue every
    ``POLL``, so that ``/list``, ``/to`` and ``/kick`` work as on one
    server.  Client numbers are the operator's own; the peer part of a
    client's label says which instance and conversation it is: ``client 7
    (i2/5, 127.0.0.1:50312)``.
    """

    kinds = frozenset({"line"})

    def __init__(
        self,
        console: ConsoleResponder,
        broker: IBroker,
        clock: IReactorTime,
        outbox: Outbox,
        *,
        timings: Timings | None = None,
        shown: Callable[[], None] | None = None,
    ) -> None:
        self.console = console
        console.elsewhere = self
        self._shown = shown
        self._broker = broker
        self._clock = clock
        self._outbox = outbox
        self._timings = timings or Timings()
        self._consumer: Consumer | None = None
        self._clients: dict[tuple[str, int], _Client] = {}
        self._numbers: dict[int, tuple[str, int]] = {}
        self._elsewhere: dict[tuple[str, int], _Elsewhere] = {}
        self._count = 0
        self._poll: IDelayedCall | None = None
        self._polling = False

    def attach(self, consumer: Consumer) -> None:
        self._consumer = consumer

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
            if isinstance(result, Failure) and not result.check(
                BrokerUnavailable, BrokerRefused
            ):
                log.failure("looking at the clients failed", result)
            if self._polling and (self._poll is None or not self._poll.active()):
                self._poll = self._clock.callLater(POLL, self._tick)

        return done.addBoth(again)

    def _tick(self) -> None:
        self._poll = None
        if self._polling:
            self._run(self.refresh())

    async def refresh(self) -> None:
        """Look at who is connected, on every live instance, and at how
        each line in the queue stands."""
        census = await self._broker.census([OPERATORS])
        live = sorted(census.instances)
        directory = await self._broker.clients(live)
        queue = await self._broker.queue_view(OPERATORS, self._timings.claim_after)
        now = {
            (name, client.conv): client.peer
            for name in live
            for client in directory.get(name, [])
        }
        for where, peer in sorted(now.items()):
            if where not in self._clients:
                self._mirror(where[0], where[1], peer)
        grace = self._clock.seconds() - self._timings.heartbeat_ttl
        for where, client in list(self._clients.items()):
            if where in now or client.holding:
                continue  # a held line's client goes when the line does
            if client.since > grace and where[0] in census.instances:
                continue  # mirrored for a line: its instance may not list it yet
            self._forget(where, "left")
        names = {seen.name: seen.display for seen in census.of(OPERATORS)}
        me = self._consumer.name if self._consumer is not None else None
        elsewhere = {}
        for queued in queue:
            if queued.holder is not None and queued.holder == me:
                continue  # on this console
            try:
                message = decode(queued.data, sender="a queued line")
            except WireError:
                continue
            instance, conv, text = (
                message.get("instance"),
                message.get("conv"),
                message.get("text"),
            )
            if not isinstance(instance, str) or type(conv) is not int:
                continue
            holder = None
            if queued.holder is not None:
                holder = names.get(queued.holder, queued.holder)
            elsewhere[(instance, conv)] = _Elsewhere(
                queued.entry, text if isinstance(text, str) else "", holder
            )
        self._elsewhere = elsewhere

    def _mirror(self, instance: str, conv: int, peer: str) -> _Client:
        where = (instance, conv)
        client = self._clients.get(where)
        if client is None:
            self._count += 1
            label = f"{safe_text(instance)}/{conv}, {safe_text(peer)}"
            info = ConversationInfo(self._count, label)
            conversation = RemoteConversation(info, instance, conv, self._outbox)
            client = self._clients[where] = _Client(conversation)
            self._numbers[self._count] = where
            self.console.started(conversation)
        return client

    def _forget(self, where: tuple[str, int], reason: str) -> None:
        client = self._clients.pop(where, None)
        if client is not None:
            self._numbers.pop(client.conversation.info.id, None)
            self.console.ended(client.conversation, reason)

    # -- Handler ---------------------------------------------------------------

    def handle(self, item: WorkItem) -> Deferred[Outcome | None]:
        where = item.where
        known = where in self._clients
        client = self._mirror(item.instance, item.conv, item.peer)
        if not known:
            client.since = self._clock.seconds()
        client.holding.add(item.entry)
        self._elsewhere.pop(where, None)
        answer = self.console.respond(client.conversation.info, item.text)
        if self._shown is not None:
            self._shown()

        def answered(text: str) -> Outcome:
            client.holding.discard(item.entry)
            # The conversation's history, for a desk that takes it later.
            by = self._consumer.by if self._consumer is not None else "operator"
            entry = said("operator", by, text, self._clock.seconds())
            quietly(self._broker.add_history(item.instance, item.conv, [entry]))
            return Outcome("answer", text)

        def failed(failure: Failure) -> Failure:
            client.holding.discard(item.entry)
            return failure

        result: Deferred[Outcome | None] = answer.addCallbacks(answered, failed)
        return result

    def gone(self, item: WorkItem) -> Deferred[None]:
        """Did the client leave (then the console says so), or did its
        line time out?"""
        client = self._clients.get(item.where)
        if client is not None:
            client.holding.discard(item.entry)

        async def look() -> None:
            try:
                there = await self._broker.has_client(item.instance, item.conv)
            except (BrokerUnavailable, BrokerRefused):
                return
            if not there:
                self._forget(item.where, "left")

        return Deferred.fromCoroutine(look())

    # -- What the console asks of lines that are not on it ---------------------

    def state(self, number: int) -> tuple[str, str] | None:
        """How client *number*'s line stands, if it is not on this console:
        (``waiting in the queue`` or ``held by operator NAME``, the line)."""
        found = self._elsewhere.get(self._numbers.get(number, ("", 0)))
        if found is None:
            return None
        if found.holder is None:
            return "waiting in the queue", found.text
        return f"held by operator {safe_text(found.holder)}", found.text

    def take(self, number: int, text: str) -> bool:
        """``/to`` for client *number*, whose line is not on this console:
        take it from the queue and answer it with *text*.  False if no line
        of that client is known to wait."""
        where = self._numbers.get(number)
        found = self._elsewhere.get(where) if where is not None else None
        if found is None or self._consumer is None:
            return False
        if found.holder is not None:
            self.console.say(
                f"client {number}'s line is held by operator "
                f"{safe_text(found.holder)}; nothing was sent"
            )
            return True

        def taken(result: Taken) -> None:
            if result.entry is not None:
                if not self.console.answer_client(number, text):
                    self.console.say(
                        f"client {number}'s line went meanwhile; nothing was sent"
                    )
            elif result.holder is not None:
                self.console.say(
                    f"client {number}'s line was taken meanwhile by another "
                    "operator; nothing was sent"
                )
            else:
                self.console.say(
                    f"client {number}'s line was answered or withdrawn meanwhile; "
                    "nothing was sent"
                )

        def failed(failure: Failure) -> None:
            if not failure.check(BrokerUnavailable, BrokerRefused):
                log.failure("taking a line failed", failure)
            self.console.say(
                f"the broker could not give client {number}'s line "
                f"({failure.getErrorMessage()}); nothing was sent"
            )

        self._consumer.take_entry(found.entry).addCallbacks(taken, failed)
        return True
