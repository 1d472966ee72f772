"""A bot that answers what it knows, and hands the rest to a person.

In one process, with the operators' desk (from the repository's top
folder; make the accounts first with ``python -m sockchat.desk passwd``):

    twistd -n sockchat --port 9527 --desk 8081 --accounts accounts \\
        --responder examples.handoff_bot:HandoffBot

Across instances, the bot in workers and the operators anywhere:

    twistd -n sockchat --port 9527 --responder workers --broker URL
    python -m sockchat.worker --broker URL examples.handoff_bot:HandoffBot
    python -m sockchat.desk serve --broker URL --accounts accounts

The bot speaks first, answers a few keywords, and for anything else calls
``conversation.handoff(reason)``: the client is told a person answers now,
its line waits in the operators' queue, and the operator who takes it sees
what the bot and the client said so far.
"""

from __future__ import annotations

from zope.interface import implementer

from sockchat import ConversationInfo, IConversation, ILifecycle, IResponder

ANSWERS = {
    "hours": "We are open from 9:00 to 17:00, Monday to Friday.",
    "price": "A ticket costs 10 euros; children under 12 go free.",
    "where": "We are at 1 Harbour Street, next to the station.",
}
HELP = "Ask about: " + ", ".join(ANSWERS) + ". Anything else goes to a person."


@implementer(IResponder, ILifecycle)
class HandoffBot:
    """Answers ``ANSWERS``' keywords; hands anything else over."""

    def __init__(self) -> None:
        #: The conversations it was given, by id (to hand one over).
        self.conversations: dict[int, IConversation] = {}

    def started(self, conversation: IConversation) -> str:
        self.conversations[conversation.info.id] = conversation
        return f"Hello, I am the help bot. {HELP}"

    def ended(self, conversation: IConversation, reason: str) -> None:
        self.conversations.pop(conversation.info.id, None)

    def respond(self, conversation: ConversationInfo, text: str) -> str:
        answer = ANSWERS.get(text.strip().lower().rstrip("?"))
        if answer is not None:
            return answer
        talk = self.conversations.get(conversation.id)
        if talk is None:  # it started in another worker: its hooks went there
            return f"I cannot pass you to a person from here. {HELP}"
        talk.handoff(f"the bot has no answer to {text[:80]!r}")
        return ""  # not sent: a person answers this line now
