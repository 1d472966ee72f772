"""A FAQ bot: a responder of your own, with lifecycle hooks.

Run it behind the server (from the repository's top folder):

    twistd -n sockchat --port 9527 --responder examples.bot:FaqBot

The bot speaks first (its ``started`` hook returns a greeting), answers a
few keywords at once, and "thinks" about anything else for a moment before
it answers, to show an answer that comes later (an ``async`` method).
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from zope.interface import implementer

from sockchat import ConversationInfo, IConversation, ILifecycle, IResponder

ANSWERS = {
    "port": "sockchat listens on 127.0.0.1:9527 unless told otherwise.",
    "tcp": "TCP gives an ordered byte stream; sockchat frames it into lines.",
    "time_wait": "TIME_WAIT keeps a closed connection's address busy for a while.",
    "help": "ask about: port, tcp, time_wait. Send q to quit.",
}


@implementer(IResponder, ILifecycle)
class FaqBot:
    """Answers keywords at once and anything else after *delay* seconds."""

    def __init__(self, clock: IReactorTime | None = None, delay: float = 0.5):
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.clock = clock
        self.delay = delay
        self.talking: set[int] = set()

    def started(self, conversation: IConversation) -> str:
        self.talking.add(conversation.info.id)
        return f"hello, {conversation.info.peer}! I am the FAQ bot. {ANSWERS['help']}"

    def ended(self, conversation: IConversation, reason: str) -> None:
        self.talking.discard(conversation.info.id)

    def respond(self, conversation: ConversationInfo, text: str):
        answer = ANSWERS.get(text.strip().lower())
        if answer is not None:
            return answer
        return self._think(text)

    async def _think(self, text: str) -> str:
        await deferLater(self.clock, self.delay, lambda: None)
        return f"I do not know about {text!r} yet. {ANSWERS['help']}"
