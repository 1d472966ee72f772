"""An answer to come, for one taker: a Deferred's job at a tenth of its cost.

A brokered line's answer passes the broker's queue, the handoff responder
and the server; with a Deferred at each step, Twisted's callback machinery
was about a seventh of the instance's own work for a line (issue 23).
``Later`` does what those steps need of a Deferred and nothing more: one
giver, one taker, cancelling.  Anything else that takes one gets a Deferred
from ``as_deferred``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import AlreadyCalledError, CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["Later"]

log = Logger(namespace="sockchat.later")

_T = TypeVar("_T")
#: Not given yet.
_NOT_YET: Any = object()


class Later(Generic[_T]):
    """An answer to come.

    The giver calls ``answer`` or ``fail`` once.  The taker calls ``then``
    once, before or after that; its callbacks run at once, from the
    giver's call, and what they raise is logged, not passed back to the
    giver.  ``cancel`` (the taker's: it no longer wants the answer) calls
    the *canceller*, then fails it with ``CancelledError`` if the canceller
    did not settle it; after a cancel, the giver's calls are ignored.
    """

    __slots__ = (
        "_answered",
        "_cancelled",
        "_canceller",
        "_failed",
        "_result",
        "_taken",
    )

    def __init__(self, canceller: Callable[[], object] | None = None) -> None:
        self._canceller = canceller
        self._answered: Callable[[_T], object] | None = None
        self._failed: Callable[[Failure], object] | None = None
        self._result: Any = _NOT_YET
        self._cancelled = False
        self._taken = False

    @property
    def called(self) -> bool:
        """Whether it has been answered, failed or cancelled."""
        return self._result is not _NOT_YET

    def then(
        self, answered: Callable[[_T], object], failed: Callable[[Failure], object]
    ) -> None:
        """Call *answered* with the answer, or *failed* with a Failure."""
        if self._taken:
            raise RuntimeError("a Later has one taker")
        self._taken = True
        result = self._result
        if result is _NOT_YET:
            self._answered, self._failed = answered, failed
        elif type(result) is Failure:
            _call(failed, result)
        else:
            _call(answered, result)

    def answer(self, value: _T) -> None:
        """Give the answer."""
        if self._result is not _NOT_YET:
            if self._cancelled:
                return
            raise AlreadyCalledError(self._result)
        self._result = value
        answered = self._answered
        if answered is not None:
            self._answered = self._failed = None
            _call(answered, value)

    def fail(self, why: BaseException | Failure) -> None:
        """Give a failure instead of an answer."""
        if self._result is not _NOT_YET:
            if self._cancelled:
                return
            raise AlreadyCalledError(self._result)
        failure = why if isinstance(why, Failure) else Failure(why)
        self._result = failure
        failed = self._failed
        if failed is not None:
            self._answered = self._failed = None
            _call(failed, failure)

    def follow(self, other: Deferred[Any] | Later[Any]) -> None:
        """Its answer is now *other*'s; cancelling it cancels *other*."""
        self._canceller = other.cancel
        if type(other) is Later:
            other.then(self.answer, self.fail)
        else:
            other.addCallbacks(self.answer, self.fail)  # type: ignore[union-attr]  # a Deferred

    def cancel(self) -> None:
        """The taker no longer wants the answer."""
        if self._result is not _NOT_YET:
            return
        canceller, self._canceller = self._canceller, None
        if canceller is not None:
            canceller()
        if self._result is _NOT_YET:
            self.fail(CancelledError())
        self._cancelled = True


def _call(callback: Callable[[Any], object], result: object) -> None:
    try:
        callback(result)
    except Exception:
        log.failure("the taker of an answer failed on it")
