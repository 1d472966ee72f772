"""The conversation engine alone: no Twisted, no transport, no reactor.

Every server policy is decided here (turns, flow, idle, half-close,
lifecycle, transcript, reasons), so every one is tested here, by feeding
inputs with an explicit ``now`` and reading the actions.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockchat._core.engine import (
    Close,
    Deliver,
    Log,
    PauseReading,
    Reason,
    Record,
    ResumeReading,
    Send,
    SendMessage,
    ServerConversation,
    Settings,
    TelnetReply,
)
from sockchat._core.framing import RawFraming
from sockchat._core.reports import Ended, LineRefused, TurnMoved
from sockchat._core.rules import ITEM_OVERHEAD, Event, Flow, Phase, Turn
from sockchat._core.wire import Notice, NoticeKind

ROOT = Path(__file__).resolve().parents[2]

WELCOME = (
    b"!info welcome: sockchat conversation 1. You speak first, one line at a "
    b"time, and wait for each answer. Send q to quit.\n"
)


def engine(**kw) -> ServerConversation:
    websocket = kw.pop("websocket", False)
    conversation = ServerConversation(
        Settings(**kw), 1, "127.0.0.1:5000", 0.0, websocket=websocket
    )
    return conversation


def drain(conversation: ServerConversation) -> list:
    """Every action the engine has now, without logs."""
    out = []
    while (action := conversation.next_action()) is not None:
        if not isinstance(action, Log):
            out.append(action)
    return out


def started(**kw) -> ServerConversation:
    conversation = engine(**kw)
    conversation.start(0.0)
    drain(conversation)
    return conversation


def echo(conversation: ServerConversation, now: float = 1.0) -> list:
    """Run the actions, answering each delivered line with itself at once."""
    out = []
    while (action := conversation.next_action()) is not None:
        if isinstance(action, Log):
            continue
        out.append(action)
        if isinstance(action, Deliver):
            conversation.answered(action.text, now)
    return out


def bye(code: str, text: str) -> Notice:
    return Notice(NoticeKind.BYE, code, text)


# Turns.


def test_a_line_in_turn_is_delivered_and_its_answer_sent():
    conversation = started()
    conversation.receive_data("你好\r\n".encode(), 1.0)
    assert drain(conversation) == [Deliver(1, "你好")]
    conversation.answered("!hi", 1.0)
    assert drain(conversation) == [Send(b"!!hi\n")]
    assert conversation.turn is Turn.CLIENT
    assert conversation.answers == 1


def test_a_line_out_of_turn_is_refused_and_the_turn_stays():
    conversation = started()
    conversation.receive_data(b"one\ntwo\n", 1.0)
    deliver, refusal = drain(conversation)
    assert deliver == Deliver(1, "one")
    assert refusal.data.startswith(b'!error out-of-turn: line 2 "two" arrived before')
    assert conversation.turn is Turn.SERVER


def test_q_ends_with_a_bye_and_the_quit_reason():
    conversation = started()
    conversation.receive_data(b"q\n", 1.0)
    assert drain(conversation) == [
        Send(b"!bye quit: goodbye.\n"),
        Close(Reason.QUIT, "quit"),
    ]


def test_an_answer_of_q_ends_it_with_answered_quit():
    conversation = started()
    conversation.receive_data(b"bye\n", 1.0)
    drain(conversation)
    conversation.answered("q", 1.0)
    assert drain(conversation) == [
        Send(b"q\n"),
        Close(Reason.ANSWERED_QUIT, "answered-quit"),
    ]
    assert conversation.code == "answered-quit"


def test_a_bad_answer_gives_the_turn_back_with_a_notice():
    conversation = started()
    conversation.receive_data(b"hi\n", 1.0)
    drain(conversation)
    conversation.answered("two\nlines", 1.0)
    (notice,) = drain(conversation)
    assert notice.data.startswith(
        b"!error responder-failed: line 1 could not be answered"
    )
    conversation.answered(42, 1.0)  # too late: nothing is owed now
    assert drain(conversation) == []
    assert conversation.turn is Turn.CLIENT


def test_a_timeout_says_so_and_gives_the_turn_back():
    conversation = started(answer_timeout=5)
    conversation.receive_data(b"hi\n", 1.0)
    drain(conversation)
    conversation.failed(6.0, timed_out=True)
    (notice,) = drain(conversation)
    assert notice.data == (
        b"!error responder-timeout: line 1 could not be answered (no answer within "
        b"5 seconds). It is your turn again.\n"
    )


def test_an_answer_after_the_end_is_dropped_quietly():
    conversation = started()
    conversation.receive_data(b"hi\n", 1.0)
    drain(conversation)
    conversation.end(bye("kicked", "bye."), 2.0)
    drain(conversation)
    conversation.answered("late", 3.0)
    conversation.failed(3.0, raised="CancelledError")
    assert drain(conversation) == []


def test_an_out_of_turn_excerpt_is_short_and_safe():
    conversation = started()
    conversation.receive_data(b"first\n" + b"\x1b[2J" + b"x" * 100 + b"\n", 1.0)
    _, notice = drain(conversation)
    assert b"\x1b" not in notice.data
    assert b"\\x1b[2J" in notice.data
    assert b"x" * 50 not in notice.data


def test_q_ends_it_even_out_of_turn_and_nothing_after_counts():
    conversation = started()
    conversation.receive_data(b"first\nq\nmore\n", 1.0)
    assert drain(conversation)[1:] == [
        Send(b"!bye quit: goodbye.\n"),
        Close(Reason.QUIT, "quit"),
    ]


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (
            b"x" * 70 + b"\n",
            b"line 1 was skipped, not delivered: it has 70 bytes, over the 64-byte "
            b"limit. It is your turn again.",
        ),
        (
            b"\xff\n",
            b"line 1 was refused, not delivered: it is not valid UTF-8 (invalid "
            b"start byte at byte 1). It is your turn again.",
        ),
    ],
)
def test_refused_lines_say_why_and_leave_the_turn_with_the_client(data, text):
    conversation = started(max_line=64)
    conversation.receive_data(data + b"next\n", 1.0)
    notice, deliver = drain(conversation)
    assert text in notice.data
    assert deliver == Deliver(2, "next")


def test_a_listening_conversation_refuses_a_line_before_the_first():
    conversation = engine()
    conversation.start(0.0, listen=True)
    drain(conversation)
    conversation.receive_data(b"me first\n", 1.0)
    (refusal,) = drain(conversation)
    assert b"before the other side's first line" in refusal.data
    conversation.failed(2.0, why="it broke")
    (notice,) = drain(conversation)
    assert notice.data == (
        b"!error responder-failed: the first line could not be given (it broke). "
        b"It is your turn now.\n"
    )
    assert conversation.turn is Turn.CLIENT


# Lifecycle.


def test_notices_from_the_started_hook_follow_the_welcome():
    conversation = engine()
    conversation.hold_notices()
    conversation.notify(Notice(NoticeKind.INFO, "paired", "hello"), 0.0)
    assert drain(conversation) == []
    conversation.start(0.0)
    assert drain(conversation) == [Send(WELCOME), Send(b"!info paired: hello\n")]


def test_the_server_may_speak_first():
    conversation = engine()
    conversation.start(0.0, listen=True)
    (welcome,) = drain(conversation)
    assert welcome.data.startswith(b"!info listen: ")
    assert conversation.turn is Turn.SERVER
    conversation.answered("hello, who is there?", 1.0)
    assert drain(conversation) == [Send(b"hello, who is there?\n")]


def test_a_failing_started_hook_means_unavailable():
    conversation = engine()
    conversation.hold_notices()
    conversation.start_failed(0.0)
    (notice, close) = drain(conversation)
    assert notice.data.startswith(b"!bye unavailable: ")
    assert close == Close(Reason.UNAVAILABLE, "unavailable")


def test_a_hook_that_ends_it_gets_no_welcome():
    conversation = engine()
    conversation.hold_notices()
    conversation.end(bye("full", "no room."), 0.0)
    conversation.start(0.0)
    assert drain(conversation) == [
        Send(b"!bye full: no room.\n"),
        Close(Reason.RESPONDER, "full"),
    ]


# Idle.


def test_the_idle_deadline_counts_from_the_last_line_or_answer():
    conversation = started(idle_timeout=60)
    assert conversation.deadline == 60
    conversation.receive_data(b"hi\n", 50.0)
    echo(conversation, 50.0)
    assert conversation.deadline == 110
    conversation.tick(100.0)
    assert drain(conversation) == []
    conversation.tick(110.0)
    notice, close = drain(conversation)
    assert (
        notice.data == b"!bye idle-timeout: no line from you for 60 seconds; goodbye.\n"
    )
    assert close.reason is Reason.IDLE_TIMEOUT
    assert conversation.deadline is None


def test_waiting_for_an_answer_is_not_idling():
    conversation = started(idle_timeout=60)
    conversation.receive_data(b"hi\n", 10.0)
    drain(conversation)
    conversation.tick(70.0)
    assert drain(conversation) == []
    assert conversation.deadline == 130
    conversation.answered("ok", 100.0)
    drain(conversation)
    conversation.tick(130.0)
    assert drain(conversation) == []
    assert conversation.deadline == 160


# Half-close.


def test_end_of_input_waits_for_what_is_owed():
    conversation = started()
    conversation.receive_data(b"last\n", 1.0)
    drain(conversation)
    conversation.end_of_input(1.0)
    assert drain(conversation) == []
    conversation.answered("done", 2.0)
    assert drain(conversation) == [
        Send(b"done\n"),
        Send(b"!bye end-of-input: you closed your side of the connection; goodbye.\n"),
        Close(Reason.END_OF_INPUT, "end-of-input"),
    ]


def test_closing_its_side_before_a_held_welcome_without_a_line_ends_it():
    # A responder holds the welcome back (WelcomeLater); a probe closes its
    # side meanwhile: nothing is owed to it, so it ends at once, and its
    # responder hears of it.
    conversation = engine()
    conversation.hold_notices()
    conversation.end_of_input(1.0)
    assert drain(conversation) == [
        Send(b"!bye end-of-input: you closed your side of the connection; goodbye.\n"),
        Close(Reason.END_OF_INPUT, "end-of-input"),
    ]
    conversation.start(2.0)  # the decision comes too late: nothing more
    assert drain(conversation) == []


def test_closing_its_side_before_a_held_welcome_after_a_line_waits_for_it():
    conversation = engine()
    conversation.hold_notices()
    conversation.receive_data(b"hello\n", 1.0)
    conversation.end_of_input(1.0)
    assert drain(conversation) == []
    conversation.start(2.0)
    welcome, deliver = drain(conversation)
    assert welcome == Send(WELCOME)
    assert deliver == Deliver(1, "hello")
    conversation.answered("hi", 3.0)
    assert drain(conversation) == [
        Send(b"hi\n"),
        Send(b"!bye end-of-input: you closed your side of the connection; goodbye.\n"),
        Close(Reason.END_OF_INPUT, "end-of-input"),
    ]


# Flow and memory.


def test_lines_are_held_while_the_client_does_not_read_then_answered_in_order():
    conversation = started(max_output=10_000)
    conversation.output_full(1.0)
    conversation.receive_data(b"one\ntwo\n", 1.0)
    assert echo(conversation) == []
    assert conversation.flow is Flow.HOLDING
    conversation.output_drained(2.0)
    assert [a for a in echo(conversation) if isinstance(a, Send)] == [
        Send(b"one\n"),
        Send(b"two\n"),
    ]


@pytest.mark.parametrize(
    "chunk",
    [b"\n" * 4096, b"a\n" * 2048, b"\xff\xfd\x01" * 1365],
    ids=["empty lines", "2-byte lines", "telnet negotiations"],
)
def test_what_a_client_that_never_reads_makes_us_hold_is_counted_at_its_cost(chunk):
    limit = 64 * 1024
    conversation = started(max_output=limit)
    conversation.output_full(1.0)
    chunks = 0
    while conversation.flow is not Flow.STOPPED:
        conversation.receive_data(chunk, 1.0)
        echo(conversation)
        chunks += 1
        assert chunks < 1000, "reading was never paused"
    # Counted at cost, an empty line is not free: the bound comes after a
    # few chunks, not after max_output bytes of them.
    assert chunks * len(chunk) < 2 * limit
    # Over the bound by at most what one read brought.
    one_read = 4096 * (sys.getsizeof("") + ITEM_OVERHEAD) + 2 * sys.getsizeof(chunk)
    assert conversation.held <= limit + one_read


def test_pausing_is_asked_once_and_resuming_once():
    conversation = started(max_output=1000)
    conversation.output_full(1.0)
    actions = []
    for _ in range(30):
        conversation.receive_data(b"x" * 50 + b"\n", 1.0)
        actions += echo(conversation)
    assert actions.count(PauseReading()) == 1
    conversation.output_drained(2.0)
    actions = echo(conversation)
    assert actions.count(ResumeReading()) == 1
    assert len([a for a in actions if isinstance(a, Send)]) == 30


def test_a_websocket_stops_reading_as_soon_as_its_output_is_full():
    conversation = started(websocket=True)
    conversation.output_full(1.0)
    assert drain(conversation) == [PauseReading()]
    conversation.bytes_written(10)  # a pong
    assert conversation.held == 10 + ITEM_OVERHEAD


# Raw framing.


def test_raw_messages_wait_their_turn_and_q_does_not():
    conversation = started(framing=RawFraming())
    conversation.receive_data(b"first", 1.0)
    assert drain(conversation) == [Deliver(1, "first")]
    conversation.receive_data(b"second", 1.0)
    assert drain(conversation) == []
    conversation.answered("1", 2.0)
    assert drain(conversation) == [Send(b"1"), Deliver(2, "second")]
    conversation.receive_data(b"third", 2.0)
    conversation.receive_data(b"q", 2.0)
    assert drain(conversation) == [Close(Reason.QUIT, "quit")]


def test_raw_messages_queued_past_the_bound_pause_reading_until_handled():
    conversation = started(framing=RawFraming(), max_output=2000)
    conversation.receive_data(b"first", 1.0)
    drain(conversation)
    actions = []
    for n in range(40):
        conversation.receive_data(b"m%d" % n, 1.0)
        actions += drain(conversation)
    assert actions == [PauseReading()]
    assert conversation.flow is Flow.BACKLOGGED
    conversation.answered("ok", 2.0)
    actions = echo(conversation)
    assert actions.count(ResumeReading()) == 1  # once the queue is empty
    assert [a.data for a in actions if isinstance(a, Send)] == [b"ok"] + [
        b"m%d" % n for n in range(40)
    ]
    assert conversation.flow is Flow.FLOWING


# WebSocket messages.


def test_messages_in_pieces_make_one_line_and_long_ones_are_refused():
    conversation = started(websocket=True, max_line=10)
    conversation.receive_message("hel", 1.0, final=False)
    conversation.receive_message("lo", 1.0)
    assert drain(conversation) == [Deliver(1, "hello")]
    conversation.answered("!hi", 1.0)
    assert drain(conversation) == [SendMessage("!!hi")]
    conversation.receive_message("x" * 8, 1.0, final=False)
    conversation.receive_message("x" * 8, 1.0)
    (refusal,) = drain(conversation)
    assert refusal.text.startswith("!error line-too-long: line 2 was skipped")
    assert conversation.buffered == 0


@pytest.mark.parametrize(
    ("feed", "reason"),
    [
        (lambda c: c.receive_message("a\nb", 1.0), Reason.NEWLINE_IN_MESSAGE),
        (lambda c: c.receive_binary(1.0), Reason.BINARY_MESSAGE),
    ],
)
def test_a_message_that_cannot_be_a_line_closes_with_its_reason(feed, reason):
    conversation = started(websocket=True)
    feed(conversation)
    assert drain(conversation) == [Close(reason, reason.value)]


# Transcript and the end.


def test_the_transcript_has_each_line_answer_and_notice_in_order():
    conversation = engine(transcript=True)
    conversation.start(0.0)
    conversation.receive_data(b"hi\n\xff\n", 1.0)
    actions = echo(conversation, 1.0)
    entries = [
        (a.entry.direction, a.entry.kind, a.entry.text)
        for a in actions
        if isinstance(a, Record)
    ]
    assert entries[0][:2] == ("out", "notice")
    assert entries[1:3] == [("in", "line", "hi"), ("out", "answer", "hi")]
    assert entries[3][:2] == ("in", "invalid")
    assert entries[4][:2] == ("out", "notice")


def test_the_last_log_line_says_why_and_counts_refusals():
    conversation = started()
    conversation.receive_data(b"\xff\n\xfe\n", 1.0)
    drain(conversation)
    conversation.lost(5.0, clean=True, why="")
    logs = []
    while (action := conversation.next_action()) is not None:
        logs.append(action)
    (last,) = logs
    fields = dict(last.fields)
    assert fields["refused"] == 2
    assert last.level == "info"
    assert fields["why"] == "the client closed the connection without a q"


def test_a_probe_that_says_nothing_logs_one_debug_event():
    conversation = engine()
    conversation.start(0.0)
    drain(conversation)
    conversation.lost(0.1, clean=True, why="")
    (event,) = [a for a in iter(conversation.next_action, None)]
    assert event.level == "debug"


# Any interleaving of inputs.

_LINE = st.sampled_from([b"hi\n", b"\n", b"x" * 30 + b"\n", b"\xff\n", b"q\n", b"half"])
_INPUT = st.one_of(
    st.tuples(st.just("data"), st.lists(_LINE, min_size=1, max_size=8)),
    st.just(("answer",)),
    st.just(("fail",)),
    st.just(("full",)),
    st.just(("drained",)),
    st.just(("tick",)),
    st.just(("eof",)),
    st.just(("notify",)),
    st.just(("end",)),
    st.just(("lost",)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_INPUT, max_size=40), st.booleans())
def test_any_interleaving_keeps_the_promises(inputs, raw):
    limit = 2000
    framing = RawFraming() if raw else Settings().framing
    conversation = started(max_output=limit, idle_timeout=60, framing=framing)
    now = 1.0
    paused = False
    owed = 0  # delivered lines not yet answered or refused
    closed = False
    for step in inputs:
        now += 1.0
        kind = step[0]
        if kind == "data":
            if paused or conversation.phase > Phase.OPEN:
                continue  # a real transport reads nothing while paused
            chunk = b"".join(step[1])
            conversation.receive_data(chunk, now)
            bound = limit + (len(step[1]) + 1) * (sys.getsizeof(chunk) + ITEM_OVERHEAD)
        elif kind == "answer":
            if owed:
                conversation.answered("ok", now)
        elif kind == "fail":
            if owed:
                conversation.failed(now, raised="ValueError")
        elif kind == "full":
            conversation.output_full(now)
        elif kind == "drained":
            conversation.output_drained(now)
        elif kind == "tick":
            conversation.tick(now + 60)
        elif kind == "eof":
            conversation.end_of_input(now)
        elif kind == "notify":
            conversation.notify(Notice(NoticeKind.INFO, "note", "hello"), now)
        elif kind == "end":
            conversation.end(bye("kicked", "bye."), now)
        elif kind == "lost":
            conversation.lost(now, clean=False, why="reset")
        for action in iter(conversation.next_action, None):
            assert not closed or isinstance(action, Log), "a bye is always last"
            if isinstance(action, Deliver):
                assert owed == 0, "one line at a time is owed an answer"
                owed = 1
            elif (
                isinstance(action, Send)
                and owed
                and (
                    not action.data.startswith(b"!")
                    or action.data.startswith(b"!error responder")
                )
            ):
                owed = 0  # its answer, or the notice that it failed
            elif isinstance(action, PauseReading):
                assert not paused
                paused = True
            elif isinstance(action, ResumeReading):
                assert paused
                paused = False
            elif isinstance(action, Close):
                closed = True
        if kind == "data" and conversation.phase <= Phase.OPEN:
            assert conversation.held <= bound, "held memory stays within its bound"
        if conversation.held > limit and conversation.phase <= Phase.OPEN:
            assert paused, "past the bound, reading is paused"


def test_actions_are_frozen_and_compare_by_type():
    assert Send(b"x") != SendMessage(b"x")  # type: ignore[arg-type]
    assert Send(b"x") == Send(b"x")
    with pytest.raises(AttributeError):
        Send(b"x").data = b"y"  # type: ignore[misc]
    assert TelnetReply(b"x") != Send(b"x")


# The usual turn in two calls (take_line, answer_now) is the same turn.


def _slow_turn(conversation, data, reply, now):
    conversation.receive_data(data, now)
    out = []
    for action in iter(conversation.next_action, None):
        if isinstance(action, Deliver):
            conversation.answered(reply(action.text), now)
        elif isinstance(action, Send):
            out.append(action.data)
    return out


def _fast_turn(conversation, data, reply, now):
    text = conversation.take_line(data, now)
    if text is None:
        return _slow_turn(conversation, data, reply, now)
    answer = reply(text)
    out = []
    data_out = conversation.answer_now(answer, now)
    if data_out is not None:
        return [data_out]
    conversation.answered(answer, now)
    for action in iter(conversation.next_action, None):
        if isinstance(action, Send):
            out.append(action.data)
        assert not isinstance(action, Deliver)
    return out


_ANSWERS = st.sampled_from(["ok", "!bang", "q", "two\nlines", "\ud800", "", "你好"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_LINE, _ANSWERS), max_size=20), st.booleans())
def test_the_usual_turn_in_two_calls_is_the_same_as_the_long_way(turns, eof):
    fast, slow = started(), started()
    now = 1.0
    for data, answer in turns:
        now += 1.0
        assert _fast_turn(fast, data, lambda _, a=answer: a, now) == _slow_turn(
            slow, data, lambda _, a=answer: a, now
        )
        for conversation in (fast, slow):
            if eof:
                conversation.end_of_input(now)
        assert [a for a in iter(fast.next_action, None) if not isinstance(a, Log)] == [
            a for a in iter(slow.next_action, None) if not isinstance(a, Log)
        ]
        for name in ("phase", "turn", "flow", "lines", "answers", "code", "deadline"):
            assert getattr(fast, name) == getattr(slow, name), name


def test_take_line_declines_what_is_not_the_usual_turn():
    conversation = started()
    assert conversation.take_line(b"first\n", 1.0) is None  # announced the slow way
    conversation.receive_data(b"first\n", 1.0)
    echo(conversation)
    assert conversation.take_line(b"two\nlines\n", 1.0) is None
    assert conversation.take_line(b"q\n", 1.0) is None
    assert conversation.take_line(b"\xff\xf4x\n", 1.0) is None  # telnet
    assert conversation.take_line(b"ok\n", 1.0) == "ok"
    assert conversation.take_line(b"again\n", 1.0) is None  # not its turn
    assert conversation.answer_now("q", 1.0) is None
    assert conversation.answer_now("fine", 2.0) == b"fine\n"
    assert conversation.deadline == 2.0 + 600
    assert (conversation.lines, conversation.answers) == (2, 2)
    assert conversation.turn is Turn.CLIENT


# Reports.


class _Reports:
    def __init__(self) -> None:
        self.heard: list = []

    def report(self, report) -> None:
        self.heard.append(report)


def test_an_observer_of_every_move_hears_each_turn_and_the_long_way_is_taken():
    conversation = started()
    conversation.receive_data(b"first\n", 1.0)  # the first turn is logged
    echo(conversation)
    reports = _Reports()
    conversation.observe(reports)
    assert conversation.take_line(b"hi\n", 2.0) == "hi"  # the short path
    assert conversation.answer_now("hi", 2.0) == b"hi\n"
    assert reports.heard == []  # the moves of a turn are not reported to it
    conversation.observe(reports, every_move=True)
    assert conversation.take_line(b"hi\n", 3.0) is None
    conversation.receive_data(b"hi\n", 3.0)
    assert echo(conversation) == [Deliver(3, "hi"), Send(b"hi\n")]
    assert reports.heard == [
        TurnMoved(Event.LINE, Phase.OPEN, Turn.SERVER),
        TurnMoved(Event.ANSWER, Phase.OPEN, Turn.CLIENT),
    ]


def test_refusals_and_the_end_are_reported_with_what_was_counted():
    conversation = started()
    reports = _Reports()
    conversation.observe(reports)
    conversation.receive_data(b"one\ntwo\n", 1.0)
    drain(conversation)
    conversation.answered("ok", 2.0)
    drain(conversation)
    conversation.bytes_out += 10
    conversation.lost(3.0, clean=True, why="")
    assert reports.heard == [
        LineRefused(2, "out-of-turn"),
        Ended("connection-lost", answers=1, bytes_in=8, bytes_out=10),
    ]


def test_lines_read_after_the_output_filled_are_counted_from_the_first_read():
    conversation = started(max_output=10_000)
    conversation.receive_data(b"hi\n", 1.0)  # a turn first: lines > 0
    echo(conversation)
    conversation.output_full(2.0)
    conversation.receive_data(b"\n" * 200, 2.0)  # 200 empty lines, held back
    assert conversation.held >= 200 * (sys.getsizeof("") + ITEM_OVERHEAD)
    assert conversation.flow is Flow.STOPPED  # past the bound in one read
