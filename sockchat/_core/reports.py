"""What the conversation engine reports as it decides: typed values, no I/O.

The engine's actions (``sockchat._core.engine``) are what its door must
do; its reports are what happened, for whoever watches: the metrics
(``sockchat._core.stats.ServerStats``) and teaching mode's trace.  An
``EngineObserver`` hears them in the order the engine decided them, each
as it is decided, before the actions it caused are carried out.

Reports that come once in a while (a line refused, the flow moved, the
end) are always given to the observer.  The turn's moves come on every
turn, so they are given only to an observer that asked for every move
(``ServerConversation.observe(observer, every_move=True)``): the engine
then takes its long path, and the usual turn pays nothing for them.
"""

from __future__ import annotations

from typing import Protocol

from attrs import frozen

from sockchat._core.rules import Event, Flow, FlowAction, FlowEvent, Phase, Turn

__all__ = [
    "Ended",
    "EngineObserver",
    "EngineReport",
    "FlowMoved",
    "LineRefused",
    "TurnMoved",
]


@frozen
class TurnMoved:
    """The turn rule moved (a row of ``MOVES``): *event*, then the new
    phase and turn."""

    event: Event
    phase: Phase
    turn: Turn


@frozen
class LineRefused:
    """Line *seq* was refused with an ``!error`` notice whose code is *code*
    (``out-of-turn``, ``line-too-long``, ``invalid-utf8``)."""

    seq: int
    code: str


@frozen
class FlowMoved:
    """The flow rule moved (a row of ``FLOW``): *event*, then the new flow,
    and what the door was asked to do to its reading."""

    event: FlowEvent
    flow: Flow
    action: FlowAction


@frozen
class Ended:
    """The connection is gone: the conversation's code (why it ended, as
    ``ILifecycle.ended`` hears it) and what it counted."""

    code: str
    #: Answers sent.
    answers: int
    #: Bytes read from the client (characters, on a WebSocket).
    bytes_in: int
    #: Bytes written to it.
    bytes_out: int


EngineReport = TurnMoved | LineRefused | FlowMoved | Ended


class EngineObserver(Protocol):
    """Hears one engine's reports (a ``typing.Protocol``: any object with
    this method will do)."""

    def report(self, report: EngineReport) -> None:
        """*report* was decided just now."""
