"""The desk's model, with no reactor and no queue: events and commands in,
what to do out.  Each test names one rule of ``sockchat._desk.model``."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sockchat._desk.model import (
    GRACE,
    Answer,
    AnswerDue,
    ConversationView,
    DeskModel,
    DeskView,
    Do,
    End,
    Fetch,
    GoOffline,
    GoOnline,
    HandBack,
    Refusal,
    Released,
    SaidMore,
    Take,
    Tell,
)
from sockchat._desk.queue import (
    Answered,
    Client,
    Closed,
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
    Who,
)

ALICE = Operator("alice", "Alice")
BOB = Operator("bob", "Bob")


def client(key: str) -> Client:
    return Client(key, f"client {key} (127.0.0.1:5000{key})", f"127.0.0.1:5000{key}", 0)


def line(entry: str, key: str, text: str = "hello", since: float = 0.0) -> Line:
    return Line(entry, key, text, since)


def tells(outputs, to=None, kind=None):
    return [
        o.message
        for o in outputs
        if isinstance(o, Tell)
        and (to is None or o.to == to)
        and (kind is None or isinstance(o.message, kind))
    ]


def model_with(*keys: str, hold: int = 2) -> DeskModel:
    model = DeskModel(hold=hold)
    for key in keys:
        model.apply(Opened(client(key)), 0.0)
    return model


def take(model: DeskModel, operator: Operator, entry: str, key: str) -> list:
    """Take a line as the door does: the command, then the queue's event,
    then the history it fetched."""
    decided = model.command(operator, Take(entry), 1.0)
    assert decided == [Do(operator, Take(entry))], decided
    out = model.apply(Taken(entry, key, operator), 1.0)
    if Fetch(key) in out:
        out += model.history(key, [])
    return out


def test_the_queue_shows_every_waiting_line_with_its_wait_to_everyone():
    model = model_with("1", "2")
    model.apply(Queued(line("7", "1", "where is my parcel?", since=10.0), None), 10.0)
    out = model.apply(Queued(line("8", "2", "x" * 500, since=12.0), None), 12.0)
    (view,) = tells(out, kind=DeskView)
    assert tells(out, to=None) == [view]  # to every operator
    assert view.clients == 2
    first, second = view.lines
    assert (first.entry, first.label, first.excerpt) == (
        "7",
        "client 1 (127.0.0.1:50001)",
        "where is my parcel?",
    )
    assert (first.waited, second.waited) == (2.0, 0.0)
    assert (len(second.excerpt), second.length) == (200, 500)
    assert model.desk(40.0).lines[0].waited == 30.0


def test_taking_a_line_holds_its_conversation_and_shows_its_history():
    model = model_with("1")
    model.arrive(ALICE, 0.0)
    model.apply(Queued(line("7", "1", "first"), None), 0.0)
    decided = model.command(ALICE, Take("7"), 1.0)
    assert decided == [Do(ALICE, Take("7"))]
    out = model.apply(Taken("7", "1", ALICE), 1.0)
    assert Fetch("1") in out
    (view,) = tells(out, kind=DeskView)
    assert view.lines[0].holder == ALICE
    said = Said("1", 1, Who.CLIENT, "", "first", 0.0)
    (mine,) = tells(model.history("1", [said]), to="alice")
    assert mine == ConversationView(
        "1", "client 1 (127.0.0.1:50001)", (said,), "7", "first"
    )


def test_a_line_held_by_another_cannot_be_taken_or_answered():
    model = model_with("1")
    model.arrive(ALICE, 0.0)
    model.arrive(BOB, 0.0)
    model.apply(Queued(line("7", "1"), None), 0.0)
    take(model, ALICE, "7", "1")
    assert model.command(BOB, Take("7"), 2.0) == Refusal(
        "Alice holds that conversation"
    )
    assert model.command(BOB, Answer("7", "mine!"), 2.0) == Refusal(
        "take the conversation before answering it"
    )
    assert model.command(ALICE, Take("7"), 2.0) == Refusal(
        "that conversation is yours already"
    )


def test_the_turn_rule_one_answer_per_line():
    model = model_with("1")
    model.arrive(ALICE, 0.0)
    model.apply(Queued(line("7", "1"), None), 0.0)
    take(model, ALICE, "7", "1")
    decided = model.command(ALICE, Answer("7", "hi"), 2.0)
    assert isinstance(decided, list)
    assert decided[0] == Do(ALICE, Answer("7", "hi"))
    assert tells(decided, to="alice", kind=AnswerDue) == [AnswerDue("1", None)]
    # A second answer, even before the queue has said it was answered.
    assert model.command(ALICE, Answer("7", "hi again"), 2.0) == Refusal(
        "that line has its answer already: one answer per line"
    )
    model.apply(Answered("7", "1", ALICE), 2.0)
    assert model.command(ALICE, Answer("7", "hi again"), 3.0) == Refusal(
        "that line has its answer already: one answer per line"
    )
    # Nothing to answer until the client speaks again; then one answer.
    out = model.apply(Queued(line("8", "1", "and?"), ALICE), 4.0)
    assert tells(out, to="alice", kind=AnswerDue) == [AnswerDue("1", "8", "and?")]
    assert isinstance(model.command(ALICE, Answer("8", "this"), 5.0), list)


def test_answers_that_cannot_travel_are_refused():
    model = model_with("1")
    model.max_answer = 10
    model.arrive(ALICE, 0.0)
    model.apply(Queued(line("7", "1"), None), 0.0)
    take(model, ALICE, "7", "1")
    for text, why in [
        ("", "an empty answer is not sent"),
        ("one\ntwo", "an answer is one line"),
        ("one\rtwo", "an answer is one line"),
        ("é" * 6, "an answer has at most 10 bytes"),
    ]:
        assert model.command(ALICE, Answer("7", text), 1.0) == Refusal(why)
    assert model.command(ALICE, Answer("nope", "hi"), 1.0) == Refusal(
        "that line is no longer waiting for an answer"
    )


def test_the_hold_limit_counts_takes_under_way():
    model = model_with("1", "2", "3", hold=2)
    model.arrive(ALICE, 0.0)
    for n in ("1", "2", "3"):
        model.apply(Queued(line(f"e{n}", n), None), 0.0)
    assert isinstance(model.command(ALICE, Take("e1"), 1.0), list)
    assert isinstance(model.command(ALICE, Take("e2"), 1.0), list)
    # Neither take is confirmed yet, and still a third is one too many.
    refusal = model.command(ALICE, Take("e3"), 1.0)
    assert refusal == Refusal(
        "you hold 2 conversations, the most you may; hand one back or end one first",
        while_holding=2,  # the page clears it when its operator holds fewer
    )
    # A take the queue refused no longer counts.
    model.not_done(Do(ALICE, Take("e2")))
    assert isinstance(model.command(ALICE, Take("e3"), 1.0), list)
    # Nor does a conversation handed back.
    model.apply(Taken("e1", "1", ALICE), 1.0)
    model.apply(Taken("e3", "3", ALICE), 1.0)
    assert isinstance(model.command(ALICE, Take("e2"), 1.0), Refusal)
    model.apply(HandedBack("1", ALICE), 2.0)
    assert isinstance(model.command(ALICE, Take("e2"), 2.0), list)


def test_a_taken_line_cannot_be_taken_twice_while_the_take_is_under_way():
    model = model_with("1")
    model.apply(Queued(line("7", "1"), None), 0.0)
    assert isinstance(model.command(ALICE, Take("7"), 1.0), list)
    assert model.command(BOB, Take("7"), 1.0) == Refusal(
        "that line is no longer waiting"
    )


def test_a_held_conversations_new_lines_reach_its_holder_only():
    model = model_with("1")
    model.arrive(ALICE, 0.0)
    model.arrive(BOB, 0.0)
    model.apply(Queued(line("7", "1"), None), 0.0)
    take(model, ALICE, "7", "1")
    said = Said("1", 3, Who.CLIENT, "", "more", 5.0)
    out = model.apply(Spoken(said), 5.0)
    assert out == [Tell("alice", SaidMore(said))]
    out = model.apply(Queued(line("8", "1", "more"), ALICE), 5.0)
    assert tells(out, to="alice", kind=AnswerDue) == [AnswerDue("1", "8", "more")]
    assert tells(out, to="bob") == []
    (view,) = tells(out, kind=DeskView)
    assert [(v.entry, v.holder) for v in view.lines] == [("7", ALICE), ("8", ALICE)]


def test_history_said_before_it_arrives_is_merged_not_lost_or_doubled():
    model = model_with("1")
    model.arrive(ALICE, 0.0)
    model.apply(Queued(line("7", "1"), None), 0.0)
    model.command(ALICE, Take("7"), 1.0)
    assert Fetch("1") in model.apply(Taken("7", "1", ALICE), 1.0)
    one = Said("1", 1, Who.CLIENT, "", "hello", 0.0)
    two = Said("1", 2, Who.NOTICE, "Alice", "Alice took it", 1.0)
    three = Said("1", 3, Who.CLIENT, "", "anyone?", 2.0)
    # Said while the history was on its way: kept, not sent alone.
    assert model.apply(Spoken(three), 2.0) == []
    (view,) = tells(model.history("1", [one, two]), to="alice")
    assert [s.n for s in view.history] == [1, 2, 3]


def test_a_client_that_leaves_is_told_to_its_holder():
    model = model_with("1")
    model.arrive(ALICE, 0.0)
    model.apply(Queued(line("7", "1"), None), 0.0)
    take(model, ALICE, "7", "1")
    out = model.apply(Dropped("7", "1", "left"), 3.0)
    assert tells(out, to="alice", kind=AnswerDue) == [
        AnswerDue("1", None, why="the client left")
    ]
    out = model.apply(Closed("1", "connection-lost"), 3.0)
    assert tells(out, to="alice", kind=Released) == [
        Released("1", "the conversation is over (connection-lost)")
    ]
    assert model.holding("alice") == 0
    assert model.command(ALICE, End("1"), 4.0) == Refusal(
        "that conversation is over already"
    )


def test_only_the_holder_hands_back_or_ends():
    model = model_with("1")
    model.arrive(ALICE, 0.0)
    model.apply(Queued(line("7", "1"), None), 0.0)
    assert model.command(ALICE, HandBack("1"), 0.0) == Refusal(
        "that conversation is not yours"
    )
    take(model, ALICE, "7", "1")
    assert model.command(BOB, End("1"), 1.0) == Refusal(
        "that conversation is not yours"
    )
    assert model.command(ALICE, HandBack("1"), 1.0) == [Do(ALICE, HandBack("1"))]
    out = model.apply(HandedBack("1", ALICE), 1.0)
    assert tells(out, to="alice", kind=Released) == [
        Released("1", "handed back to the queue")
    ]
    (view,) = tells(out, kind=DeskView)
    assert view.lines[0].holder is None  # anyone's again


def test_an_operator_who_leaves_keeps_what_they_hold_for_the_grace():
    model = model_with("1")
    assert model.arrive(ALICE, 0.0) == [GoOnline(ALICE)]
    model.apply(Queued(line("7", "1"), None), 0.0)
    take(model, ALICE, "7", "1")
    assert model.leave(ALICE, 10.0) == []
    assert model.next_due() == 10.0 + GRACE
    assert model.due(10.0 + GRACE - 1) == []
    # Back in time (a reload): nothing is handed back, and the desk fetches
    # the conversation again for the new page.
    assert model.arrive(ALICE, 20.0) == []
    assert model.next_due() is None
    model.leave(ALICE, 30.0)
    assert model.due(30.0 + GRACE) == [Do(ALICE, HandBack("1")), GoOffline(ALICE)]


def test_logging_out_of_the_last_session_hands_back_at_once():
    model = model_with("1")
    model.arrive(ALICE, 0.0)
    model.arrive(ALICE, 0.0)  # two pages
    model.apply(Queued(line("7", "1"), None), 0.0)
    take(model, ALICE, "7", "1")
    assert model.leave(ALICE, 5.0, at_once=True) == []  # one page is still open
    assert model.leave(ALICE, 5.0, at_once=True) == [
        Do(ALICE, HandBack("1")),
        GoOffline(ALICE),
    ]


def test_who_is_online_and_who_holds_what_is_everyones():
    model = model_with("1", "2")
    model.arrive(ALICE, 0.0)
    model.apply(Queued(line("7", "1"), None), 0.0)
    take(model, ALICE, "7", "1")
    out = model.apply(Online((ALICE, BOB)), 1.0)
    (view,) = tells(out, to=None, kind=DeskView)
    assert view.operators == (ALICE, BOB)
    assert [(h.conversation, h.holder) for h in view.held] == [("1", ALICE)]


def test_loading_a_snapshot_fetches_what_operators_here_hold():
    model = DeskModel(hold=3)
    model.arrive(ALICE, 0.0)
    snapshot = Snapshot(
        clients=(client("1"), client("2")),
        lines=(line("7", "1"), line("8", "2")),
        holders=(("1", ALICE), ("2", BOB)),
        operators=(ALICE, BOB),
    )
    out = model.load(snapshot, 5.0)
    assert Fetch("1") in out
    assert Fetch("2") not in out  # Bob's desk fetches his
    (view,) = tells(out, kind=DeskView)
    assert [v.holder for v in view.lines] == [ALICE, BOB]


# The promises under any order of events and commands.

OPERATORS = [ALICE, BOB]
BY_NAME = {o.name: o for o in OPERATORS}


@st.composite
def steps(draw):
    return draw(
        st.lists(
            st.tuples(
                st.sampled_from(
                    # Weighted towards what can break the promises.
                    [
                        *("line", "take", "take", "answer", "answer", "answer"),
                        *("deliver", "deliver", "handback", "end", "drop", "close"),
                    ]
                ),
                st.integers(0, 1),  # conversation
                st.integers(0, 2),  # operator: Alice, Bob, or the holder
            ),
            min_size=20,
            max_size=80,
        )
    )


@settings(max_examples=200)
@given(steps())
def test_any_sequence_keeps_one_answer_per_line_and_the_hold_limit(plan):
    """A queue that does what the model asks, late (``deliver``), with
    lines, departures and ends thrown in: the model never asks for two
    answers to one line, nor lets an operator hold more than the limit."""
    model = DeskModel(hold=1)
    answered: list[str] = []
    pending: list[tuple[Do, str]] = []  # asked of the queue, not done yet
    entries = iter(range(1000))
    open_keys: set[str] = set()
    for op in OPERATORS:
        model.arrive(op, 0.0)

    # What the queue holds, as the broker queue says it.
    queue_lines: dict[str, str] = {}  # waiting entry: conversation
    queue_holders: dict[str, str] = {}  # conversation: operator name

    def deliver(done: Do, key: str) -> None:
        command, name = done.command, done.by.name
        holder = queue_holders.get(key)
        if isinstance(command, Take):
            if command.entry not in queue_lines or holder not in (None, name):
                model.not_done(done)
                return
            queue_holders[key] = name
            model.apply(Taken(command.entry, key, done.by), 0.0)
        elif isinstance(command, Answer):
            if command.entry not in queue_lines or holder != name:
                return
            del queue_lines[command.entry]
            model.apply(Answered(command.entry, key, done.by), 0.0)
        elif isinstance(command, HandBack) and holder == name:
            del queue_holders[key]
            model.apply(HandedBack(key, done.by), 0.0)

    for kind, n, who in plan:
        key = str(n)
        holder = model._holder(key)
        operator = holder if who == 2 and holder is not None else OPERATORS[who % 2]
        waiting = [v.entry for v in model.desk(0.0).lines if v.conversation == key]
        if kind == "deliver":
            if pending:
                deliver(*pending.pop(0))
            continue
        if kind == "line":
            if key not in open_keys:
                open_keys.add(key)
                model.apply(Opened(client(key)), 0.0)
            entry = str(next(entries))
            queue_lines[entry] = key
            held = queue_holders.get(key)
            model.apply(Queued(line(entry, key), BY_NAME.get(held or "")), 0.0)
            continue
        mine = [e for e, k in queue_lines.items() if k == key]
        if kind == "drop" and mine:
            del queue_lines[mine[0]]
            model.apply(Dropped(mine[0], key, "left"), 0.0)
            continue
        if kind == "close" and key in open_keys:
            open_keys.discard(key)
            for entry in mine:
                del queue_lines[entry]
                model.apply(Dropped(entry, key, "quit"), 0.0)
            queue_holders.pop(key, None)
            model.apply(Closed(key, "quit"), 0.0)
            continue
        command = {
            "take": Take(waiting[0]) if waiting else Take("none"),
            "answer": Answer(waiting[0] if waiting else "none", "hi"),
            "handback": HandBack(key),
            "end": End(key),
        }.get(kind)
        if command is None:
            continue
        decided = model.command(operator, command, 0.0)
        if isinstance(decided, Refusal):
            continue
        for output in decided:
            if isinstance(output, Do):
                if isinstance(output.command, Answer):
                    answered.append(output.command.entry)
                pending.append((output, key))
        for op in OPERATORS:
            assert model.holding(op.name) <= model.hold
    assert len(answered) == len(set(answered))
