"""Pair mode across instances: clients of every instance, paired through
the broker, by the same rules as in one process.

The rules are the core's (``sockchat._core.pairing``): a newcomer is
offered once its grace is over; the one who waited speaks first; a
partner is one who has said a line.  Each client of this instance has a
``Party`` there; this adapter tells it what happens (its grace ran out,
its client said a line, the broker answered, a message came from its
partner's instance) and carries out what it says, through the broker's
pairing role (``IPairing``) and the instances' inboxes.

Who waits is one list on the broker, of clients that will speak first
(``IPairing``): a newcomer whose grace is over takes the first whose
instance is alive (``pair_or_wait``), or, if none, waits at the end; one
whose partner left before saying a line goes back to the head
(``start_waiting``), taking nobody, since two who speak first cannot be a pair.

The messages between instances (inbox kinds):

- ``take``: a newcomer took a waiting client's entry.  If that client
  still waits, its instance answers ``taken`` and tells its client it is
  paired and speaks first (and sends the line it said while waiting, if
  it did); if not (it left, or it is paired already), ``not-waiting``, and
  the newcomer asks the broker again.  The newcomer's welcome waits for
  this answer: then it listens (``!info listen``).
- ``line``: a client's line, for its partner: the answer the partner waits
  for.
- ``left``: a client left, and how; its partner's party decides (a
  partner who had said a line ends the pair; one who had not ends
  nothing).
- ``release``: the one who took this client's entry cannot pair after all
  (it left, or gave up waiting for the answer): the entry goes back to the
  head of the list.

The newcomer's welcome waits at most ``ANSWER_WITHIN`` for the broker's
answer and the waiting client's instance's; past it, the client is
welcomed with the turn and told that no answer came (``!info waiting:
the broker did not answer within 3 s; ...``), and waits for a
partner like any other who waits.  A line whose message could not go
(the broker was lost) gives its client the turn back, to say it again.

Faults:

- A partner's instance that dies: its heartbeat key expires at most
  ``HEARTBEAT_TTL`` (10 s) after its last beat, and this instance looks
  at its partners' instances at each of its own heartbeats (every
  ``HEARTBEAT``, 2 s), so the survivor hears within about 12 s
  (``PARTNER_LOST_WITHIN``), as if its partner had left: the pair ends if
  the partner had said a line, or the survivor waits again if not.
- The broker lost: a paired client's line gets ``!error unavailable`` and
  its turn back.  A newcomer is welcomed with the turn and waits in this
  instance only until the broker is back; then it joins the list.
  Messages about pairs that could not be sent (a ``left``) are sent when
  the broker is back; a waiting client whose entry the broker lost (it
  restarted without its data) is put back in the list.  For
  ``HEARTBEAT_TTL`` after the broker comes back, no partner is taken for
  dead, giving the other instances time to beat again.
"""

from __future__ import annotations

from typing import Any

from attrs import define, frozen
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockchat._broker.instance import BrokerInstance
from sockchat._broker.interface import (
    BROKER_FOR_CLIENTS,
    BrokerRefused,
    BrokerUnavailable,
    Census,
    ClientRecord,
    quietly,
    unless_unavailable,
)
from sockchat._broker.wire import HEARTBEAT, HEARTBEAT_TTL, WireError, decode, encode
from sockchat._core.pairing import (
    GRACE,
    Action,
    Ask,
    Forward,
    Leave,
    PartnerLeaves,
    Party,
    Requeue,
    Welcome,
    left_because,
)
from sockchat._responders.contract import (
    ConversationInfo,
    IAnsweredByPeople,
    IConversation,
    ILifecycle,
    IResponder,
    Unavailable,
    WelcomeLater,
)
from sockchat._responders.pair import Seat

__all__ = ["ANSWER_WITHIN", "PARTNER_LOST_WITHIN", "BrokerPairResponder"]

log = Logger(namespace="sockchat.pair")

#: Seconds within which a client hears that its partner's instance died:
#: the heartbeat key's life, then at most one heartbeat of this instance.
PARTNER_LOST_WITHIN = HEARTBEAT_TTL + HEARTBEAT

#: Seconds a newcomer's welcome waits for the broker's answer (and the
#: waiting client's instance's) once its grace is over.
ANSWER_WITHIN = 3.0


@frozen
class _Peer:
    """One client of one instance, as the broker's messages name it."""

    instance: str
    conv: int
    label: str

    def named(self) -> dict[str, Any]:
        return {"instance": self.instance, "conv": self.conv, "label": self.label}

    def same(self, other: _Peer | None) -> bool:
        return (
            other is not None
            and other.instance == self.instance
            and other.conv == self.conv
        )


def _peer(value: object) -> _Peer | None:
    """The peer a message names, or None if it names none properly."""
    if not isinstance(value, dict):
        return None
    instance, conv, label = value.get("instance"), value.get("conv"), value.get("label")
    if not isinstance(instance, str) or type(conv) is not int:
        return None
    if not isinstance(label, str) or not label:
        label = f"client {instance}/{conv}"
    return _Peer(_one_line(instance), conv, _one_line(label))


def _sent_by(value: object, peer: _Peer | None) -> bool:
    """Whether a message's ``from`` (*value*) names *peer*: the same as
    ``peer.same(_peer(value))``, without making a peer of it (each relayed
    line asks)."""
    if peer is None or not isinstance(value, dict):
        return False
    instance, conv = value.get("instance"), value.get("conv")
    return (
        type(conv) is int
        and conv == peer.conv
        and isinstance(instance, str)
        and (instance == peer.instance or _one_line(instance) == peer.instance)
    )


def _one_line(text: str, limit: int = 200) -> str:
    """*text* as a short line for a notice, whoever wrote it."""
    text = text[:limit]
    if text.isprintable():  # the usual name: one check, not one a character
        return text
    return "".join(c if c.isprintable() else "?" for c in text)


@define(eq=False)
class _Seat:
    """A client of this instance: its party, and where it is with the
    broker."""

    #: The client's side: its conversation, welcome and awaited line.
    client: Seat
    me: _Peer
    party: Party
    #: Its entry in the waiting list, the same bytes every time.
    entry: bytes
    partner: _Peer | None = None
    #: ``pair_or_wait`` is on its way to the broker.
    asking: bool = False
    #: It took this one's entry, and waits for its instance's answer.
    taking: _Peer | None = None
    #: What came before the broker's answer to its own asking (which can
    #: then only be that it was put in the list): one took its entry
    #: (*early*), or took it and gave it back (*given_back*).  Each waits
    #: for that answer.
    early: _Peer | None = None
    given_back: bool = False
    #: Its entry is in the broker's list (or on its way there).
    listed: bool = False
    #: When its welcome stops waiting for an answer.
    deadline: IDelayedCall | None = None
    timer: IDelayedCall | None = None
    over: bool = False


@implementer(IResponder, ILifecycle, IAnsweredByPeople)
class BrokerPairResponder:
    """Pair the clients of every instance on the broker, by the rules of
    ``sockchat._core.pairing``, and relay each pair's lines through it."""

    def __init__(
        self,
        instance: BrokerInstance,
        *,
        grace: float = GRACE,
        answer_within: float = ANSWER_WITHIN,
    ) -> None:
        self.instance = instance
        self.broker = instance.broker
        self.grace = grace
        self.answer_within = answer_within
        self._seats: dict[int, _Seat] = {}
        #: Who waits here while the broker is unreachable, first first.
        self._local: list[_Seat] = []
        #: Messages that could not be sent: sent when the broker is back.
        self._unsent: list[tuple[str, bytes]] = []
        self._back_at: float | None = None
        #: Warnings already logged: each is logged once.
        self._said: set[str] = set()
        instance.on_kind("take", self._on_take)
        instance.on_kind("taken", self._on_taken)
        instance.on_kind("not-waiting", self._on_not_waiting)
        instance.on_kind("line", self._on_line)
        instance.on_kind("left", self._on_left)
        instance.on_kind("release", self._on_release)
        instance.on_census(self._look_at_partners)
        instance.on_back(self._broker_back)

    @property
    def _up(self) -> bool:
        return self.instance.up and self.broker.up

    @property
    def _clock(self) -> Any:
        return self.instance.clock

    # -- ILifecycle ------------------------------------------------------------

    def started(self, conversation: IConversation) -> WelcomeLater:
        info: ConversationInfo = conversation.info
        name = self.instance.name
        me = _Peer(name, info.id, f"client {name}/{info.id} ({info.peer})")
        party = Party(info.id, me.label, self._clock.seconds(), self.grace)
        seat = _Seat(Seat(conversation), me, party, encode("waiting", **me.named()))
        self._seats[info.id] = seat
        if self.grace > 0:
            seat.timer = self._clock.callLater(self.grace, self._grace_over, seat)
        else:
            self._carry_out(seat, party.grace_over())
        return seat.client.welcome

    def ended(self, conversation: IConversation, reason: str) -> None:
        seat = self._seats.pop(conversation.info.id, None)
        if seat is None:
            return
        seat.over = True
        for timer in (seat.timer, seat.deadline):
            if timer is not None and timer.active():
                timer.cancel()
        if seat in self._local:
            self._local.remove(seat)
        if self.broker.up:
            quietly(self.broker.remove_client(seat.me.instance, seat.me.conv))
        self._carry_out(seat, seat.party.left(left_because(reason)))

    # -- IResponder ------------------------------------------------------------

    def respond(self, conversation: ConversationInfo, text: str) -> Deferred[str]:
        seat = self._seats[conversation.id]
        if seat.party.paired and not self._up:
            raise Unavailable(
                f"{BROKER_FOR_CLIENTS} is unreachable; send it again soon"
            )
        answer = seat.client.waiting = Deferred()
        self._carry_out(seat, seat.party.said(text))
        return answer

    # -- Carrying out the party's actions --------------------------------------

    def _carry_out(self, seat: _Seat, actions: list[Action]) -> None:
        for action in actions:
            self._act(seat, action)

    def _act(self, seat: _Seat, action: Action) -> None:
        if isinstance(action, Welcome):
            self._stop_deadline(seat)
        if seat.client.act(action):
            return
        if isinstance(action, Ask):
            self._ask(seat)
        elif isinstance(action, Forward):
            self._forward(seat, action.text)
        elif isinstance(action, Requeue):
            seat.partner = None
            self._register(seat)
            self._wait(seat, front=True)
        elif isinstance(action, Leave):
            self._leave(seat)
        elif isinstance(action, PartnerLeaves):
            partner, seat.partner = seat.partner, None
            if partner is not None:
                self._send(partner, "left", why=action.why, **{"from": seat.me.named()})

    # -- Finding a partner -----------------------------------------------------

    def _grace_over(self, seat: _Seat) -> None:
        seat.timer = None
        if not seat.over:
            self._carry_out(seat, seat.party.grace_over())

    def _ask(self, seat: _Seat) -> None:
        """Take the first who waits, or wait at the end of the list."""
        if not self._up:
            self._unanswered(seat, f"{BROKER_FOR_CLIENTS} is unreachable")
            return
        if seat.deadline is None:
            seat.deadline = self._clock.callLater(
                self.answer_within, self._too_late, seat
            )
        seat.asking = True
        self.broker.pair_or_wait(seat.entry, front=False).addCallbacks(
            self._answered,
            self._not_answered,
            callbackArgs=(seat,),
            errbackArgs=(seat,),
        )

    def _answered(self, reply: bytes | None, seat: _Seat) -> None:
        seat.asking = False
        taken = None if reply is None else self._entry(reply)
        early, seat.early = seat.early, None
        given_back, seat.given_back = seat.given_back, False
        if reply is None:  # nobody waited: its entry is in the list now
            seat.listed = True
            if seat.over:
                self._leave(seat)
            else:
                self._carry_out(seat, seat.party.alone())
            if early is not None:  # and someone took it already
                self._taken_by(early, seat)
            elif given_back and seat.party.waits:
                self._wait(seat, front=True)
            return
        if early is not None:  # it took another: the early one had a stale entry
            self._refuse_take(early, seat.me.conv)
        if taken is None:  # an entry that names nobody: look again
            self._ask(seat)
            return
        if seat.over or not seat.party.asking:
            # It left, or stopped waiting for the answer: the one it took
            # goes back to the head of the list.
            self._send(taken, "release")
            if not seat.over:
                self._wait(seat, front=False)
            return
        seat.taking = taken
        self._send(taken, "take", partner=seat.me.named())

    def _not_answered(self, failure: Failure, seat: _Seat) -> None:
        seat.asking = False
        if seat.over:
            return
        if failure.check(BrokerRefused):
            # Said once, not at every retry: the broker says no to all alike.
            self._say_once(f"the broker would not pair clients: {failure.value}")
        elif not failure.check(BrokerUnavailable):
            log.failure(
                "the broker could not pair {label}", failure, label=seat.me.label
            )
        self._unanswered(seat, f"{BROKER_FOR_CLIENTS} did not answer")

    def _too_late(self, seat: _Seat) -> None:
        seat.deadline = None
        if seat.over or not seat.party.asking:
            return
        taking, seat.taking = seat.taking, None
        if taking is not None:  # its instance did not answer: it is let go
            self._send(taking, "left", why="left", **{"from": seat.me.named()})
            what = f"the server of the client who waited, {taking.instance},"
        else:
            what = BROKER_FOR_CLIENTS
        self._unanswered(seat, f"{what} did not answer within {self.answer_within:g} s")

    def _unanswered(self, seat: _Seat, why: str) -> None:
        """It waits, welcomed with the turn, though no answer came."""
        self._stop_deadline(seat)
        self._carry_out(seat, seat.party.unanswered(why))
        if not seat.asking:  # a late answer of its own puts it in the list
            self._wait(seat, front=False)

    def _stop_deadline(self, seat: _Seat) -> None:
        deadline, seat.deadline = seat.deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _wait(self, seat: _Seat, *, front: bool) -> None:
        """Put its entry in the list, taking nobody: it speaks first."""
        if not self._up:
            if seat not in self._local:
                self._local.insert(0 if front else len(self._local), seat)
            return
        seat.listed = True
        self.broker.start_waiting(seat.entry, front=front).addErrback(
            self._not_waiting, seat
        )

    def _not_waiting(self, failure: Failure, seat: _Seat) -> None:
        seat.listed = False
        if not failure.check(BrokerUnavailable, BrokerRefused):
            log.failure(
                "the broker could not keep {label} waiting",
                failure,
                label=seat.me.label,
            )
        if not seat.over and seat.party.waits and seat not in self._local:
            self._local.append(seat)  # joins the list when the broker is back

    def _leave(self, seat: _Seat) -> None:
        """It left, or is paired: its entry goes from the list."""
        taking, seat.taking = seat.taking, None
        if taking is not None:
            self._send(taking, "left", why="left", **{"from": seat.me.named()})
        if seat.listed:
            seat.listed = False
            if self.broker.up:
                quietly(self.broker.stop_waiting(seat.entry))

    def _entry(self, reply: bytes) -> _Peer | None:
        """The client an entry of the waiting list names."""
        try:
            taken = _peer(decode(reply, sender="an entry in the pair waiting list"))
        except WireError as e:
            self._refuse(str(e))
            return None
        if taken is None:
            self._refuse("an entry in the pair waiting list names no client")
        return taken

    # -- Lines -----------------------------------------------------------------

    def _forward(self, seat: _Seat, text: str) -> None:
        partner = seat.partner
        assert partner is not None
        sent = self._send(partner, "line", text=text, **{"from": seat.me.named()})
        sent.addErrback(self._line_not_sent, seat)

    def _line_not_sent(self, failure: Failure, seat: _Seat) -> None:
        if seat.over:
            return
        if failure.check(BrokerUnavailable):
            why = f"{BROKER_FOR_CLIENTS} was lost before your line went; send it again"
        else:
            log.failure("a line for a partner could not be sent", failure)
            why = "your line could not be sent; send it again"
        self._carry_out(seat, seat.party.unsent(why))

    # -- The inbox -------------------------------------------------------------

    def _seat(self, message: dict[str, Any]) -> _Seat | None:
        conv = message.get("conv")
        return self._seats.get(conv) if type(conv) is int else None

    def _on_take(self, message: dict[str, Any]) -> None:
        """A newcomer took this seat's entry."""
        taker = _peer(message.get("partner"))
        if taker is None:
            self._refuse("a take message names no client")
            return
        seat = self._seat(message)
        if seat is not None and seat.asking and seat.early is None:
            # Its own asking put its entry in the list, and the answer is
            # still on its way: the take waits for it.
            seat.early = taker
            return
        if seat is None or not seat.party.waits:
            # It left, or it is paired already: the taker looks again.
            self._refuse_take(taker, message.get("conv"))
            return
        self._taken_by(taker, seat)

    def _taken_by(self, taker: _Peer, seat: _Seat) -> None:
        """*taker* took *seat*'s entry: they are a pair."""
        if not seat.party.waits:
            self._refuse_take(taker, seat.me.conv)
            return
        seat.listed = False
        seat.partner = taker
        self._send(taker, "taken", partner=seat.me.named())  # before its line
        self._carry_out(seat, seat.party.taken(taker.label))
        self._register(seat)

    def _refuse_take(self, taker: _Peer, conv: object) -> None:
        """*taker* took an entry of one that does not wait: it looks again."""
        me = {"instance": self.instance.name, "conv": conv, "label": ""}
        self._send(taker, "not-waiting", **{"from": me})

    def _on_taken(self, message: dict[str, Any]) -> None:
        """The one this seat took is its partner."""
        partner = _peer(message.get("partner"))
        seat = self._seat(message)
        if partner is None or seat is None or not partner.same(seat.taking):
            if partner is not None and (seat is None or not partner.same(seat.taking)):
                log.debug("a late take was answered; ignored")
            return
        seat.taking = None
        seat.partner = partner
        self._carry_out(seat, seat.party.found(partner.label))
        self._register(seat)

    def _on_not_waiting(self, message: dict[str, Any]) -> None:
        """The one this seat took was not waiting after all: look again."""
        seat = self._seat(message)
        sender = _peer(message.get("from"))
        if seat is None or sender is None or not sender.same(seat.taking):
            return
        seat.taking = None
        self._ask(seat)

    def _on_line(self, message: dict[str, Any]) -> None:
        seat = self._addressed(message)
        text = message.get("text")
        if seat is None:
            return
        if not isinstance(text, str):
            self._refuse("a line message has no text")
            return
        self._carry_out(seat, seat.party.heard(text))

    def _on_left(self, message: dict[str, Any]) -> None:
        early = self._seat(message)
        sender = _peer(message.get("from"))
        if early is not None and sender is not None and sender.same(early.early):
            # The one who took its entry early left: the entry is given back.
            early.early, early.given_back = None, True
            return
        seat = self._addressed(message)
        if seat is None:
            return
        why = message.get("why")
        why = _one_line(why) if isinstance(why, str) and why else "left"
        self._carry_out(seat, seat.party.partner_left(why))
        seat.partner = None

    def _on_release(self, message: dict[str, Any]) -> None:
        """The one who took this seat's entry cannot pair: back to the head."""
        seat = self._seat(message)
        if seat is not None and seat.asking:
            seat.given_back = True  # after the answer to its own asking
        elif seat is not None and seat.party.waits:
            self._wait(seat, front=True)

    def _addressed(self, message: dict[str, Any]) -> _Seat | None:
        """The seat a message is for, if it comes from that seat's partner."""
        seat = self._seat(message)
        if seat is None or not _sent_by(message.get("from"), seat.partner):
            log.debug(
                "a {kind} message for {conv}, which is not paired with its sender, "
                "was ignored",
                kind=message.get("kind"),
                conv=message.get("conv"),
            )
            return None
        return seat

    # -- Heartbeats and the broker's return ------------------------------------

    def _look_at_partners(self, census: Census) -> None:
        """At each heartbeat, once the instance knows who is alive: are the
        partners' instances?"""
        if not self._up:
            return
        # Clients that came while the broker was away join the list.
        local, self._local = self._local, []
        for seat in local:
            if not seat.over and seat.party.waits:
                self._wait(seat, front=False)
        now = self._clock.seconds()
        if self._back_at is not None and now - self._back_at < HEARTBEAT_TTL:
            return
        names = {
            s.partner.instance
            for s in self._seats.values()
            if s.partner is not None and s.partner.instance not in census.instances
        }
        for name in sorted(names):
            # Not seen alive: newer than the census, or dead?
            self.broker.instance_alive(name).addCallbacks(
                self._looked, self._not_looked, (name,)
            )

    def _not_looked(self, failure: Failure) -> None:
        if not failure.check(BrokerUnavailable, BrokerRefused):
            log.failure("looking at a partner's instance failed", failure)

    def _looked(self, exists: bool, name: str) -> None:
        if exists:
            return
        log.info(
            "instance {name} stopped answering; its clients' partners are told",
            name=name,
        )
        for seat in list(self._seats.values()):
            partner = seat.partner
            if partner is None or partner.instance != name or seat.over:
                continue
            # Tell it too, in case it was only cut off from the broker.
            self._send(
                partner,
                "left",
                why="gave up on you: your server had stopped answering",
                **{"from": seat.me.named()},
            )
            seat.partner = None
            self._carry_out(
                seat,
                seat.party.partner_left(
                    f"is gone: its server, {name}, stopped answering"
                ),
            )

    def _broker_back(self) -> None:
        self._back_at = self._clock.seconds()
        unsent, self._unsent = self._unsent, []
        for name, data in unsent:
            self.instance.post(name, data).addErrback(self._not_sent, name, data)
        for seat in self._seats.values():
            self._register(seat)
        local, self._local = self._local, []
        for seat in local:
            if not seat.over and seat.party.waits:
                self._wait(seat, front=False)
        if any(s.listed for s in self._seats.values()):
            self.broker.waiting().addCallbacks(self._check_entries, unless_unavailable)

    def _check_entries(self, entries: list[bytes] | None) -> None:
        """Put back the waiting clients whose entries the broker lost."""
        present = set(entries or [])
        for seat in list(self._seats.values()):
            if seat.listed and seat.party.waits and seat.entry not in present:
                self._wait(seat, front=False)

    # -- Sending ---------------------------------------------------------------

    def _send(self, to: _Peer, kind: str, **fields: Any) -> Deferred[Any]:
        """Send a message about a pair to *to*'s instance; kept for the
        broker's return if it cannot go now (lines excepted: their client
        gets its turn back instead)."""
        data = encode(kind, conv=to.conv, **fields)
        if not self.broker.up:
            if kind != "line":
                self._unsent.append((to.instance, data))
            return fail(
                BrokerUnavailable(f"the broker at {self.broker.display} is unreachable")
            )
        sent = self.instance.post(to.instance, data)
        if kind != "line":
            sent.addErrback(self._not_sent, to.instance, data)
        return sent

    def _not_sent(self, failure: Failure, name: str, data: bytes) -> None:
        if failure.check(BrokerUnavailable):
            self._unsent.append((name, data))
        else:
            log.failure(
                "a message for instance {name} could not be sent", failure, name=name
            )

    def _register(self, seat: _Seat) -> None:
        """Say in the broker's directory who this client is with."""
        if not self.broker.up or seat.over:
            return
        partner = seat.partner
        record = ClientRecord(
            seat.me.conv,
            seat.client.conversation.info.peer,
            "pair",
            None if partner is None else f"{partner.instance}/{partner.conv}",
        )
        quietly(self.broker.set_client(self.instance.name, record))

    def _refuse(self, why: str) -> None:
        self._say_once(f"refused: {why}")

    def _say_once(self, what: str) -> None:
        if what not in self._said:
            self._said.add(what)
            log.warn("{what}", what=what)
