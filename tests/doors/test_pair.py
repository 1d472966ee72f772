"""Pair mode: two clients talk to each other in turns, through the server.

Driven in memory with ``sockchat.testing.MemoryServer`` and the real client
library, so these also test the public fakes.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sockchat import (
    Conversation,
    ConversationEnded,
    Notice,
    NotYourTurn,
    PairResponder,
)
from sockchat.testing import MemoryServer, NoResultYet


class Client:
    def __init__(self, server: MemoryServer) -> None:
        self.notices: list[Notice] = []
        self.server = server
        self.conversation: Conversation = server.connect(on_notice=self.notices.append)

    def codes(self) -> list[str]:
        return [n.code for n in self.notices]

    def last(self) -> Notice:
        return self.notices[-1]


@pytest.fixture
def server() -> MemoryServer:
    return MemoryServer(PairResponder())


def test_the_first_client_is_told_it_waits_for_a_partner(server):
    alice = Client(server)
    assert alice.codes() == ["welcome", "waiting"]
    assert "no partner yet" in alice.last().text
    assert alice.conversation.my_turn


def test_the_second_client_listens_and_both_are_told_who_they_talk_with(server):
    alice = Client(server)
    bob = Client(server)
    assert bob.codes() == ["listen", "paired"]
    assert not bob.conversation.my_turn
    assert "client 1 (127.0.0.1:" in bob.last().text
    assert "They speak first" in bob.last().text
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


def test_a_line_said_while_alone_goes_to_the_first_partner(server):
    alice = Client(server)
    waiting = alice.conversation.say("anyone there?")
    server.flush()
    bob = Client(server)
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
    assert server.factory.responder._parties == {}


def test_a_partner_that_drops_while_the_other_waits(server):
    alice = Client(server)
    bob = Client(server)
    waiting = alice.conversation.say("still there?")
    server.result(bob.conversation.listen())
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


def test_a_partner_idle_before_any_line_does_not_end_the_other(server):
    server.factory.settings = attrs.evolve(server.factory.settings, idle_timeout=60.0)
    alice = Client(server)
    bob = Client(server)
    bob_waits = bob.conversation.listen()
    server.advance(61)  # alice never speaks: nothing passed between them
    assert alice.last().code == "idle-timeout"
    assert bob.last().code == "waiting"
    assert "client 1 (127.0.0.1:" in bob.last().text
    assert "was idle for too long before you talked" in bob.last().text
    carol = Client(server)  # bob listens still, so carol speaks first
    assert "You speak first" in carol.last().text
    carol.conversation.say("hello bob")
    assert server.result(bob_waits) == "hello bob"


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


# A partner that leaves before a line has passed: a load balancer's health
# check or a port probe connects and closes at once.  It must not end the
# conversation of the one who was waiting.


def test_a_probe_that_pairs_and_leaves_puts_the_waiting_client_back(server):
    alice = Client(server)
    for _ in range(10):  # ten health checks in a row
        probe = Client(server)
        assert "client 1 (127.0.0.1:" in probe.last().text
        probe.conversation.abort()
        server.flush()
        assert alice.last().code == "waiting"
        assert "disconnected before you talked" in alice.last().text
        assert "You may say your first line now" in alice.last().text
    assert alice.conversation.my_turn
    assert server.factory.responder.waiting_for_partner == 1
    bob = Client(server)
    assert "You speak first" in alice.last().text
    heard = bob.conversation.listen()
    alice_waits = alice.conversation.say("at last")
    assert server.result(heard) == "at last"
    bob.conversation.say("hello alice")
    assert server.result(alice_waits) == "hello alice"
    assert list(server.factory.responder._parties) == [1, 12]


def test_the_first_line_said_while_waiting_is_kept_for_the_next_partner(server):
    alice = Client(server)
    alice_waits = alice.conversation.say("anyone there?")
    server.flush()
    probe = Client(server)
    assert server.result(probe.conversation.listen()) == "anyone there?"
    probe.conversation.abort()
    server.flush()
    assert alice.last().code == "waiting"
    assert "They will have your first line" in alice.last().text
    bob = Client(server)
    assert server.result(bob.conversation.listen()) == "anyone there?"
    bob.conversation.say("yes, me")
    assert server.result(alice_waits) == "yes, me"


def test_a_listener_whose_partner_left_untalked_waits_for_the_next_line(server):
    probe = Client(server)  # a probe is alone when alice comes
    alice = Client(server)
    alice_waits = alice.conversation.listen()
    probe.conversation.abort()
    server.flush()
    assert alice.last().code == "waiting"
    assert "They will speak first" in alice.last().text
    bob = Client(server)
    assert "You speak first" in bob.last().text
    assert "They speak first" in alice.last().text
    bob_waits = bob.conversation.say("hello")
    assert server.result(alice_waits) == "hello"
    alice.conversation.say("hi bob")
    assert server.result(bob_waits) == "hi bob"


def test_the_one_left_goes_to_the_head_and_pairs_with_one_already_waiting(server):
    probe = Client(server)
    alice = Client(server)  # listens: the probe was first
    alice_waits = alice.conversation.listen()
    carol = Client(server)  # came while alice was paired with the probe
    assert carol.last().code == "waiting"
    probe.conversation.abort()
    server.flush()
    assert "You speak first" in carol.last().text
    assert "client 2 (127.0.0.1:" in carol.last().text
    carol.conversation.say("hello alice")
    assert server.result(alice_waits) == "hello alice"
    assert server.factory.responder.waiting_for_partner == 0


def test_two_that_both_have_the_turn_are_paired_and_their_lines_cross(server):
    alice = Client(server)
    probe = Client(server)
    carol = Client(server)  # waits: alice is paired with the probe
    probe.conversation.abort()
    server.flush()
    # Both have the turn: neither waits for the other, each line answers
    # the other's.
    assert "client 3 (127.0.0.1:" in alice.last().text
    assert "You may both speak now" in alice.last().text
    assert "client 1 (127.0.0.1:" in carol.last().text
    assert server.factory.responder.waiting_for_partner == 0
    alice_waits = alice.conversation.say("hello carol")
    server.flush()
    with pytest.raises(NoResultYet):
        server.result(alice_waits)
    carol_waits = carol.conversation.say("hello alice")
    assert server.result(carol_waits) == "hello carol"
    assert server.result(alice_waits) == "hello alice"
    # Each has the turn again: nobody speaks twice in a row.
    alice_waits = alice.conversation.say("how are you?")
    carol_waits = carol.conversation.say("fine, you?")
    assert server.result(carol_waits) == "how are you?"
    assert server.result(alice_waits) == "fine, you?"


def test_one_who_said_a_line_and_one_who_has_the_turn_are_paired(server):
    alice = Client(server)
    alice_waits = alice.conversation.say("anyone?")
    server.flush()
    probe = Client(server)
    carol = Client(server)
    probe.conversation.abort()
    server.flush()
    assert "They said a first line already" in carol.last().text
    carol_waits = carol.conversation.say("me")
    assert server.result(carol_waits) == "anyone?"
    assert server.result(alice_waits) == "me"


def test_a_listener_put_back_hears_the_first_line_of_one_already_waiting(server):
    probe = Client(server)
    alice = Client(server)
    alice_waits = alice.conversation.listen()
    carol = Client(server)
    carol_waits = carol.conversation.say("hello, whoever you are")
    server.flush()
    probe.conversation.abort()
    assert server.result(alice_waits) == "hello, whoever you are"
    assert "They have your first line" in carol.last().text
    alice.conversation.say("hi carol")
    assert server.result(carol_waits) == "hi carol"


def test_once_a_line_has_passed_a_partner_leaving_ends_the_pair(server):
    alice = Client(server)
    bob = Client(server)
    heard = bob.conversation.listen()
    alice_waits = alice.conversation.say("hello")
    assert server.result(heard) == "hello"
    bob.conversation.abort()
    with pytest.raises(ConversationEnded) as ended:
        server.result(alice_waits)
    assert ended.value.notice is not None
    assert ended.value.notice.code == "partner-left"


def test_a_probe_logs_nothing_and_a_pair_one_line_when_it_ends(server):
    from twisted.logger import capturedLogs

    with capturedLogs() as events:
        alice = Client(server)
        probe = Client(server)
        probe.conversation.abort()
        server.flush()
        bob = Client(server)
        heard = bob.conversation.listen()
        alice.conversation.say("hello")
        assert server.result(heard) == "hello"
        paired = [e for e in events if e["log_namespace"] == "sockchat.pair"]
        assert paired == []  # none for the probe, none per turn
        server.result(bob.conversation.quit())
    (ended,) = [e for e in events if e["log_namespace"] == "sockchat.pair"]
    assert (ended["left"], ended["partner"], ended["why"]) == (3, 1, "sent q")


def test_two_listeners_put_back_wait_for_newcomers_not_for_each_other(server):
    probe1 = Client(server)
    alice = Client(server)  # listens to probe1
    alice_waits = alice.conversation.listen()
    probe2 = Client(server)
    bob = Client(server)  # listens to probe2
    bob_waits = bob.conversation.listen()
    probe1.conversation.abort()
    server.flush()
    probe2.conversation.abort()
    server.flush()
    # Both wait for a first line: paired with each other, neither would
    # speak.  Each gets a newcomer who speaks first, bob (back last) first.
    assert server.factory.responder.waiting_for_partner == 2
    assert alice.last().code == bob.last().code == "waiting"
    carol = Client(server)
    assert "client 4 (127.0.0.1:" in carol.last().text
    assert "You speak first" in carol.last().text
    carol.conversation.say("hi bob")
    assert server.result(bob_waits) == "hi bob"
    dave = Client(server)
    assert "client 2 (127.0.0.1:" in dave.last().text
    dave.conversation.say("hi alice")
    assert server.result(alice_waits) == "hi alice"
    assert server.factory.responder.waiting_for_partner == 0


def test_two_first_lines_that_cross_are_talk_so_a_leaving_ends_the_pair(server):
    alice = Client(server)
    alice_waits = alice.conversation.say("alice here")
    server.flush()
    probe = Client(server)
    bob = Client(server)  # alone while alice is paired with the probe
    bob_waits = bob.conversation.say("bob here")
    server.flush()
    probe.conversation.abort()
    # Both had said a first line: each has the other's as its answer.
    assert server.result(alice_waits) == "bob here"
    assert server.result(bob_waits) == "alice here"
    # A line has passed each way: they have talked, and bob's leaving ends
    # alice's conversation too (a probe, which says nothing, never gets here).
    bob.conversation.abort()
    server.flush()
    assert alice.last().code == "partner-left"


# Any order of arrivals, lines, probes and departures keeps the pairing
# whole: each live client is either paired both ways or in the queue, two
# partners never both wait for each other's first line, and the queue holds
# more than one only of clients that all wait for a first line.


def _check_pairing(server: MemoryServer) -> None:
    responder = server.factory.responder
    parties = responder._parties
    assert set(parties) == set(server.factory.conversations)
    queue = responder._queue
    assert len(set(map(id, queue))) == len(queue)
    for party in parties.values():
        if party.opening is not None:  # a line kept for its partner...
            assert party.waiting is not None  # ...waits for its answer
        partner = party.partner
        if partner is None:
            assert party in queue
            continue
        assert party not in queue
        assert partner.partner is party
        both_wait = party.waiting is not None and partner.waiting is not None
        assert not (both_wait and party.opening is None and partner.opening is None)
    if len(queue) > 1:
        assert all(p.waiting is not None and p.opening is None for p in queue)


@given(
    st.lists(
        st.tuples(st.sampled_from(["connect", "act", "abort"]), st.integers(0, 7)),
        max_size=40,
    )
)
# Two listeners put back; two first lines that cross, then a departure.
@example([("connect", 0)] * 4 + [("abort", 0), ("abort", 2)])
@example(
    [
        *[("connect", 0), ("act", 0), ("connect", 0), ("connect", 0), ("act", 2)],
        *[("abort", 1), ("abort", 2), ("act", 0), ("connect", 0), ("act", 3)],
    ]
)
def test_any_arrivals_and_departures_keep_the_pairing_whole(steps):
    server = MemoryServer(PairResponder())
    clients: list[tuple[Client, list]] = []
    for op, index in steps:
        if op == "connect" or not clients:
            clients.append((Client(server), []))
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
