"""Pair mode: two clients talk to each other in turns, through the server.

Driven in memory with ``sockchat.testing.MemoryServer`` and the real client
library, so these also test the public fakes.
"""

from __future__ import annotations

import attrs
import pytest

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
    bob_waits = bob.conversation.listen()
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
    bob_waits = bob.conversation.listen()
    server.advance(61)  # alice never speaks; bob waiting is not idling
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
