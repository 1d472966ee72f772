"""Pair mode across instances: clients of every instance, paired through
the broker.

With ``--broker URL --responder pair``, clients wait in one list on the
broker (``P:pair:waiting``) instead of in one process, so a client of
instance ``i1`` and a client of ``i2`` are paired in order of arrival.  A
newcomer asks the broker to pair it (``IPairing.pair_or_wait``): it takes
the first waiting client whose instance is alive, or waits at the list's
end.  Each
pair's lines go from one instance's inbox to the other's.

The messages (inbox kinds ``paired``, ``line``, ``left`` and ``again``):

- ``paired``: the one who took a waiting client's entry tells that
  client's instance who it is now paired with, and how it stands (it has
  the turn, or it has said a first line); the waiting client's instance
  answers with a ``paired`` of its own (``"reply": true``) saying how the
  waiting client stands.  Each instance then tells its own client who its
  partner is and who speaks first, in the words of single-process pair
  mode (``sockchat._responders.pair``), and sends its client's first line, if it said
  one while waiting (``"first": true``).
- ``line``: one client's line, for its partner.  If the partner waits for
  an answer, the line is that answer; if the partner has the turn (both
  spoke at once), the line is kept and is the answer to the partner's next
  line, so the two lines cross, as in one process.
- ``left``: a client left, saying why, and whether a line had passed
  between the two.  If one had, the partner's conversation ends too
  (``!bye partner-left``); if not, the partner goes back to the head of
  the waiting list and is told ``!info waiting`` again.
- ``again``: one who took a waiting client's entry cannot pair with it
  after all (it left before the broker's answer came): the waiting client
  looks again (at the head of the list), unseen by its client.  (An
  entry pushed back instead could wait beside another that came meanwhile,
  and the two would never meet.)

The one difference from one process: a newcomer always has the turn when
it connects, since its partner is not known until the broker answers.  So
a pair across instances is paired like two clients that were both
waiting in one process: if neither has spoken, both may, and each line is
the other's answer; a first line said while waiting is the answer to the
partner's first line.

Faults:

- A partner's instance that dies: its heartbeat key expires at most
  ``HEARTBEAT_TTL`` (10 s) after its last beat, and this instance looks at
  its partners' instances at each of its own heartbeats (every
  ``HEARTBEAT``, 2 s), so the survivor hears within about 12 s
  (``PARTNER_LOST_WITHIN``): ``!bye partner-left`` saying the partner's
  server stopped answering, or, if the two had not talked, back to the
  waiting list.
- The broker lost: a paired client's line gets ``!error unavailable`` and
  its turn back.  A newcomer is told ``!info waiting`` and waits in this
  instance only; it joins the broker's list when the broker is back (it is
  not paired with another newcomer of this instance meanwhile, since their
  lines would go through the broker too).  Messages about pairs that could
  not be sent (a ``left``) are sent when the broker is back; a waiting
  client whose entry the broker lost (it restarted without its data) is
  put back in the list.  For ``HEARTBEAT_TTL`` after the broker comes back,
  no partner is taken for dead, giving the other instances time to beat
  again.

No I/O here but ``IBroker`` calls, through ``BrokerInstance``.
"""

from __future__ import annotations

import enum
from typing import Any

from attrs import define, frozen
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockchat._broker.instance import BrokerInstance
from sockchat._broker.interface import (
    BrokerRefused,
    BrokerUnavailable,
    Census,
    ClientRecord,
    quietly,
    unless_unavailable,
)
from sockchat._broker.wire import HEARTBEAT, HEARTBEAT_TTL, WireError, decode, encode
from sockchat._core.wire import QUIT
from sockchat._responders.contract import (
    ConversationInfo,
    IAnsweredByPeople,
    IConversation,
    ILifecycle,
    IResponder,
    Unavailable,
)

__all__ = ["PARTNER_LOST_WITHIN", "BrokerPairResponder"]

log = Logger(namespace="sockchat.pair")

# Pair mode's words and stances, as single-process pair mode had them
# (to move onto sockchat._core.pairing with the broker's IBroker).

LEFT_BECAUSE = {
    "quit": f"sent {QUIT}",
    "connection-lost": "disconnected",
    "end-of-input": "closed its side of the connection",
    "idle-timeout": "was idle for too long",
    "kicked": "was disconnected by the operator",
}


class Stance(enum.Enum):
    """Where an unpaired party stands in its own turn-taking."""

    #: Its turn: it may say a line (its first, if it has no partner yet).
    SPEAKS = "speaks"
    #: It has said its first line, kept for its partner, and waits for an
    #: answer.
    SAID = "said"
    #: It waits for a line and has said none: its partner speaks first.
    LISTENS = "listens"


def waiting_again(what: str, stance: Stance) -> str:
    """The ``waiting`` notice of a party whose partner left untalked (*what*
    says who and how), by where it stands in its own turn-taking."""
    if stance is Stance.LISTENS:
        then = "They will speak first."
    elif stance is Stance.SAID:
        then = "They will have your first line."
    else:
        then = "You may say your first line now."
    return (
        f"{what}; no partner yet: you will talk with the next client to "
        f"connect. {then} Send {QUIT} to quit."
    )


#: What a party is told when paired with another that was waiting too, by
#: (its stance, the other's).
WHO_SPEAKS = {
    (Stance.LISTENS, Stance.SPEAKS): "They speak first; wait for their line.",
    (Stance.LISTENS, Stance.SAID): "They speak first; wait for their line.",
    (Stance.SAID, Stance.LISTENS): (
        "They have your first line; wait for their answer."
    ),
    (Stance.SAID, Stance.SPEAKS): (
        "They will have your first line as the answer to theirs; wait for it."
    ),
    (Stance.SAID, Stance.SAID): (
        "They have your first line, and their first line is your answer."
    ),
    (Stance.SPEAKS, Stance.LISTENS): "You speak first.",
    (Stance.SPEAKS, Stance.SAID): (
        "They said a first line already: say yours, and theirs is the answer."
    ),
    (Stance.SPEAKS, Stance.SPEAKS): (
        "You may both speak now: each of you gets the other's line as the answer."
    ),
    (Stance.LISTENS, Stance.LISTENS): "",  # never paired: see _requeue
}


#: Seconds within which a client hears that its partner's instance died:
#: the heartbeat key's life, then at most one heartbeat of this instance.
PARTNER_LOST_WITHIN = HEARTBEAT_TTL + HEARTBEAT

_LEFT = {**LEFT_BECAUSE, "shutdown": "left: its server is shutting down"}

_WAITING = (
    "no partner yet: you will talk with the next client to connect. "
    f"You may say your first line now. Send {QUIT} to quit."
)


class _Phase(enum.Enum):
    """Where a client of this instance is in finding a partner."""

    #: Waiting in this instance only: the broker was unreachable.
    LOCAL = "local"
    #: ``pair_or_wait`` is on its way to the broker.
    ASKING = "asking"
    #: Its entry is in the broker's waiting list.
    WAITING = "waiting"
    #: It took a partner's entry and told the partner's instance; it waits
    #: for that instance's reply.
    PAIRING = "pairing"
    PAIRED = "paired"


#: The phases in which another client may take a client's entry: its
#: entry is in the list, or on its way there.
_TAKEABLE = (_Phase.WAITING, _Phase.ASKING)


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


def _one_line(text: str, limit: int = 200) -> str:
    """*text* as a short line for a notice, whoever wrote it."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


@define(eq=False)
class _Party:
    """A client of this instance."""

    conversation: IConversation
    me: _Peer
    #: Its entry in the waiting list, the same bytes every time.
    entry: bytes
    phase: _Phase = _Phase.LOCAL
    partner: _Peer | None = None
    #: Fires with the partner's next line, which this party is waiting for.
    waiting: Deferred[str] | None = None
    #: A line said before any partner came, kept for the first partner.
    opening: str | None = None
    #: The opening, once sent to a partner: kept until a line passes, in
    #: case that partner leaves at once and the next one needs it.
    handed: str | None = None
    #: A partner's line that came while this party had the turn: the
    #: answer to its next line.
    held: str | None = None
    #: Whether a line has passed between this party and its partner.
    talked: bool = False
    #: Whether it has been told it waits (``!info waiting``) since it was
    #: last paired.
    told: bool = False
    #: Its entry was taken by one that could not pair (it left at once):
    #: it must look again once its own ``pair_or_wait`` has answered.
    again: bool = False
    over: bool = False

    @property
    def stance(self) -> Stance:
        if self.opening is not None:
            return Stance.SAID
        return Stance.SPEAKS if self.waiting is None else Stance.LISTENS


def _stance(value: object) -> Stance:
    try:
        return Stance(value)
    except ValueError:
        return Stance.SPEAKS


@implementer(IResponder, ILifecycle, IAnsweredByPeople)
class BrokerPairResponder:
    """Pair the clients of every instance on the broker, in order of
    arrival, and relay each pair's lines through it."""

    def __init__(self, instance: BrokerInstance) -> None:
        self.instance = instance
        self.broker = instance.broker
        self._parties: dict[int, _Party] = {}
        #: Clients waiting here while the broker is unreachable, first first.
        self._local: list[_Party] = []
        #: Messages that could not be sent: sent when the broker is back.
        self._unsent: list[tuple[str, bytes]] = []
        self._back_at: float | None = None
        #: Warnings already logged: each is logged once.
        self._said: set[str] = set()
        instance.on_kind("paired", self._on_paired)
        instance.on_kind("line", self._on_line)
        instance.on_kind("left", self._on_left)
        instance.on_kind("again", self._on_again)
        instance.on_census(self._look_at_partners)
        instance.on_back(self._broker_back)

    @property
    def _up(self) -> bool:
        return self.instance.up and self.broker.up

    # -- ILifecycle ------------------------------------------------------------

    def started(self, conversation: IConversation) -> None:
        info: ConversationInfo = conversation.info
        name = self.instance.name
        me = _Peer(name, info.id, f"client {name}/{info.id} ({info.peer})")
        entry = encode("waiting", **me.named())
        party = _Party(conversation, me, entry)
        self._parties[info.id] = party
        self._register(party)
        self._enqueue(party, "back")
        return None

    def ended(self, conversation: IConversation, reason: str) -> None:
        party = self._parties.pop(conversation.info.id, None)
        if party is None:
            return
        party.over = True
        party.waiting = None
        if party in self._local:
            self._local.remove(party)
        if self.broker.up:
            quietly(self.broker.remove_client(party.me.instance, party.me.conv))
        if party.phase is _Phase.WAITING and self.broker.up:
            quietly(self.broker.stop_waiting(party.entry))
        partner, party.partner = party.partner, None
        if partner is not None:
            why = _LEFT.get(reason, f"left ({reason})")
            self._send(
                partner,
                "left",
                why=why,
                talked=party.talked,
                **{"from": party.me.named()},
            )

    # -- IResponder ------------------------------------------------------------

    def respond(self, conversation: ConversationInfo, text: str) -> Deferred[str]:
        party = self._parties[conversation.id]
        partner = party.partner
        if partner is None or party.phase is not _Phase.PAIRED:
            party.opening = text  # for the partner to come
            party.waiting = Deferred()
            return party.waiting
        if not self._up:
            raise Unavailable(
                f"the broker at {self.broker.display} is unreachable; send it "
                "again soon"
            )
        answer: Deferred[str] = Deferred()
        party.talked = True
        party.handed = None
        held, party.held = party.held, None
        if held is None:
            party.waiting = answer
        sent = self._send(partner, "line", text=text, **{"from": party.me.named()})
        sent.addErrback(self._line_not_sent, party, answer)
        if held is not None:
            # Both spoke at once: the partner's line is this one's answer.
            answer.callback(held)
        return answer

    def _line_not_sent(
        self, failure: Failure, party: _Party, answer: Deferred[str]
    ) -> None:
        if party.waiting is answer:
            party.waiting = None
            answer.errback(
                Unavailable(
                    f"the broker at {self.broker.display} was lost before your "
                    "line went; send it again"
                )
                if failure.check(BrokerUnavailable)
                else failure
            )
        elif not failure.check(BrokerUnavailable):
            log.failure("a line for a partner could not be sent", failure)

    # -- Finding a partner -----------------------------------------------------

    def _enqueue(self, party: _Party, where: str) -> None:
        """Take the first waiting client, or wait at the list's *where*."""
        if not self._up:
            self._wait_here(party)
            return
        party.phase = _Phase.ASKING
        asked = self.broker.pair_or_wait(party.entry, front=where == "front")
        asked.addCallbacks(
            self._answered,
            self._not_answered,
            callbackArgs=(party, where),
            errbackArgs=(party,),
        )

    def _wait_here(self, party: _Party) -> None:
        party.phase = _Phase.LOCAL
        if party not in self._local:
            self._local.append(party)
        self._tell_waiting(party)

    def _tell_waiting(self, party: _Party) -> None:
        if not party.told:
            party.told = True
            party.conversation.notify("waiting", _WAITING)

    def _answered(self, reply: bytes | None, party: _Party, where: str) -> None:
        again, party.again = party.again, False
        taken = None if reply is None else self._entry(reply)
        if party.over or party.phase is not _Phase.ASKING:
            # It left while the broker answered, or was paired meanwhile
            # (someone took a stale entry of its own): whoever it took must
            # look again, and its own entry must go.
            if taken is not None:
                self._send(taken, "again")
            elif reply is None and party.over and self.broker.up:
                quietly(self.broker.stop_waiting(party.entry))
            return
        if reply is None:
            party.phase = _Phase.WAITING
            self._tell_waiting(party)
            if again:  # the one who took its entry meanwhile could not pair
                self._enqueue(party, "front")
            return
        if taken is None:
            self._enqueue(party, where)
            return
        party.phase = _Phase.PAIRING
        party.partner = taken
        self._send(
            taken,
            "paired",
            stance=party.stance.value,
            partner=party.me.named(),
        )

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

    def _not_answered(self, failure: Failure, party: _Party) -> None:
        if party.over:
            return
        if failure.check(BrokerRefused):
            # Said once, not at every retry: the broker says no to all alike.
            self._say_once(f"the broker would not pair clients: {failure.value}")
        elif not failure.check(BrokerUnavailable):
            log.failure(
                "the broker could not pair {label}", failure, label=party.me.label
            )
        # Whatever the broker did, it is asked again at the next heartbeat
        # that finds it up (an entry of its own that it pushed is dropped
        # then).
        self._wait_here(party)

    def _requeue(self, party: _Party, what: str) -> None:
        """Put *party*, whose partner left untalked, back at the list's head."""
        party.partner = None
        party.held = None  # the partner's first line went with it
        handed, party.handed = party.handed, None
        if handed is not None and party.waiting is not None:
            # Its first line went unanswered: it is for the next partner.
            party.opening = handed
        stance = party.stance
        party.told = True
        party.conversation.notify("waiting", waiting_again(what, stance))
        self._register(party)
        self._enqueue(party, "front")

    def _link(self, party: _Party, partner: _Peer, their: Stance) -> None:
        """*party* and *partner* are a pair now: say so, and send its first
        line if it said one while waiting."""
        party.phase = _Phase.PAIRED
        party.partner = partner
        party.talked = False
        party.told = False
        mine = party.stance
        party.conversation.notify(
            "paired",
            f"you are talking with {partner.label}. " + WHO_SPEAKS[mine, their],
        )
        self._register(party)
        if party.opening is not None:
            opening, party.opening = party.opening, None
            party.handed = opening
            self._send(
                partner, "line", text=opening, first=True, **{"from": party.me.named()}
            )

    # -- The inbox -------------------------------------------------------------

    def _on_paired(self, message: dict[str, Any]) -> None:
        partner = _peer(message.get("partner"))
        conv = message.get("conv")
        if partner is None:
            self._refuse("a paired message names no partner")
            return
        party = self._parties.get(conv) if type(conv) is int else None
        their = _stance(message.get("stance"))
        if message.get("reply"):
            # The instance of the one this party took answers.
            if (
                party is None
                or party.phase is not _Phase.PAIRING
                or not partner.same(party.partner)
            ):
                log.debug("a late pairing reply for {conv} was ignored", conv=conv)
                return
            self._link(party, partner, their)
            return
        # Someone took this party's entry.
        if party is None or party.partner is not None or party.phase not in _TAKEABLE:
            # It left, or was paired meanwhile: the taker looks again.
            self._send(
                partner,
                "left",
                why="left",
                talked=False,
                **{"from": {"instance": self.instance.name, "conv": conv, "label": ""}},
            )
            return
        party.phase = _Phase.PAIRED  # before the reply, which may come back at once
        party.partner = partner
        self._send(
            partner,
            "paired",
            reply=True,
            stance=party.stance.value,
            partner=party.me.named(),
        )
        self._link(party, partner, their)

    def _on_line(self, message: dict[str, Any]) -> None:
        party = self._addressed(message)
        text = message.get("text")
        if party is None or party.phase is not _Phase.PAIRED:
            return
        if not isinstance(text, str):
            self._refuse("a line message has no text")
            return
        if not message.get("first") or party.handed is not None:
            # A line said while paired; or the first lines crossed (each had
            # said one while waiting): either way a line passed each way.
            party.talked = True
            party.handed = None
        waiting, party.waiting = party.waiting, None
        if waiting is not None:
            waiting.callback(text)
        else:  # it has the turn: the line answers its next one
            party.held = text

    def _on_left(self, message: dict[str, Any]) -> None:
        party = self._addressed(message)
        if party is None:
            return
        partner = party.partner
        assert partner is not None
        why = message.get("why")
        why = _one_line(why) if isinstance(why, str) and why else "left"
        self._partner_gone(
            party,
            partner.label,
            why,
            talked=party.talked or bool(message.get("talked")),
        )

    def _on_again(self, message: dict[str, Any]) -> None:
        """The one who took this party's entry cannot pair with it after all
        (it left at once): look again, unseen."""
        conv = message.get("conv")
        party = self._parties.get(conv) if type(conv) is int else None
        if party is None or party.partner is not None:
            return
        if party.phase is _Phase.WAITING:
            self._enqueue(party, "front")
        elif party.phase is _Phase.ASKING:
            party.again = True

    def _addressed(self, message: dict[str, Any]) -> _Party | None:
        """The party a message is for, if it comes from that party's partner."""
        conv = message.get("conv")
        party = self._parties.get(conv) if type(conv) is int else None
        sender = _peer(message.get("from"))
        if party is None or sender is None or not sender.same(party.partner):
            log.debug(
                "a {kind} message for {conv}, which is not paired with its sender, "
                "was ignored",
                kind=message.get("kind"),
                conv=conv,
            )
            return None
        return party

    def _partner_gone(
        self, party: _Party, label: str, why: str, *, talked: bool
    ) -> None:
        if party.phase is _Phase.PAIRING:
            # The one it took had gone before it heard: look again, unseen.
            party.partner = None
            self._enqueue(party, "front")
            return
        if not talked:
            self._requeue(party, f"{label} {why} before you talked")
            return
        party.partner = None
        log.info(
            "the pair of conversations {mine} and {theirs} ended: {theirs} {why}",
            mine=party.me.label,
            theirs=label,
            why=why,
        )
        party.conversation.end(
            "partner-left", f"{label} {why}. Connect again to talk with someone new."
        )

    # -- Heartbeats and the broker's return ------------------------------------

    def _enqueue_local(self) -> None:
        """The clients waiting here join the broker's list, first first."""
        local, self._local = self._local, []
        for party in local:
            if not party.over:
                self._enqueue(party, "back")

    def _look_at_partners(self, census: Census) -> None:
        """At each heartbeat, once the instance knows who is alive: are the
        partners' instances?"""
        if not self._up:
            return
        # Clients that came before the broker's first connection (at start)
        # wait here until a heartbeat finds it up.
        self._enqueue_local()
        now = self.instance.clock.seconds()
        if self._back_at is not None and now - self._back_at < HEARTBEAT_TTL:
            return
        names = {
            p.partner.instance
            for p in self._parties.values()
            if p.partner is not None and p.partner.instance not in census.instances
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
        for party in list(self._parties.values()):
            partner = party.partner
            if partner is None or partner.instance != name or party.over:
                continue
            # Tell it too, in case it was only cut off from the broker.
            self._send(
                partner,
                "left",
                why="gave up on you: your server had stopped answering",
                talked=party.talked,
                **{"from": party.me.named()},
            )
            self._partner_gone(
                party,
                partner.label,
                f"is gone: its server, {name}, stopped answering",
                talked=party.talked,
            )

    def _broker_back(self) -> None:
        self._back_at = self.instance.clock.seconds()
        unsent, self._unsent = self._unsent, []
        for name, data in unsent:
            self.instance.post(name, data).addErrback(self._not_sent, name, data)
        for party in self._parties.values():
            self._register(party)
        self._enqueue_local()
        if any(p.phase is _Phase.WAITING for p in self._parties.values()):
            self.broker.waiting().addCallbacks(self._check_entries, unless_unavailable)

    def _check_entries(self, entries: list[bytes] | None) -> None:
        """Put back the waiting clients whose entries the broker lost."""
        present = set(entries or [])
        for party in list(self._parties.values()):
            if party.phase is _Phase.WAITING and party.entry not in present:
                self._enqueue(party, "back")

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

    def _register(self, party: _Party) -> None:
        """Say in the broker's directory who this client is with."""
        if not self.broker.up or party.over:
            return
        partner = party.partner
        record = ClientRecord(
            party.me.conv,
            party.conversation.info.peer,
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
