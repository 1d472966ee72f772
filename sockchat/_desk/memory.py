"""The operators' queue in one process: ``MemoryQueue`` and its responder.

``twistd sockchat --desk PORT`` (no ``--broker``) answers clients with a
``DeskResponder``: each client line waits in the ``MemoryQueue`` until an
operator at the desk takes it and answers.  The queue is the desk's
``IDeskQueue`` and also the instance's side of it (``open``, ``ask``,
``close``), which the broker's queue will be across instances.

- A line's answer is a ``Deferred`` that fires when an operator answers;
  when its client leaves first, the server cancels it and the line is
  dropped (``Dropped``), so it is never answered twice, nor at all late.
- Taking a line holds its conversation: its next lines are queued already
  held, until the holder hands it back, ends it, or the client leaves.
- Each conversation keeps its history (both sides, and what the desk did)
  within ``HISTORY_ITEMS`` and ``HISTORY_CHARS``.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence

from attrs import define, field
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from sockchat._desk.queue import (
    HISTORY_CHARS,
    HISTORY_ITEMS,
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
from sockchat._responders.contract import (
    ConversationInfo,
    IAnsweredByPeople,
    IConversation,
    ILifecycle,
    IResponder,
)

__all__ = ["DeskResponder", "History", "MemoryQueue"]

log = Logger(namespace="sockchat.desk")

#: What a client is told when it speaks and no operator is at the desk.
NOBODY_ONLINE = "no operator is online yet; your line waits for the first one"


@define
class History:
    """A conversation's last items, within the bounds."""

    conversation: str
    items: deque[Said] = field(factory=deque)
    chars: int = 0
    count: int = 0

    def add(self, who: Who, by: str, text: str, at: float) -> Said:
        self.count += 1
        said = Said(self.conversation, self.count, who, by, text, at)
        self.items.append(said)
        self.chars += len(text)
        while len(self.items) > 1 and (
            len(self.items) > HISTORY_ITEMS or self.chars > HISTORY_CHARS
        ):
            self.chars -= len(self.items.popleft().text)
        return said


@define
class _Waiting:
    line: Line
    answer: Deferred[str]


@implementer(IDeskQueue)
class MemoryQueue:
    """Lines waiting for operators, in this process, on *clock*."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._entries = itertools.count(1)
        self._clients: dict[str, Client] = {}
        self._talks: dict[str, IConversation] = {}
        self._waiting: dict[str, _Waiting] = {}  # oldest first
        self._holders: dict[str, Operator] = {}
        self._histories: dict[str, History] = {}
        self._operators: dict[str, Operator] = {}
        self._observers: list[Callable[[DeskEvent], None]] = []

    # What the instance does: conversations open, lines come, they end.

    def open(self, conversation: IConversation) -> Client:
        info: ConversationInfo = conversation.info
        key = str(info.id)
        client = Client(
            key, f"client {info.id} ({info.peer})", info.peer, self._clock.seconds()
        )
        self._clients[key] = client
        self._talks[key] = conversation
        self._histories[key] = History(key)
        self._emit(Opened(client))
        return client

    def ask(self, info: ConversationInfo, text: str) -> Deferred[str]:
        """Queue a client line; the Deferred fires with its answer."""
        key = str(info.id)
        entry = str(next(self._entries))
        now = self._clock.seconds()
        line = Line(entry, key, text, now)
        answer: Deferred[str] = Deferred(lambda _: self._drop(entry, "left"))
        self._waiting[entry] = _Waiting(line, answer)
        self._say(key, Who.CLIENT, "", text)
        self._emit(Queued(line, self._holders.get(key)))
        return answer

    def close(self, key: str, reason: str) -> None:
        for entry in [
            e for e, w in self._waiting.items() if w.line.conversation == key
        ]:
            self._drop(entry, reason)
        if self._clients.pop(key, None) is None:
            return
        self._talks.pop(key, None)
        self._holders.pop(key, None)
        self._histories.pop(key, None)
        self._emit(Closed(key, reason))

    @property
    def operators_online(self) -> int:
        return len(self._operators)

    def talk(self, key: str) -> IConversation | None:
        return self._talks.get(key)

    def _drop(self, entry: str, why: str) -> None:
        waiting = self._waiting.pop(entry, None)
        if waiting is not None:
            self._emit(Dropped(entry, waiting.line.conversation, why))

    # IDeskQueue

    def snapshot(self) -> Deferred[Snapshot]:
        return succeed(
            Snapshot(
                clients=tuple(self._clients.values()),
                lines=tuple(w.line for w in self._waiting.values()),
                holders=tuple(self._holders.items()),
                operators=tuple(self._operators.values()),
            )
        )

    def history(self, conversation: str) -> Deferred[Sequence[Said]]:
        history = self._histories.get(conversation)
        return succeed(tuple(history.items) if history is not None else ())

    def take(self, entry: str, by: Operator) -> Deferred[None]:
        waiting = self._waiting.get(entry)
        if waiting is None:
            return fail(Refused("that line is no longer waiting"))
        key = waiting.line.conversation
        holder = self._holders.get(key)
        if holder is not None and holder.name != by.name:
            return fail(Refused(f"{holder.display} holds that conversation"))
        self._holders[key] = by
        if holder is None:
            self._say(key, Who.NOTICE, by.display, f"{by.display} took it")
        self._emit(Taken(entry, key, by))
        return succeed(None)

    def answer(self, entry: str, text: str, by: Operator) -> Deferred[None]:
        waiting = self._waiting.get(entry)
        if waiting is None:
            return fail(Refused("that line is no longer waiting for an answer"))
        key = waiting.line.conversation
        holder = self._holders.get(key)
        if holder is None or holder.name != by.name:
            return fail(Refused("take the conversation before answering it"))
        del self._waiting[entry]
        self._emit(Answered(entry, key, by))
        self._say(key, Who.OPERATOR, by.display, text)
        waiting.answer.callback(text)
        return succeed(None)

    def hand_back(self, conversation: str, by: Operator) -> Deferred[None]:
        holder = self._holders.get(conversation)
        if holder is None or holder.name != by.name:
            return fail(Refused("you do not hold that conversation"))
        del self._holders[conversation]
        self._say(conversation, Who.NOTICE, by.display, f"{by.display} handed it back")
        self._emit(HandedBack(conversation, by))
        return succeed(None)

    def end(self, conversation: str, by: Operator) -> Deferred[None]:
        holder = self._holders.get(conversation)
        talk = self._talks.get(conversation)
        if talk is None:
            return fail(Refused("that conversation is over already"))
        if holder is not None and holder.name != by.name:
            return fail(Refused(f"{holder.display} holds that conversation"))
        log.info(
            "{operator} ended conversation {cid}",
            operator=by.name,
            cid=conversation,
        )
        talk.end("kicked", "the operator ended this conversation.")
        return succeed(None)

    def online(self, operator: Operator) -> Deferred[None]:
        self._operators[operator.name] = operator
        self._emit(Online(tuple(self._operators.values())))
        return succeed(None)

    def offline(self, operator: Operator) -> Deferred[None]:
        if self._operators.pop(operator.name, None) is not None:
            self._emit(Online(tuple(self._operators.values())))
        return succeed(None)

    def subscribe(self, observer: Callable[[DeskEvent], None]) -> Callable[[], None]:
        self._observers.append(observer)

        def stop() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return stop

    def _say(self, key: str, who: Who, by: str, text: str) -> None:
        history = self._histories.get(key)
        if history is not None:
            self._emit(Spoken(history.add(who, by, text, self._clock.seconds())))

    def _emit(self, event: DeskEvent) -> None:
        for observer in list(self._observers):
            observer(event)


@implementer(IResponder, ILifecycle, IAnsweredByPeople)
class DeskResponder:
    """Clients' lines wait in *queue* for an operator at the desk."""

    def __init__(self, queue: MemoryQueue) -> None:
        self.queue = queue
        self._told: set[int] = set()

    def started(self, conversation: IConversation) -> None:
        self.queue.open(conversation)

    def respond(self, conversation: ConversationInfo, text: str) -> Deferred[str]:
        answer = self.queue.ask(conversation, text)
        if not self.queue.operators_online and conversation.id not in self._told:
            self._told.add(conversation.id)
            talk = self.queue.talk(str(conversation.id))
            if talk is not None:
                talk.notify("queued", NOBODY_ONLINE)
        return answer

    def ended(self, conversation: IConversation, reason: str) -> None:
        self._told.discard(conversation.info.id)
        self.queue.close(str(conversation.info.id), reason)
