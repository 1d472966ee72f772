"""Pair mode across instances, in memory: two (or three) ``BrokerInstance``
on one memory broker, each serving its clients with a real
``ChatServerFactory`` (``sockchat.testing.MemoryServer``) whose responder
is a ``BrokerPairResponder``, all on one fake clock."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable, Iterator
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
from sockchat._broker.pairs import PARTNER_LOST_WITHIN, BrokerPairResponder, _Phase
from sockchat._broker.wire import HEARTBEAT, PROTOCOL, encode
from sockchat._doors.client import connect
from sockchat.testing import MemoryServer, NoResultYet

from processes import Server


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
    def __init__(self, cluster: Cluster, on: str) -> None:
        self.notices: list[Notice] = []
        self.cluster = cluster
        self.conversation: Conversation = cluster.servers[on].connect(
            on_notice=self.notices.append
        )
        cluster.flush()

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
    assert a.conversation.my_turn  # it has its turn at once
    b = Client(cluster, "i2")
    assert b.codes() == ["welcome", "paired"]
    assert "client i1/1 (127.0.0.1:50000)" in b.last().text
    assert a.last().code == "paired"
    assert "client i2/1 (127.0.0.1:50000)" in a.last().text
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


def test_the_first_to_speak_is_the_others_answer_and_turns_alternate(cluster):
    a = Client(cluster, "i1")
    b = Client(cluster, "i2")
    # Both have the turn (the newcomer could not be told to listen before
    # its partner was known): as with two that waited in one process.
    assert "You may both speak now" in a.last().text
    assert "You may both speak now" in b.last().text
    a_waits = a.say("hello b")
    with pytest.raises(NoResultYet):
        cluster.result(a_waits)
    b_waits = b.say("hi a")  # a's line came first: it is b's answer at once
    assert cluster.result(b_waits) == "hello b"
    assert cluster.result(a_waits) == "hi a"
    b_waits = b.say("你好, how are you?")
    with pytest.raises(NoResultYet):
        cluster.result(b_waits)
    a_waits = a.say("!fine")
    assert cluster.result(b_waits) == "!fine"
    assert cluster.result(a_waits) == "你好, how are you?"


def test_then_each_line_is_the_partners_answer(cluster):
    a = Client(cluster, "i1")
    b = Client(cluster, "i2")
    a_waits, b_waits = a.say("one"), b.say("two")
    assert cluster.result(a_waits) == "two"
    assert cluster.result(b_waits) == "one"
    a_waits = a.say("three")
    b_waits = b.say("four")
    assert (cluster.result(a_waits), cluster.result(b_waits)) == ("four", "three")
    # Now one speaks and the other answers, turn by turn.
    a_waits = a.say("five")
    with pytest.raises(NoResultYet):
        cluster.result(a_waits)
    b_waits = b.say("six")
    assert cluster.result(b_waits) == "five"
    assert cluster.result(a_waits) == "six"


def test_a_first_line_said_while_waiting_is_kept_for_the_partner(cluster):
    a = Client(cluster, "i1")
    a_waits = a.say("anyone there?")
    b = Client(cluster, "i2")
    assert "They said a first line already" in b.last().text
    assert "They will have your first line" in a.last().text
    b_waits = b.say("yes, me")
    assert cluster.result(b_waits) == "anyone there?"
    assert cluster.result(a_waits) == "yes, me"


def test_two_first_lines_cross(cluster):
    a = Client(cluster, "i1")
    a_waits = a.say("a here")
    probe = Client(cluster, "i2")
    b = Client(cluster, "i2")  # waits: a is paired with the probe
    b_waits = b.say("b here")
    assert b.last().code == "waiting"
    probe.conversation.abort()
    cluster.flush()
    # a goes back to the head and takes b: each has the other's first line.
    assert "their first line is your answer" in a.last().text
    assert cluster.result(a_waits) == "b here"
    assert cluster.result(b_waits) == "a here"
    # A line passed each way: they talked, so a's leaving ends b's too.
    a.conversation.abort()
    cluster.flush()
    assert b.last().code == "partner-left"


def test_a_partner_that_leaves_untalked_puts_the_other_back_at_the_head(cluster):
    a = Client(cluster, "i1")
    for n in range(3):  # three health checks in a row, on the other instance
        probe = Client(cluster, "i2")
        assert "client i1/1 " in probe.last().text
        probe.conversation.abort()
        cluster.flush()
        assert a.last().code == "waiting"
        assert f"client i2/{n + 1} (127.0.0.1:" in a.last().text
        assert "disconnected before you talked" in a.last().text
        assert "You may say your first line now" in a.last().text
        assert [w["label"] for w in cluster.waiting_list()] == [
            "client i1/1 (127.0.0.1:50000)"
        ]
    assert a.conversation.my_turn
    b = Client(cluster, "i1")
    assert "client i1/1 " in b.last().text
    a_waits = a.say("at last")
    b_waits = b.say("hello a")
    assert cluster.result(a_waits) == "hello a"
    assert cluster.result(b_waits) == "at last"


def test_the_one_put_back_takes_one_that_came_meanwhile(cluster):
    a = Client(cluster, "i1")
    probe = Client(cluster, "i2")
    c = Client(cluster, "i2")  # came while a was paired with the probe
    assert c.last().code == "waiting"
    probe.conversation.abort()
    cluster.flush()
    assert "client i2/2 " in a.last().text
    assert "client i1/1 " in c.last().text
    assert cluster.waiting_list() == []


def test_a_first_line_handed_to_a_partner_who_left_is_kept_for_the_next(cluster):
    a = Client(cluster, "i1")
    a_waits = a.say("anyone there?")
    probe = Client(cluster, "i2")
    probe.conversation.abort()
    cluster.flush()
    assert a.last().code == "waiting"
    assert "They will have your first line" in a.last().text
    b = Client(cluster, "i2")
    b_waits = b.say("me")
    assert cluster.result(b_waits) == "anyone there?"
    assert cluster.result(a_waits) == "me"


def test_once_a_line_has_passed_a_partner_leaving_ends_the_pair(cluster):
    a = Client(cluster, "i1")
    b = Client(cluster, "i2")
    a_waits, b_waits = a.say("hello"), b.say("hi")
    cluster.result(a_waits), cluster.result(b_waits)
    b_waits = b.say("how are you?")
    with capturedLogs() as events:
        cluster.result(a.conversation.quit())
    with pytest.raises(ConversationEnded) as ended:
        cluster.result(b_waits)
    assert ended.value.clean
    assert ended.value.notice is not None
    assert ended.value.notice.code == "partner-left"
    assert ended.value.notice.text == (
        "client i1/1 (127.0.0.1:50000) sent q. Connect again to talk with someone new."
    )
    (log,) = [e for e in events if e["log_namespace"] == "sockchat.pair"]
    assert log["theirs"] == "client i1/1 (127.0.0.1:50000)"
    for name in ("i1", "i2"):
        assert cluster.servers[name].factory.conversations == {}
        assert cluster.servers[name].factory.responder._parties == {}


def test_a_partner_that_drops_while_the_other_waits_ends_it(cluster):
    a = Client(cluster, "i1")
    b = Client(cluster, "i2")
    b_waits = b.say("hi")
    a_waits = a.say("hello")
    assert cluster.result(a_waits) == "hi"
    assert cluster.result(b_waits) == "hello"
    a_waits = a.say("still there?")
    b.conversation.abort()
    cluster.flush()
    with pytest.raises(ConversationEnded) as ended:
        cluster.result(a_waits)
    assert ended.value.notice is not None
    assert ended.value.notice.code == "partner-left"
    assert "client i2/1 (127.0.0.1:50000) disconnected" in ended.value.notice.text


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
    a_waits, b_waits = a.say("hello"), b.say("hi")
    cluster.result(a_waits), cluster.result(b_waits)
    a_waits = a.say("still there?")
    cluster.advance(0.05)  # just after i2's beat
    cluster.crash("i2")
    waited = 0.0
    while not a_waits.called and waited < 30:
        cluster.advance(0.05)
        waited += 0.05
    assert 11 <= waited <= PARTNER_LOST_WITHIN
    with pytest.raises(ConversationEnded) as ended:
        cluster.result(a_waits)
    assert ended.value.notice is not None
    assert ended.value.notice.code == "partner-left"
    assert ended.value.notice.text == (
        "client i2/1 (127.0.0.1:50000) is gone: its server, i2, stopped "
        "answering. Connect again to talk with someone new."
    )
    assert PARTNER_LOST_WITHIN == 12


def test_a_dead_partner_instance_before_a_line_puts_the_other_back(cluster):
    a = Client(cluster, "i1")
    Client(cluster, "i2")
    cluster.crash("i2")
    cluster.advance(PARTNER_LOST_WITHIN)
    assert a.last().code == "waiting"
    assert "its server, i2, stopped answering before you talked" in a.last().text
    assert [w["label"] for w in cluster.waiting_list()] == [
        "client i1/1 (127.0.0.1:50000)"
    ]


def test_one_who_took_the_entry_of_a_just_dead_instance_looks_again(cluster):
    Client(cluster, "i2")
    cluster.crash("i2")
    a = Client(cluster, "i1")  # takes the entry: i2's heartbeat key still lives
    assert a.codes() == ["welcome"]
    cluster.advance(PARTNER_LOST_WITHIN)
    assert a.codes() == ["welcome", "waiting"]
    assert [w["label"] for w in cluster.waiting_list()] == [
        "client i1/1 (127.0.0.1:50000)"
    ]
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
    a_waits, b_waits = a.say("hello"), b.say("hi")
    cluster.result(a_waits), cluster.result(b_waits)
    cluster.hub.lose()
    with pytest.raises(LineRefused) as refused:
        cluster.result(a.say("are you there?"))
    assert refused.value.notice.code == "unavailable"
    assert "unreachable" in refused.value.notice.text
    assert a.conversation.my_turn  # the turn is back
    cluster.advance(1)
    cluster.hub.restore()
    cluster.flush()
    a_waits = a.say("are you there?")
    b_waits = b.say("yes")
    assert cluster.result(a_waits) == "yes"
    assert cluster.result(b_waits) == "are you there?"


def test_a_newcomer_while_the_broker_is_lost_waits_here_then_is_paired(cluster):
    cluster.hub.lose()
    a = Client(cluster, "i1")
    assert a.codes() == ["welcome", "waiting"]
    b = Client(cluster, "i1")  # not paired with a: it waits for the broker too
    assert b.codes() == ["welcome", "waiting"]
    cluster.hub.restore(flush=True)
    cluster.flush()
    assert "client i1/2 " in a.last().text
    assert "client i1/1 " in b.last().text
    c = Client(cluster, "i2")
    assert c.last().code == "waiting"


def test_a_departure_while_the_broker_is_lost_is_told_when_it_is_back(cluster):
    a = Client(cluster, "i1")
    b = Client(cluster, "i2")
    a_waits, b_waits = a.say("hello"), b.say("hi")
    cluster.result(a_waits), cluster.result(b_waits)
    b_waits = b.say("bye soon")
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


def test_a_broker_that_says_no_is_logged_once_and_asked_again(cluster):
    wrongtype = "WRONGTYPE Operation against a key holding the wrong kind of value"
    cluster.hub.refuse("pair_or_wait", wrongtype)
    with capturedLogs() as events:
        a = Client(cluster, "i1")
        b = Client(cluster, "i2")
        cluster.advance(3 * HEARTBEAT)
    assert a.codes() == b.codes() == ["welcome", "waiting"]
    said = [e["what"] for e in events if e.get("what")]
    assert len(said) == 2  # once by each instance, not at each of its retries
    assert said[0].startswith("the broker would not pair clients: WRONGTYPE")
    assert [e for e in events if e.get("log_failure")] == []
    cluster.hub.allow("pair_or_wait")
    cluster.advance(HEARTBEAT)
    assert "client i1/1 " in b.last().text or "client i2/1 " in a.last().text
    assert a.last().code == b.last().code == "paired"


def test_messages_from_one_that_is_not_the_partner_are_ignored(cluster):
    a = Client(cluster, "i1")
    b = Client(cluster, "i2")
    a_waits = a.say("hello")
    stranger = {"instance": "i2", "conv": 99, "label": "client i2/99"}
    for kind, fields in (("line", {"text": "I am not b"}), ("left", {"why": "x"})):
        cluster.instances["i2"].post(
            "i1", encode(kind, conv=1, talked=True, **{"from": stranger}, **fields)
        )
    cluster.flush()
    assert not a_waits.called
    assert a.last().code == "paired"
    b_waits = b.say("hi")
    assert cluster.result(a_waits) == "hi"
    assert cluster.result(b_waits) == "hello"


def test_what_another_instance_says_reaches_a_client_as_one_line(cluster):
    # Whatever is in the list or an inbox, a label or a reason is one short
    # line when it reaches a client.
    entry = encode("waiting", instance="i2", conv=7, label="client\nx\x1b[2J" * 50)
    now(cluster.look.pair_or_wait(entry, front=False))
    cluster.instances["i2"].on_kind("paired", lambda _: None)  # i2 stays silent
    Client(cluster, "i1")
    party = cluster.servers["i1"].factory.responder._parties[1]
    assert party.partner.label == ("client?x?[2J" * 17)[:200]
    a = Client(cluster, "i1")  # i1/1 is still pairing: a waits, b pairs with it
    b = Client(cluster, "i1")
    a_waits, b_waits = a.say("hello"), b.say("hi")
    cluster.result(a_waits), cluster.result(b_waits)
    a_waits = a.say("and now?")
    cluster.instances["i2"].post(
        "i1",
        encode(
            "left",
            conv=2,
            why="left\r\n!bye kicked: you",
            talked=True,
            **{"from": {"instance": "i1", "conv": 3}},
        ),
    )
    with pytest.raises(ConversationEnded) as ended:
        cluster.result(a_waits)
    assert ended.value.notice.text.startswith(
        "client i1/3 (127.0.0.1:50002) left??!bye"
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
# of arrivals, lines and departures must leave every pair whole once the
# messages have settled: each client paired both ways or waiting in the
# list, at most one waiting, and nothing failed.


def slow_cluster(delays: tuple[float, ...]) -> Cluster:
    cluster = Cluster()
    for n, delay in enumerate(delays, 1):
        cluster.add(f"i{n}", latency=delay)
    return cluster


def settle(cluster: Cluster, seconds: float) -> None:
    """Let *seconds* pass, from one delayed call to the next, so that
    replies come in the order of their times."""
    end = cluster.clock.seconds() + seconds
    while (now := cluster.clock.seconds()) < end:
        due = min((c.getTime() for c in cluster.clock.getDelayedCalls()), default=end)
        cluster.advance(min(max(due, now), end) - now)


def _check_pairs(cluster: Cluster) -> None:
    parties = {
        (name, cid): party
        for name, server in cluster.servers.items()
        for cid, party in server.factory.responder._parties.items()
    }
    for server in cluster.servers.values():
        assert set(server.factory.responder._parties) == set(
            server.factory.conversations
        )
    waiting = [(w["instance"], w["conv"]) for w in cluster.waiting_list()]
    assert len(waiting) <= 1, waiting
    for key, party in parties.items():
        assert party.phase in (_Phase.WAITING, _Phase.PAIRED), party.phase
        if party.phase is _Phase.WAITING:
            assert party.partner is None
            assert waiting == [key]
            continue
        assert key not in waiting
        partner = party.partner
        assert partner is not None
        other = parties[partner.instance, partner.conv]
        assert other.partner is not None
        assert (other.partner.instance, other.partner.conv) == key
        both_wait = party.waiting is not None and other.waiting is not None
        assert not (both_wait and party.held is None and other.held is None)


#: One client comes and goes, so that later replies have their own delays
#: (on Redis, the first call of the script also loads it).
_WARM = [("connect", 0), ("pause", 7), ("abort", 0), ("pause", 7)]


@settings(deadline=None)
@given(
    st.tuples(st.floats(0.001, 0.01), st.floats(0.001, 0.01)),
    st.lists(
        st.tuples(
            st.sampled_from(["connect", "act", "abort", "pause"]),
            st.integers(0, 7),
        ),
        max_size=30,
    ),
)
@example(
    (0.005, 0.001),
    [("connect", 0), ("connect", 1), ("abort", 0), ("connect", 0), ("connect", 1)],
)
# One takes the first's entry and leaves before its broker answers: the
# first must look again, and find the third.
@example(
    (0.0078125, 0.0078125),
    [("connect", 0), ("connect", 0), ("connect", 0), ("abort", 1)],
)
# A pairing comes before the broker's answer to the one it pairs.
@example(
    (0.01, 0.001),
    [*_WARM, ("connect", 0), ("connect", 1)],
)
# The same, and word of it comes before the first's own broker answer.
@example(
    (0.01, 0.001),
    [*_WARM, ("connect", 0), ("connect", 1), ("abort", 2)],
)
def test_any_arrivals_lines_and_departures_leave_the_pairs_whole(delays, steps):
    cluster = slow_cluster(delays)
    names = list(cluster.servers)
    clients: list[tuple[Conversation, list[Deferred[str]], list[str]]] = []
    with capturedLogs() as events:
        for op, index in steps:
            if op == "connect" or not clients:
                notices: list[str] = []
                conversation = cluster.result(
                    connect(
                        cluster.clock,
                        cluster.servers[names[index % 2]].endpoint(),
                        on_notice=lambda n, k=notices: k.append(n.code),
                    )
                )
                clients.append((conversation, [], notices))
            elif op == "pause":
                settle(cluster, 0.003 * index)
            else:
                conversation, pending, _ = clients[index % len(clients)]
                if op == "abort":
                    conversation.abort()
                elif not pending or pending[-1].called:
                    try:
                        d = (
                            conversation.say(f"line {len(pending)}")
                            if conversation.my_turn
                            else conversation.listen()
                        )
                    except Exception:
                        continue
                    d.addErrback(lambda _: None)
                    pending.append(d)
            cluster.flush()
        settle(cluster, 0.3)  # every message arrives
    _check_pairs(cluster)
    failures = [e for e in events if e.get("log_failure") is not None]
    assert failures == []
    for _, _, codes in clients:
        assert "responder-failed" not in codes


# -- Real processes: redis-server and two twistd instances ----------------------


class LineClient:
    """A raw TCP client reading the server's lines, with a deadline."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def line(self, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            assert left > 0, f"no line within {timeout} s; have {self.buffer!r}"
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                chunk = None
            assert chunk is not None, f"no line in {timeout} s; have {self.buffer!r}"
            assert chunk, f"closed; have {self.buffer!r}"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def until(self, start: str) -> str:
        """The first line that starts with *start*, skipping welcome and
        waiting notices."""
        while not (line := self.line()).startswith(start):
            assert line.startswith(("!info welcome: ", "!info waiting: ")), line
        return line

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def line_client() -> Iterator[Callable[[int], LineClient]]:
    """Make ``LineClient``s; each is closed after the test, pass or fail."""
    made: list[LineClient] = []

    def make(port: int) -> LineClient:
        made.append(LineClient(port))
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.mark.slow
def test_two_instances_pair_their_clients_and_a_killed_one_is_noticed(
    redis_server, line_client
):
    args = ("--responder", "pair", "--broker", redis_server.url)
    with Server(*args) as one, Server(*args) as two:
        a = line_client(one.port)
        assert a.line().startswith("!info welcome:")
        assert a.line().startswith("!info waiting: no partner yet")
        b = line_client(two.port)
        assert b.line().startswith("!info welcome:")
        # (told it waits first if it came before i2's broker connection was up)
        paired = b.until("!info paired: ")
        assert paired.startswith("!info paired: you are talking with client i1/1 (")
        paired = a.until("!info paired: ")
        assert paired.startswith("!info paired: you are talking with client i2/1 (")
        a.send("hello from one")
        b.send("hi from two")
        assert b.line() == "hello from one"
        assert a.line() == "hi from two"
        a.send("how are you?")
        b.send("fine")
        assert b.line() == "how are you?"
        assert a.line() == "fine"
        a.send("still there?")
        two.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        two.proc.wait(10)
        bye = a.line(timeout=PARTNER_LOST_WITHIN + 5)
        took = time.monotonic() - killed
        assert bye.startswith("!bye partner-left: client i2/1 (127.0.0.1:")
        assert "is gone: its server, i2, stopped answering." in bye
        assert took <= PARTNER_LOST_WITHIN + 1, took


@pytest.mark.slow
def test_an_instance_that_stops_tells_the_partners_of_its_clients_at_once(
    redis_server, line_client
):
    args = ("--responder", "pair", "--broker", redis_server.url)
    with Server(*args) as one, Server(*args) as two:
        a = line_client(one.port)
        a.until("!info waiting: ")
        b = line_client(two.port)
        b.until("!info paired: ")
        a.until("!info paired: ")
        a.send("hello")
        b.send("hi")
        assert (a.line(), b.line()) == ("hi", "hello")
        a.send("are you staying?")
        stopped = time.monotonic()
        assert two.stop() == -signal.SIGTERM  # as twistd exits on SIGTERM
        bye = a.line(timeout=5)
        assert time.monotonic() - stopped < 5
        assert bye.startswith("!bye partner-left: client i2/1 (127.0.0.1:")
        assert "left: its server is shutting down." in bye
