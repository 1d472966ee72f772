"""Shared helpers: Deferred results without a reactor, hypothesis profiles,
and how the tests are shared out among pytest-xdist's workers."""

from __future__ import annotations

import ast
import functools
import os
from pathlib import Path
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
#: Fixture scopes that make something once for many tests.
_WIDE_SCOPES = ("module", "package", "session")
_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def sets_up_once(module: str) -> bool:
    """Whether the test module at *module* (a path from the repository's
    top, as in a node id) defines a fixture of module scope or wider: an
    expensive set-up made once for its tests (a wheel, a browser...)."""
    path = _ROOT / module
    if path.suffix != ".py" or not path.is_file():
        return False
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for decorator in node.decorator_list:
            if isinstance(decorator, ast.Call) and any(
                keyword.arg == "scope"
                and isinstance(keyword.value, ast.Constant)
                and keyword.value.value in _WIDE_SCOPES
                for keyword in decorator.keywords
            ):
                return True
    return False


def _module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _first(index_and_item: tuple[int, pytest.Item]) -> tuple[int, int, int, int]:
    """Slow tests first, the project's builds, e2e and broker before the
    rest, modules with one set-up for all their tests before single tests;
    otherwise the order they were collected in."""
    index, item = index_and_item
    tier = item.nodeid.split("/")[1] if item.nodeid.startswith("tests/") else ""
    slow = item.get_closest_marker("slow") is not None
    rank = _FIRST_TIERS.index(tier) if tier in _FIRST_TIERS else len(_FIRST_TIERS)
    grouped = sets_up_once(_module_of(item.nodeid))
    return (0 if slow else 1, rank if slow else 0, 0 if grouped else 1, index)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Under pytest-xdist (scripts/check.py), each worker puts the slow
    tests first, so that the last minutes are not one worker finishing a
    wheel build while the others wait; the tests of the fast tiers, short
    and CPU-bound, fill the gaps.  Every worker sorts alike, so that their
    collections agree.  A run without xdist keeps the collection's order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    items[:] = [item for _, item in sorted(enumerate(items), key=_first)]


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup``, and a module that sets up once
    (``sets_up_once``) is one group: all its tests go to one worker, so the
    set-up is made once, not once per worker.

    Not xdist_group marks: pytest 9.2 ignores the node id suffix that
    xdist 3.8 adds for them, so loadgroup no longer groups marked tests
    (pytest-dev/pytest-xdist#1386).  The scheduler sees node ids only, and
    groups them here, in the controller.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class ByModuleSetUp(LoadGroupScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = _module_of(nodeid)
            if "@" not in nodeid and sets_up_once(module):
                return module
            return str(super()._split_scope(nodeid))

    return ByModuleSetUp(config, log)


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
