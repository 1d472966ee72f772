"""Fakes shared by the tests: a responder that answers when told, and a
transcript kept in memory."""

from __future__ import annotations

from twisted.internet.defer import Deferred
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
