"""Pair mode's words and stances, shared by pairs in one process
(``sockchat._responders.pair``) and across instances
(``sockchat._broker.pairs``): what a client is told, whoever pairs it.

No I/O: values and texts only.
"""

from __future__ import annotations

import enum

from sockchat._core.wire import QUIT

__all__ = ["LEFT_BECAUSE", "WHO_SPEAKS", "Stance", "waiting_again"]

#: How a partner's leaving is said, by the code its conversation ended with.
LEFT_BECAUSE = {
    "quit": f"sent {QUIT}",
    "connection-lost": "disconnected",
    "end-of-input": "closed its side of the connection",
    "idle-timeout": "was idle for too long",
    "kicked": "was disconnected by the operator",
}


class Stance(enum.Enum):
    """Where an unpaired party stands in its own turn-taking."""

    #: Its turn: it may say a line (its first, if it has no partner yet).
    SPEAKS = "speaks"
    #: It has said its first line, kept for its partner, and waits for an
    #: answer.
    SAID = "said"
    #: It waits for a line and has said none: its partner speaks first.
    LISTENS = "listens"


def waiting_again(what: str, stance: Stance) -> str:
    """The ``waiting`` notice of a party whose partner left untalked (*what*
    says who and how), by where it stands in its own turn-taking."""
    if stance is Stance.LISTENS:
        then = "They will speak first."
    elif stance is Stance.SAID:
        then = "They will have your first line."
    else:
        then = "You may say your first line now."
    return (
        f"{what}; no partner yet: you will talk with the next client to "
        f"connect. {then} Send {QUIT} to quit."
    )


#: What a party is told when paired with another that was waiting too, by
#: (its stance, the other's).
WHO_SPEAKS = {
    (Stance.LISTENS, Stance.SPEAKS): "They speak first; wait for their line.",
    (Stance.LISTENS, Stance.SAID): "They speak first; wait for their line.",
    (Stance.SAID, Stance.LISTENS): (
        "They have your first line; wait for their answer."
    ),
    (Stance.SAID, Stance.SPEAKS): (
        "They will have your first line as the answer to theirs; wait for it."
    ),
    (Stance.SAID, Stance.SAID): (
        "They have your first line, and their first line is your answer."
    ),
    (Stance.SPEAKS, Stance.LISTENS): "You speak first.",
    (Stance.SPEAKS, Stance.SAID): (
        "They said a first line already: say yours, and theirs is the answer."
    ),
    (Stance.SPEAKS, Stance.SPEAKS): (
        "You may both speak now: each of you gets the other's line as the answer."
    ),
    (Stance.LISTENS, Stance.LISTENS): "",  # never paired: see _requeue
}
