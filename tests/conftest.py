"""Shared helpers: Deferred results without a reactor, hypothesis profiles."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import settings
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

# The redis_server and make_redis_server fixtures (a real redis-server), and
# sentinel_set and make_sentinel_set (a master, a replica, three sentinels).
pytest_plugins = ["redis_server", "redis_sentinels"]

settings.register_profile("ci", max_examples=300, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def result_of(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has already fired; raise its failure."""
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    assert outcome, "the Deferred has not fired yet"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def has_fired(d: Deferred[Any]) -> bool:
    return bool(d.called)


@pytest.fixture
def logged_failures():
    """Failures logged while the test runs (tracebacks in the server log)."""
    failures = []

    def observe(event):
        if event.get("log_failure") is not None:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    yield failures
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def logged_errors():
    """The text of error events logged while the test runs."""
    from twisted.logger import LogLevel, formatEvent

    texts = []

    def observe(event):
        if event.get("log_level") in (LogLevel.error, LogLevel.critical):
            texts.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield texts
    globalLogPublisher.removeObserver(observe)
