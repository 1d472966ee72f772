"""Fakes shared by the tests: a responder that answers when told, a
transcript kept in memory, an endpoint that listens in memory, and the
helpers that open a conversation in memory and read what the server
said."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from sockchat import ConversationInfo, IResponder, ITranscript, TranscriptEntry


@implementer(IResponder)
class Later:
    """Answers when the test fires the Deferreds in ``pending``."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.pending: list[Deferred[str]] = []

    def respond(self, conversation: ConversationInfo, text: str) -> Deferred[str]:
        self.texts.append(text)
        d: Deferred[str] = Deferred()
        self.pending.append(d)
        return d


@implementer(ITranscript)
class Kept:
    """A transcript that keeps its entries in a list."""

    def __init__(self) -> None:
        self.entries: list[TranscriptEntry] = []

    def record(self, entry: TranscriptEntry) -> None:
        self.entries.append(entry)


class ListeningPort:
    """What ``ListeningEndpoint`` listens on: it says whether it still does."""

    def __init__(self) -> None:
        self.listening = True

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 9527)

    def stopListening(self) -> Deferred[None]:
        self.listening = False
        return succeed(None)


@implementer(IStreamServerEndpoint)
class ListeningEndpoint:
    """A server endpoint that listens at once, in memory."""

    def __init__(self) -> None:
        self.factory: Any = None
        self.port = ListeningPort()

    def listen(self, factory: Any) -> Deferred[ListeningPort]:
        self.factory = factory
        return succeed(self.port)


#: The peer of a conversation opened in memory, unless a test gives another.
PEER = IPv4Address("TCP", "127.0.0.1", 50000)


def open_conversation(factory: Any, addr: Any = None) -> tuple[Any, StringTransport]:
    """A conversation of *factory* over a ``StringTransport``, connected."""
    addr = addr or PEER
    proto = factory.buildProtocol(addr)
    transport = StringTransport(peerAddress=addr)
    proto.makeConnection(transport)
    return proto, transport


def said(transport: StringTransport) -> list[str]:
    """The lines the server wrote since the last call (each ends in \\n)."""
    lines = transport.value().decode().split("\n")
    transport.clear()
    assert lines[-1] == "", "every server line ends in a newline"
    return lines[:-1]


def sent(transport: StringTransport) -> bytes:
    """The bytes the server wrote since the last call."""
    data = transport.value()
    transport.clear()
    return data


def lose(proto: Any) -> None:
    """The client closed the connection."""
    proto.connectionLost(Failure(ConnectionDone()))
