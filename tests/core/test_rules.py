"""The rules of sockchat._core.rules, each held against the engine that
follows them: every pair of every table is driven through the engine with
ordinary inputs, and the engine must do what the table says."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from sockchat._core.engine import (
    Deliver,
    Log,
    PauseReading,
    ResumeReading,
    ServerConversation,
    Settings,
)
from sockchat._core.framing import RawFraming
from sockchat._core.reports import EngineReport, FlowMoved, TurnMoved
from sockchat._core.rules import (
    FLOW,
    MOVES,
    Event,
    Flow,
    FlowAction,
    FlowEvent,
    Idle,
    Phase,
    Turn,
    idle_deadline,
    idle_verdict,
)
from sockchat._core.wire import Notice, NoticeKind

#: A bound that what the scenarios hold stays under, and one they pass.
BIG = 1_000_000
SMALL = 2_000


class Reports:
    """An engine observer that keeps what it hears."""

    def __init__(self) -> None:
        self.heard: list[EngineReport] = []

    def report(self, report: EngineReport) -> None:
        self.heard.append(report)


def engine(
    *, max_output: int = BIG, raw: bool = False, websocket: bool = False
) -> ServerConversation:
    framing = RawFraming() if raw else Settings().framing
    conversation = ServerConversation(
        Settings(max_output=max_output, framing=framing),
        1,
        "127.0.0.1:5000",
        0.0,
        websocket=websocket,
    )
    conversation.start(0.0)
    pull(conversation)
    return conversation


#: Every action pulled, as a door would have run them.
PULLED: list = []


def pull(conversation: ServerConversation) -> list:
    """What a door would run now: every action, logs left out."""
    actions = [
        action
        for action in iter(conversation.next_action, None)
        if not isinstance(action, Log)
    ]
    PULLED.extend(actions)
    return actions


def bye(conversation: ServerConversation) -> None:
    conversation.end(Notice(NoticeKind.BYE, "kicked", "bye."), 1.0)


# -- The turn rule -----------------------------------------------------------


def _in_state(phase: Phase, turn: Turn) -> ServerConversation | None:
    """An engine brought to (phase, turn) by ordinary inputs, or None."""
    conversation = ServerConversation(Settings(), 1, "127.0.0.1:5000", 0.0)
    if phase is Phase.STARTING:
        return conversation if turn is Turn.CLIENT else None
    conversation.start(0.0)
    if turn is Turn.SERVER:
        conversation.receive_data(b"hi\n", 0.0)
    pull(conversation)
    if phase is Phase.OPEN:
        return conversation
    bye(conversation)
    if phase is Phase.CLOSED:
        conversation.lost(0.0, clean=True, why="")
    pull(conversation)
    return conversation


def _apply(conversation: ServerConversation, event: Event) -> None:
    if event is Event.START:
        conversation.start(1.0)
    elif event is Event.START_LISTEN:
        conversation.start(1.0, listen=True)
    elif event is Event.LINE:
        conversation.receive_data(b"next\n", 1.0)
    elif event is Event.ANSWER:
        conversation.answered("ok", 1.0)
    elif event is Event.FAIL:
        conversation.failed(1.0, raised="ValueError")
    elif event is Event.BYE:
        bye(conversation)
    elif event is Event.LOST:
        conversation.lost(1.0, clean=True, why="")
    pull(conversation)


@pytest.mark.parametrize(
    ("phase", "turn", "event"), list(itertools.product(Phase, Turn, Event))
)
def test_every_state_and_input_moves_as_the_table_says(phase, turn, event):
    conversation = _in_state(phase, turn)
    if conversation is None:  # no input leads there
        assert not any((phase, turn) == key[:2] for key in MOVES)
        return
    assert (conversation.phase, conversation.turn) == (phase, turn)
    reports = Reports()
    conversation.observe(reports, every_move=True)
    _apply(conversation, event)
    expected = MOVES.get((phase, turn, event))
    if expected is None:
        assert (conversation.phase, conversation.turn) == (phase, turn)
        assert not [r for r in reports.heard if isinstance(r, TurnMoved)]
    else:
        assert (conversation.phase, conversation.turn) == expected
        moved = [r for r in reports.heard if isinstance(r, TurnMoved)]
        assert moved[0] == TurnMoved(event, *expected)


# -- The flow rule -----------------------------------------------------------
#
# Each scenario brings an engine to a flow state with ordinary inputs, then
# gives it the input that makes the event of a row (or would, if the event
# could happen there).  Inputs may come while the door runs the actions
# (a write that fills the transport pauses it at once), so a scenario does
# not always pull every action between two inputs.


def _delivered_raw() -> ServerConversation:
    """Raw framing, a message delivered: its answer is owed."""
    conversation = engine(raw=True)
    conversation.receive_data(b"first", 1.0)
    pull(conversation)
    return conversation


def _queued_raw(max_output: int = BIG) -> ServerConversation:
    """Raw framing, a message waiting for the answer to the one before."""
    conversation = engine(raw=True, max_output=max_output)
    conversation.receive_data(b"first", 1.0)
    pull(conversation)
    conversation.receive_data(b"second", 1.0)
    pull(conversation)
    return conversation


def _backlogged_raw() -> ServerConversation:
    """Raw framing, messages waiting past the bound: reading paused."""
    conversation = _queued_raw(SMALL)
    while conversation.flow is not Flow.BACKLOGGED:
        conversation.receive_data(b"m" * 100, 1.0)
        pull(conversation)
    return conversation


def _holding(
    *, line: bool = False, raw: bool = False, max_output: int = BIG
) -> ServerConversation:
    """The client does not read; with *line*, it said a line meanwhile."""
    conversation = engine(raw=raw, max_output=max_output)
    if raw:
        conversation.receive_data(b"first", 1.0)
        pull(conversation)
    conversation.output_full(1.0)
    if line:
        conversation.receive_data(b"held\n", 1.0)
        pull(conversation)
    return conversation


def _stopped(
    *, items_over: bool = False, websocket: bool = False
) -> ServerConversation:
    """Holding past the bound: by the lines held (*items_over*), or by an
    answer it did not read."""
    conversation = engine(max_output=SMALL, websocket=websocket)
    if websocket:
        conversation.output_full(1.0)  # a WebSocket stops at once
        if items_over:
            conversation.receive_message("x" * (SMALL // 2), 1.0)
            conversation.receive_message("x" * (SMALL // 2), 1.0)
        pull(conversation)
        return conversation
    if items_over:
        conversation.output_full(1.0)
        conversation.receive_data(b"x" * SMALL + b"\n", 1.0)
        pull(conversation)
        return conversation
    conversation.receive_data(b"hi\n", 1.0)
    pull(conversation)
    conversation.output_full(1.0)
    conversation.answered("x" * SMALL, 1.0)
    pull(conversation)
    return conversation


def _websocket_queued() -> ServerConversation:
    """A WebSocket that read again, a line held back not handled yet."""
    conversation = engine(websocket=True)
    conversation.output_full(1.0)
    conversation.receive_message("held", 1.0)
    conversation.output_drained(1.0)
    return conversation


def _websocket_backlogged() -> ServerConversation:
    """A WebSocket that read again, lines held back past the bound."""
    conversation = _stopped(items_over=True, websocket=True)
    conversation.output_drained(1.0)
    return conversation


def _drained_with_held_line() -> ServerConversation:
    conversation = _holding(line=True)
    conversation.output_drained(1.0)
    return conversation


def _full(c: ServerConversation) -> None:
    c.output_full(2.0)


def _drained(c: ServerConversation) -> None:
    c.output_drained(2.0)


def _message_before_the_answer(c: ServerConversation) -> None:
    c.receive_data(b"early", 2.0)
    pull(c)


def _more_than_the_bound(c: ServerConversation) -> None:
    if c.settings.framing.queues_out_of_turn:
        c.receive_data(b"m" * (2 * SMALL), 2.0)
    else:
        c.receive_data(b"x" * (2 * SMALL) + b"\n", 2.0)


def _handle_what_waits(c: ServerConversation) -> None:
    """The door runs the actions, answering each line at once."""
    if c.turn is Turn.SERVER:
        c.answered("ok", 2.0)
    for action in iter(c.next_action, None):
        PULLED.append(action)
        if isinstance(action, Deliver):
            c.answered(action.text, 2.0)


Scenario = tuple[Callable[[], ServerConversation], Callable[[ServerConversation], None]]

#: (flow, event) -> how to get there, and the input that makes the event.
SCENARIOS: dict[tuple[Flow, FlowEvent], Scenario] = {
    (Flow.FLOWING, FlowEvent.OUTPUT_FULL): (engine, _full),
    (Flow.FLOWING, FlowEvent.OUTPUT_FULL_UNCOUNTED): (
        lambda: engine(websocket=True),
        _full,
    ),
    (Flow.FLOWING, FlowEvent.OUTPUT_DRAINED): (engine, _drained),
    (Flow.FLOWING, FlowEvent.OUTPUT_DRAINED_OVER_BOUND): (engine, _drained),
    (Flow.FLOWING, FlowEvent.LINE_WAITS): (
        lambda: engine(raw=True),
        lambda c: (
            c.receive_data(b"first", 2.0),
            pull(c),
            _message_before_the_answer(c),
        ),
    ),
    (Flow.FLOWING, FlowEvent.CAUGHT_UP): (
        engine,
        lambda c: (c.receive_data(b"one\ntwo\n", 2.0), pull(c)),
    ),
    (Flow.QUEUED, FlowEvent.OUTPUT_FULL): (_queued_raw, _full),
    (Flow.QUEUED, FlowEvent.OUTPUT_FULL_UNCOUNTED): (_websocket_queued, _full),
    (Flow.QUEUED, FlowEvent.OUTPUT_DRAINED): (_queued_raw, _drained),
    (Flow.QUEUED, FlowEvent.OUTPUT_DRAINED_OVER_BOUND): (_queued_raw, _drained),
    (Flow.QUEUED, FlowEvent.LINE_WAITS): (_queued_raw, _message_before_the_answer),
    (Flow.QUEUED, FlowEvent.OVER_BOUND): (
        lambda: _queued_raw(SMALL),
        _more_than_the_bound,
    ),
    (Flow.QUEUED, FlowEvent.CAUGHT_UP): (_queued_raw, _handle_what_waits),
    (Flow.BACKLOGGED, FlowEvent.OUTPUT_FULL): (_backlogged_raw, _full),
    (Flow.BACKLOGGED, FlowEvent.OUTPUT_FULL_UNCOUNTED): (_websocket_backlogged, _full),
    (Flow.BACKLOGGED, FlowEvent.OUTPUT_DRAINED): (_backlogged_raw, _drained),
    (Flow.BACKLOGGED, FlowEvent.OUTPUT_DRAINED_OVER_BOUND): (_backlogged_raw, _drained),
    (Flow.BACKLOGGED, FlowEvent.LINE_WAITS): (
        _backlogged_raw,
        _message_before_the_answer,
    ),
    (Flow.BACKLOGGED, FlowEvent.OVER_BOUND): (_backlogged_raw, _more_than_the_bound),
    (Flow.BACKLOGGED, FlowEvent.CAUGHT_UP): (_backlogged_raw, _handle_what_waits),
    (Flow.HOLDING, FlowEvent.OUTPUT_FULL): (_holding, _full),
    (Flow.HOLDING, FlowEvent.OUTPUT_DRAINED): (
        lambda: _holding(line=True),
        _drained,
    ),
    (Flow.HOLDING, FlowEvent.LINE_WAITS): (
        lambda: _holding(raw=True),
        _message_before_the_answer,
    ),
    (Flow.HOLDING, FlowEvent.OVER_BOUND): (
        lambda: _holding(line=True, max_output=SMALL),
        _more_than_the_bound,
    ),
    (Flow.HOLDING, FlowEvent.CAUGHT_UP): (
        lambda: _holding(line=True),
        _handle_what_waits,
    ),
    (Flow.STOPPED, FlowEvent.OUTPUT_FULL): (_stopped, _full),
    (Flow.STOPPED, FlowEvent.OUTPUT_FULL_UNCOUNTED): (
        lambda: _stopped(websocket=True),
        _full,
    ),
    (Flow.STOPPED, FlowEvent.OUTPUT_DRAINED): (_stopped, _drained),
    (Flow.STOPPED, FlowEvent.OUTPUT_DRAINED_OVER_BOUND): (
        lambda: _stopped(items_over=True),
        _drained,
    ),
    (Flow.STOPPED, FlowEvent.LINE_WAITS): (
        lambda: _stopped(items_over=True),
        _message_before_the_answer,
    ),
    (Flow.STOPPED, FlowEvent.OVER_BOUND): (_stopped, _more_than_the_bound),
    (Flow.STOPPED, FlowEvent.CAUGHT_UP): (_stopped, _handle_what_waits),
}

#: The pairs no input leads to, and why.
UNREACHABLE = {
    (Flow.FLOWING, FlowEvent.OVER_BOUND): "nothing is counted while flowing",
    (Flow.HOLDING, FlowEvent.OUTPUT_FULL_UNCOUNTED): "a WebSocket never holds",
    (Flow.HOLDING, FlowEvent.OUTPUT_DRAINED_OVER_BOUND): (
        "holding past the bound is STOPPED"
    ),
}


def test_every_pair_of_the_flow_table_has_a_scenario_or_a_reason():
    pairs = set(itertools.product(Flow, FlowEvent))
    assert pairs == set(SCENARIOS) | set(UNREACHABLE)
    assert not set(SCENARIOS) & set(UNREACHABLE)
    assert not set(FLOW) & set(UNREACHABLE)


@pytest.mark.parametrize(("flow", "event"), sorted(SCENARIOS))
def test_every_flow_state_and_input_moves_as_the_table_says(flow, event):
    make, apply = SCENARIOS[flow, event]
    conversation = make()
    assert conversation.flow is flow, "the scenario did not reach its state"
    reports = Reports()
    conversation.observe(reports)
    PULLED.clear()
    apply(conversation)
    moves = [r for r in reports.heard if isinstance(r, FlowMoved)]
    expected = FLOW.get((flow, event))
    if expected is None:  # nothing moves
        assert moves == []
        assert conversation.flow is flow
        pull(conversation)
        assert not {PauseReading(), ResumeReading()} & set(PULLED)
        return
    after, action = expected
    assert moves, f"{event.name} did not happen in {flow.name}"
    assert moves[0] == FlowMoved(event, after, action)
    if len(moves) == 1:
        assert conversation.flow is after
    pull(conversation)
    reading = [a for a in PULLED if a in (PauseReading(), ResumeReading())]
    if action is FlowAction.PAUSE:
        assert reading[:1] == [PauseReading()]
    elif action is FlowAction.RESUME:
        assert reading[:1] == [ResumeReading()]


def test_once_closing_the_flow_does_not_move():
    conversation = engine()
    bye(conversation)
    conversation.output_full(1.0)
    assert conversation.flow is Flow.FLOWING


# -- The idle rule -----------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "turn", "now", "verdict"),
    [
        (Phase.OPEN, Turn.CLIENT, 59.0, Idle.NOT_YET),
        (Phase.OPEN, Turn.CLIENT, 60.0, Idle.IDLE),
        (Phase.OPEN, Turn.SERVER, 600.0, Idle.WAITING),
        (Phase.STARTING, Turn.CLIENT, 600.0, Idle.IDLE),
        (Phase.CLOSING, Turn.CLIENT, 600.0, Idle.NEVER),
    ],
)
def test_the_idle_rule(phase, turn, now, verdict):
    assert idle_verdict(phase, turn, 0.0, 60.0, now) is verdict
    assert idle_verdict(phase, turn, 0.0, None, now) is Idle.NEVER


def test_the_idle_deadline_is_when_the_rule_may_next_say_idle():
    assert idle_deadline(Phase.OPEN, 10.0, 60.0) == 70.0
    assert idle_deadline(Phase.OPEN, 10.0, None) is None
    assert idle_deadline(Phase.CLOSING, 10.0, 60.0) is None


def test_the_idle_clock_starts_at_the_answer_not_at_the_line():
    conversation = ServerConversation(Settings(idle_timeout=60), 1, "peer", 0.0)
    conversation.start(0.0)
    pull(conversation)
    conversation.receive_data(b"hi\n", 10.0)
    pull(conversation)
    conversation.answered("ok", 500.0)  # the server took its time
    pull(conversation)
    conversation.tick(559.0)
    assert pull(conversation) == []
    assert conversation.deadline == 560.0
