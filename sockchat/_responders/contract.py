"""The responder contract: who answers each client line.

A responder is any object that provides ``IResponder``.  The server calls
``respond`` once per delivered line and sends back whatever it returns: a
``str`` at once, or the result of a ``Deferred`` or awaitable when it fires.
A responder that also provides ``ILifecycle`` hears when each conversation
starts and ends, and gets an ``IConversation`` handle to send notices, end
the conversation, or speak first.  No I/O here.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface, implementer

from sockchat._core.wire import Signed
from sockchat._responders.later import Later

__all__ = [
    "AnswerFailed",
    "ConversationInfo",
    "EchoResponder",
    "FunctionResponder",
    "IAnsweredByPeople",
    "IConversation",
    "ILifecycle",
    "IResponder",
    "Reply",
    "Signed",
    "Unavailable",
    "Untimed",
    "WelcomeLater",
    "as_deferred",
    "as_responder",
]


@frozen
class Untimed:
    """An answer to come that the server's answer timeout does not apply to:
    a person gives it, or the responder times it itself (the handoff
    responder does both: a bot's answers have their timeout, a person's
    none).  A failure with ``TimeoutError`` is said as ``responder-timeout``
    all the same."""

    answer: Deferred[str] | Deferred[Signed] | Deferred[str | Signed] | Later[Any]


#: What ``IResponder.respond`` may return: an answer (a ``str``, or a
#: ``Signed`` one, which the transcript records with who gave it), at once or
#: later.
Reply = (
    str
    | Signed
    | Deferred[str]
    | Deferred[Signed]
    | Deferred[str | Signed]
    | Awaitable[str]
    | Awaitable[Signed]
    | Later[str | Signed]
    | Untimed
)


class Unavailable(Exception):
    """Raise it (or fail the answer's Deferred with it) when the line cannot be
    answered now but may be later: the broker is unreachable, no worker runs.

    The client gets ``!error unavailable`` with ``str()`` of it, and its turn
    back; no traceback is logged.
    """


class AnswerFailed(Exception):
    """The answer failed somewhere else, and ``str()`` says how in one line
    (a worker's responder raised): the client gets ``!error
    responder-failed`` with that text, and no traceback is logged here."""


class WelcomeLater:
    """What ``ILifecycle.started`` returns when who speaks first is not known
    yet (pair mode: whether a partner waits, which may take the broker's
    answer).  Once it is, call ``client_first()`` or ``server_first(reply)``.

    The client's welcome waits until then.  Meanwhile its lines wait, and
    notices sent to it come after its welcome; a client that closes its
    side without a line is told ``!bye end-of-input``.  If the client
    leaves first, ``decided`` is cancelled and later calls do nothing.
    """

    def __init__(self) -> None:
        #: Fires once it is decided (the door waits on it).  If it fails,
        #: the client is told the service is unavailable and closed.
        self.decided: Deferred[None] = Deferred()
        #: The server's first line, if it speaks first.
        self.opening: Reply | None = None

    def client_first(self) -> None:
        """The client speaks first (``!info welcome``)."""
        self.decided.callback(None)

    def server_first(self, reply: Reply) -> None:
        """The server speaks first (``!info listen``), with *reply* (a
        ``str``, ``Deferred`` or awaitable)."""
        if not self.decided.called:
            self.opening = reply
        self.decided.callback(None)


@frozen
class ConversationInfo:
    """Who is talking: passed to the responder with every line."""

    #: Counts up from 1 for each connection the factory accepts.
    id: int
    #: The peer's address as text, e.g. ``127.0.0.1:50312`` or ``unix``.
    peer: str


class IResponder(Interface):
    """Answers the lines of one or many conversations."""

    def respond(conversation: ConversationInfo, text: str) -> Reply:
        """Return the answer to *text*, said in *conversation*.

        The answer is one line: it must not contain ``\\n``.  Answering
        exactly ``q`` ends the conversation, as in the tutorial.  If the
        client goes away first, a returned ``Deferred`` is cancelled.  If
        this raises or the result fails, the client gets an error notice and
        may send another line; the server keeps serving.
        """


class IAnsweredByPeople(Interface):
    """A mark on a responder whose answers come from people (the console,
    pair mode, the operators): unless told otherwise, the server waits for
    its answers as long as they take, with no answer timeout."""


class IConversation(Interface):
    """The server's side of one conversation, as ``ILifecycle`` hooks see it."""

    info = Attribute("The conversation's ``ConversationInfo`` (id and peer).")

    def notify(code: str, text: str) -> None:
        """Send the client an info notice (``!info code: text``).

        It does not change whose turn it is.  *code* is a short word such as
        ``paired``; *text* is one line for a person.
        """

    def end(code: str, text: str) -> None:
        """Say goodbye with ``!bye code: text`` and close the conversation."""

    def handoff(reason: str) -> None:
        """Hand the conversation to the operators' queue: a person answers it
        from now on.

        The client is told (``!info handoff``).  The line it waits on, if
        any, goes to the queue too, with the conversation's history so far
        (what the responder answered, as the bot's part), for the operator
        who takes it; an answer the responder gives it after this call is
        not sent.  The responder hears no more lines of this conversation;
        its ``ended`` hook still runs at the end.  *reason* (one line) is
        for the operators and the log, not the client.

        Where there is no operators' queue (no ``--desk`` and no
        ``--broker``), it raises ``Unavailable``.  A second call does
        nothing.
        """


class ILifecycle(Interface):
    """Optional hooks of a responder: a conversation started or ended."""

    def started(conversation: IConversation) -> Reply | WelcomeLater | None:
        """A client connected and was admitted.

        Return ``None`` and the client speaks first, as usual.  Return an
        answer (a ``str``, ``Deferred`` or awaitable) and the server speaks
        first: the client is told to listen (the ``listen`` notice) and its
        first turn comes when that line has been sent.  Return
        ``WelcomeLater`` to decide later.  Notices sent from here reach
        the client after its welcome.  If this raises, the client is told
        the service is unavailable and is closed.
        """

    def ended(conversation: IConversation, reason: str) -> None:
        """The conversation is over, and *reason* says why.

        It is a ``sockchat.Reason`` (a ``str``): ``quit``, ``answered-quit``,
        ``end-of-input``, ``idle-timeout``, ``shutdown``, ``unavailable``,
        ``binary-message``, ``newline-in-message`` or ``connection-lost``;
        or, when the conversation was ended with ``end(code, text)``, that
        code (``partner-left``, ``kicked``...).
        """


@implementer(IResponder)
class EchoResponder:
    """Answer each line with the same text: for demos, tests and benchmarks."""

    def respond(self, conversation: ConversationInfo, text: str) -> str:
        return text


@implementer(IResponder)
class FunctionResponder:
    """Make a plain ``respond(conversation, text)`` callable a responder."""

    def __init__(self, respond: Callable[[ConversationInfo, str], Reply]) -> None:
        self._respond = respond

    def respond(self, conversation: ConversationInfo, text: str) -> Reply:
        return self._respond(conversation, text)

    def __repr__(self) -> str:
        return f"FunctionResponder({self._respond!r})"


def as_responder(thing: object) -> IResponder:
    """Turn *thing* into a responder, or say why it cannot be one.

    *thing* may provide ``IResponder`` already; be a class that implements
    it (called with no arguments); be a callable taking no arguments that
    returns a responder (a factory); or be a plain callable taking
    ``(conversation, text)``.  Raises ``TypeError`` with a one-line reason.
    """
    if IResponder.providedBy(thing):
        return thing
    if isinstance(thing, type):
        if not IResponder.implementedBy(thing):
            raise TypeError(
                f"class {thing.__name__} does not implement IResponder; decorate it "
                "with @implementer(IResponder) and give it respond(conversation, text)"
            )
        return _made_by(thing)
    if not callable(thing):
        raise TypeError(
            f"{type(thing).__name__} is neither a responder, a class, nor a callable"
        )
    try:
        signature = inspect.signature(thing)
    except (TypeError, ValueError):  # some builtins have none
        raise TypeError(f"cannot tell how to call {thing!r}") from None
    if _accepts(signature, 0):
        return _made_by(thing)
    if _accepts(signature, 2):
        return FunctionResponder(thing)
    raise TypeError(
        f"{getattr(thing, '__name__', thing)!r} takes {signature}; a responder "
        "callable takes (conversation, text), a factory takes no arguments"
    )


def _made_by(factory: Callable[[], object]) -> IResponder:
    made = factory()
    if IResponder.providedBy(made):
        return made
    name = getattr(factory, "__name__", repr(factory))
    raise TypeError(f"{name}() returned {type(made).__name__}, not an IResponder")


def _accepts(signature: inspect.Signature, count: int) -> bool:
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True


_T = TypeVar("_T")


async def _await(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def as_deferred(reply: object) -> Deferred[Any] | None:
    """A responder's reply as a Deferred, or None if it is neither one nor
    awaitable (an answer given at once).  The server's doors and the
    workers take replies alike."""
    if isinstance(reply, Deferred):
        return reply
    if type(reply) is Later:
        taken: Deferred[Any] = Deferred(lambda _: reply.cancel())
        reply.then(taken.callback, taken.errback)
        return taken
    if inspect.isawaitable(reply):
        return Deferred.fromCoroutine(_await(reply))
    return None
