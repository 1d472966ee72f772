"""The responder contract: who answers each client line.

A responder is any object that provides ``IResponder``.  The server calls
``respond`` once per delivered line and sends back whatever it returns: a
``str`` at once, or the result of a ``Deferred`` or awaitable when it fires.
No I/O here.
"""

from __future__ import annotations

from collections.abc import Awaitable

from attrs import frozen
from twisted.internet.defer import Deferred
from zope.interface import Interface, implementer

__all__ = ["ConversationInfo", "EchoResponder", "IResponder", "Reply"]

#: What ``IResponder.respond`` may return.
Reply = str | Deferred[str] | Awaitable[str]


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


@implementer(IResponder)
class EchoResponder:
    """Answer each line with the same text: for demos, tests and benchmarks."""

    def respond(self, conversation: ConversationInfo, text: str) -> str:
        return text
