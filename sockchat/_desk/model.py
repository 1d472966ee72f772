"""The desk, with no I/O: what each operator sees, holds and may do.

``DeskModel`` is fed the queue's events (``apply``), the operators'
commands (``command``) and their comings and goings (``arrive``,
``leave``), each with the time, and answers with what to do next: messages
for the operators' pages (``Tell``) and calls on the queue (``Take``,
``Answer``...: the commands themselves, signed with their operator, and
``Fetch``, ``GoOnline``, ``GoOffline``).  The door only carries these out.

The rules it keeps:

- **The turn rule.** A line has one answer.  An operator may answer a line
  only while it waits and its conversation is theirs; once answered (from
  the moment the command is accepted, before the queue confirms it), a
  second answer to it is refused, and the operator's page is told there is
  nothing to answer until the client speaks again.
- **The hold limit.** An operator holds at most ``hold`` conversations,
  counting the takes still under way.
- **Holding is by conversation**: a held conversation's lines are its
  holder's; others see them as held, and cannot take them.
- **An operator who leaves** (every page closed) keeps what they hold for
  ``GRACE`` seconds (a reload, a lost connection), then it goes back to
  the queue; one who logs out of their last session hands back at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from attrs import define, field, frozen

from sockchat._desk.queue import (
    HISTORY_CHARS,
    HISTORY_ITEMS,
    Answered,
    Client,
    Closed,
    DeskEvent,
    Dropped,
    HandedBack,
    Line,
    Online,
    Opened,
    Operator,
    Queued,
    Said,
    Snapshot,
    Spoken,
    Taken,
)

__all__ = [
    "DEFAULT_HOLD",
    "EXCERPT",
    "GRACE",
    "Answer",
    "AnswerDue",
    "Command",
    "ConversationView",
    "DeskModel",
    "DeskView",
    "Do",
    "End",
    "Fetch",
    "GoOffline",
    "GoOnline",
    "HandBack",
    "HeldView",
    "LineView",
    "Message",
    "Output",
    "Refusal",
    "Released",
    "SaidMore",
    "Take",
    "Tell",
]

#: Conversations an operator may hold at once, unless told otherwise.
DEFAULT_HOLD = 3
#: Seconds an operator with no desk page open keeps what they hold.
GRACE = 30.0
#: Characters of a waiting line that the queue shows (its length besides).
EXCERPT = 200
#: Lines answered here, remembered so that a second answer to one is
#: refused as such (and not as "no longer waiting").
REMEMBERED_ANSWERS = 4096


# What an operator asks for.


@frozen
class Take:
    entry: str


@frozen
class Answer:
    entry: str
    text: str


@frozen
class HandBack:
    conversation: str


@frozen
class End:
    conversation: str


Command = Take | Answer | HandBack | End


@frozen
class Refusal:
    """A command the model will not pass on; ``why`` is one line for a person."""

    why: str
    #: What ``why`` says holds while its operator holds this many
    #: conversations or more (the hold limit), and is over below it; None:
    #: it was said of that moment only.
    while_holding: int | None = None


# What the door does on the queue: a command with its operator, or these.


@frozen
class Do:
    by: Operator
    command: Command


@frozen
class Fetch:
    """Ask the queue for a conversation's history; hand it to ``history``."""

    conversation: str


@frozen
class GoOnline:
    operator: Operator


@frozen
class GoOffline:
    operator: Operator


# What operators' pages are told: the same desk for all, their own
# conversations for each.


@frozen
class LineView:
    entry: str
    conversation: str
    label: str
    #: The line's first ``EXCERPT`` characters; ``length`` is all of it.
    excerpt: str
    length: int
    #: Seconds it has waited, when this was sent.
    waited: float
    holder: Operator | None


@frozen
class HeldView:
    conversation: str
    label: str
    holder: Operator


@frozen
class DeskView:
    """Everyone's view: the queue, who holds what, who is online."""

    lines: Sequence[LineView]
    held: Sequence[HeldView]
    operators: Sequence[Operator]
    clients: int


@frozen
class ConversationView:
    """A conversation that is yours: its history, and the line to answer."""

    conversation: str
    label: str
    history: Sequence[Said]
    #: The line waiting for your answer (entry and text), if any.
    entry: str | None
    text: str


@frozen
class SaidMore:
    """One more item of a conversation that is yours."""

    said: Said


@frozen
class AnswerDue:
    """Whether a conversation of yours has a line for you to answer."""

    conversation: str
    entry: str | None
    text: str = ""
    #: Why a line you could answer is gone, if it is (``left``...).
    why: str = ""


@frozen
class Released:
    """A conversation is no longer yours, and why."""

    conversation: str
    why: str


Message = DeskView | ConversationView | SaidMore | AnswerDue | Released


@frozen
class Tell:
    """Send *message* to every page of operator *to* (None: every operator)."""

    to: str | None
    message: Message


Output = Tell | Do | Fetch | GoOnline | GoOffline


@define
class _Conversation:
    client: Client
    holder: Operator | None = None
    #: The history of a conversation held here, by ``Said.n``.
    history: dict[int, Said] = field(factory=dict)
    #: Its history has arrived from the queue (until then, items wait).
    loaded: bool = False


@define
class _Here:
    """An operator at this desk."""

    operator: Operator
    pages: int = 0
    #: When their last page closed (None: one is open).
    left: float | None = None


class DeskModel:
    """The desk's state and rules, fed events, commands and the time."""

    def __init__(self, hold: int = DEFAULT_HOLD, max_answer: int = 65536) -> None:
        if hold < 1:
            raise ValueError("hold must be 1 or more")
        self.hold = hold
        self.max_answer = max_answer
        self._conversations: dict[str, _Conversation] = {}
        self._lines: dict[str, Line] = {}  # waiting for an answer, oldest first
        self._operators: tuple[Operator, ...] = ()
        self._here: dict[str, _Here] = {}
        self._taking: dict[str, tuple[str, str]] = {}  # entry: (operator, key)
        self._answered: dict[str, None] = {}  # answered here, oldest first

    # Views.

    def desk(self, now: float) -> DeskView:
        lines = tuple(
            LineView(
                line.entry,
                line.conversation,
                self._label(line.conversation),
                line.text[:EXCERPT],
                len(line.text),
                max(0.0, now - line.since),
                self._holder(line.conversation),
            )
            for line in self._lines.values()
        )
        held = tuple(
            HeldView(key, c.client.label, c.holder)
            for key, c in self._conversations.items()
            if c.holder is not None
        )
        return DeskView(lines, held, self._operators, len(self._conversations))

    def yours(self, name: str) -> list[ConversationView]:
        """The conversations *name* holds, as their page shows them."""
        return [
            self._view(key)
            for key, c in self._conversations.items()
            if c.holder is not None and c.holder.name == name and c.loaded
        ]

    def holding(self, name: str) -> int:
        """Conversations *name* holds, or is taking a line of."""
        keys = {
            key
            for key, c in self._conversations.items()
            if c.holder is not None and c.holder.name == name
        }
        keys.update(key for who, key in self._taking.values() if who == name)
        return len(keys)

    def _label(self, key: str) -> str:
        conversation = self._conversations.get(key)
        return conversation.client.label if conversation is not None else f"#{key}"

    def _holder(self, key: str) -> Operator | None:
        conversation = self._conversations.get(key)
        return conversation.holder if conversation is not None else None

    def _waiting_in(self, key: str) -> Line | None:
        for line in self._lines.values():
            if line.conversation == key:
                return line
        return None

    def _view(self, key: str) -> ConversationView:
        conversation = self._conversations[key]
        line = self._waiting_in(key)
        history = tuple(conversation.history[n] for n in sorted(conversation.history))
        return ConversationView(
            key,
            conversation.client.label,
            history,
            line.entry if line is not None else None,
            line.text if line is not None else "",
        )

    def _is_here(self, operator: Operator | None) -> bool:
        return operator is not None and operator.name in self._here

    def _everyone(self, now: float) -> Tell:
        return Tell(None, self.desk(now))

    # The queue's side.

    def load(self, snapshot: Snapshot, now: float) -> list[Output]:
        """Start from what the queue holds now."""
        self._conversations = {c.key: _Conversation(c) for c in snapshot.clients}
        self._lines = {line.entry: line for line in snapshot.lines}
        out: list[Output] = []
        for key, holder in snapshot.holders:
            conversation = self._conversations.get(key)
            if conversation is not None:
                conversation.holder = holder
                if self._is_here(holder):
                    out.append(Fetch(key))
        self._operators = tuple(snapshot.operators)
        out.append(self._everyone(now))
        return out

    def apply(self, event: DeskEvent, now: float) -> list[Output]:
        """What *event* changes, and who must hear of it."""
        out: list[Output] = []
        if isinstance(event, Opened):
            self._conversations[event.client.key] = _Conversation(event.client)
        elif isinstance(event, Closed):
            out += self._closed(event)
        elif isinstance(event, Queued):
            out += self._queued(event)
        elif isinstance(event, Taken):
            out += self._taken(event)
        elif isinstance(event, Answered):
            self._lines.pop(event.entry, None)
            self._remember_answered(event.entry)
        elif isinstance(event, Dropped):
            out += self._dropped(event)
        elif isinstance(event, HandedBack):
            out += self._handed_back(event)
        elif isinstance(event, Spoken):
            return self._spoken(event.said)
        elif isinstance(event, Online):
            self._operators = tuple(event.operators)
        out.append(self._everyone(now))
        return out

    def history(self, key: str, items: Iterable[Said]) -> list[Output]:
        """The history that ``Fetch`` asked for has come."""
        conversation = self._conversations.get(key)
        if conversation is None or not self._is_here(conversation.holder):
            return []
        assert conversation.holder is not None
        for said in items:
            conversation.history.setdefault(said.n, said)
        self._trim(conversation)
        conversation.loaded = True
        return [Tell(conversation.holder.name, self._view(key))]

    def _closed(self, event: Closed) -> list[Output]:
        conversation = self._conversations.pop(event.conversation, None)
        for entry, (_, key) in list(self._taking.items()):
            if key == event.conversation:
                del self._taking[entry]
        if conversation is None or not self._is_here(conversation.holder):
            return []
        assert conversation.holder is not None
        why = f"the conversation is over ({event.reason})"
        return [Tell(conversation.holder.name, Released(event.conversation, why))]

    def _queued(self, event: Queued) -> list[Output]:
        line = event.line
        self._lines[line.entry] = line
        conversation = self._conversations.get(line.conversation)
        if conversation is None:
            return []
        if event.holder is not None:
            conversation.holder = event.holder
        holder = conversation.holder
        if self._is_here(holder) and conversation.loaded:
            assert holder is not None
            turn = AnswerDue(line.conversation, line.entry, line.text)
            return [Tell(holder.name, turn)]
        return []

    def _taken(self, event: Taken) -> list[Output]:
        self._taking.pop(event.entry, None)
        conversation = self._conversations.get(event.conversation)
        if conversation is None:
            return []
        before = conversation.holder
        conversation.holder = event.by
        if before is not None and before.name == event.by.name and conversation.loaded:
            return []
        if self._is_here(event.by):
            conversation.history.clear()
            conversation.loaded = False
            return [Fetch(event.conversation)]
        return []

    def _dropped(self, event: Dropped) -> list[Output]:
        line = self._lines.pop(event.entry, None)
        self._taking.pop(event.entry, None)
        conversation = self._conversations.get(event.conversation)
        if line is None or conversation is None:
            return []
        holder = conversation.holder
        if self._is_here(holder) and conversation.loaded:
            assert holder is not None
            why = "the client left" if event.why == "left" else event.why
            return [Tell(holder.name, AnswerDue(event.conversation, None, why=why))]
        return []

    def _handed_back(self, event: HandedBack) -> list[Output]:
        conversation = self._conversations.get(event.conversation)
        if conversation is None:
            return []
        conversation.holder = None
        conversation.history.clear()
        conversation.loaded = False
        if self._is_here(event.by):
            why = "handed back to the queue"
            return [Tell(event.by.name, Released(event.conversation, why))]
        return []

    def _spoken(self, said: Said) -> list[Output]:
        conversation = self._conversations.get(said.conversation)
        if conversation is None or not self._is_here(conversation.holder):
            return []
        assert conversation.holder is not None
        conversation.history[said.n] = said
        self._trim(conversation)
        if not conversation.loaded:
            return []  # it goes with the history, when that comes
        return [Tell(conversation.holder.name, SaidMore(said))]

    def _trim(self, conversation: _Conversation) -> None:
        history = conversation.history
        chars = sum(len(s.text) for s in history.values())
        for n in sorted(history):
            if len(history) <= 1 or (
                len(history) <= HISTORY_ITEMS and chars <= HISTORY_CHARS
            ):
                break
            chars -= len(history.pop(n).text)

    def _remember_answered(self, entry: str) -> None:
        self._answered[entry] = None
        while len(self._answered) > REMEMBERED_ANSWERS:
            del self._answered[next(iter(self._answered))]

    # The operators' side.

    def arrive(self, operator: Operator, now: float) -> list[Output]:
        """A page of *operator*'s opened."""
        here = self._here.get(operator.name)
        first = here is None
        if here is None:
            here = self._here[operator.name] = _Here(operator)
        here.pages += 1
        here.left = None
        out: list[Output] = []
        if first:
            out.append(GoOnline(operator))
            for key, c in self._conversations.items():
                if c.holder is not None and c.holder.name == operator.name:
                    out.append(Fetch(key))
        return out

    def leave(
        self, operator: Operator, now: float, *, at_once: bool = False
    ) -> list[Output]:
        """A page of *operator*'s closed; with *at_once* (their last
        session logged out) what they hold goes back now, not after
        ``GRACE``."""
        here = self._here.get(operator.name)
        if here is None:
            return []
        here.pages = max(0, here.pages - 1)
        if here.pages:
            return []
        here.left = now - GRACE if at_once else now
        return self.due(now)

    def gone(self, operator: Operator, now: float) -> list[Output]:
        """*operator* logged out of their last session: if no page of theirs
        is open, what they hold goes back now, not after ``GRACE``."""
        here = self._here.get(operator.name)
        if here is None or here.pages:
            return []
        here.left = now - GRACE
        return self.due(now)

    def next_due(self) -> float | None:
        """When ``due`` has something to do next (None: nothing waits)."""
        times = [h.left + GRACE for h in self._here.values() if h.left is not None]
        return min(times) if times else None

    def due(self, now: float) -> list[Output]:
        """Operators gone for ``GRACE``: hand back what they hold; offline."""
        out: list[Output] = []
        for name, here in list(self._here.items()):
            if here.left is None or now - here.left < GRACE:
                continue
            del self._here[name]
            for key, c in self._conversations.items():
                if c.holder is not None and c.holder.name == name:
                    out.append(Do(here.operator, HandBack(key)))
            out.append(GoOffline(here.operator))
        return out

    def command(
        self, operator: Operator, command: Command, now: float
    ) -> Refusal | list[Output]:
        """May *operator* do this?  What to do (``Do`` it on the queue, and
        tell the pages), or why not."""
        if isinstance(command, Take):
            refusal = self._may_take(operator, command.entry)
            if refusal is not None:
                return refusal
            key = self._lines[command.entry].conversation
            self._taking[command.entry] = (operator.name, key)
            return [Do(operator, command)]
        if isinstance(command, Answer):
            why = self._may_answer(operator, command)
            if why is not None:
                return Refusal(why)
            line = self._lines.pop(command.entry)
            self._remember_answered(command.entry)
            turn = AnswerDue(line.conversation, None)
            return [
                Do(operator, command),
                Tell(operator.name, turn),
                self._everyone(now),
            ]
        why = self._may_let_go(operator, command.conversation)
        return Refusal(why) if why is not None else [Do(operator, command)]

    def not_done(self, done: Do) -> None:
        """The queue refused *done*: forget the take under way."""
        if isinstance(done.command, Take):
            self._taking.pop(done.command.entry, None)

    def _may_take(self, operator: Operator, entry: str) -> Refusal | None:
        line = self._lines.get(entry)
        if line is None or entry in self._taking:
            return Refusal("that line is no longer waiting")
        holder = self._holder(line.conversation)
        if holder is not None:
            if holder.name == operator.name:
                return Refusal("that conversation is yours already")
            return Refusal(f"{holder.display} holds that conversation")
        if self.holding(operator.name) >= self.hold:
            return Refusal(
                f"you hold {self.hold} conversation{'s' if self.hold > 1 else ''}, "
                "the most you may; hand one back or end one first",
                while_holding=self.hold,
            )
        return None

    def _may_answer(self, operator: Operator, command: Answer) -> str | None:
        line = self._lines.get(command.entry)
        if line is None:
            if command.entry in self._answered:
                return "that line has its answer already: one answer per line"
            return "that line is no longer waiting for an answer"
        holder = self._holder(line.conversation)
        if holder is None or holder.name != operator.name:
            return "take the conversation before answering it"
        text = command.text
        if not text:
            return "an empty answer is not sent"
        if "\n" in text or "\r" in text:
            return "an answer is one line"
        if len(text.encode("utf-8")) > self.max_answer:
            return f"an answer has at most {self.max_answer} bytes"
        return None

    def _may_let_go(self, operator: Operator, key: str) -> str | None:
        holder = self._holder(key)
        if key not in self._conversations:
            return "that conversation is over already"
        if holder is None or holder.name != operator.name:
            return "that conversation is not yours"
        return None
