"""Pair mode: two clients talk to each other in turns, through the server.

Driven in memory with ``sockchat.testing.MemoryServer`` and the real client
library, so these also test the public fakes.  The model itself is tested
in tests/core/test_pairing.py; here, the adapter and the doors: welcomes
held until the pairing decides, notices, answers, the turn given back,
partner-left, and probes by reset and by FIN in memory.  Real sockets:
test_pair_net.py.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from sockchat import (
    Conversation,
    ConversationEnded,
    LineRefused,
    Notice,
    NotYourTurn,
    PairResponder,
    connect,
)
from sockchat._core.pairing import GRACE
from sockchat.testing import MemoryServer, NoResultYet

from pair_scenarios import in_memory_probe


class Client:
    """A client of *server*, connected and past its grace."""

    def __init__(self, server: MemoryServer) -> None:
        self.notices: list[Notice] = []
        self.server = server
        connecting = connect(
            server.clock, server.endpoint(), on_notice=self.notices.append
        )
        server.advance(GRACE)
        self.conversation: Conversation = server.result(connecting)

    def codes(self) -> list[str]:
        return [n.code for n in self.notices]

    def last(self) -> Notice:
        return self.notices[-1]


def pair_server() -> MemoryServer:
    clock = Clock()
    return MemoryServer(PairResponder(clock=clock), clock=clock)


@pytest.fixture
def server() -> MemoryServer:
    return pair_server()


def test_the_first_client_is_told_it_waits_and_speaks_first(server):
    alice = Client(server)
    assert alice.codes() == ["welcome", "waiting"]
    assert "no partner yet" in alice.last().text
    assert "you speak first" in alice.last().text
    assert alice.conversation.my_turn


def test_the_welcome_waits_for_the_grace(server):
    notices: list[Notice] = []
    connecting = connect(server.clock, server.endpoint(), on_notice=notices.append)
    server.advance(GRACE / 2)
    with pytest.raises(NoResultYet):
        server.result(connecting)
    assert notices == []
    server.advance(GRACE / 2)
    server.result(connecting)
    assert [n.code for n in notices] == ["welcome", "waiting"]


def test_the_second_client_listens_and_both_are_told_who_they_talk_with(server):
    alice = Client(server)
    bob = Client(server)
    assert bob.codes() == ["listen", "paired"]
    assert not bob.conversation.my_turn
    assert "client 1 (127.0.0.1:" in bob.last().text
    assert "They waited, so they speak first" in bob.last().text
    assert alice.codes() == ["welcome", "waiting", "paired"]
    assert "client 2 (127.0.0.1:" in alice.last().text
    assert "You speak first" in alice.last().text


def test_each_line_is_the_partners_answer_turn_by_turn(server):
    alice = Client(server).conversation
    bob = Client(server).conversation
    heard = bob.listen()
    alice_waits = alice.say("hello bob")
    assert server.result(heard) == "hello bob"
    with pytest.raises(NoResultYet):
        server.result(alice_waits)
    bob_waits = bob.say("hi alice")
    assert server.result(alice_waits) == "hi alice"
    alice_waits = alice.say("你好, how are you?")
    assert server.result(bob_waits) == "你好, how are you?"
    bob.say("!fine")  # looks like a notice: still arrives as said
    assert server.result(alice_waits) == "!fine"


def test_turn_taking_holds_across_the_pair(server):
    alice = Client(server).conversation
    bob = Client(server).conversation
    with pytest.raises(NotYourTurn):  # bob must wait for alice's first line
        server.result(bob.say("me first"))
    alice.say("one")
    with pytest.raises(NotYourTurn):  # and alice for bob's answer
        server.result(alice.say("two"))


def test_a_line_said_while_waiting_reaches_the_partner_as_it_arrives(server):
    alice = Client(server)
    waiting = alice.conversation.say("anyone there?")
    server.advance(60)
    bob = Client(server)
    assert bob.codes() == ["listen", "paired"]
    assert server.result(bob.conversation.listen()) == "anyone there?"
    assert "They have your first line" in alice.last().text
    bob_waits = bob.conversation.say("yes, me")
    assert server.result(waiting) == "yes, me"
    with pytest.raises(NoResultYet):
        server.result(bob_waits)


def test_q_ends_the_pair_and_the_partner_is_told(server):
    alice = Client(server)
    bob = Client(server)
    heard = bob.conversation.listen()
    alice_waits = alice.conversation.say("hello")
    assert server.result(heard) == "hello"
    bob_waits = bob.conversation.say("hi")
    assert server.result(alice_waits) == "hi"
    server.result(alice.conversation.quit())
    with pytest.raises(ConversationEnded) as ended:
        server.result(bob_waits)
    assert ended.value.clean
    assert ended.value.notice is not None
    assert ended.value.notice.code == "partner-left"
    assert "client 1 (127.0.0.1:" in ended.value.notice.text
    assert "sent q" in ended.value.notice.text
    # Nothing leaks: both connections are closed and forgotten.
    assert server.factory.conversations == {}
    assert server.factory.responder._seats == {}
    assert server.factory.responder._pairs.parties == {}


def test_a_partner_who_answered_and_drops_ends_the_pair(server):
    alice = Client(server)
    bob = Client(server)
    waiting = alice.conversation.say("still there?")
    assert server.result(bob.conversation.listen()) == "still there?"
    bob.conversation.say("yes")
    assert server.result(waiting) == "yes"
    waiting = alice.conversation.say("good")
    bob.conversation.abort()
    with pytest.raises(ConversationEnded) as ended:
        server.result(waiting)
    assert "client 2" in ended.value.why
    assert "disconnected" in ended.value.why
    assert server.factory.conversations == {}


def test_idle_partner_ends_the_pair(server):
    server.factory.settings = attrs.evolve(server.factory.settings, idle_timeout=60.0)
    alice = Client(server)
    bob = Client(server)
    heard = bob.conversation.listen()
    alice.conversation.say("hello")
    assert server.result(heard) == "hello"
    bob_waits = bob.conversation.say("hi")
    server.advance(61)  # alice never answers; bob waiting is not idling
    with pytest.raises(ConversationEnded) as ended:
        server.result(bob_waits)
    assert "was idle for too long" in ended.value.why
    assert alice.last().code == "idle-timeout"


def test_pairs_form_in_order_of_arrival(server):
    clients = [Client(server) for _ in range(5)]
    first = [c.codes()[0] for c in clients]
    assert first == ["welcome", "listen", "welcome", "listen", "welcome"]
    assert "client 2 " in clients[0].last().text
    assert "client 4 " in clients[2].last().text
    assert clients[4].last().code == "waiting"
    # A pair ending leaves the others alone.
    heard = clients[1].conversation.listen()
    clients[0].conversation.say("hi")
    assert server.result(heard) == "hi"
    clients[1].conversation.say("bye")
    server.result(clients[0].conversation.quit())
    heard = clients[3].conversation.listen()
    clients[2].conversation.say("still paired")
    assert server.result(heard) == "still paired"
    # The one left over is paired with the next newcomer.
    newcomer = Client(server)
    assert "client 5 " in newcomer.last().text


def test_a_client_waiting_for_a_partner_can_quit(server):
    alice = Client(server)
    ended = server.result(alice.conversation.quit())
    assert ended.clean
    assert server.factory.responder.waiting_for_partner == 0
    bob = Client(server)
    assert bob.codes() == ["welcome", "waiting"]


# A probe (a load balancer's health check, a port probe) connects and
# closes, or is reset, at once.  It is nobody's partner; and a partner that
# leaves before it has said a line is not one either.


@pytest.mark.parametrize("how", ["reset", "fin"])
def test_probes_in_their_grace_are_nobodys_partner(server, how):
    alice = Client(server)
    seen = len(alice.notices)
    for _ in range(10):  # ten health checks in a row
        in_memory_probe(server, how)
    assert len(alice.notices) == seen  # alice heard of none of them
    assert alice.conversation.my_turn
    assert server.factory.conversations.keys() == {1}
    bob = Client(server)
    assert "client 12 (127.0.0.1:" in alice.last().text
    assert "You speak first" in alice.last().text
    heard = bob.conversation.listen()
    alice_waits = alice.conversation.say("at last")
    assert server.result(heard) == "at last"
    bob.conversation.say("hello alice")
    assert server.result(alice_waits) == "hello alice"


def test_a_fin_probe_is_told_end_of_input_and_nothing_else(server):
    received: list[bytes] = []
    connect(server.clock, server.endpoint(), greeting_timeout=None)
    server.flush()
    pump = server._pumps[-1]
    original = pump.client.dataReceived
    pump.client.dataReceived = lambda data: (received.append(data), original(data))
    pump.server.readConnectionLost()
    server.flush()
    assert b"".join(received) == (
        b"!bye end-of-input: you closed your side of the connection; goodbye.\n"
    )
    assert server.factory.conversations == {}
    assert server.factory.responder._pairs.parties == {}


def test_a_slow_probe_that_leaves_before_a_line_puts_the_waiting_one_back(server):
    alice = Client(server)
    for _ in range(3):
        slow = Client(server)  # stays through its grace: paired
        assert "You speak first" in alice.last().text
        slow.conversation.abort()
        server.flush()
        assert alice.last().code == "waiting"
        assert "disconnected before saying a line" in alice.last().text
        assert "you speak first" in alice.last().text
    assert "partner-left" not in alice.codes()
    bob = Client(server)
    assert "client 5 (127.0.0.1:" in alice.last().text
    assert "You speak first" in alice.last().text
    assert "They waited, so they speak first" in bob.last().text


def test_a_line_given_to_one_who_left_without_a_word_goes_to_the_next(server):
    alice = Client(server)
    alice_waits = alice.conversation.say("anyone there?")
    server.flush()
    slow = Client(server)
    assert server.result(slow.conversation.listen()) == "anyone there?"
    slow.conversation.abort()
    server.flush()
    assert alice.last().code == "waiting"
    assert "They will have your first line" in alice.last().text
    bob = Client(server)
    assert server.result(bob.conversation.listen()) == "anyone there?"
    bob.conversation.say("yes, me")
    assert server.result(alice_waits) == "yes, me"


def test_a_listener_whose_partner_left_without_a_word_gets_the_turn_back(server):
    server.factory.settings = attrs.evolve(server.factory.settings, idle_timeout=60.0)
    alice = Client(server)
    bob = Client(server)
    bob_waits = bob.conversation.listen()
    server.advance(61)  # alice never speaks, and is told goodbye
    assert alice.last().code == "idle-timeout"
    with pytest.raises(LineRefused) as refused:
        server.result(bob_waits)
    assert refused.value.notice.code == "unavailable"
    assert "client 1 (127.0.0.1:" in refused.value.notice.text
    assert "was idle for too long before saying a line" in refused.value.notice.text
    assert "It is your turn now" in refused.value.notice.text
    assert bob.last().code == "waiting"
    assert bob.conversation.my_turn
    carol = Client(server)  # bob waited: bob speaks first
    assert carol.codes() == ["listen", "paired"]
    assert "You speak first" in bob.last().text
    heard = carol.conversation.listen()
    bob.conversation.say("hello carol")
    assert server.result(heard) == "hello carol"


def test_two_who_wait_are_never_paired_with_each_other(server):
    alice = Client(server)
    slow = Client(server)  # paired with alice
    carol = Client(server)  # waits: alice is paired
    assert carol.codes() == ["welcome", "waiting"]
    slow.conversation.abort()
    server.flush()
    # Both wait, both speak first: each waits for a newcomer, alice first.
    assert server.factory.responder.waiting_for_partner == 2
    dave = Client(server)
    assert "client 4 (127.0.0.1:" in alice.last().text
    assert "client 1 (127.0.0.1:" in dave.last().text
    erin = Client(server)
    assert "client 5 (127.0.0.1:" in carol.last().text
    assert "client 3 (127.0.0.1:" in erin.last().text


def test_once_a_line_has_come_back_a_partner_leaving_ends_the_pair(server):
    alice = Client(server)
    bob = Client(server)
    heard = bob.conversation.listen()
    alice_waits = alice.conversation.say("hello")
    assert server.result(heard) == "hello"
    bob_waits = bob.conversation.say("hi")
    assert server.result(alice_waits) == "hi"
    alice.conversation.abort()
    with pytest.raises(ConversationEnded) as ended:
        server.result(bob_waits)
    assert ended.value.notice is not None
    assert ended.value.notice.code == "partner-left"


def test_a_probe_logs_nothing_and_a_pair_one_line_when_it_ends(server):
    with capturedLogs() as events:
        alice = Client(server)
        in_memory_probe(server, "reset")
        in_memory_probe(server, "fin")
        bob = Client(server)
        heard = bob.conversation.listen()
        alice.conversation.say("hello")
        assert server.result(heard) == "hello"
        bob.conversation.say("hi")
        paired = [e for e in events if e["log_namespace"] == "sockchat.pair"]
        assert paired == []  # none for the probes, none per turn
        server.result(bob.conversation.quit())
    (ended,) = [e for e in events if e["log_namespace"] == "sockchat.pair"]
    assert ended["why"] == "sent q"
    assert ended["theirs"].startswith("client 4 (127.0.0.1:")
    assert ended["mine"].startswith("client 1 (127.0.0.1:")


def test_without_a_grace_clients_are_paired_as_they_connect():
    clock = Clock()
    server = MemoryServer(PairResponder(clock=clock, grace=0), clock=clock)
    alice = server.connect()
    bob = server.connect()
    assert alice.my_turn
    assert not bob.my_turn


# Any order of arrivals, probes, lines, waits and departures, through the
# doors: each live client is waiting or paired both ways, one of each pair
# has the turn, and nobody is told partner-left by one who said nothing.


def _check_pairing(server: MemoryServer) -> None:
    responder = server.factory.responder
    pairs = responder._pairs
    assert set(pairs.parties) == set(server.factory.conversations)
    assert set(responder._seats) == set(pairs.parties)
    assert {k for k, p in pairs.parties.items() if p.waits} == set(pairs.waiting)
    for key, other in pairs.partners.items():
        assert pairs.partners[other] == key
        assert pairs.parties[key].paired


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["connect", "act", "abort", "probe", "wait"]),
            st.integers(0, 7),
        ),
        max_size=30,
    )
)
@example([("connect", 0)] * 3 + [("abort", 1), ("connect", 0), ("act", 0)])
def test_any_arrivals_and_departures_keep_the_pairing_whole(steps):
    server = pair_server()
    clients: list[tuple[Client, list]] = []
    for op, index in steps:
        if op == "connect" or (op in ("act", "abort") and not clients):
            clients.append((Client(server), []))
        elif op == "probe":
            in_memory_probe(server, ["reset", "fin"][index % 2])
        elif op == "wait":
            server.advance(index)
        else:
            client, pending = clients[index % len(clients)]
            if op == "abort":
                client.conversation.abort()
            elif not pending or pending[-1].called:
                conversation = client.conversation
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
        server.flush()
        _check_pairing(server)
    for client, _ in clients:
        assert "responder-failed" not in client.codes()
        for notice in client.notices:
            if notice.code == "partner-left":
                assert "before saying a line" not in notice.text
