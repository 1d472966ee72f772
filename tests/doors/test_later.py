"""``Later``: an answer to come, with one giver and one taker (what the
broker's queues give the server instead of a Deferred, issue 23)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import AlreadyCalledError, CancelledError, Deferred
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from sockchat._responders.contract import as_deferred
from sockchat._responders.later import Later


class Taker:
    def __init__(self) -> None:
        self.got: list[object] = []

    def answered(self, value: object) -> None:
        self.got.append(("answer", value))

    def failed(self, failure: Failure) -> None:
        self.got.append(("failure", failure.type))


@pytest.mark.parametrize("taker_first", [True, False])
def test_the_answer_reaches_the_taker_whenever_it_takes(taker_first):
    later: Later[str] = Later()
    taker = Taker()
    if taker_first:
        later.then(taker.answered, taker.failed)
        assert taker.got == []
    later.answer("hi")
    assert later.called
    if not taker_first:
        later.then(taker.answered, taker.failed)
    assert taker.got == [("answer", "hi")]


@pytest.mark.parametrize("taker_first", [True, False])
def test_a_failure_reaches_the_taker_as_a_failure(taker_first):
    later: Later[str] = Later()
    taker = Taker()
    if taker_first:
        later.then(taker.answered, taker.failed)
    later.fail(ValueError("no"))
    if not taker_first:
        later.then(taker.answered, taker.failed)
    assert taker.got == [("failure", ValueError)]


def test_it_is_given_once_and_taken_once():
    later: Later[str] = Later()
    later.answer("one")
    with pytest.raises(AlreadyCalledError):
        later.answer("two")
    with pytest.raises(AlreadyCalledError):
        later.fail(ValueError())
    taker = Taker()
    later.then(taker.answered, taker.failed)
    with pytest.raises(RuntimeError, match="one taker"):
        later.then(taker.answered, taker.failed)
    assert taker.got == [("answer", "one")]


def test_a_cancel_calls_the_canceller_then_fails_it_and_ignores_the_giver():
    calls: list[str] = []
    later: Later[str] = Later(lambda: calls.append("cancelled"))
    taker = Taker()
    later.then(taker.answered, taker.failed)
    later.cancel()
    later.cancel()  # once is enough
    later.answer("too late")  # the giver had not heard yet: ignored
    later.fail(ValueError())
    assert calls == ["cancelled"]
    assert taker.got == [("failure", CancelledError)]


def test_a_canceller_may_settle_it_itself():
    later: Later[str] = Later()
    later._canceller = lambda: later.answer("settled on the way out")
    taker = Taker()
    later.then(taker.answered, taker.failed)
    later.cancel()
    assert taker.got == [("answer", "settled on the way out")]


def test_a_cancel_after_the_answer_does_nothing():
    calls: list[str] = []
    later: Later[str] = Later(lambda: calls.append("cancelled"))
    later.answer("done")
    later.cancel()
    taker = Taker()
    later.then(taker.answered, taker.failed)
    assert calls == []
    assert taker.got == [("answer", "done")]


def test_what_the_taker_raises_is_logged_not_given_back_to_the_giver():
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        later: Later[str] = Later()

        def broken(value: object) -> None:
            raise KeyError(value)

        later.then(broken, broken)
        later.answer("x")  # does not raise
    finally:
        globalLogPublisher.removeObserver(events.append)
    failures = [e for e in events if e.get("log_level") == LogLevel.critical]
    assert len(failures) == 1
    assert failures[0]["log_failure"].type is KeyError


def test_as_deferred_bridges_results_failures_and_cancels():
    answered: Later[str] = Later()
    d = as_deferred(answered)
    assert d is not None
    out: list[object] = []
    d.addBoth(out.append)
    answered.answer("hi")
    assert out == ["hi"]

    failing: Later[str] = Later()
    f = as_deferred(failing)
    assert f is not None
    failures: list[Failure] = []
    f.addErrback(failures.append)
    failing.fail(ValueError("no"))
    assert failures[0].type is ValueError

    calls: list[str] = []
    cancelled: Later[str] = Later(lambda: calls.append("cancelled"))
    c = as_deferred(cancelled)
    assert c is not None
    c.addErrback(failures.append)
    c.cancel()
    assert calls == ["cancelled"]
    assert failures[1].type is CancelledError


@pytest.mark.parametrize("kind", ["Later", "Deferred"])
def test_one_that_follows_another_gets_its_answer_and_cancels_it(kind):
    def other() -> Any:
        if kind == "Later":
            return Later(lambda: calls.append("other cancelled"))
        return Deferred(lambda _: calls.append("other cancelled"))

    calls: list[str] = []
    answered: Later[str] = Later(lambda: calls.append("first cancelled"))
    taker = Taker()
    answered.then(taker.answered, taker.failed)
    followed = other()
    answered.follow(followed)
    (followed.answer if kind == "Later" else followed.callback)("from the other")
    assert taker.got == [("answer", "from the other")]

    cancelled: Later[str] = Later(lambda: calls.append("first cancelled"))
    taker = Taker()
    cancelled.then(taker.answered, taker.failed)
    cancelled.follow(other())
    cancelled.cancel()
    assert calls == ["other cancelled"], "the one it follows, not its own"
    assert taker.got == [("failure", CancelledError)]
