"""Pair mode across instances, in memory: two (or three) ``BrokerInstance``
on one memory broker, each serving its clients with a real
``ChatServerFactory`` (``sockchat.testing.MemoryServer``) whose responder
is a ``BrokerPairResponder``, all on one fake clock.

The rules are pair mode's (``sockchat._core.pairing``, tested alone in
tests/core/test_pairing.py): the same as in one process
(tests/doors/test_pair.py), whichever instance each client reaches."""

from __future__ import annotations

import json
from typing import Any

import pytest
from broker_instance import now
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from sockchat import Conversation, ConversationEnded, LineRefused, Notice
from sockchat._broker.instance import BrokerInstance
from sockchat._broker.interface import ClientRecord
from sockchat._broker.memory import MemoryBroker, MemoryHub
from sockchat._broker.pairs import (
    ANSWER_WITHIN,
    PARTNER_LOST_WITHIN,
    BrokerPairResponder,
)
from sockchat._broker.wire import HEARTBEAT, PROTOCOL, encode
from sockchat._core.pairing import GRACE, Standing
from sockchat._doors.client import connect
from sockchat.testing import MemoryServer, NoResultYet

from pair_scenarios import in_memory_probe


class Cluster:
    """Instances sharing one memory broker and one clock."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.hub = MemoryHub(self.clock)
        self.look = self.hub.broker()  # the test's own view of the broker
        self.servers: dict[str, MemoryServer] = {}
        self.instances: dict[str, BrokerInstance] = {}

    def add(
        self, name: str, *, connected: bool = True, latency: float = 0.0
    ) -> MemoryServer:
        """Instance *name*, started; or, unless *connected*, with its broker
        connections not up yet (``start`` them).  Its broker's replies take
        *latency* seconds, those of its inbox half as long (a connection of
        its own: they pass each other)."""
        assert now(self.look.register_instance({})) == name
        broker = self.hub.broker(latency=latency, read_latency=latency / 2)
        instance = BrokerInstance(broker, self.clock, name)
        if connected:
            instance.start()
        else:
            broker.up = False
        server = MemoryServer(BrokerPairResponder(instance), clock=self.clock)
        self.instances[name] = instance
        self.servers[name] = server
        return server

    def _broker(self, name: str) -> MemoryBroker:
        broker = self.instances[name].broker
        assert isinstance(broker, MemoryBroker)
        return broker

    def start(self, name: str) -> None:
        """The instance's broker connections are up: it starts."""
        self._broker(name).up = True
        self.instances[name].start()

    def crash(self, name: str) -> None:
        """The instance is killed (``kill -9``): no more beats, no goodbye."""
        instance = self.instances[name]
        heart = instance._heart
        assert heart is not None
        heart.stop()
        self._broker(name).kill()

    def flush(self) -> None:
        for _ in range(3):
            for server in self.servers.values():
                server.flush()

    def advance(self, seconds: float) -> None:
        self.flush()
        self.clock.advance(seconds)
        self.flush()

    def result(self, d: Deferred[Any]) -> Any:
        self.flush()
        return next(iter(self.servers.values())).result(d)

    def waiting_list(self) -> list[dict[str, Any]]:
        return [json.loads(e) for e in now(self.look.waiting())]


class Client:
    """A client of instance *on*, connected and past its grace (and the
    broker's answer)."""

    def __init__(self, cluster: Cluster, on: str) -> None:
        self.notices: list[Notice] = []
        self.cluster = cluster
        connecting = connect(
            cluster.clock, cluster.servers[on].endpoint(), on_notice=self.notices.append
        )
        cluster.advance(GRACE)
        self.conversation: Conversation = cluster.result(connecting)

    def codes(self) -> list[str]:
        return [n.code for n in self.notices]

    def last(self) -> Notice:
        return self.notices[-1]

    def say(self, text: str) -> Deferred[str]:
        d = self.conversation.say(text)
        self.cluster.flush()
        return d


@pytest.fixture
def cluster() -> Cluster:
    c = Cluster()
    c.add("i1")
    c.add("i2")
    return c


def test_clients_of_any_instance_are_paired_in_order_of_arrival(cluster):
    a = Client(cluster, "i1")
    assert a.codes() == ["welcome", "waiting"]
    assert a.conversation.my_turn
    b = Client(cluster, "i2")
    assert b.codes() == ["listen", "paired"]
    assert "client i1/1 (127.0.0.1:50000)" in b.last().text
    assert "They waited, so they speak first" in b.last().text
    assert a.last().code == "paired"
    assert "client i2/1 (127.0.0.1:50000)" in a.last().text
    assert a.last().text.endswith("You speak first.")
    c = Client(cluster, "i2")
    assert c.last().code == "waiting"
    d = Client(cluster, "i1")  # the next one pairs with c, whatever instance
    assert "client i2/2 " in d.last().text
    assert "client i1/2 " in c.last().text
    e = Client(cluster, "i1")
    assert e.last().code == "waiting"
    assert [w["label"] for w in cluster.waiting_list()] == [
        "client i1/3 (127.0.0.1:50002)"
    ]


def test_the_welcome_waits_for_the_grace_and_the_brokers_answer():
    cluster = Cluster()
    cluster.add("i1")
    cluster.add("i2", latency=0.5)  # i2's broker answers slowly
    a = Client(cluster, "i1")
    notices: list[Notice] = []
    connecting = connect(
        cluster.clock, cluster.servers["i2"].endpoint(), on_notice=notices.append
    )
    cluster.advance(GRACE)
    assert notices == []  # its grace is over; the broker has not answered
    cluster.advance(0.5)
    cluster.advance(0.5)  # i2 posts its take; i1 answers at once
    cluster.advance(0.5)
    cluster.result(connecting)
    assert [n.code for n in notices] == ["listen", "paired"]
    assert a.last().code == "paired"


def test_each_line_reaches_the_partner_at_once_turn_by_turn(cluster):
    a = Client(cluster, "i1")
    b = Client(cluster, "i2")
    heard = b.conversation.listen()
    a_waits = a.say("hello b")
    assert cluster.result(heard) == "hello b"  # at once, before b says a word
    with pytest.raises(NoResultYet):
        cluster.result(a_waits)
    b_waits = b.say("hi a")
    assert cluster.result(a_waits) == "hi a"
    a_waits = a.say("你好, how are you?")
    assert cluster.result(b_waits) == "你好, how are you?"
    b.say("!fine")
    assert cluster.result(a_waits) == "!fine"


def test_a_line_said_while_waiting_reaches_the_partner_as_it_arrives(cluster):
    a = Client(cluster, "i1")
    a_waits = a.say("anyone there?")
    cluster.advance(60)
    b = Client(cluster, "i2")
    assert b.codes() == ["listen", "paired"]
    assert cluster.result(b.conversation.listen()) == "anyone there?"
    assert "They have your first line" in a.last().text
    b.say("yes, me")
    assert cluster.result(a_waits) == "yes, me"


@pytest.mark.parametrize("how", ["reset", "fin"])
def test_probes_are_nobodys_partner_and_never_reach_the_broker(cluster, how):
    a = Client(cluster, "i1")
    seen = len(a.notices)
    for n in range(10):  # health checks on both instances
        in_memory_probe(cluster.servers[["i1", "i2"][n % 2]], how)
    assert len(a.notices) == seen
    assert [w["label"] for w in cluster.waiting_list()] == [
        "client i1/1 (127.0.0.1:50000)"
    ]
    b = Client(cluster, "i2")
    assert "client i1/1 " in b.last().text
    assert a.last().text.endswith("You speak first.")


def test_a_slow_probe_that_leaves_before_a_line_puts_the_other_back(cluster):
    a = Client(cluster, "i1")
    a_waits = a.say("anyone there?")
    for n in range(3):
        slow = Client(cluster, "i2")  # stays through its grace: paired
        assert cluster.result(slow.conversation.listen()) == "anyone there?"
        slow.conversation.abort()
        cluster.flush()
        assert a.last().code == "waiting"
        assert f"client i2/{n + 1} (127.0.0.1:" in a.last().text
        assert "disconnected before saying a line" in a.last().text
        assert "They will have your first line" in a.last().text
        assert [w["label"] for w in cluster.waiting_list()] == [
            "client i1/1 (127.0.0.1:50000)"
        ]
    b = Client(cluster, "i1")
    assert cluster.result(b.conversation.listen()) == "anyone there?"
    b.say("me")
    assert cluster.result(a_waits) == "me"
    assert "partner-left" not in a.codes()


def test_a_listener_whose_partner_left_without_a_word_gets_the_turn_back(cluster):
    a = Client(cluster, "i1")
    b = Client(cluster, "i2")
    b_waits = b.conversation.listen()
    cluster.result(a.conversation.quit())
    with pytest.raises(LineRefused) as refused:
        cluster.result(b_waits)
    assert refused.value.notice.code == "unavailable"
    assert "client i1/1 (127.0.0.1:50000) sent q before saying a line" in (
        refused.value.notice.text
    )
    assert b.last().code == "waiting"
    assert b.conversation.my_turn
    assert [w["label"] for w in cluster.waiting_list()] == [
        "client i2/1 (127.0.0.1:50000)"
    ]
    c = Client(cluster, "i1")  # b waited: b speaks first
    assert c.codes() == ["listen", "paired"]
    heard = c.conversation.listen()
    b.say("hello c")
    assert cluster.result(heard) == "hello c"


def test_two_who_wait_are_never_paired_with_each_other(cluster):
    a = Client(cluster, "i1")
    slow = Client(cluster, "i2")  # paired with a
    c = Client(cluster, "i2")  # waits: a is paired
    slow.conversation.abort()
    cluster.flush()
    # a goes back to the head, ahead of c; both speak first.
    assert [w["label"] for w in cluster.waiting_list()] == [
        "client i1/1 (127.0.0.1:50000)",
        "client i2/2 (127.0.0.1:50001)",
    ]
    d = Client(cluster, "i1")
    assert "client i1/1 " in d.last().text
    assert "client i1/2 " in a.last().text
    e = Client(cluster, "i1")
    assert "client i2/2 " in e.last().text
    assert c.last().text.endswith("You speak first.")


def test_once_a_partner_has_said_a_line_its_leaving_ends_the_pair(cluster):
    a = Client(cluster, "i1")
    b = Client(cluster, "i2")
    b.conversation.listen()
    a_waits = a.say("hello")
    b_waits = b.say("hi")
    assert cluster.result(a_waits) == "hi"
    with capturedLogs() as events:
        cluster.result(a.conversation.quit())
    with pytest.raises(ConversationEnded) as ended:
        cluster.result(b_waits)
    assert ended.value.notice is not None
    assert ended.value.notice.code == "partner-left"
    assert ended.value.notice.text == (
        "client i1/1 (127.0.0.1:50000) sent q. Connect again to talk with someone new."
    )
    (log,) = [e for e in events if e["log_namespace"] == "sockchat.pair"]
    assert log["theirs"] == "client i1/1 (127.0.0.1:50000)"
    for name in ("i1", "i2"):
        assert cluster.servers[name].factory.conversations == {}
        assert cluster.servers[name].factory.responder._seats == {}


def test_a_waiting_client_that_leaves_leaves_the_list(cluster):
    a = Client(cluster, "i1")
    assert len(cluster.waiting_list()) == 1
    cluster.result(a.conversation.quit())
    assert cluster.waiting_list() == []
    b = Client(cluster, "i2")
    assert b.codes() == ["welcome", "waiting"]


def test_a_dead_partner_instance_ends_the_pair_within_the_documented_time():
    # The worst case: i1 beats just before i2's heartbeat key expires, and
    # sees it gone only at its next beat.
    cluster = Cluster()
    cluster.add("i1")
    cluster.advance(0.1)
    cluster.add("i2")
    a = Client(cluster, "i1")
    b = Client(cluster, "i2")
    b.conversation.listen()
    a_waits = a.say("hello")
    b.say("hi")
    cluster.result(a_waits)
    a_waits = a.say("still there?")
    cluster.advance(0.05)  # just after i2's beat
    cluster.crash("i2")
    waited = 0.0
    while not a_waits.called and waited < 30:
        cluster.advance(0.05)
        waited += 0.05
    assert 10 <= waited <= PARTNER_LOST_WITHIN
    with pytest.raises(ConversationEnded) as ended:
        cluster.result(a_waits)
    assert ended.value.notice is not None
    assert ended.value.notice.text == (
        "client i2/1 (127.0.0.1:50000) is gone: its server, i2, stopped "
        "answering. Connect again to talk with someone new."
    )


def test_a_dead_partner_instance_before_a_line_puts_the_other_back(cluster):
    a = Client(cluster, "i1")
    Client(cluster, "i2")
    cluster.crash("i2")
    cluster.advance(PARTNER_LOST_WITHIN)
    assert a.last().code == "waiting"
    assert "its server, i2, stopped answering before saying a line" in (a.last().text)
    assert [w["label"] for w in cluster.waiting_list()] == [
        "client i1/1 (127.0.0.1:50000)"
    ]


def test_one_who_took_the_entry_of_a_just_dead_instance_is_told_in_time(cluster):
    Client(cluster, "i2")
    cluster.crash("i2")
    notices: list[Notice] = []
    connecting = connect(
        cluster.clock, cluster.servers["i1"].endpoint(), on_notice=notices.append
    )
    cluster.advance(GRACE)  # it takes the entry: i2's heartbeat key lives
    assert notices == []
    cluster.advance(ANSWER_WITHIN)
    cluster.result(connecting)
    assert [n.code for n in notices] == ["welcome", "waiting"]
    assert (
        "the server of the client who waited, i2, did not answer within 3 s"
        in notices[-1].text
    )
    assert [w["instance"] for w in cluster.waiting_list()] == ["i1"]
    b = Client(cluster, "i1")
    assert "client i1/1 " in b.last().text


def test_waiting_clients_of_a_dead_instance_are_skipped(cluster):
    Client(cluster, "i2")
    cluster.crash("i2")
    cluster.advance(11)  # its heartbeat key has expired
    a = Client(cluster, "i1")
    assert a.codes() == ["welcome", "waiting"]
    assert [w["instance"] for w in cluster.waiting_list()] == ["i1"]


def test_a_client_that_comes_before_the_broker_connection_is_up_waits():
    cluster = Cluster()
    cluster.add("i1", connected=False)  # it listens before its connections are up
    cluster.add("i2")
    a = Client(cluster, "i1")
    assert a.codes() == ["welcome", "waiting"]
    assert "unreachable" in a.last().text
    assert cluster.waiting_list() == []
    cluster.start("i1")
    cluster.advance(0)
    assert [w["label"] for w in cluster.waiting_list()] == [
        "client i1/1 (127.0.0.1:50000)"
    ]
    b = Client(cluster, "i2")
    assert "client i1/1 " in b.last().text
    assert a.codes() == ["welcome", "waiting", "paired"]


def test_lines_get_unavailable_while_the_broker_is_lost(cluster):
    a = Client(cluster, "i1")
    b = Client(cluster, "i2")
    b.conversation.listen()
    a_waits = a.say("hello")
    b_waits = b.say("hi")
    cluster.result(a_waits)
    cluster.hub.lose()
    with pytest.raises(LineRefused) as refused:
        cluster.result(a.say("are you there?"))
    assert refused.value.notice.code == "unavailable"
    assert "the broker is unreachable" in refused.value.notice.text
    assert "memory:" not in refused.value.notice.text  # its address: logs only
    assert a.conversation.my_turn  # the turn is back
    cluster.advance(1)
    cluster.hub.restore()
    cluster.flush()
    a.say("are you there?")
    assert cluster.result(b_waits) == "are you there?"


def test_a_newcomer_while_the_broker_is_lost_waits_here_then_joins_the_list(cluster):
    cluster.hub.lose()
    a = Client(cluster, "i1")
    assert a.codes() == ["welcome", "waiting"]
    assert "the broker is unreachable" in a.last().text
    assert "memory:" not in a.last().text
    b = Client(cluster, "i1")  # b waits too: both speak first
    assert b.codes() == ["welcome", "waiting"]
    cluster.hub.restore(flush=True)
    cluster.advance(HEARTBEAT)
    assert [w["label"] for w in cluster.waiting_list()] == [
        "client i1/1 (127.0.0.1:50000)",
        "client i1/2 (127.0.0.1:50001)",
    ]
    c = Client(cluster, "i2")
    assert "client i1/1 " in c.last().text
    assert a.last().text.endswith("You speak first.")


def test_a_departure_while_the_broker_is_lost_is_told_when_it_is_back(cluster):
    a = Client(cluster, "i1")
    b = Client(cluster, "i2")
    b.conversation.listen()
    a_waits = a.say("hello")
    b_waits = b.say("hi")
    cluster.result(a_waits)
    cluster.hub.lose()
    cluster.result(a.conversation.quit())
    with pytest.raises(NoResultYet):
        cluster.result(b_waits)
    cluster.hub.restore()
    cluster.flush()
    with pytest.raises(ConversationEnded) as ended:
        cluster.result(b_waits)
    assert "client i1/1 (127.0.0.1:50000) sent q" in ended.value.why


def test_waiting_clients_whose_entries_the_broker_lost_are_put_back(cluster):
    a = Client(cluster, "i1")
    cluster.hub.lose()
    cluster.hub.restore(flush=True)  # restarted without its data
    cluster.flush()
    assert [w["label"] for w in cluster.waiting_list()] == [
        "client i1/1 (127.0.0.1:50000)"
    ]
    b = Client(cluster, "i2")
    assert "client i1/1 " in b.last().text
    assert a.last().code == "paired"


def test_an_entry_of_another_protocol_is_refused_and_skipped(cluster):
    other = json.dumps({"v": PROTOCOL + 1, "kind": "waiting", "instance": "i1"})
    now(cluster.look.pair_or_wait(other.encode(), front=False))
    with capturedLogs() as events:
        a = Client(cluster, "i2")
    assert a.codes() == ["welcome", "waiting"]
    (refused,) = [e for e in events if e.get("what")]
    assert refused["what"].startswith("refused: ")
    assert f"speaks broker protocol {PROTOCOL + 1}" in refused["what"]


def test_a_broker_that_says_no_is_logged_once_and_the_clients_wait(cluster):
    wrongtype = "WRONGTYPE Operation against a key holding the wrong kind of value"
    cluster.hub.refuse("pair_or_wait", wrongtype)
    with capturedLogs() as events:
        a = Client(cluster, "i1")
        b = Client(cluster, "i2")
        cluster.advance(3 * HEARTBEAT)
    assert a.codes() == b.codes() == ["welcome", "waiting"]
    assert "did not answer" in a.last().text
    said = [e["what"] for e in events if e.get("what")]
    assert len(said) == 2  # once by each instance
    assert said[0].startswith("the broker would not pair clients: WRONGTYPE")
    assert [e for e in events if e.get("log_failure")] == []
    cluster.hub.allow("pair_or_wait")
    c = Client(cluster, "i2")  # both wait, and speak first: c takes the first
    assert "client i1/1 " in c.last().text
    assert a.last().code == "paired"


def test_messages_from_one_that_is_not_the_partner_are_ignored(cluster):
    a = Client(cluster, "i1")
    b = Client(cluster, "i2")
    heard = b.conversation.listen()
    a_waits = a.say("hello")
    assert cluster.result(heard) == "hello"
    stranger = {"instance": "i2", "conv": 99, "label": "client i2/99"}
    for kind, fields in (("line", {"text": "I am not b"}), ("left", {"why": "x"})):
        cluster.instances["i2"].post(
            "i1", encode(kind, conv=1, **{"from": stranger}, **fields)
        )
    cluster.flush()
    assert not a_waits.called
    assert a.last().code == "paired"
    b.say("hi")
    assert cluster.result(a_waits) == "hi"


def test_what_another_instance_says_reaches_a_client_as_one_line(cluster):
    # Whatever is in the list or an inbox, a label or a reason is one short
    # line when it reaches a client.
    entry = encode("waiting", instance="i2", conv=7, label="client\nx\x1b[2J" * 50)
    now(cluster.look.start_waiting(entry, front=False))
    taken: list[dict[str, Any]] = []
    cluster.instances["i2"].on_kind("take", taken.append)  # i2 answers by hand
    notices: list[Notice] = []
    connecting = connect(
        cluster.clock, cluster.servers["i1"].endpoint(), on_notice=notices.append
    )
    cluster.advance(GRACE)
    (take,) = taken
    cluster.instances["i2"].post(
        "i1",
        encode(
            "taken",
            conv=take["partner"]["conv"],
            partner={"instance": "i2", "conv": 7, "label": "client\nx\x1b[2J" * 50},
        ),
    )
    cluster.flush()
    a = cluster.result(connecting)
    seat = cluster.servers["i1"].factory.responder._seats[1]
    assert seat.partner.label == ("client?x?[2J" * 17)[:200]
    heard = a.listen()
    cluster.instances["i2"].post(
        "i1",
        encode(
            "left",
            conv=1,
            why="left\r\n!bye kicked: you",
            **{"from": {"instance": "i2", "conv": 7}},
        ),
    )
    cluster.flush()
    with pytest.raises(LineRefused):  # a listened: its turn comes back
        cluster.result(heard)
    assert cluster.servers["i1"].factory.responder._seats[1].party.waits
    assert notices[-1].code == "waiting"
    assert notices[-1].text.startswith(
        ("client?x?[2J" * 17)[:200] + " left??!bye kicked: you before saying a line; "
    )


def test_the_clients_hash_says_who_is_paired_with_whom(cluster):
    Client(cluster, "i1")
    Client(cluster, "i2")
    [record] = now(cluster.look.clients(["i1"]))["i1"]
    assert record == ClientRecord(1, "127.0.0.1:50000", "pair", "i2/1")


# -- Any order of events, with replies that take time -----------------------------
#
# The memory broker can answer at once; a real broker answers later, so
# messages between instances cross.  Here each instance's replies come
# after a delay of its own (each connection stays in order), and any order
# of arrivals, probes, lines and departures must leave every pair whole
# once the messages have settled: each client paired both ways, one of the
# two with the turn, or waiting in the list (once, and with the turn);
# nobody told partner-left by one who had not said a line to it; nothing
# failed.


def slow_cluster(delays: tuple[float, ...]) -> Cluster:
    cluster = Cluster()
    for n, delay in enumerate(delays, 1):
        cluster.add(f"i{n}", latency=delay)
    return cluster


def settle(cluster: Cluster, seconds: float) -> None:
    """Let *seconds* pass, from one delayed call to the next, so that
    replies come in the order of their times."""
    end = cluster.clock.seconds() + seconds
    while (at := cluster.clock.seconds()) < end:
        due = min((c.getTime() for c in cluster.clock.getDelayedCalls()), default=end)
        cluster.advance(min(max(due, at), end) - at)


#: Whose turn it is, by standing, as the client sees it.
_HAS_TURN = {Standing.WAITING, Standing.FIRST, Standing.TURN}


def _check_pairs(cluster: Cluster) -> None:
    seats = {
        (name, cid): seat
        for name, server in cluster.servers.items()
        for cid, seat in server.factory.responder._seats.items()
    }
    for server in cluster.servers.values():
        assert set(server.factory.responder._seats) == set(server.factory.conversations)
    waiting = [(w["instance"], w["conv"]) for w in cluster.waiting_list()]
    assert len(set(waiting)) == len(waiting), waiting
    assert set(waiting) == {k for k, s in seats.items() if s.party.waits}
    for key, seat in seats.items():
        party = seat.party
        assert party.waits or party.paired, (key, party)
        if party.waits:
            assert seat.partner is None
            continue
        partner = seat.partner
        assert partner is not None
        other = seats[partner.instance, partner.conv]
        assert other.partner is not None
        assert (other.partner.instance, other.partner.conv) == key
        # One speaks, one listens.
        mine = party.standing in _HAS_TURN
        theirs = other.party.standing in _HAS_TURN
        assert mine != theirs, (party, other.party)


class Player:
    """One client of the property test: connecting, then talking."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.notices: list[Notice] = []
        self.said: list[str] = []
        self.pending: list[Deferred[str]] = []
        self.conversation: Conversation | None = None
        self.instance = name
        server = cluster.servers[name]
        connect(cluster.clock, server.endpoint(), on_notice=self.notices.append)
        self.pump = server._pumps[-1]
        cluster.flush()

    def ready(self) -> Conversation | None:
        """Its conversation, once welcomed."""
        if self.conversation is None and self.notices:
            self.conversation = Conversation(self.pump.clock, self.pump.client)
        return self.conversation

    def leave(self) -> None:
        self.pump.client.transport.loseConnection()

    def act(self) -> None:
        """Say a line if it is its turn, or listen, unless it waits."""
        conversation = self.ready()
        if conversation is None or (self.pending and not self.pending[-1].called):
            return
        try:
            if conversation.my_turn:
                d = conversation.say(f"line {len(self.pending)}")
                self.said.append(f"line {len(self.pending)}")
            else:
                d = conversation.listen()
        except Exception:
            return
        d.addErrback(lambda _: None)
        self.pending.append(d)

    @property
    def label(self) -> str:
        conv = self.notices[0].text.split()[2].rstrip(".")
        return f"{self.instance}/{conv}"


@settings(deadline=None, max_examples=80)
@given(
    st.tuples(st.floats(0.001, 0.1), st.floats(0.001, 0.1)),
    st.lists(
        st.tuples(
            st.sampled_from(["connect", "probe", "act", "leave", "pause"]),
            st.integers(0, 7),
        ),
        max_size=30,
    ),
)
@example(
    (0.005, 0.001),
    [("connect", 0), ("pause", 7), ("connect", 1), ("leave", 0), ("connect", 0)],
)
# One takes another's entry before the broker's answer to the other's
# own asking comes back (it was put in the list); then the same, and the
# taker leaves before that answer comes.
@example(
    (0.09375, 0.03125), [("connect", 0), ("connect", 0), ("connect", 0), ("connect", 1)]
)
@example(
    (0.09375, 0.03125), [("connect", 0), ("connect", 1), ("probe", 0), ("leave", 1)]
)
# One takes the first's entry and leaves before the answer comes: while
# the broker answers it, or while the first's instance does.
@example(
    (0.05, 0.05),
    [("connect", 0), ("pause", 7), ("connect", 0), ("pause", 7), ("leave", 1)],
)
@example(
    (0.05, 0.05),
    [("connect", 0), ("pause", 7), ("connect", 0), ("pause", 6), ("leave", 1)],
)
@example(
    (0.01, 0.002),
    [
        *[("connect", 0), ("pause", 7), ("act", 0), ("connect", 1), ("pause", 7)],
        *[("act", 1), ("act", 0), ("act", 1)],
    ],
)
def test_any_arrivals_probes_lines_and_departures_leave_the_pairs_whole(delays, steps):
    cluster = slow_cluster(delays)
    names = list(cluster.servers)
    players: list[Player] = []
    with capturedLogs() as events:
        for op, index in steps:
            name = names[index % 2]
            if op == "connect" or (op in ("act", "leave") and not players):
                players.append(Player(cluster, name))
            elif op == "probe":
                in_memory_probe(cluster.servers[name], ["reset", "fin"][index % 2])
            elif op == "pause":
                settle(cluster, 0.05 * index)
            elif op == "leave":
                players[index % len(players)].leave()
            else:
                players[index % len(players)].act()
            cluster.flush()
        settle(cluster, GRACE + ANSWER_WITHIN + 1)  # every message arrives
    _check_pairs(cluster)
    failures = [e for e in events if e.get("log_failure") is not None]
    assert failures == []
    said = {p.label: p.said for p in players if p.notices}
    for player in players:
        notices = player.notices
        assert "responder-failed" not in [n.code for n in notices]
        # Replies take time, but not that long: every answer came in time.
        assert not any("did not answer" in n.text for n in notices), notices
        for notice in notices:
            if notice.code == "partner-left":
                # Only one who said a line is a partner whose leaving ends it.
                assert said[notice.text.split()[1]], notices
