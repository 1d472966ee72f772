"""Turn-taking, as two small state machines with no I/O.

The client speaks first.  After each line the speaker waits for exactly one
answer.  A line that is exactly ``q`` ends the conversation from either side.
``ClientTurns`` is the client's view of one conversation; the server's is
the conversation engine (``ServerConversation``, in ``engine.py``).  Both turn what
arrives into values that say what to do next, and the Twisted protocols
only carry those out.
"""

from __future__ import annotations

import enum

from attrs import frozen

from sockchat._core.codec import check_message, encode_line
from sockchat._core.render import safe_text
from sockchat._core.wire import QUIT, Notice, NoticeKind, parse_server_line

__all__ = [
    "LISTEN",
    "OUT_OF_TURN",
    "Answered",
    "ClientTurn",
    "ClientTurns",
    "Ended",
    "NotYourTurn",
    "Noticed",
    "Refused",
    "excerpt",
    "shutting_down",
    "welcome",
]

#: The code of the one error notice that does not give the turn back: it
#: refuses an extra line while an earlier one is still being answered.
OUT_OF_TURN = "out-of-turn"

#: The code of the first notice when the other side speaks first (the
#: second client of a pair): the client waits for a line, then answers.
LISTEN = "listen"

_EXCERPT = 40


class ClientTurn(enum.Enum):
    """Whose turn it is, as the client sees it (the server's engine has its
    own ``sockchat._core.rules.Turn``, without ``ENDED``)."""

    CLIENT = "client"  # the client may send a line
    SERVER = "server"  # the server owes an answer
    ENDED = "ended"


class NotYourTurn(Exception):
    """A line was offered while the other side owes an answer, or after the end."""


def excerpt(text: str) -> str:
    shown = safe_text(text[:_EXCERPT])
    return f'"{shown}…"' if len(text) > _EXCERPT else f'"{shown}"'


def welcome(conversation_id: int, *, listen: bool = False) -> Notice:
    """The first thing a client hears: who speaks first, and how to quit."""
    if listen:
        return Notice(
            NoticeKind.INFO,
            LISTEN,
            f"sockchat conversation {conversation_id}. The other side speaks "
            "first: wait for its line, then answer, one line at a time. Send "
            f"{QUIT} to quit.",
        )
    return Notice(
        NoticeKind.INFO,
        "welcome",
        f"sockchat conversation {conversation_id}. You speak first, one line at "
        f"a time, and wait for each answer. Send {QUIT} to quit.",
    )


def shutting_down() -> Notice:
    return Notice(NoticeKind.BYE, "shutdown", "the server is shutting down.")


@frozen
class Answered:
    text: str


@frozen
class Refused:
    """The line being waited on was refused; the turn is the client's again."""

    notice: Notice


@frozen
class Ended:
    """The conversation is over: a bye notice, or the server's ``q``."""

    notice: Notice | None


@frozen
class Noticed:
    """A notice that does not change whose turn it is."""

    notice: Notice


class ClientTurns:
    """The client's side of one conversation."""

    __slots__ = ("turn",)

    def __init__(self) -> None:
        # ClientTurn.SERVER here means: waiting for the server's answer.
        self.turn = ClientTurn.CLIENT

    def say(self, text: str) -> bytes:
        """Check that the client may speak, and frame the line."""
        check_message(text)
        if text == QUIT and self.turn is not ClientTurn.ENDED:
            self.turn = ClientTurn.ENDED  # q is always allowed, even while waiting
            return encode_line(text)
        if self.turn is not ClientTurn.CLIENT:
            raise NotYourTurn(
                "the conversation has ended"
                if self.turn is ClientTurn.ENDED
                else "wait for the answer to your last line before you send another"
            )
        self.turn = ClientTurn.SERVER
        return encode_line(text)

    def receive(self, line: str) -> Answered | Refused | Ended | Noticed:
        message = parse_server_line(line)
        if isinstance(message, Notice):
            if message.code == LISTEN and self.turn is ClientTurn.CLIENT:
                self.turn = ClientTurn.SERVER  # wait for the other side's first line
                return Noticed(message)
            if message.kind is NoticeKind.BYE:
                self.turn = ClientTurn.ENDED
                return Ended(message)
            if (
                message.kind is NoticeKind.ERROR
                and message.code != OUT_OF_TURN
                and self.turn is ClientTurn.SERVER
            ):
                self.turn = ClientTurn.CLIENT
                return Refused(message)
            return Noticed(message)
        if self.turn is not ClientTurn.SERVER:
            return Noticed(
                Notice(
                    NoticeKind.ERROR,
                    "unexpected-answer",
                    f"the server sent {excerpt(message.text)} while no line was "
                    "waiting for an answer.",
                )
            )
        if message.text == QUIT:
            self.turn = ClientTurn.ENDED
            return Ended(None)
        self.turn = ClientTurn.CLIENT
        return Answered(message.text)
