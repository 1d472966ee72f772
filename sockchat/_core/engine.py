"""The conversation engine: every decision the server makes about one
conversation, with no I/O.

``ServerConversation`` is fed what happened (bytes or WebSocket messages
arrived, the responder answered or failed, the output filled or drained, a
timer ticked, the connection was lost), each with the time ``now``.  The
door that owns the connection then pulls what to do next with
``next_action()``, one typed value at a time, until it returns ``None``:
deliver a line to the responder, send bytes or a message, pause or resume
reading, close with a ``Reason``, record a transcript entry, write a log
event.  A responder that answers at once is fed back in with ``answered``
and the door's loop goes on: nothing recurses, and nothing needs a guard
against re-entry.

The rules it follows are in ``sockchat._core.rules``, each in one place:
the turn rule (``MOVES``), the flow rule (``FLOW``: when lines are held
back and reading stops, with memory counted at its real cost) and the idle
rule (``idle_verdict``).  What it decides is also reported, as typed
values, to an observer (``sockchat._core.reports``): the metrics, and
teaching mode's trace.

No Twisted here, and no reactor: the clock is the ``now`` passed in.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from attrs import field, frozen

from sockchat._core.codec import Decoded, LineDecoder, LineTooLong
from sockchat._core.defaults import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_OUTPUT,
)
from sockchat._core.framing import Decoder, Framing, LineFraming
from sockchat._core.render import safe_text
from sockchat._core.reports import (
    Ended,
    EngineObserver,
    FlowMoved,
    LineRefused,
    TurnMoved,
)
from sockchat._core.rules import (
    FLOW,
    ITEM_OVERHEAD,
    MOVES,
    Event,
    Flow,
    FlowAction,
    FlowEvent,
    Idle,
    Phase,
    Turn,
    cost,
    idle_deadline,
    idle_verdict,
)
from sockchat._core.telnet import TelnetFilter, telnet_notice
from sockchat._core.transcript import TranscriptEntry
from sockchat._core.turns import OUT_OF_TURN, excerpt, welcome
from sockchat._core.wire import QUIT, Notice, NoticeKind, Signed

__all__ = [
    "CLOSE_GRACE",
    "Action",
    "Close",
    "Deliver",
    "Log",
    "PauseReading",
    "Reason",
    "Record",
    "ResumeReading",
    "Send",
    "SendMessage",
    "ServerConversation",
    "Settings",
    "TelnetReply",
]

#: Seconds a closing connection gets to take its last notice.
CLOSE_GRACE = 3.0


# -- Values --------------------------------------------------------------


class Reason(str, enum.Enum):
    """Why a conversation ended.

    The value is the code of the bye notice (or, for the three that send
    none of their own, what ``ILifecycle.ended`` and the log say).  A
    responder's own ``end(code, ...)`` ends it with ``RESPONDER`` and its
    code.
    """

    #: The client sent ``q``.
    QUIT = "quit"
    #: The responder answered ``q``.
    ANSWERED_QUIT = "answered-quit"
    #: The client closed its side, and nothing more was owed.
    END_OF_INPUT = "end-of-input"
    #: No line within ``idle_timeout``.
    IDLE_TIMEOUT = "idle-timeout"
    #: The server is shutting down.
    SHUTDOWN = "shutdown"
    #: The responder's ``started`` hook failed.
    UNAVAILABLE = "unavailable"
    #: Refused at connect by the address rules.
    DENIED = "denied"
    #: Refused at connect by a connection cap.
    BUSY = "busy"
    #: The responder ended it, with a code of its own (``partner-left``...).
    RESPONDER = "responder"
    #: A WebSocket message that was binary.
    BINARY_MESSAGE = "binary-message"
    #: A WebSocket message with a newline in it.
    NEWLINE_IN_MESSAGE = "newline-in-message"
    #: A WebSocket text message that was not UTF-8.
    INVALID_UTF8_MESSAGE = "invalid-utf8-message"
    #: The connection went away with no bye.
    CONNECTION_LOST = "connection-lost"


#: Why the log says a conversation ended, for reasons with a fixed text.
_ENDED_BECAUSE = {
    Reason.QUIT: "the client sent q",
    Reason.ANSWERED_QUIT: "the responder answered q",
    Reason.END_OF_INPUT: "the client closed its side, and nothing more was owed",
}

#: The bye notices that carry a ``Reason`` of their own.
_REASON_OF_CODE = {
    r.value: r
    for r in (
        Reason.QUIT,
        Reason.END_OF_INPUT,
        Reason.IDLE_TIMEOUT,
        Reason.SHUTDOWN,
        Reason.UNAVAILABLE,
        Reason.DENIED,
        Reason.BUSY,
    )
}


def _validate_positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be positive, not {value}")


@frozen
class Settings:
    """Everything a conversation needs to know, validated once."""

    max_line: int = DEFAULT_MAX_LINE
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    max_output: int = DEFAULT_MAX_OUTPUT
    answer_timeout: float | None = None
    #: Record transcript entries (``Record`` actions).
    transcript: bool = False
    framing: Framing = field(factory=LineFraming)
    #: Seconds a closing connection gets to flush before it is aborted.
    close_grace: float = CLOSE_GRACE

    def __attrs_post_init__(self) -> None:
        for name, value in [
            ("max_line", self.max_line),
            ("max_output", self.max_output),
        ]:
            if value < 1:
                raise ValueError(f"{name} must be at least 1 byte, not {value}")
        _validate_positive("idle_timeout", self.idle_timeout)
        _validate_positive("answer_timeout", self.answer_timeout)
        _validate_positive("close_grace", self.close_grace)


# Module-level names for the members, for the per-turn path: in Python
# 3.11 an enum member looked up on its class costs about 120 ns more than
# a global (measured: ``x is Phase.OPEN`` 139 ns, ``x is _OPEN`` 14-25 ns),
# and the usual turn makes about ten such checks.  The tables themselves
# (``sockchat._core.rules``) are in full names.
_STARTING, _OPEN, _CLOSING, _CLOSED = Phase
_CLIENT, _SERVER = Turn
_FLOWING, _QUEUED, _BACKLOGGED, _HOLDING, _STOPPED = Flow

#: The two moves of every turn, looked up in the table once.
_AFTER_LINE = MOVES[_OPEN, _CLIENT, Event.LINE]
_AFTER_ANSWER = MOVES[_OPEN, _SERVER, Event.ANSWER]


# -- Actions -------------------------------------------------------------
#
# Named tuples: frozen, slotted, and the cheapest value Python makes (one
# or two are made per turn).  Equality also compares the type.


def _eq(self: tuple[object, ...], other: object) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)


def _ne(self: tuple[object, ...], other: object) -> bool:
    return not _eq(self, other)


def _hash(self: tuple[object, ...]) -> int:
    return hash((type(self), tuple(self)))


class Deliver(NamedTuple):
    """Hand this line to the responder; its answer is owed (``answered``)."""

    seq: int
    text: str


class Send(NamedTuple):
    """Write these bytes to the stream."""

    data: bytes


class SendMessage(NamedTuple):
    """Send this text as one WebSocket message."""

    text: str


class TelnetReply(NamedTuple):
    """Write telnet's option refusals, before anything else is said."""

    data: bytes


class PauseReading(NamedTuple):
    """Stop reading the client until ``ResumeReading``."""


class ResumeReading(NamedTuple):
    """Read the client again."""


class Close(NamedTuple):
    """Close once the output is flushed; abort after ``close_grace``."""

    reason: Reason
    #: The code of the bye sent, or the reason's own value.
    code: str


class Record(NamedTuple):
    """Keep this transcript entry."""

    entry: TranscriptEntry


class Log(NamedTuple):
    """Write this structured log event (``twisted.logger`` format)."""

    level: str  # debug, info, warn
    format: str
    fields: tuple[tuple[str, object], ...]


# Equality that includes the type, for all of them.
for _cls in (
    Deliver,
    Send,
    SendMessage,
    TelnetReply,
    PauseReading,
    ResumeReading,
    Close,
    Record,
    Log,
):
    _cls.__eq__ = _eq  # type: ignore[method-assign]  # compare the type too
    _cls.__ne__ = _ne  # type: ignore[assignment,method-assign]
    _cls.__hash__ = _hash  # type: ignore[method-assign]  # hash the type too

Action = (
    Deliver
    | Send
    | SendMessage
    | TelnetReply
    | PauseReading
    | ResumeReading
    | Close
    | Record
    | Log
)

#: Makes a named tuple without its Python-level ``__new__`` (about 150 ns
#: less): ``_new(Send, (data,))`` is ``Send(data)``.
_new = tuple.__new__

_PAUSE = PauseReading()
_RESUME = ResumeReading()
#: What the door does to its reading as the flow moves.
_READING: dict[FlowAction, Action] = {
    FlowAction.PAUSE: _PAUSE,
    FlowAction.RESUME: _RESUME,
}

#: Log events said once per conversation, as bits (a set would cost 216
#: bytes per conversation).
_ONCE = {"started": 1, "slow": 2, "early": 4}

#: No items waiting, no message under way: shared, so an idle
#: conversation holds no list of its own (never appended to).
_NO_ITEMS: list[Decoded] = []
_NO_PARTS: list[str] = []

_END_OF_INPUT = Notice(
    NoticeKind.BYE, "end-of-input", "you closed your side of the connection; goodbye."
)
_UNAVAILABLE = Notice(
    NoticeKind.BYE,
    "unavailable",
    "the service could not start this conversation; try again later.",
)
_QUIT = Notice(NoticeKind.BYE, "quit", "goodbye.")


# -- The engine ----------------------------------------------------------


class ServerConversation:
    """The server's side of one conversation, from connect to close.

    *websocket*: the door is a WebSocket (whole or partial text messages
    in, one message per line out) instead of a byte stream.
    """

    __slots__ = (
        "_decoder",
        "_failures",
        "_held_notices",
        "_input_ended",
        "_items",
        "_items_cost",
        "_line_stream",
        "_mover",
        "_observer",
        "_out",
        "_part_size",
        "_parts",
        "_pending",
        "_recording",
        "_refused",
        "_short_path_open",
        "_since",
        "_skipping",
        "_started",
        "_telnet",
        "_told",
        "_unsent",
        "_websocket",
        "answers",
        "bytes_in",
        "bytes_out",
        "code",
        "flow",
        "id",
        "lines",
        "peer",
        "phase",
        "reason",
        "settings",
        "turn",
    )

    def __init__(
        self,
        settings: Settings,
        conversation_id: int,
        peer: str,
        now: float,
        *,
        websocket: bool = False,
    ) -> None:
        self.settings = settings
        self.id = conversation_id
        self.peer = peer
        self.phase = _STARTING
        self.turn = _CLIENT
        self.flow = _FLOWING
        #: Why it ended (or will), once it is closing.
        self.reason = Reason.CONNECTION_LOST
        #: The code of the bye notice sent (or the reason's own value).
        self.code = Reason.CONNECTION_LOST.value
        self.lines = 0  # lines received, refused ones included
        self.answers = 0  # answers sent
        self.bytes_in = 0  # read from the client (for --metrics)
        self.bytes_out = 0  # written to it: counted by the door as it writes
        self._pending = 0  # number of the line being answered
        self._websocket = websocket
        self._recording = settings.transcript
        self._observer: EngineObserver | None = None
        #: The observer of every move, if one asked: every turn then goes
        #: the long way, through ``_step`` and ``_move``, as it does when a
        #: transcript is kept.
        self._mover: EngineObserver | None = None
        #: Line framing over a stream: answers are encoded inline.
        self._line_stream = not websocket and settings.framing.name == "line"
        self._input_ended = False
        self._short_path_open = False
        self._open_short_path()
        framing = settings.framing
        self._decoder: Decoder | None = (
            None if websocket else framing.decoder(settings.max_line)
        )
        self._telnet = (
            TelnetFilter() if framing.takes_telnet and not websocket else None
        )
        self._items: list[Decoded] = _NO_ITEMS  # decoded, not handled yet
        self._out: list[Action] = []
        #: What the lines waiting here cost (counted outside Flow.FLOWING).
        self._items_cost = 0
        #: What the output written since the client stopped reading costs.
        self._unsent = 0
        self._refused = 0  # lines refused; the first is logged
        self._failures = 0  # answers that failed; the first is logged
        self._held_notices: list[Notice] | None = None
        self._started = now
        self._since = now  # the idle clock (see _start_idle_clock)
        self._told = 0  # the log events said once, as bits of _ONCE
        self._parts: list[str] = _NO_PARTS  # a WebSocket message under way
        self._part_size = 0
        self._skipping = False

    def observe(self, observer: EngineObserver, *, every_move: bool = False) -> None:
        """Report what is decided to *observer* from now on.

        With *every_move*, every move of the turn is reported too, and every
        turn takes the long path (as it does when a transcript is kept).
        """
        self._observer = observer
        self._mover = observer if every_move else None
        self._open_short_path()

    def _open_short_path(self) -> None:
        #: The usual turn may take the short path (``take_line`` and
        #: ``answer_now``): line framing over a stream, no long way asked
        #: for, the client's input not ended, the conversation open and
        #: flowing, and its first line and first answer said (each is
        #: announced in the log, the long way).  One flag for all of them,
        #: as it is checked twice a turn: worked out again whenever one of
        #: them changes (``observe``, ``end_of_input``, ``_move``,
        #: ``_flow``, the first line and the first answer).  Waiting lines
        #: and actions are checked on their own.
        self._short_path_open = (
            self._line_stream
            and not self._recording
            and self._mover is None
            and not self._input_ended
            and self.phase is _OPEN
            and self.flow is _FLOWING
            and self.lines > 0
            and self.answers > 0
        )

    # -- Lifecycle ---------------------------------------------------------

    def hold_notices(self) -> None:
        """The responder's ``started`` hook runs: its notices wait for the
        welcome."""
        if self.phase is _STARTING:
            self._held_notices = []

    def start(self, now: float, *, listen: bool = False) -> None:
        """Send the welcome; with *listen*, the server speaks first."""
        if self.phase is not _STARTING:
            return  # the hook ended the conversation
        if listen:
            self._move(Event.START_LISTEN)
            self._pending = 0
        else:
            self._move(Event.START)
        self._start_idle_clock(now)
        self._notice(welcome(self.id, listen=listen), now)
        self._flush_held(now)

    def start_failed(self, now: float) -> None:
        """The responder's ``started`` hook failed: the service is unavailable."""
        self._bye(_UNAVAILABLE, now)

    # -- Input -------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes arrived on the stream."""
        self.bytes_in += len(data)
        if self.phase > _OPEN:
            return
        telnet = self._telnet
        if telnet is not None and (0xFF in data or telnet.held):
            data, heard = telnet.feed(data)
            if heard is not None:
                if heard.reply:
                    self._emit(TelnetReply(heard.reply), len(heard.reply))
                notice = telnet_notice(heard)
                if notice is not None:
                    self._notice(notice, now)
        items = self._decoder.feed(data)  # type: ignore[union-attr]  # a stream
        if items:
            self._start_idle_clock(now)  # lines came
            if not self._items and self.lines and self.flow is _FLOWING:
                self._items = items  # the usual case: nothing to count
            else:
                self._take(items)

    def take_line(self, data: bytes, now: float) -> str | None:
        """The usual turn's first half, in one call.

        If *data* is exactly one good line, in turn, with nothing else
        waiting or to do, the line is delivered: its text is returned, and
        its answer is owed, as if ``receive_data`` and ``next_action`` had
        given a ``Deliver``.  Otherwise None, and nothing has changed: feed
        *data* with ``receive_data``.
        """
        if (
            not self._short_path_open
            or self.turn is not _CLIENT
            or self._items
            or self._out
        ):
            return None
        telnet = self._telnet
        if telnet is not None and (0xFF in data or telnet.held):
            return None
        # LineDecoder.feed's usual case, inline (a call is about a twentieth
        # of the turn's own instructions): exactly one line, nothing held.
        decoder: LineDecoder = self._decoder  # type: ignore[assignment]  # _lines: it is
        end = len(data) - 1
        if decoder.unfinished or end < 0 or data[end] != 0x0A:
            return None
        if decoder.strip_cr and end and data[end - 1] == 0x0D:
            end -= 1
        if end > decoder.max_line:
            return None
        try:
            text = data[:end].decode()
        except UnicodeDecodeError:
            return None
        # A newline decodes only from a newline byte: one here means more
        # than one line in *data*.  (Cheaper than bytes.find on the read.)
        if "\n" in text or text == QUIT:
            return None
        # The idle clock does not start here: the turn is the server's now,
        # and the answer starts it (see idle_verdict).
        self.bytes_in += len(data)
        self.lines = seq = self.lines + 1
        self.phase, self.turn = _AFTER_LINE
        self._pending = seq
        return text

    def answer_now(self, reply: object, now: float) -> bytes | None:
        """The usual turn's second half: the bytes to write for *reply*.

        If the answer is an ordinary one (a line, not ``q``, with nothing
        else to say first), its bytes are returned for the door to write at
        once, as if ``answered`` and ``next_action`` had given a ``Send``.
        Otherwise None, and nothing has changed: pass it to ``answered``.
        """
        if (
            type(reply) is not str
            or not self._short_path_open
            or self.turn is not _SERVER
            or self._out
            or reply == QUIT
            or "\n" in reply
        ):
            return None
        try:
            data = (("!" + reply) if reply[:1] == "!" else reply).encode() + b"\n"
        except UnicodeEncodeError:
            return None
        self._since = now  # _start_idle_clock, inline: the per-turn path
        self.phase, self.turn = _AFTER_ANSWER
        self.answers += 1
        return data

    def receive_message(self, text: str, now: float, *, final: bool = True) -> None:
        """A WebSocket text message, or a piece of one, arrived."""
        self.bytes_in += len(text)  # characters: near enough, and no encoding
        if self.phase > _OPEN:
            return
        if "\n" in text:
            self._close(Reason.NEWLINE_IN_MESSAGE, Reason.NEWLINE_IN_MESSAGE.value)
            self._log(
                "info",
                "WebSocket from {peer}: a message is one line: it cannot contain "
                "a newline; closing it",
                peer=self.peer,
            )
            return
        limit = self.settings.max_line
        if not self._skipping and text:
            self._part_size += len(text.encode("utf-8"))
            if self._part_size > limit:
                self._skipping = True
                self._parts = _NO_PARTS
            elif self._parts is _NO_PARTS:
                self._parts = [text]
            else:
                self._parts.append(text)
        elif text:
            self._part_size += len(text.encode("utf-8"))
        if not final:
            return
        item: Decoded
        if self._skipping:
            item = LineTooLong(self._part_size, limit)
        else:
            item = "".join(self._parts)
        self._parts = _NO_PARTS
        self._part_size = 0
        self._skipping = False
        self._start_idle_clock(now)
        self._take([item])

    def receive_binary(self, now: float) -> None:
        """A binary WebSocket message: not a line."""
        self._refuse_message(
            Reason.BINARY_MESSAGE, "binary messages are not accepted: send text"
        )

    def receive_invalid_utf8(self, now: float) -> None:
        """A WebSocket text message that is not UTF-8: not a line."""
        self._refuse_message(
            Reason.INVALID_UTF8_MESSAGE, "a text message was not valid UTF-8"
        )

    def _refuse_message(self, reason: Reason, why: str) -> None:
        if self.phase > _OPEN:
            return
        self._log(
            "info", "WebSocket from {peer}: {why}; closing it", peer=self.peer, why=why
        )
        self._close(reason, reason.value)

    def end_of_input(self, now: float) -> None:
        """The client closed its side; it may still be owed an answer."""
        # An unfinished last line is not delivered: a killed client closes
        # its side too.  ``lost`` logs its size.
        self._input_ended = True
        self._open_short_path()
        if self.phase is _STARTING and not self._items:
            # Closed before its welcome (which a responder may hold back:
            # ``WelcomeLater``), having said nothing: a probe, owed nothing.
            self._bye(_END_OF_INPUT, now)
            return
        self._finish_if_done(now)

    def _take(self, items: list[Decoded]) -> None:
        if not self.lines:
            self._announce()
        if self._items:
            self._items = self._items + items
        else:
            self._items = items
        if self.flow is not _FLOWING:  # counted since lines began to wait
            self._items_cost += sum(map(cost, items))
            self._check_bound()

    # -- The responder -----------------------------------------------------

    def answered(self, reply: object, now: float) -> None:
        """The responder's answer to the delivered line (or the opening):
        a ``str``, or a ``Signed`` one."""
        if self.phase is not _OPEN or self.turn is not _SERVER:
            return  # it ended while the responder worked
        by = None
        if isinstance(reply, Signed):
            by = reply.by
            reply = reply.text
        data = self.answer_now(reply, now)  # the usual answer, in fewer steps
        if data is not None:
            self._out.append(_new(Send, (data,)))
            return
        if not isinstance(reply, str):
            self._refuse_answer(
                f"the responder's result was {type(reply).__name__}, expected str",
                now,
            )
            return
        text = reply
        try:
            if self._line_stream:  # line framing, inline: the usual case
                if "\n" in text:
                    raise ValueError("the answer has a newline in it")
                data = (("!" + text) if text[:1] == "!" else text).encode() + b"\n"
                out: Action = _new(Send, (data,))
                size = len(data)
            elif self._websocket:
                if "\n" in text:
                    raise ValueError("the answer has a newline in it")
                text.encode("utf-8")
                out = SendMessage("!" + text if text[:1] == "!" else text)
                size = len(text)
            else:
                data = self.settings.framing.encode_answer(text)
                out = _new(Send, (data,))
                size = len(data)
        except UnicodeEncodeError:
            self._refuse_answer("the answer is not encodable as UTF-8", now)
            return
        except ValueError as e:
            self._refuse_answer(str(e), now)
            return
        self._start_idle_clock(now)  # the client's turn
        if self._recording:  # recorded before it can reach the client
            self._record(now, "out", "answer", text, by=by)
        self._emit(out, size)
        if text == QUIT:
            self._move(Event.BYE)
            self._close(Reason.ANSWERED_QUIT, Reason.ANSWERED_QUIT.value)
            return
        self._move(Event.ANSWER)
        first = not self.answers
        if first:
            self._announce()
        self.answers += 1
        if first:
            self._open_short_path()
        if self._input_ended:
            self._finish_if_done(now)

    def failed(
        self,
        now: float,
        *,
        raised: str = "",
        why: str = "",
        timed_out: bool = False,
        unavailable: str = "",
    ) -> bool:
        """The responder could not answer: it raised an exception of the type
        named *raised*, broke the contract (*why* says how), did not answer
        within ``answer_timeout`` (*timed_out*), or cannot answer for now
        (*unavailable* says why: the broker is unreachable).

        True if the door should log the failure's traceback: the first time
        in a conversation only, so one client cannot fill the log.
        """
        if self.phase is not _OPEN or self.turn is not _SERVER:
            return False  # the conversation ended first: no one left to tell
        if unavailable:
            self._fail(unavailable, "unavailable", now)
            return False
        self._failures += 1
        first = self._failures == 1
        if timed_out:
            seconds = self.settings.answer_timeout
            if first:
                self._log(
                    "warn",
                    "the responder did not answer conversation {cid} within "
                    "{seconds}s; later failures are counted in its last log line",
                    cid=self.id,
                    seconds=seconds,
                )
            self._fail(
                f"no answer within {seconds:g} seconds", "responder-timeout", now
            )
        else:
            self._fail(
                why or f"the responder raised {raised or 'error'}",
                "responder-failed",
                now,
            )
        return first and not timed_out

    def _refuse_answer(self, why: str, now: float) -> None:
        self._failures += 1
        if self._failures == 1:
            self._log(
                "error",
                "responder failed to answer in conversation {cid}: {why}",
                cid=self.id,
                why=why,
            )
        self._fail(why, "responder-failed", now)

    def _fail(self, why: str, code: str, now: float) -> None:
        self._move(Event.FAIL)
        if not self._pending:
            text = f"the first line could not be given ({why}). It is your turn now."
        else:
            text = (
                f"line {self._pending} could not be answered ({why}). It is your "
                "turn again."
            )
        self._notice(Notice(NoticeKind.ERROR, code, safe_text(text)), now)
        self._start_idle_clock(now)  # the client's turn
        if self._input_ended:
            self._finish_if_done(now)

    # -- From the responder's lifecycle hooks ------------------------------

    def notify(self, notice: Notice, now: float) -> None:
        """An info notice from the responder; the turn does not change."""
        if self.phase > _OPEN:
            return
        if self._held_notices is not None:  # still starting: after the welcome
            self._held_notices.append(notice)
            return
        self._notice(notice, now)

    def end(self, notice: Notice, now: float) -> None:
        """End from the server's side with this bye notice."""
        self._bye(notice, now)

    # -- Output and time -----------------------------------------------------

    def output_full(self, now: float) -> None:
        """The transport holds all it should: the client is not reading."""
        if self.flow >= _HOLDING or self.phase > _OPEN:
            return
        if self.answers and self._once("slow"):  # not for a TLS handshake
            self._log(
                "info",
                "conversation {cid}: the client is not reading its answers; "
                "holding its lines back",
                cid=self.id,
            )
        if self._websocket:  # a socket's pongs are written where we cannot count
            self._flow(FlowEvent.OUTPUT_FULL_UNCOUNTED)
        else:
            self._flow(FlowEvent.OUTPUT_FULL)
            self._check_bound()

    def bytes_written(self, size: int) -> None:
        """The door wrote *size* bytes of its own (a pong, say)."""
        if self.flow >= _HOLDING:
            self._unsent += size + ITEM_OVERHEAD
            self._check_bound()

    def output_drained(self, now: float) -> None:
        """The transport sent what it held: handle what was held back."""
        if self.flow < _HOLDING:
            return
        if self._items_cost > self.settings.max_output:
            self._flow(FlowEvent.OUTPUT_DRAINED_OVER_BOUND)
        else:
            self._flow(FlowEvent.OUTPUT_DRAINED)
            if not self._items:
                self._flow(FlowEvent.CAUGHT_UP)
        self._finish_if_done(now)

    @property
    def deadline(self) -> float | None:
        """When the client's idle time runs out (``tick`` then); None: never."""
        return idle_deadline(self.phase, self._since, self.settings.idle_timeout)

    def tick(self, now: float) -> None:
        """The time is *now*: end an idle client."""
        idle = self.settings.idle_timeout
        verdict = idle_verdict(self.phase, self.turn, self._since, idle, now)
        if verdict is Idle.WAITING:
            self._start_idle_clock(now)
        if verdict is not Idle.IDLE:
            return
        self._log(
            "info",
            "conversation {cid} with {peer}: idle for {seconds}s; closing it",
            cid=self.id,
            peer=self.peer,
            seconds=idle,
        )
        self._bye(
            Notice(
                NoticeKind.BYE,
                Reason.IDLE_TIMEOUT.value,
                f"no line from you for {idle:g} seconds; goodbye.",
            ),
            now,
        )

    def lost(self, now: float, *, clean: bool, why: str) -> None:
        """The connection is gone (*clean*: closed without an error)."""
        if self.phase is _CLOSED:
            return
        self._move(Event.LOST)
        self._drop_items()
        unfinished = self._decoder.unfinished if self._decoder is not None else 0
        if unfinished:
            self._log(
                "info",
                "conversation {cid} closed in the middle of a line; its "
                "{count} bytes were not delivered",
                cid=self.id,
                count=unfinished,
            )
        self._log(
            # A health check or a port probe says nothing: one debug event.
            "info" if self.lines or self.answers else "debug",
            "conversation {cid} with {peer} ended after {turns} turn(s) in "
            "{duration:.1f}s{counted}: {why}",
            cid=self.id,
            peer=self.peer,
            turns=self.answers,
            refused=self._refused,
            failures=self._failures,
            counted=(
                f", {self._refused} line(s) refused, {self._failures} answer(s) failed"
                if self._refused or self._failures
                else ""
            ),
            duration=now - self._started,
            why=self._why_ended(clean, why),
        )
        if self._observer is not None:
            self._observer.report(
                Ended(self.code, self.answers, self.bytes_in, self.bytes_out)
            )

    def _why_ended(self, clean: bool, why: str) -> str:
        fixed = _ENDED_BECAUSE.get(self.reason)
        if fixed is not None:
            return fixed
        if self.reason is not Reason.CONNECTION_LOST:
            return f"the server ended it ({self.code})"
        if clean:
            return "the client closed the connection without a q"
        return safe_text(why)

    # -- The actions ---------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether ``next_action`` may have something: an action waits, or
        a line does."""
        return bool(self._out or self._items)

    def next_action(self) -> Action | None:
        """What to do next, or None: wait for the next input."""
        out = self._out
        if out:
            return out.pop(0)
        items = self._items
        if items and self.flow < _HOLDING and self.phase is _OPEN:
            # The usual turn: one line, in turn, nothing else to do.  The
            # same as _step and _handle would do, with fewer calls.
            if (
                len(items) == 1
                and self.turn is _CLIENT
                and self.flow is _FLOWING
                and not self._recording
                and self._mover is None
            ):
                item = items[0]
                if type(item) is str and item != QUIT:
                    self._items = _NO_ITEMS
                    self.lines = seq = self.lines + 1
                    self.phase, self.turn = _AFTER_LINE
                    self._pending = seq
                    return _new(Deliver, (seq, item))
            self._step()
            if out:
                return out.pop(0)
        return None

    def _step(self) -> None:
        """Handle waiting lines until one makes an action, or one must wait."""
        items = self._items
        raw = self.settings.framing.queues_out_of_turn
        out = self._out
        while items and not out and self.phase is _OPEN and self.flow < _HOLDING:
            item = items[0]
            if raw and self.turn is _SERVER and item != QUIT:
                if QUIT in items:  # q is always allowed, even while waiting
                    self._handle(QUIT)
                    return
                if self._once("early"):  # once: a flood is not a log flood
                    self._log(
                        "info",
                        "conversation {cid}: a message arrived before the answer "
                        "to the last one; it waits its turn (raw framing)",
                        cid=self.id,
                    )
                self._flow(FlowEvent.LINE_WAITS)
                self._check_bound()
                return
            del items[0]
            if self.flow is not _FLOWING:
                self._items_cost -= cost(item)
            self._handle(item)
        if not items:
            self._flow(FlowEvent.CAUGHT_UP)
            if self._input_ended:
                self._finish_if_done(None)

    def _handle(self, item: Decoded) -> None:
        self.lines += 1
        seq = self.lines
        if seq == 1:
            self._open_short_path()
        transcript = self._recording
        if type(item) is str:
            if transcript:
                self._record(self._since, "in", "line", item)
            if item == QUIT:
                self._bye(_QUIT, self._since)
                return
            if self.turn is _CLIENT:
                self._move(Event.LINE)
                self._pending = seq
                self._out.append(_new(Deliver, (seq, item)))
                return
            before = (
                f"the answer to line {self._pending}"
                if self._pending
                else "the other side's first line"
            )
            notice = Notice(
                NoticeKind.ERROR,
                OUT_OF_TURN,
                f"line {seq} {excerpt(item)} arrived before {before}; it was not "
                "delivered. Wait for each answer before you send the next line.",
            )
        else:
            if transcript:
                self._record(self._since, "in", "invalid", str(item))
            code = "line-too-long" if isinstance(item, LineTooLong) else "invalid-utf8"
            skipped = "skipped" if isinstance(item, LineTooLong) else "refused"
            notice = Notice(
                NoticeKind.ERROR,
                code,
                f"line {seq} was {skipped}, not delivered: {item}."
                + self._whose_turn(),
            )
        self._refused += 1
        if self._observer is not None:
            self._observer.report(LineRefused(seq, notice.code))
        if self._refused == 1:  # one client cannot fill the log: the end line counts
            self._log(
                "info",
                "conversation {cid}: a line was refused ({code}); later refusals "
                "are counted in its last log line",
                cid=self.id,
                code=notice.code,
            )
        self._notice(notice, self._since)

    def _whose_turn(self) -> str:
        if self.turn is _SERVER:
            if not self._pending:
                return " Wait for the other side's first line."
            return f" Line {self._pending} is still being answered."
        return " It is your turn again."

    def _finish_if_done(self, now: float | None) -> bool:
        """After the client closed its side: bye once nothing is owed."""
        if (
            self._input_ended
            and self.phase is _OPEN
            and self.turn is _CLIENT
            and not self._items
        ):
            self._bye(_END_OF_INPUT, self._since if now is None else now)
            return True
        return False

    # -- The rules ----------------------------------------------------------

    def _move(self, event: Event) -> None:
        """Move the turn as ``MOVES`` says (the usual turn's two moves are
        made inline, in ``take_line``, ``answer_now`` and ``next_action``)."""
        self.phase, self.turn = MOVES[self.phase, self.turn, event]
        self._open_short_path()
        if self._mover is not None:
            self._mover.report(TurnMoved(event, self.phase, self.turn))

    def _flow(self, event: FlowEvent) -> None:
        """Move the flow as ``FLOW`` says, and keep its counts."""
        if self.phase > _OPEN:
            return  # closing: what is left is the close
        before = self.flow
        move = FLOW.get((before, event))
        if move is None:
            return
        after, action = move
        self.flow = after
        self._open_short_path()
        if before is _FLOWING:  # the lines waiting begin to be counted
            self._items_cost = sum(map(cost, self._items))
        elif after is _FLOWING:
            self._items_cost = 0
        if (before >= _HOLDING) is not (after >= _HOLDING):
            self._unsent = 0  # output is counted while the client does not read
        if action is not FlowAction.NONE:
            self._out.append(_READING[action])
        if self._observer is not None:
            self._observer.report(FlowMoved(event, after, action))

    def _over_bound(self) -> bool:
        return self._items_cost + self._unsent > self.settings.max_output

    def _check_bound(self) -> None:
        if self._over_bound():
            self._flow(FlowEvent.OVER_BOUND)

    def _start_idle_clock(self, now: float) -> None:
        """The idle rule's clock starts again at *now* (see ``idle_verdict``
        for when): the one place it does."""
        self._since = now

    # -- Helpers -------------------------------------------------------------

    def _drop_items(self) -> None:
        """The lines waiting will never be handled: the conversation ends."""
        self._items = _NO_ITEMS
        self._items_cost = 0

    def _bye(self, notice: Notice, now: float) -> None:
        if self.phase > _OPEN:
            return
        self._drop_items()
        self._move(Event.BYE)
        self._flush_held(now)
        self._notice(notice, now)
        reason = _REASON_OF_CODE.get(notice.code, Reason.RESPONDER)
        self._close(reason, notice.code)

    def _close(self, reason: Reason, code: str) -> None:
        if self.phase < _CLOSING:
            self._move(Event.BYE)
        self._drop_items()
        self.reason = reason
        self.code = code
        self._out.append(Close(reason, code))

    def _flush_held(self, now: float) -> None:
        held, self._held_notices = self._held_notices, None
        for notice in held or ():
            self._notice(notice, now)

    def _notice(self, notice: Notice, now: float) -> None:
        if self._websocket:
            text = f"!{notice.kind.value} {notice.code}: {notice.text}"
            action: Action = SendMessage(text)
            size = len(text)
        else:
            data = self.settings.framing.encode_notice(notice)
            if not data:
                return
            action = Send(data)
            size = len(data)
        if self._recording:  # recorded before it can reach the client
            self._record(
                now, "out", "notice", notice.text, notice.kind.value, notice.code
            )
        self._emit(action, size)

    def _emit(self, action: Action, size: int) -> None:
        self._out.append(action)
        if self.flow >= _HOLDING:
            self._unsent += size + ITEM_OVERHEAD
            self._check_bound()

    def _record(
        self,
        now: float,
        direction: str,
        kind: str,
        text: str,
        notice: str | None = None,
        code: str | None = None,
        *,
        by: str | None = None,
    ) -> None:
        entry = TranscriptEntry(
            now, self.id, self.peer, direction, kind, text, notice, code, by
        )
        self._out.append(Record(entry))

    def _log(self, level: str, format: str, **fields: object) -> None:
        self._out.append(Log(level, format, tuple(fields.items())))

    def _announce(self) -> None:
        # Said when the first line comes (or the server speaks first), not
        # at connect: a port probe or a health check logs one debug event.
        if self._once("started"):
            self._log(
                "info",
                "conversation {cid} started with {peer}",
                cid=self.id,
                peer=self.peer,
            )

    def _once(self, what: str) -> bool:
        bit = _ONCE[what]
        if self._told & bit:
            return False
        self._told |= bit
        return True

    @property
    def held(self) -> int:
        """Bytes of memory counted as held for this client now: lines
        waiting, and output written since the client stopped reading."""
        if self.flow is _FLOWING:
            return sum(map(cost, self._items)) + self._unsent
        return self._items_cost + self._unsent

    @property
    def buffered(self) -> int:
        """Bytes of a line under way that the decoder holds."""
        if self._decoder is not None:
            return self._decoder.buffered
        return 0 if self._skipping else self._part_size

    @property
    def unfinished(self) -> int:
        """Bytes of a line under way that the decoder holds or skips."""
        if self._decoder is not None:
            return self._decoder.unfinished
        return self._part_size
