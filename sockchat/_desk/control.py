"""The desk at work: the model, carried out on a queue, told to pages.

``Desk`` joins a ``DeskModel`` to an ``IDeskQueue``: it feeds the model
the queue's events and the operators' commands, runs the calls the model
asks for on the queue, and sends each page what the model says its
operator must hear.  It knows no HTTP and no WebSocket: a page is anything
with ``send(message)`` (the door's desk socket; a list in the tests).

It takes a clock for the one timer it keeps: when an operator with no page
open must hand back what they hold (``model.GRACE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from sockchat._desk.canned import Canned
from sockchat._desk.model import (
    Answer,
    Command,
    DeskModel,
    Do,
    End,
    Fetch,
    GoOffline,
    GoOnline,
    HandBack,
    Message,
    Output,
    Refusal,
    Take,
    Tell,
)
from sockchat._desk.queue import DeskEvent, IDeskQueue, Operator, Refused, Said

__all__ = ["Desk", "Hello", "IPage", "Problem"]

log = Logger(namespace="sockchat.desk")


@frozen
class Hello:
    """What a page hears first: who it is, its hold limit, the canned answers."""

    me: Operator
    hold: int
    canned: Sequence[Canned]


@frozen
class Problem:
    """A command of this page's was refused; ``why`` is one line, which
    holds while the operator holds *while_holding* conversations or more
    (``Refusal.while_holding``)."""

    why: str
    while_holding: int | None = None


PageMessage = Message | Hello | Problem


class IPage(Protocol):
    """One open desk page: the door's socket, or a test's list."""

    def send(self, message: PageMessage) -> None: ...


class Desk:
    """The desk of this process, over *queue*."""

    def __init__(
        self,
        queue: IDeskQueue,
        clock: IReactorTime,
        *,
        hold: int,
        max_answer: int = 65536,
        canned: Sequence[Canned] = (),
    ) -> None:
        self.queue = queue
        self.clock = clock
        self.canned = tuple(canned)
        self.model = DeskModel(hold, max_answer)
        self._pages: dict[str, list[IPage]] = {}
        self._timer: IDelayedCall | None = None
        self._stop: Any = None
        self._early: list[DeskEvent] | None = None
        self._stopped = False

    @property
    def hold(self) -> int:
        return self.model.hold

    def start(self) -> Deferred[None]:
        """Start the queue, hear its events, and load what it holds now."""

        def started(_: object) -> Deferred[None]:
            self._early = []
            self._stop = self.queue.subscribe(self._event)
            return self.queue.snapshot().addCallback(self._loaded)

        return self.queue.start().addCallback(started)

    def _loaded(self, snapshot: Any) -> None:
        early, self._early = self._early or [], None
        self._run(self.model.load(snapshot, self.clock.seconds()))
        for event in early:
            self._event(event)

    def stop(self) -> Deferred[None]:
        """Hear the queue no more, and keep no timer (pages that close
        after this still leave the desk); the queue lets go of what this
        desk's operators hold."""
        self._stopped = True
        if self._stop is not None:
            self._stop()
            self._stop = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return self.queue.stop()

    def _event(self, event: DeskEvent) -> None:
        if self._early is not None:
            self._early.append(event)
            return
        self._run(self.model.apply(event, self.clock.seconds()))

    # Pages.

    def arrive(self, operator: Operator, page: IPage) -> None:
        """*page* of *operator*'s opened: it hears who it is, the desk, and
        the conversations its operator holds."""
        now = self.clock.seconds()
        self._pages.setdefault(operator.name, []).append(page)
        page.send(Hello(operator, self.hold, self.canned))
        page.send(self.model.desk(now))
        for view in self.model.yours(operator.name):
            page.send(view)
        self._run(self.model.arrive(operator, now))

    def leave(self, operator: Operator, page: IPage, *, at_once: bool = False) -> None:
        """*page* closed (with *at_once*: its operator logged out of their
        last session)."""
        pages = self._pages.get(operator.name, [])
        if page in pages:
            pages.remove(page)
        if not pages:
            self._pages.pop(operator.name, None)
        self._run(self.model.leave(operator, self.clock.seconds(), at_once=at_once))

    def gone(self, operator: Operator) -> None:
        """*operator* logged out of their last session, with no page open:
        what they hold goes back now."""
        self._run(self.model.gone(operator, self.clock.seconds()))

    def pages(self, name: str) -> list[IPage]:
        return list(self._pages.get(name, ()))

    def command(self, operator: Operator, page: IPage, command: Command) -> None:
        """*operator* asks, from *page*."""
        decided = self.model.command(operator, command, self.clock.seconds())
        if isinstance(decided, Refusal):
            page.send(Problem(decided.why, decided.while_holding))
            return
        self._run(decided, page)

    # Carrying out the model's outputs.

    def _run(self, outputs: list[Output], page: IPage | None = None) -> None:
        for output in outputs:
            if isinstance(output, Tell):
                self._tell(output)
            elif isinstance(output, Do):
                self._do(output, page)
            elif isinstance(output, Fetch):
                self._fetch(output.conversation)
            elif isinstance(output, GoOnline):
                self._quietly(self.queue.online(output.operator), "online")
            elif isinstance(output, GoOffline):
                self._quietly(self.queue.offline(output.operator), "offline")
        self._schedule()

    def _tell(self, tell: Tell) -> None:
        if tell.to is None:
            targets = [p for pages in self._pages.values() for p in pages]
        else:
            targets = list(self._pages.get(tell.to, ()))
        for target in targets:
            target.send(tell.message)

    def _do(self, done: Do, page: IPage | None) -> None:
        by, command = done.by, done.command
        if isinstance(command, Take):
            d = self.queue.take(command.entry, by)
        elif isinstance(command, Answer):
            d = self.queue.answer(command.entry, command.text, by)
        elif isinstance(command, HandBack):
            d = self.queue.hand_back(command.conversation, by)
        elif isinstance(command, End):
            d = self.queue.end(command.conversation, by)

        def refused(failure: Failure) -> None:
            self.model.not_done(done)
            if failure.check(Refused):
                if page is not None:
                    page.send(Problem(str(failure.value)))
                return
            log.failure(
                "the queue failed to {what}", failure, what=type(command).__name__
            )
            if page is not None:
                page.send(Problem("the queue failed; try again"))

        d.addErrback(refused)

    def _fetch(self, key: str) -> None:
        def fetched(items: Sequence[Said]) -> None:
            self._run(self.model.history(key, items))

        d = self.queue.history(key).addCallback(fetched)
        self._quietly(d, "history")

    def _quietly(self, d: Deferred[Any], what: str) -> None:
        def failed(failure: Failure) -> None:
            log.failure("the queue failed: {what}", failure, what=what)

        d.addErrback(failed)

    def _schedule(self) -> None:
        if self._stopped:
            return
        due = self.model.next_due()
        if self._timer is not None and self._timer.active():
            if due is not None and self._timer.getTime() == due:
                return
            self._timer.cancel()
        self._timer = None
        if due is not None:
            delay = max(0.0, due - self.clock.seconds())
            self._timer = self.clock.callLater(delay, self._due)

    def _due(self) -> None:
        self._timer = None
        self._run(self.model.due(self.clock.seconds()))
