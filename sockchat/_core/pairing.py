"""Pair mode's one model: who waits, who is paired with whom, who speaks
first, and what a partner's leaving does.  No I/O, no Twisted, no clock of
its own: the time is the ``now`` passed in.

Pair mode in one process (``sockchat._responders.pair``) and across
instances (``sockchat._broker.pairs``) are adapters of this module: they
feed each client's ``Party`` what happened and carry out the actions it
returns, so a pair behaves the same wherever its two clients are.

**The rules.**

1. *The one who waited speaks first.*  A newcomer that finds a client
   waiting is paired with it and listens (its welcome is ``!info listen``);
   the one who waited has the first turn.  A line it said while waiting
   goes to the newcomer the moment they are paired.  A newcomer that finds
   nobody waiting waits itself, with the turn (``!info welcome``), and will
   speak first.  So the waiting list holds only clients that will speak
   first, and a pair is always one that speaks and one that listens.
2. *A probe is not a partner.*  A newcomer is offered for pairing only once
   it has stayed connected for ``grace`` seconds; its welcome waits until
   then.  A health check or a port probe that closes its side (FIN), is
   reset, or quits within that time was never anyone's partner: nobody
   hears of it.  One that stays longer is paired, but see 3.
3. *A partner is one who has said a line.*  A partner that leaves, however
   it leaves, before it has said a line to the other ends nothing: the
   other goes back to the head of the waiting list, told ``!info waiting``,
   keeping its right to speak first and any line it said (the next partner
   gets it at once).  A listener whose partner left before the first line
   gets the turn back instead of a line (``!error unavailable: ... It is
   your turn now.``), and waits at the head: it speaks first next time.
4. Once a partner has said a line, its leaving ends the other's
   conversation too (``!bye partner-left``): a pair is one conversation,
   and nobody is handed to a stranger in the middle of it.  A client that
   closes its side after talking is answered what it is owed first, as
   everywhere in sockchat.

``Party`` is one client's state machine: ``MOVES`` is its table, (standing,
event) to standing; ``IGNORED`` names every pair that is not a move, and
why (a test checks that each pair is in exactly one of them).  ``Pairs``
is the whole of pair mode in one process: the parties and the waiting
list, with the same inputs and the actions to carry out, pulled one at a
time with ``next_action()`` so that nothing recurses.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Hashable, Iterable
from typing import NamedTuple

from attrs import define, field

from sockchat._core.wire import QUIT

__all__ = [
    "GRACE",
    "IGNORED",
    "LEFT_BECAUSE",
    "MOVES",
    "Action",
    "Answer",
    "Ask",
    "End",
    "Event",
    "Forward",
    "GiveTurn",
    "Leave",
    "Log",
    "Pairs",
    "PartnerLeaves",
    "Party",
    "Requeue",
    "Standing",
    "Tell",
    "Welcome",
    "left_because",
]

#: Seconds a newcomer must stay connected before it is offered for pairing.
#: Probes close within milliseconds (HAProxy's check, ``nc -z``, a
#: Kubernetes ``tcpSocket`` probe); a person does not notice a third of a
#: second before the welcome.  docs/protocol.md has the measurement.
GRACE = 0.3

#: How a client's leaving is said to its partner, by the code its
#: conversation ended with.
LEFT_BECAUSE = {
    "quit": f"sent {QUIT}",
    "connection-lost": "disconnected",
    "end-of-input": "closed its side of the connection",
    "idle-timeout": "was idle for too long",
    "kicked": "was disconnected by the operator",
    "shutdown": "left: its server is shutting down",
}


def left_because(reason: str) -> str:
    """How a conversation that ended with *reason* is said to its partner."""
    return LEFT_BECAUSE.get(reason, f"left ({reason})")


class Standing(enum.IntEnum):
    """Where one client stands in pair mode (an ``IntEnum``: looked up in
    ``MOVES`` on every line, and an int hashes in C)."""

    #: Connected, in its grace: not welcomed, not offered to anyone yet.
    ARRIVING = 0
    #: Its grace is over: it asks for a partner, and its welcome waits for
    #: the answer.
    ASKING = 1
    #: Welcomed with the turn; waits for a partner, to whom it will speak
    #: first.
    WAITING = 2
    #: Waits for a partner, and has said its first line: kept for them.
    WAITING_SAID = 3
    #: Paired; speaks first, and has said nothing yet.
    FIRST = 4
    #: Paired; listens for its partner's first line.
    LISTENING = 5
    #: Paired; has said its first line, which its partner has; no answer
    #: yet, so its partner has said nothing.
    FIRST_SAID = 6
    #: Paired and talking (its partner has said a line): its turn.
    TURN = 7
    #: Paired and talking: it waits for its partner's answer.
    AWAITING = 8
    #: It left.
    GONE = 9


class Event(enum.IntEnum):
    """What happens to one client in pair mode."""

    #: It stayed through its grace.
    GRACE_OVER = 0
    #: The answer to its asking: nobody waits, so it waits now.
    ALONE = 1
    #: No answer came in time (the broker): it waits, where it is.
    UNANSWERED = 2
    #: The answer to its asking: it is paired with one who waited.
    FOUND = 3
    #: A newcomer is paired with it.
    TAKEN = 4
    #: Its client said a line (in turn: the conversation engine sees to it).
    SAID = 5
    #: Its partner's line came.
    HEARD = 6
    #: Its line did not reach its partner (the broker was lost): its client
    #: has the turn back, to say it again.
    UNSENT = 7
    #: Its partner left.
    PARTNER_LEFT = 8
    #: Its client left.
    LEFT = 9


_A, _K, _W, _WS = (
    Standing.ARRIVING,
    Standing.ASKING,
    Standing.WAITING,
    (Standing.WAITING_SAID),
)
_F, _L, _FS = Standing.FIRST, Standing.LISTENING, Standing.FIRST_SAID
_T, _AW, _G = Standing.TURN, Standing.AWAITING, Standing.GONE

#: The moves: (standing, event) -> the next standing.  What each move does
#: is in ``Party``; the pairs that are not moves are in ``IGNORED``.
MOVES: dict[tuple[Standing, Event], Standing] = {
    (_A, Event.GRACE_OVER): _K,
    (_A, Event.LEFT): _G,  # a probe: nobody hears of it
    (_K, Event.ALONE): _W,
    (_K, Event.UNANSWERED): _W,
    (_K, Event.FOUND): _L,
    (_K, Event.LEFT): _G,
    (_W, Event.TAKEN): _F,
    (_W, Event.SAID): _WS,
    (_W, Event.LEFT): _G,
    (_WS, Event.TAKEN): _FS,
    (_WS, Event.LEFT): _G,
    (_F, Event.SAID): _FS,
    (_F, Event.PARTNER_LEFT): _W,  # it said nothing: not a partner
    (_F, Event.LEFT): _G,
    (_L, Event.HEARD): _T,
    (_L, Event.PARTNER_LEFT): _W,  # the turn comes back: it will speak first
    (_L, Event.LEFT): _G,
    (_FS, Event.HEARD): _T,
    (_FS, Event.UNSENT): _F,
    (_FS, Event.PARTNER_LEFT): _WS,  # its line is for the next partner
    (_FS, Event.LEFT): _G,
    (_T, Event.SAID): _AW,
    (_T, Event.PARTNER_LEFT): _G,  # the partner had spoken: partner-left
    (_T, Event.LEFT): _G,
    (_AW, Event.HEARD): _T,
    (_AW, Event.UNSENT): _T,
    (_AW, Event.PARTNER_LEFT): _G,
    (_AW, Event.LEFT): _G,
}

_PAIRED = frozenset({_F, _L, _FS, _T, _AW})
#: The two moves of a pair's usual line, looked up in the table once.
_AFTER_SAID = MOVES[_T, Event.SAID]
_AFTER_HEARD = MOVES[_AW, Event.HEARD]
_NOT_ASKING = frozenset(Standing) - {_K}

#: Every (standing, event) that is not a move, and why it changes nothing.
IGNORED: dict[tuple[Standing, Event], str] = {
    **{
        (s, Event.GRACE_OVER): "its grace was over already"
        for s in frozenset(Standing) - {_A}
    },
    **{
        (s, e): "an answer to a question it is not asking (it left, or the "
        "answer came too late: the adapter gives back whom it found)"
        for s in _NOT_ASKING
        for e in (Event.ALONE, Event.UNANSWERED, Event.FOUND)
    },
    **{
        (s, Event.TAKEN): "it is not waiting: the adapter tells the taker to look again"
        for s in frozenset(Standing) - {_W, _WS}
    },
    **{
        (s, Event.SAID): "not its turn, or not welcomed yet: the conversation "
        "engine never delivers such a line"
        for s in (_A, _K, _WS, _L, _FS, _AW, _G)
    },
    **{
        (s, Event.HEARD): "no line is owed to it: a stale message from a former partner"
        for s in (_A, _K, _W, _WS, _F, _T, _G)
    },
    **{
        (s, Event.UNSENT): "no line of its own is on its way to a partner"
        for s in frozenset(Standing) - {_FS, _AW}
    },
    **{
        (s, Event.PARTNER_LEFT): "it has no partner: a stale message from a former one"
        for s in (_A, _K, _W, _WS, _G)
    },
    (_G, Event.LEFT): "it left already",
}


# -- Actions ---------------------------------------------------------------
#
# Each names the party it is for by its key (a conversation id in one
# process; the adapter's choice across instances).  Named tuples, as the
# engine's actions are: two are made for every line a pair relays, and a
# named tuple is the cheapest value Python makes (an attrs class costs
# several times as much).  Equality compares the type too.


class Welcome(NamedTuple):
    """Welcome the client: it listens (the partner speaks first), or it has
    the turn."""

    key: Hashable
    listen: bool


class Tell(NamedTuple):
    """Send the client an info notice."""

    key: Hashable
    code: str
    text: str


class Answer(NamedTuple):
    """Give the client this line, the answer it waits for."""

    key: Hashable
    text: str


class GiveTurn(NamedTuple):
    """The line the client waits for will not come: give it the turn back,
    saying why (``Unavailable``)."""

    key: Hashable
    why: str


class End(NamedTuple):
    """End the client's conversation with a bye notice."""

    key: Hashable
    code: str
    text: str


class Forward(NamedTuple):
    """Carry the client's line to its partner (``HEARD`` there)."""

    key: Hashable
    text: str


class Ask(NamedTuple):
    """Find the client a partner: take the first of those waiting
    (``FOUND``) or, if nobody waits, put it at the end of the waiting list
    (``ALONE``)."""

    key: Hashable


class Requeue(NamedTuple):
    """Put the client back at the head of the waiting list; it takes
    nobody (those who wait speak first: two of them cannot be a pair)."""

    key: Hashable


class Leave(NamedTuple):
    """Take the client out of the waiting list (or stop asking for it)."""

    key: Hashable


class PartnerLeaves(NamedTuple):
    """Tell the client's partner that it left (``PARTNER_LEFT`` there),
    and how (*why*, in words)."""

    key: Hashable
    why: str


class Log(NamedTuple):
    """Write this structured log event (``twisted.logger`` format)."""

    key: Hashable
    level: str
    format: str
    fields: tuple[tuple[str, object], ...]


Action = (
    Welcome
    | Tell
    | Answer
    | GiveTurn
    | End
    | Forward
    | Ask
    | Requeue
    | Leave
    | PartnerLeaves
    | Log
)


def _eq(self: tuple[object, ...], other: object) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)


def _ne(self: tuple[object, ...], other: object) -> bool:
    return not _eq(self, other)


#: Makes a named tuple without its Python-level ``__new__``:
#: ``_new(Answer, (key, text))`` is ``Answer(key, text)``.
_new = tuple.__new__


def _hash(self: tuple[object, ...]) -> int:
    return hash((type(self), tuple(self)))


for _cls in (Welcome, Tell, Answer, GiveTurn, End, Forward, Ask, Requeue, Leave):
    _cls.__eq__ = _eq  # type: ignore[method-assign]  # compare the type too
    _cls.__ne__ = _ne  # type: ignore[assignment,method-assign]
    _cls.__hash__ = _hash  # type: ignore[method-assign]  # hash the type too
for _other in (PartnerLeaves, Log):
    _other.__eq__ = _eq  # type: ignore[method-assign]
    _other.__ne__ = _ne  # type: ignore[assignment,method-assign]
    _other.__hash__ = _hash  # type: ignore[method-assign]


# -- Words -----------------------------------------------------------------


def _waiting(then: str, what: str = "") -> str:
    """The ``waiting`` notice: *what* happened first, if anything; *then*
    says what its first line does."""
    head = f"{what}; no partner yet" if what else "no partner yet"
    return (
        f"{head}: you will talk with the next client to connect, and you speak "
        f"first. {then} Send {QUIT} to quit."
    )


_MAY_SAY = "You may say your first line now: they will have it as soon as they come."
_KEPT = "They will have your first line as soon as they come."


# -- One client ------------------------------------------------------------


@define
class Party:
    """One client in pair mode: its standing, and what it said that its
    partner has not answered.

    Each input returns the actions to carry out, in order.  *label* names
    it to its partner (``client 2 (127.0.0.1:50312)``).
    """

    key: Hashable
    label: str
    #: When it arrived: its grace runs from here.
    since: float
    grace: float = GRACE
    standing: Standing = Standing.ARRIVING
    #: Its partner's label, while it has one.
    partner: str | None = None
    #: Its first line, said while it waited or before its partner answered:
    #: kept until the partner answers, so that the next partner has it if
    #: this one leaves without a word.
    opening: str | None = None

    @property
    def deadline(self) -> float | None:
        """When its grace is over (``grace_over`` then); None: not arriving."""
        if self.standing is Standing.ARRIVING:
            return self.since + self.grace
        return None

    @property
    def waits(self) -> bool:
        """Whether it waits for a partner (it is in the waiting list)."""
        return self.standing in (_W, _WS)

    @property
    def asking(self) -> bool:
        """Whether its welcome waits for the answer: a partner, or none."""
        return self.standing is Standing.ASKING

    @property
    def paired(self) -> bool:
        return self.standing in _PAIRED

    def _move(self, event: Event) -> bool:
        """Take the move for *event*; False if it is not one (``IGNORED``)."""
        after = MOVES.get((self.standing, event))
        if after is None:
            return False
        self.standing = after
        return True

    # Inputs.

    def grace_over(self) -> list[Action]:
        if not self._move(Event.GRACE_OVER):
            return []
        return [Ask(self.key)]

    def alone(self) -> list[Action]:
        if not self._move(Event.ALONE):
            return []
        return [
            Welcome(self.key, listen=False),
            Tell(self.key, "waiting", _waiting(_MAY_SAY)),
        ]

    def unanswered(self, why: str) -> list[Action]:
        """No answer came in time; *why* says from what (the broker)."""
        if not self._move(Event.UNANSWERED):
            return []
        return [
            Welcome(self.key, listen=False),
            Tell(self.key, "waiting", _waiting(_MAY_SAY, why)),
        ]

    def found(self, partner: str) -> list[Action]:
        """Paired with *partner*, who waited: it speaks first."""
        if not self._move(Event.FOUND):
            return []
        self.partner = partner
        return [
            Welcome(self.key, listen=True),
            Tell(
                self.key,
                "paired",
                f"you are talking with {partner}. They waited, so they speak "
                "first; wait for their line.",
            ),
        ]

    def taken(self, partner: str) -> list[Action]:
        """A newcomer, *partner*, is paired with it: it speaks first."""
        said = self.standing is _WS
        if not self._move(Event.TAKEN):
            return []
        self.partner = partner
        if not said:
            return [
                Tell(
                    self.key,
                    "paired",
                    f"you are talking with {partner}. You speak first.",
                )
            ]
        assert self.opening is not None
        return [
            Tell(
                self.key,
                "paired",
                f"you are talking with {partner}. They have your first line; "
                "wait for their answer.",
            ),
            Forward(self.key, self.opening),
        ]

    def said(self, text: str) -> list[Action]:
        """Its client said *text*."""
        before = self.standing
        if not self._move(Event.SAID):
            return []
        if before is _T:
            return [Forward(self.key, text)]
        self.opening = text  # its first line: kept until it is answered
        if before is _W:
            return []  # for the partner to come
        return [Forward(self.key, text)]

    def heard(self, text: str) -> list[Action]:
        """Its partner said *text*."""
        if not self._move(Event.HEARD):
            return []
        self.opening = None  # answered, or it listened
        return [Answer(self.key, text)]

    def unsent(self, why: str) -> list[Action]:
        """Its last line did not reach its partner; *why* says why."""
        if not self._move(Event.UNSENT):
            return []
        if self.standing is _F:
            self.opening = None
        return [GiveTurn(self.key, why)]

    def partner_left(self, why: str) -> list[Action]:
        """Its partner left; *why* says how (``sent q``)."""
        before, partner = self.standing, self.partner
        if not self._move(Event.PARTNER_LEFT):
            return []
        self.partner = None
        what = f"{partner} {why}"
        if self.standing is _G:  # it had spoken: the conversation is over
            return [
                Log(
                    self.key,
                    "info",
                    "the pair of {mine} and {theirs} ended: {theirs} {why}",
                    (("mine", self.label), ("theirs", partner), ("why", why)),
                ),
                End(
                    self.key,
                    "partner-left",
                    f"{what}. Connect again to talk with someone new.",
                ),
            ]
        what = f"{what} before saying a line"
        if before is _L:
            return [
                GiveTurn(self.key, what),
                Tell(self.key, "waiting", _waiting(_MAY_SAY, what)),
                Requeue(self.key),
            ]
        then = _KEPT if self.standing is _WS else _MAY_SAY
        return [Tell(self.key, "waiting", _waiting(then, what)), Requeue(self.key)]

    def left(self, why: str) -> list[Action]:
        """Its client left; *why* says how, in words for its partner."""
        before = self.standing
        if not self._move(Event.LEFT):
            return []
        self.partner = None
        if before in _PAIRED:
            return [PartnerLeaves(self.key, why)]
        if before in (_K, _W, _WS):
            return [Leave(self.key)]
        return []  # in its grace: nobody knew of it


# -- Pair mode in one process ------------------------------------------------


@define
class Pairs:
    """Pair mode in one process: the parties by key, the waiting list, and
    the actions for the adapter, pulled with ``next_action()``.

    The adapter carries out ``Welcome``, ``Tell``, ``Answer``,
    ``GiveTurn``, ``End`` and ``Log``; the others are carried out here.
    """

    grace: float = GRACE
    parties: dict[Hashable, Party] = field(factory=dict)
    #: Who waits for a partner, the first to be taken first.
    waiting: list[Hashable] = field(factory=list)
    #: Each paired party's partner, both ways.
    partners: dict[Hashable, Hashable] = field(factory=dict)
    #: Those in their grace, in order of arrival (so of their deadlines).
    _arriving: deque[Party] = field(factory=deque)
    _out: deque[Action] = field(factory=deque)

    @property
    def deadline(self) -> float | None:
        """When the next grace is over (``tick`` then); None: none runs."""
        arriving = self._arriving
        while arriving and arriving[0].deadline is None:  # it left
            arriving.popleft()
        return arriving[0].deadline if arriving else None

    def next_action(self) -> Action | None:
        return self._out.popleft() if self._out else None

    # Inputs.

    def arrive(self, key: Hashable, label: str, now: float) -> None:
        """A client connected."""
        party = self.parties[key] = Party(key, label, now, self.grace)
        self._arriving.append(party)
        self.tick(now)

    def tick(self, now: float) -> None:
        """The time is *now*: those whose grace is over ask, in order."""
        while (deadline := self.deadline) is not None and deadline <= now:
            self._carry_out(self._arriving.popleft().grace_over())

    def said(self, key: Hashable, text: str) -> None:
        """Client *key* said *text*."""
        party = self.parties[key]
        if party.standing is _T:
            partner = self.parties[self.partners[key]]
            if partner.standing is _AW:
                # The usual line of a pair that talks: the same moves as
                # said() and heard() would make, in fewer calls.
                party.standing, partner.standing = _AFTER_SAID, _AFTER_HEARD
                self._out.append(_new(Answer, (partner.key, text)))
                return
        self._carry_out(party.said(text))

    def left(self, key: Hashable, reason: str) -> None:
        """Client *key*'s conversation ended with *reason* (a code)."""
        party = self.parties.pop(key, None)
        if party is not None:
            self._carry_out(party.left(left_because(reason)))

    # What is carried out here.

    def _carry_out(self, actions: Iterable[Action]) -> None:
        for action in actions:
            if type(action) is Forward:  # the usual: a line for the partner
                partner = self.parties[self.partners[action.key]]
                self._carry_out(partner.heard(action.text))
            elif isinstance(action, Ask):
                self._ask(action.key)
            elif isinstance(action, Requeue):
                self.waiting.insert(0, action.key)
            elif isinstance(action, Leave):
                if action.key in self.waiting:
                    self.waiting.remove(action.key)
            elif isinstance(action, PartnerLeaves):
                partner_key = self.partners.pop(action.key)
                del self.partners[partner_key]
                self._carry_out(self.parties[partner_key].partner_left(action.why))
            else:
                self._out.append(action)

    def _ask(self, key: Hashable) -> None:
        party = self.parties[key]
        if not self.waiting:
            self.waiting.append(key)
            self._carry_out(party.alone())
            return
        first = self.parties[self.waiting.pop(0)]
        self.partners[key], self.partners[first.key] = first.key, key
        self._carry_out(party.found(first.label))
        self._carry_out(first.taken(party.label))
