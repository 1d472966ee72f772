"""Shared helpers: Deferred results without a reactor, hypothesis profiles,
and how the tests are shared out among pytest-xdist's workers."""

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

#: The tiers whose slow tests are started first under xdist, longest first.
_FIRST_TIERS = ("project", "e2e", "broker")


def _has_own_module_fixture(item: pytest.Item) -> bool:
    """Whether *item* uses a module- (or wider-) scoped fixture that its own
    module defines: an expensive set-up, made once per module (a wheel, a
    browser, a redis-server...)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    module = item.nodeid.split("::", 1)[0]
    return any(
        fixturedef.scope in ("module", "package", "session")
        and fixturedef.baseid == module
        for fixturedefs in info.name2fixturedefs.values()
        for fixturedef in fixturedefs
    )


def _first(index_and_item: tuple[int, pytest.Item]) -> tuple[int, int, int]:
    """Slow tests first, the project's builds, e2e and broker before the
    rest, modules with one set-up for all their tests before single tests;
    otherwise the order they were collected in."""
    index, item = index_and_item
    tier = item.nodeid.split("/")[1] if item.nodeid.startswith("tests/") else ""
    slow = item.get_closest_marker("slow") is not None
    rank = _FIRST_TIERS.index(tier) if tier in _FIRST_TIERS else len(_FIRST_TIERS)
    grouped = item.get_closest_marker("xdist_group") is not None
    return (0 if slow else 1, rank if slow else 0, 0 if grouped else 1, index)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Under pytest-xdist (``-n``, ``--dist loadgroup``; scripts/check.py):

    - a module with a module-scoped fixture of its own runs all its tests on
      one worker, so that the set-up is made once, not once per worker;
    - the slow tests go out first, so that the last minutes are not one
      worker finishing a wheel build while the others wait.  The tests of
      the fast tiers, short and CPU-bound, fill the gaps.

    A run without xdist keeps the collection's order.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for item in items:
        if _has_own_module_fixture(item):
            module = item.nodeid.split("::", 1)[0]
            item.add_marker(pytest.mark.xdist_group(module))
    items[:] = [item for _, item in sorted(enumerate(items), key=_first)]


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
