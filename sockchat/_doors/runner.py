"""Running one conversation: its engine fed, its actions carried out.

A door owns one connection (``tcp.ChatServerProtocol``: a byte stream;
``web.WebConversation``: a WebSocket) and, once its conversation begins,
one ``Runner``.  The door moves what it reads into the runner and does
what the runner asks of it (``Door``: pause or resume reading, close,
abort; and its one ``write``).  The runner does the rest, the same for
every door:

- it feeds the engine (``ServerConversation``) each input with the time,
  and carries out the actions the engine gives back, one at a time;
- it asks the responder for each delivered line (``receive_data`` for the
  usual turn, ``_deliver`` within a run of the engine's actions), and
  feeds its answer, failure or timeout back;
- it is the ``IConversation`` a responder's lifecycle hooks get, and the
  producer the door's transport pauses when the client stops reading;
- it calls the hooks of the conversation's observers
  (``sockchat._doors.observers``) as things happen, and hears the engine's
  reports for them.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from sockchat._core.engine import (
    Action,
    Close,
    Deliver,
    Log,
    PauseReading,
    Reason,
    Record,
    ResumeReading,
    Send,
    SendMessage,
    ServerConversation,
    Settings,
    TelnetReply,
)
from sockchat._core.reports import EngineReport, TurnMoved
from sockchat._core.transcript import ITranscript
from sockchat._core.wire import Notice, NoticeKind, make_notice
from sockchat._doors.observers import ConversationObserver, Loss, loss_of
from sockchat._doors.quiet import LogLimiter
from sockchat._responders.contract import (
    AnswerFailed,
    ConversationInfo,
    IConversation,
    ILifecycle,
    IResponder,
    Reply,
    Signed,
    Unavailable,
    Untimed,
    WelcomeLater,
    as_deferred,
)
from sockchat._responders.later import Later

__all__ = ["WRITE_TOGETHER", "Door", "Hub", "Runner", "Writer"]

log = Logger(namespace="sockchat.server")

#: What one run of the engine writes, the answers to several lines read
#: at once included, goes out in one write, in pieces of at least this
#: many bytes.  The TCP door sends each write at once
#: (``eager.write_now``): as one send they are one segment, as they were
#: when Twisted gathered a reactor pass's writes; as two, Nagle's
#: algorithm would hold the second until the first is acknowledged (up to
#: the client's delayed ACK, 40 ms on Linux).  It is what Twisted queues
#: before it pauses the door (``rules.TRANSPORT_BUFFER``), so the engine
#: learns as soon as before that the client is not reading.
WRITE_TOGETHER = 4 * 1024


class Writer(Protocol):
    """Where a runner's bytes for the client go: a transport, or a door that
    sends each write as one message."""

    def write(self, data: bytes) -> None:
        """Send *data* to the client."""


class Door(Protocol):
    """What a runner asks of the door that owns it, besides its writes."""

    def pause_reading(self) -> None:
        """Stop reading the client until ``resume_reading``."""

    def resume_reading(self) -> None:
        """Read the client again."""

    def close(self, reason: Reason) -> None:
        """Close once what was written is sent (a WebSocket: with the close
        code of *reason*)."""

    def abort(self) -> None:
        """Close now, whatever is unsent: the close took too long."""


class Hub(Protocol):
    """What a runner needs from the factory whose conversation it runs
    (``ChatServerFactory`` is one)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def clock(self) -> IReactorTime: ...

    @property
    def responder(self) -> IResponder: ...

    @property
    def transcript(self) -> ITranscript | None: ...

    @property
    def quiet(self) -> LogLimiter: ...

    def opened(self, runner: Runner) -> None:
        """*runner*'s conversation began: it is open until ``closed``."""

    def closed(self, runner: Runner) -> None:
        """*runner*'s connection is gone: its slot is free."""


@implementer(IConversation, IPushProducer)
class Runner:
    """One conversation, run: see the module's docstring.

    *writer* is where every byte for the client goes: the door's one write
    path (a WebSocket door sends each write as one text message).
    *observers* watch it; *websocket*: the door is a WebSocket.  Call
    ``begin`` once the door is ready for its output.
    """

    __slots__ = (
        "_asked",
        "_closed",
        "_closer",
        "_deciding",
        "_depth",
        "_door",
        "_gathered",
        "_gone",
        "_hub",
        "_observers",
        "_owes_ended",
        "_pending",
        "_watchers",
        "_writer",
        "engine",
        "host",
        "info",
    )

    def __init__(
        self,
        hub: Hub,
        door: Door,
        writer: Writer,
        info: ConversationInfo,
        *,
        host: str | None,
        observers: tuple[ConversationObserver, ...] = (),
        websocket: bool = False,
    ) -> None:
        self._hub = hub
        self._door = door
        self._writer = writer
        self.info = info
        #: The peer's address, whose admission slot is released at the end.
        self.host = host
        self._observers = observers
        #: The observers of every turn: empty, the usual case, costs one check.
        self._watchers = tuple(o for o in observers if o.every_turn)
        self.engine = ServerConversation(
            hub.settings, info.id, info.peer, hub.clock.seconds(), websocket=websocket
        )
        self.engine.observe(self, every_move=bool(self._watchers))
        self._closed: Deferred[None] | None = None
        self._pending: Deferred[str] | Later[Any] | None = None
        #: The responder's decision of who speaks first (``WelcomeLater``).
        self._deciding: Deferred[None] | None = None
        self._closer: IDelayedCall | None = None
        self._owes_ended = False  # the started hook ran: the ended one is owed
        self._asked = 0.0  # when the answer waited for was asked
        self._gone = False
        self._depth = 0  # _run calls under way (counted when watched)
        #: What the engine's run (and any run within it: a responder's
        #: notice, a pause) has yet to write: see WRITE_TOGETHER.
        self._gathered: list[bytes] | None = None

    @property
    def closed(self) -> Deferred[None]:
        """Fires once the connection is gone and the responder was told.

        Made when first asked for: most conversations are never waited on,
        and a Deferred costs about 300 bytes.
        """
        if self._closed is None:
            self._closed = Deferred()
            if self._gone:
                self._closed.callback(None)
        return self._closed

    def begin(self) -> None:
        """Welcome the client (or refuse it), as the responder's hooks say."""
        hub = self._hub
        now = hub.clock.seconds()
        engine = self.engine
        hub.opened(self)
        for observer in self._observers:
            observer.started(self.info, now)
        responder = hub.responder
        opening: Reply | WelcomeLater | None = None
        if ILifecycle.providedBy(responder):
            engine.hold_notices()
            try:
                opening = responder.started(self)
            except Exception:
                log.failure(
                    "the responder's started hook failed in conversation {cid}",
                    cid=self.info.id,
                )
                engine.start_failed(now)
                self._run(now)
                return
            self._owes_ended = True
        if isinstance(opening, WelcomeLater):
            self._deciding = opening.decided
            opening.decided.addCallbacks(
                self._decided, self._not_decided, callbackArgs=(opening,)
            )
            return
        self._welcome(opening, now)

    def _welcome(self, opening: Reply | None, now: float) -> None:
        self.engine.start(now, listen=opening is not None)
        if opening is not None:
            self._reply(opening, now)
        self._run(now)

    def _decided(self, _: None, later: WelcomeLater) -> None:
        if self._deciding is None:
            return  # the conversation ended first
        self._deciding = None
        self._welcome(later.opening, self._hub.clock.seconds())

    def _not_decided(self, failure: Failure) -> None:
        if self._deciding is None:
            return  # cancelled: the conversation ended first
        self._deciding = None
        log.failure(
            "the responder could not decide who speaks first in conversation {cid}",
            failure,
            cid=self.info.id,
        )
        now = self._hub.clock.seconds()
        self.engine.start_failed(now)
        self._run(now)

    # -- What the door reads ------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """A byte stream's read brought *data*: the usual turn.

        One good line in turn, answered at once, is the whole turn here:
        the engine's ``take_line``, the responder, the engine's
        ``answer_now`` and one write (``_deliver`` inline: a call is about
        a twentieth of the turn's instructions).  Anything else goes the
        long way, through the engine's actions.
        """
        now = self._hub.clock.seconds()
        engine = self.engine
        text = engine.take_line(data, now)  # None, and no change, unless usual
        if text is None:
            for watcher in self._watchers:  # none, unless a turn is watched
                watcher.read(data, now)
            engine.receive_data(data, now)
            self._run(now)
            return
        try:
            reply = self._hub.responder.respond(self.info, text)
        except Exception:
            self._failed(Failure())
            self._run(now)
            return
        out = engine.answer_now(reply, now)  # the usual answer, in one step
        if out is None:
            self._reply(reply, now)
            if engine.busy or self._watchers:  # else it waits for the answer
                self._run(now)
            return
        self._writer.write(out)
        engine.bytes_out += len(out)

    def receive_message(self, text: str, *, final: bool) -> None:
        """A WebSocket text message, or a piece of it, arrived."""
        now = self._hub.clock.seconds()
        for watcher in self._watchers:
            watcher.frame_in(text, len(text.encode("utf-8", "replace")), final, now)
        self.engine.receive_message(text, now, final=final)
        self._run(now)

    def receive_binary(self, size: int) -> None:
        """A binary WebSocket message of *size* bytes arrived."""
        now = self._hub.clock.seconds()
        for watcher in self._watchers:
            watcher.frame_in(None, size, True, now)
        self.engine.receive_binary(now)
        self._run(now)

    def receive_invalid_utf8(self) -> None:
        """A WebSocket text message that was not UTF-8 arrived."""
        now = self._hub.clock.seconds()
        self.engine.receive_invalid_utf8(now)
        self._run(now)

    def end_of_input(self) -> None:
        """The client closed its sending half (a FIN)."""
        now = self._hub.clock.seconds()
        for observer in self._observers:
            observer.peer_closed(now)
        self.engine.end_of_input(now)
        self._run(now)

    def lost(self, reason: Failure, why: str) -> None:
        """The connection is gone (*why*: Twisted's *reason*, readable)."""
        hub = self._hub
        hub.closed(self)
        if self._closer is not None and self._closer.active():
            self._closer.cancel()
        pending, deciding = self._pending, self._deciding
        self._pending = self._deciding = None
        for waiting in (pending, deciding):
            if waiting is not None:
                waiting.cancel()
        engine = self.engine
        loss = loss_of(reason)
        now = hub.clock.seconds()
        engine.lost(now, clean=loss is Loss.DONE, why=why)
        self._run(now)
        if self._owes_ended:
            self._owes_ended = False
            try:
                cast(ILifecycle, hub.responder).ended(self, engine.code)
            except Exception:
                log.failure(
                    "the responder's ended hook failed in conversation {cid}",
                    cid=self.info.id,
                )
        self._gone = True
        if self._closed is not None:
            self._closed.callback(None)
        for observer in self._observers:
            observer.lost(loss, reason, now)

    # -- IPushProducer: the door's connection is full, or not ----------------

    def pauseProducing(self) -> None:
        now = self._hub.clock.seconds()
        self.engine.output_full(now)
        self._run(now)

    def resumeProducing(self) -> None:
        now = self._hub.clock.seconds()
        self.engine.output_drained(now)
        self._run(now)

    def stopProducing(self) -> None:
        pass  # the connection's loss follows

    # -- IConversation, for the responder's hooks ----------------------------

    def notify(self, code: str, text: str) -> None:
        now = self._hub.clock.seconds()
        self.engine.notify(make_notice(NoticeKind.INFO, code, text), now)
        self._run(now)

    def end(self, code: str, text: str) -> None:
        self.say_goodbye(make_notice(NoticeKind.BYE, code, text))

    def handoff(self, reason: str) -> None:
        # A responder that may hand over is given the conversation by the
        # server's handoff responder (sockchat._broker.handoff), not this.
        raise Unavailable(
            "this server has no operators' queue to hand a conversation to "
            "(serve the desk with --desk, or run with --broker)"
        )

    def say_goodbye(self, notice: Notice) -> None:
        """End this conversation from the server's side with a bye notice."""
        now = self._hub.clock.seconds()
        self.engine.end(notice, now)
        self._run(now)

    def tick(self, now: float) -> None:
        """The idle watch says the engine's deadline has come."""
        self.engine.tick(now)
        self._run(now)

    # -- The engine's reports, for the observers ------------------------------

    def report(self, report: EngineReport) -> None:
        observers = self._watchers if type(report) is TurnMoved else self._observers
        for observer in observers:
            observer.reported(report)

    # -- Carrying out the engine's actions ------------------------------------

    def _run(self, now: float) -> None:
        gathered = self._gathered
        if gathered is not None:  # within another run, which writes
            self._take_actions(now, gathered)
            return
        gathered = self._gathered = []
        try:
            self._take_actions(now, gathered)
        finally:
            self._gathered = None
        if gathered:
            self._writer.write(b"".join(gathered))

    def _take_actions(self, now: float, gathered: list[bytes]) -> None:
        engine = self.engine
        watchers = self._watchers
        if watchers:
            self._depth += 1
        size = 0
        next_action = engine.next_action
        action: Action | None = next_action()
        while action is not None:
            kind = type(action)
            if kind is Send or kind is TelnetReply:
                data: bytes = action.data  # type: ignore[union-attr]  # Send or TelnetReply
                gathered.append(data)
                engine.bytes_out += len(data)
                for watcher in watchers:
                    watcher.wrote(data, now)
                size += len(data)
                if size >= WRITE_TOGETHER:
                    self._write_gathered(gathered)
                    size = 0
            elif kind is Deliver:
                text: str = action.text  # type: ignore[union-attr]  # a Deliver
                before = len(gathered)
                self._deliver(engine, text, now, gathered)
                if len(gathered) > before:  # answered at once (and noticed)
                    size += sum(map(len, gathered[before:]))
                    if size >= WRITE_TOGETHER:
                        self._write_gathered(gathered)
                        size = 0
            else:
                if gathered:  # what was written before it goes first
                    self._write_gathered(gathered)
                    size = 0
                self._act(action, now)
            action = next_action()
        if watchers:
            # Once, after the outermost run: a responder that calls back
            # (notify, end) runs the engine from within this one.
            self._depth -= 1
            if not self._depth:
                for watcher in watchers:
                    watcher.handled(now)

    def _write_gathered(self, gathered: list[bytes]) -> None:
        data = b"".join(gathered)
        gathered.clear()  # a run within the write (a pause) gathers anew
        self._writer.write(data)

    def _act(self, action: Action, now: float) -> None:
        if isinstance(action, SendMessage):
            data = action.text.encode("utf-8")
            self._writer.write(data)
            self.engine.bytes_out += len(data)
            for watcher in self._watchers:
                watcher.wrote(data, now)
        elif isinstance(action, Log):
            fields = dict(action.fields)
            if action.level == "debug":  # a conversation that said nothing
                held_back = self._hub.quiet.admit("silent")
                if held_back is None:
                    return
                fields["held_back"] = held_back
            log.emit(LogLevel.lookupByName(action.level), action.format, **fields)
        elif isinstance(action, Record):
            transcript = self._hub.transcript
            if transcript is not None:
                transcript.record(action.entry)
        elif isinstance(action, PauseReading):
            self._door.pause_reading()
        elif isinstance(action, ResumeReading):
            self._door.resume_reading()
        elif isinstance(action, Close):
            for observer in self._observers:
                observer.closing(action.reason, now)
            self._door.close(action.reason)
            if self._closer is None:
                hub = self._hub
                self._closer = hub.clock.callLater(
                    hub.settings.close_grace, self._abort
                )

    def _abort(self) -> None:
        now = self._hub.clock.seconds()
        for observer in self._observers:
            observer.aborting(now)
        self._door.abort()

    # -- The responder's side -------------------------------------------------

    def _deliver(
        self,
        engine: ServerConversation,
        text: str,
        now: float,
        gathered: list[bytes],
    ) -> None:
        """Give the delivered line *text* to the responder, and take its reply.

        An answer given at once is *gathered*, to be written with the rest
        of the run.  The one place a line reaches the responder within a
        run (``receive_data`` does the same for the usual turn).
        """
        try:
            reply = self._hub.responder.respond(self.info, text)
        except Exception:
            self._failed(Failure())
            return
        data = engine.answer_now(reply, now)  # the usual answer, in one step
        if data is None:
            self._reply(reply, now)
            return
        gathered.append(data)
        engine.bytes_out += len(data)

    def _reply(self, reply: Reply, now: float) -> None:
        """Take the responder's reply; the caller runs the engine's actions."""
        if isinstance(reply, (str, Signed)):
            self.engine.answered(reply, now)
            return
        timed = not isinstance(reply, Untimed)
        inner = reply.answer if isinstance(reply, Untimed) else reply
        hub = self._hub
        timeout = hub.settings.answer_timeout
        if type(inner) is Later and (not timed or timeout is None):
            # The broker's queues give a Later: taken directly, no Deferred.
            self._asked = now
            self._pending = inner
            inner.then(self._answered_later, self._failed_later)
            return
        pending = as_deferred(inner)
        if pending is None:
            why = (
                f"the responder returned {type(reply).__name__}; expected str, a "
                "Deferred or an awaitable"
            )
            if self.engine.failed(now, why=why):
                log.error(
                    "responder failed to answer in conversation {cid}: {why}",
                    cid=self.info.id,
                    why=why,
                )
            return
        if timeout is not None and timed:
            pending.addTimeout(timeout, hub.clock)
        self._asked = now
        self._pending = pending
        pending.addCallbacks(self._answered_later, self._failed_later)

    def _answered_later(self, reply: object) -> None:
        self._pending = None
        now = self._hub.clock.seconds()
        if isinstance(reply, (str, Signed)):
            for observer in self._observers:
                observer.answered_later(now - self._asked)
            if self._gathered is None:  # not within a run: the usual answer
                # in one step, as receive_data does (who signed it matters
                # only to a recording, which takes the long way).
                engine = self.engine
                out = engine.answer_now(
                    reply.text if type(reply) is Signed else reply, now
                )
                if out is not None:
                    self._writer.write(out)
                    engine.bytes_out += len(out)
                    return
        self.engine.answered(reply, now)
        self._run(now)

    def _failed_later(self, failure: Failure) -> None:
        if self._pending is None:
            return  # cancelled: the conversation ended first
        self._pending = None
        self._failed(failure)
        self._run(self._hub.clock.seconds())

    def _failed(self, failure: Failure) -> None:
        now = self._hub.clock.seconds()
        engine = self.engine
        if failure.check(TimeoutError):
            engine.failed(now, timed_out=True)
            return
        if failure.check(Unavailable):
            engine.failed(now, unavailable=str(failure.value) or "unavailable")
            return
        if failure.check(AnswerFailed):
            engine.failed(now, why=str(failure.value) or "it failed")
            return
        name = failure.type.__name__ if failure.type else "error"
        if engine.failed(now, raised=name):
            log.failure(
                "responder failed to answer in conversation {cid}; later failures "
                "are counted in its last log line",
                failure,
                cid=self.info.id,
            )
