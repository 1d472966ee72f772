"""Pair mode's model alone (``sockchat._core.pairing``): no Twisted, no
sockets, time passed in.

The table is checked pair by pair; the rules of docs/protocol.md ("Pair
mode") one by one; and hypothesis drives ``Pairs`` with any order of
arrivals, probes, lines, waits and departures.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sockchat._core.pairing import (
    GRACE,
    IGNORED,
    LEFT_BECAUSE,
    MOVES,
    Answer,
    Ask,
    End,
    Event,
    Forward,
    GiveTurn,
    Leave,
    Log,
    Pairs,
    PartnerLeaves,
    Party,
    Requeue,
    Standing,
    Tell,
    Welcome,
)

# -- The table ---------------------------------------------------------------


def test_every_standing_and_event_is_a_move_or_ignored_never_both():
    for pair in itertools.product(Standing, Event):
        assert (pair in MOVES) != (pair in IGNORED), pair
    assert set(MOVES) | set(IGNORED) == set(itertools.product(Standing, Event))


def _party(standing: Standing) -> Party:
    """A party in *standing*, as the inputs would leave it."""
    party = Party("k", "client 1 (here)", 0.0)
    party.standing = standing
    if standing in (Standing.WAITING_SAID, Standing.FIRST_SAID):
        party.opening = "my first line"
    if party.paired:
        party.partner = "client 2 (there)"
    return party


def _feed(party: Party, event: Event) -> list:
    if event is Event.GRACE_OVER:
        return party.grace_over()
    if event is Event.ALONE:
        return party.alone()
    if event is Event.UNANSWERED:
        return party.unanswered("the broker did not answer")
    if event is Event.FOUND:
        return party.found("client 0 (there)")
    if event is Event.TAKEN:
        return party.taken("client 3 (there)")
    if event is Event.SAID:
        return party.said("a line")
    if event is Event.HEARD:
        return party.heard("their line")
    if event is Event.UNSENT:
        return party.unsent("the broker was lost")
    if event is Event.PARTNER_LEFT:
        return party.partner_left("sent q")
    return party.left("sent q")


@pytest.mark.parametrize(
    ("standing", "event"), list(itertools.product(Standing, Event))
)
def test_every_standing_and_event_moves_as_the_table_says(standing, event):
    party = _party(standing)
    actions = _feed(party, event)
    assert party.standing is MOVES.get((standing, event), standing)
    if (standing, event) in IGNORED:
        assert actions == []


# -- The rules, one by one ---------------------------------------------------


def _run(pairs: Pairs) -> list:
    out = []
    while (action := pairs.next_action()) is not None:
        out.append(action)
    return out


def _codes(actions: list, key: object) -> list[str]:
    return [
        a.code if isinstance(a, Tell | End) else type(a).__name__
        for a in actions
        if a.key == key
    ]


def test_a_newcomer_is_not_offered_until_its_grace_is_over():
    pairs = Pairs()
    pairs.arrive(1, "client 1", 0.0)
    assert _run(pairs) == []
    assert pairs.deadline == GRACE
    pairs.tick(GRACE - 0.01)
    assert _run(pairs) == []
    pairs.tick(GRACE)
    assert _codes(_run(pairs), 1) == ["Welcome", "waiting"]
    assert pairs.waiting == [1]
    assert pairs.deadline is None


def test_a_probe_that_leaves_in_its_grace_is_nobodys_partner():
    pairs = Pairs()
    pairs.arrive(1, "client 1", 0.0)
    pairs.tick(1.0)
    _run(pairs)
    for key in range(2, 12):  # ten probes: each closes at once
        pairs.arrive(key, f"client {key}", float(key))
        pairs.left(key, "end-of-input" if key % 2 else "connection-lost")
        pairs.tick(key + 1.0)
        assert _run(pairs) == []  # client 1 hears of none of them
    pairs.arrive(12, "client 12", 20.0)
    pairs.tick(21.0)
    actions = _run(pairs)
    assert Welcome(12, listen=True) in actions
    assert (
        Tell(1, "paired", "you are talking with client 12. You speak first.") in actions
    )


def test_the_one_who_waited_speaks_first_and_the_newcomer_listens():
    pairs = Pairs(grace=0)
    pairs.arrive(1, "client 1", 0.0)
    pairs.arrive(2, "client 2", 1.0)
    actions = _run(pairs)
    assert Welcome(1, listen=False) in actions
    assert Welcome(2, listen=True) in actions
    assert pairs.parties[1].standing is Standing.FIRST
    assert pairs.parties[2].standing is Standing.LISTENING
    pairs.said(1, "hello")
    assert _run(pairs) == [Answer(2, "hello")]
    pairs.said(2, "hi")
    assert _run(pairs) == [Answer(1, "hi")]


def test_a_line_said_while_waiting_reaches_the_newcomer_as_it_arrives():
    pairs = Pairs(grace=0)
    pairs.arrive(1, "client 1", 0.0)
    _run(pairs)
    pairs.said(1, "anyone there?")
    assert _run(pairs) == []  # kept
    pairs.arrive(2, "client 2", 5.0)
    actions = _run(pairs)
    assert actions[-1] == Answer(2, "anyone there?")
    assert actions.index(Welcome(2, listen=True)) < actions.index(actions[-1])


def test_a_listener_whose_partner_leaves_before_a_line_gets_the_turn_back():
    pairs = Pairs(grace=0)
    pairs.arrive(1, "client 1", 0.0)
    pairs.arrive(2, "client 2", 1.0)
    _run(pairs)
    pairs.left(1, "quit")
    give, tell, *rest = _run(pairs)
    assert rest == []
    assert give == GiveTurn(2, "client 1 sent q before saying a line")
    assert tell.code == "waiting"
    assert "you speak first" in tell.text
    assert pairs.waiting == [2]  # it waited, so it speaks first next time
    pairs.arrive(3, "client 3", 2.0)
    assert Welcome(3, listen=True) in _run(pairs)


def test_a_partner_that_leaves_before_a_line_keeps_the_others_line_for_the_next():
    pairs = Pairs(grace=0)
    pairs.arrive(1, "client 1", 0.0)
    pairs.arrive(2, "client 2", 1.0)
    pairs.said(1, "hello")
    _run(pairs)
    pairs.left(2, "end-of-input")  # it heard, and never said a line
    (tell,) = _run(pairs)
    assert tell.code == "waiting"
    assert tell.text.startswith(
        "client 2 closed its side of the connection before saying a line; "
    )
    assert "They will have your first line" in tell.text
    pairs.arrive(3, "client 3", 2.0)
    actions = _run(pairs)
    assert actions[-1] == Answer(3, "hello")


def test_a_partner_who_said_a_line_ends_the_pair_when_it_leaves():
    pairs = Pairs(grace=0)
    pairs.arrive(1, "client 1", 0.0)
    pairs.arrive(2, "client 2", 1.0)
    pairs.said(1, "hello")
    pairs.said(2, "hi")
    _run(pairs)
    pairs.left(2, "end-of-input")
    log, end = _run(pairs)
    assert isinstance(log, Log)
    assert dict(log.fields)["why"] == LEFT_BECAUSE["end-of-input"]
    assert end == End(
        1,
        "partner-left",
        "client 2 closed its side of the connection. Connect again to talk with "
        "someone new.",
    )
    assert pairs.waiting == []


def test_a_line_that_did_not_reach_the_partner_gives_the_turn_back():
    party = Party("k", "client 1", 0.0, grace=0)
    party.grace_over()
    party.alone()
    party.said("hello?")
    assert party.taken("client 2")[-1] == Forward("k", "hello?")
    assert party.unsent("the broker was lost") == [GiveTurn("k", "the broker was lost")]
    assert party.standing is Standing.FIRST
    assert party.opening is None
    assert party.said("hello again") == [Forward("k", "hello again")]
    assert party.heard("hi") == [Answer("k", "hi")]
    party.said("how are you?")
    party.unsent("the broker was lost")
    assert party.standing is Standing.TURN


def test_the_one_who_waited_keeps_its_place_ahead_of_later_ones():
    pairs = Pairs(grace=0)
    pairs.arrive(1, "client 1", 0.0)
    pairs.arrive(2, "client 2", 1.0)  # paired with 1
    pairs.arrive(3, "client 3", 2.0)  # waits: 1 is paired
    pairs.left(2, "connection-lost")  # a slow probe: 1 goes back, first
    _run(pairs)
    assert pairs.waiting == [1, 3]  # two who speak first are never a pair
    pairs.arrive(4, "client 4", 3.0)
    pairs.arrive(5, "client 5", 4.0)
    actions = _run(pairs)
    assert Tell(1, "paired", "you are talking with client 4. You speak first.") in (
        actions
    )
    assert Tell(3, "paired", "you are talking with client 5. You speak first.") in (
        actions
    )


# -- Any order of everything --------------------------------------------------
#
# A simulated client per key plays by the turn rules (it speaks only when
# it has the turn, as the conversation engine sees to), and the model's
# actions are checked against what each client may be given.


#: Whose turn it is, by standing, as the client sees it.
TURN_OF = {
    Standing.ARRIVING: "none",
    Standing.ASKING: "none",
    Standing.WAITING: "mine",
    Standing.WAITING_SAID: "theirs",
    Standing.FIRST: "mine",
    Standing.LISTENING: "theirs",
    Standing.FIRST_SAID: "theirs",
    Standing.TURN: "mine",
    Standing.AWAITING: "theirs",
}


class World:
    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.pairs = Pairs(grace=grace)
        self.now = 0.0
        self.arrived: dict[int, int] = {}
        self.turn: dict[int, str] = {}  # "none" (no welcome), "mine", "theirs"
        self.said: dict[int, list[str]] = {}  # lines each said
        self.given: list[str] = []  # lines answered to someone
        self.probes: set[int] = set()  # left before their grace was over
        self.ended: set[int] = set()
        self.back: set[int] = set()  # went back to waiting after a partner

    def carry_out(self) -> None:
        labels = {f"client {k}": k for k in self.turn}
        for action in _run(self.pairs):
            key = action.key
            assert key not in self.ended, action
            if isinstance(action, Welcome):
                assert self.turn[key] == "none"
                self.turn[key] = "theirs" if action.listen else "mine"
            elif isinstance(action, Answer):
                assert self.turn[key] == "theirs", action  # only to one who waits
                self.turn[key] = "mine"
                self.given.append(action.text)
            elif isinstance(action, GiveTurn):
                assert self.turn[key] == "theirs"
                self.turn[key] = "mine"
            elif isinstance(action, End):
                assert action.code == "partner-left"
                # Only one who said a line is a partner whose leaving ends it.
                assert self.said[labels[" ".join(action.text.split()[:2])]]
                self.ended.add(key)
            elif isinstance(action, Tell) and "before saying a line" in action.text:
                self.back.add(key)
            elif isinstance(action, Tell) and action.code == "paired":
                other = labels[action.text.split(" with ")[1].split(".")[0]]
                if self.grace:  # nobody is paired with a probe
                    assert other not in self.probes
                if "You speak first" in action.text or "have your first" in action.text:
                    # The one who waited speaks first: it came first.
                    assert self.arrived[key] <= self.arrived[other]
                    # And nobody who came before it still waits, unless it
                    # went back to the head after a partner who said nothing.
                    if key not in self.back:
                        waiting = self.pairs.waiting
                        assert all(
                            self.arrived[w] >= self.arrived[key] for w in waiting
                        )

    def check(self) -> None:
        pairs = self.pairs
        parties = pairs.parties
        assert len(set(pairs.waiting)) == len(pairs.waiting)
        assert {k for k, p in parties.items() if p.waits} == set(pairs.waiting)
        for key, party in parties.items():
            if party.paired and key not in self.ended:
                other = pairs.partners[key]
                assert pairs.partners[other] == key  # pairs stay whole
                # One speaks, one listens: exactly one of the two has the turn.
                assert {self.turn[key], self.turn[other]} == {"mine", "theirs"}
            else:
                assert key not in pairs.partners
            # The model knows whose turn it is, as the client does.
            if key not in self.ended:
                assert self.turn[key] == TURN_OF[party.standing], (key, party)
        # Nobody's line is lost: each was given to a partner, or its speaker
        # keeps it for the next, or its speaker left.
        for key, lines in self.said.items():
            party = parties.get(key)
            for line in lines:
                assert (
                    line in self.given
                    or party is None
                    or key in self.ended
                    or party.opening == line
                ), (key, line)


@st.composite
def steps(draw):
    return draw(
        st.lists(
            st.tuples(
                st.sampled_from(["arrive", "probe", "say", "leave", "wait"]),
                st.integers(0, 9),
            ),
            max_size=60,
        )
    )


def _play(world: World, plan: list[tuple[str, int]]) -> None:
    keys = itertools.count(1)
    for op, n in plan:
        live = [k for k in world.turn if k in world.pairs.parties]
        if op in ("arrive", "probe") or not live:
            key = next(keys)
            world.arrived[key] = key  # the order of arrival
            world.turn[key] = "none"
            world.said[key] = []
            world.pairs.arrive(key, f"client {key}", world.now)
            if op == "probe":  # closes, or is reset, at once
                world.probes.add(key)
                world.pairs.left(key, ["end-of-input", "connection-lost"][n % 2])
        elif op == "wait":
            world.now += n / 10
            world.pairs.tick(world.now)
        else:
            key = live[n % len(live)]
            if op == "leave":
                reasons = ["quit", "end-of-input", "connection-lost", "idle-timeout"]
                world.pairs.left(key, reasons[n % 4])
            elif world.turn[key] == "mine":
                line = f"{key}:{len(world.said[key])}"
                world.said[key].append(line)
                world.turn[key] = "theirs"
                world.pairs.said(key, line)
        world.carry_out()
        world.check()


@settings(max_examples=300)
@given(steps(), st.sampled_from([0.0, GRACE]))
@example([("arrive", 0), ("arrive", 0), ("arrive", 0), ("leave", 1)], 0.0)
@example([("arrive", 0), ("say", 0), ("arrive", 0), ("arrive", 0), ("leave", 1)], 0.0)
def test_any_arrivals_probes_lines_and_departures_keep_the_pairs_whole(plan, grace):
    world = World(grace)
    _play(world, plan)
    # In the end, once every grace is over, nobody waits beside another who
    # could be its partner: all who wait will speak first.
    world.now += 10
    world.pairs.tick(world.now)
    world.carry_out()
    world.check()
    assert all(world.pairs.parties[k].waits for k in world.pairs.waiting)


def test_forward_requeue_leave_and_partner_leaves_are_carried_out_by_pairs():
    # The adapter of one process never sees these: Pairs carries them out.
    pairs = Pairs(grace=0)
    for key in range(1, 6):
        pairs.arrive(key, f"client {key}", float(key))
    pairs.said(1, "a")
    pairs.left(2, "quit")
    pairs.left(5, "quit")
    inner = (Ask, Forward, Requeue, Leave, PartnerLeaves)
    assert not any(isinstance(a, inner) for a in _run(pairs))
