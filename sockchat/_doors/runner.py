"""What every door shares: running the engine's actions and the responder.

A door (TCP, WebSocket) owns one connection and one ``ServerConversation``.
This base feeds the engine what the responder does (answers, failures,
notices from its hooks, time), and carries out the actions that are the
same for every door; the door itself carries out the ones that touch its
connection (``_send``, ``_pause``, ``_resume``, ``_close``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from sockchat._core.engine import (
    Action,
    Close,
    Deliver,
    Log,
    PauseReading,
    Record,
    ResumeReading,
    Send,
    ServerConversation,
    TelnetReply,
)
from sockchat._core.wire import Notice, NoticeKind, make_notice
from sockchat._responders.contract import (
    AnswerFailed,
    ConversationInfo,
    IConversation,
    ILifecycle,
    Reply,
    Signed,
    Unavailable,
    as_deferred,
)

if TYPE_CHECKING:
    from sockchat._doors.tcp import ChatServerFactory

__all__ = ["Door"]

log = Logger(namespace="sockchat.server")


@implementer(IConversation, IPushProducer)
class Door:
    """One conversation's connection, whatever it is.

    It is the ``IConversation`` that a responder's lifecycle hooks get.
    """

    factory: ChatServerFactory
    #: The conversation's engine, made at connect.
    engine: ServerConversation
    #: The TCP door's transport (Send and TelnetReply write to it).
    transport: Any

    def __init__(self, conversation_id: int, host: str | None = None) -> None:
        self.conversation_id = conversation_id
        self.info = ConversationInfo(conversation_id, "unknown")
        #: The peer's address, whose admission slot is released at the end.
        self.host = host
        self._closed: Deferred[None] | None = None
        self._pending: Deferred[str] | None = None
        self._closer: IDelayedCall | None = None
        self._hooked = False  # the responder's started hook ran
        self._asked = 0.0  # when the responder was given the line
        self._gone = False

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

    def _begin(self, peer: str, *, messages: bool = False) -> None:
        """Connected: make the engine, welcome the client (or refuse it)."""
        factory = self.factory
        now = factory.clock.seconds()
        self.info = info = ConversationInfo(self.conversation_id, peer)
        self.engine = engine = ServerConversation(
            factory.settings, info.id, peer, now, messages=messages
        )
        factory.conversations[info.id] = self
        factory.watch(self)
        engine.stats = factory.stats  # refused lines are counted by code
        factory.stats.started += 1
        responder = factory.responder
        opening: Reply | None = None
        if ILifecycle.providedBy(responder):
            engine.hold_notices()
            try:
                opening = responder.started(self)
            except Exception:
                log.failure(
                    "the responder's started hook failed in conversation {cid}",
                    cid=info.id,
                )
                engine.start_failed(now)
                self._run(now)
                return
            self._hooked = True
        engine.start(now, listen=opening is not None)
        if opening is not None:
            self._reply(opening, now)
        self._run(now)

    # IConversation, for the responder's hooks.

    def notify(self, code: str, text: str) -> None:
        now = self.factory.clock.seconds()
        self.engine.notify(make_notice(NoticeKind.INFO, code, text), now)
        self._run(now)

    def end(self, code: str, text: str) -> None:
        self.say_goodbye(make_notice(NoticeKind.BYE, code, text))

    def say_goodbye(self, notice: Notice) -> None:
        """End this conversation from the server's side with a bye notice."""
        now = self.factory.clock.seconds()
        self.engine.end(notice, now)
        self._run(now)

    def tick(self, now: float) -> None:
        """The idle watch says the engine's deadline has come."""
        self.engine.tick(now)
        self._run(now)
        self.factory.watch(self)

    def _lost(self, clean: bool, why: str) -> None:
        """The connection is gone: tell the engine, the responder, the factory."""
        factory = self.factory
        if factory.conversations.pop(self.conversation_id, None) is not None:
            factory.forget(self)
        if self._closer is not None and self._closer.active():
            self._closer.cancel()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        engine = getattr(self, "engine", None)  # None: lost before it was made
        if engine is not None:
            now = factory.clock.seconds()
            engine.lost(now, clean=clean, why=why)
            self._run(now)
            factory.stats.fold(engine)
            if self._hooked:
                self._hooked = False
                try:
                    cast(ILifecycle, factory.responder).ended(self, engine.code)
                except Exception:
                    log.failure(
                        "the responder's ended hook failed in conversation {cid}",
                        cid=self.conversation_id,
                    )
        self._gone = True
        factory.admission.release(self.host)
        if self._closed is not None:
            self._closed.callback(None)

    # IPushProducer: the door's connection says its output is full, or not
    # (TCP: the transport; WebSocket: the TCP connection under it).

    def pauseProducing(self) -> None:
        now = self.factory.clock.seconds()
        self.engine.output_full(now)
        self._run(now)

    def resumeProducing(self) -> None:
        now = self.factory.clock.seconds()
        self.engine.output_drained(now)
        self._run(now)

    def stopProducing(self) -> None:
        pass  # connectionLost follows

    # Carrying out the engine's actions.

    def _run(self, now: float) -> None:
        next_action = self.engine.next_action
        action: Action | None = next_action()
        while action is not None:
            kind = type(action)
            if kind is Send or kind is TelnetReply:
                data: bytes = action.data  # type: ignore[union-attr]  # Send or TelnetReply
                self.transport.write(data)
                self.engine.bytes_out += len(data)
            elif kind is Deliver:
                self._asked = now
                try:
                    text: str = action.text  # type: ignore[union-attr]  # a Deliver
                    reply = self.factory.responder.respond(self.info, text)
                except Exception:
                    self._failed(Failure())
                else:
                    if type(reply) is str:  # answered at once: the usual case
                        self.engine.answered(reply, now)
                    else:
                        self._reply(reply, now)
            else:
                self._act(action)
            action = next_action()

    def _act(self, action: Action) -> None:
        if isinstance(action, Log):
            fields = dict(action.fields)
            if action.level == "debug":  # a conversation that said nothing
                held_back = self.factory.quiet.admit("silent")
                if held_back is None:
                    return
                fields["held_back"] = held_back
            log.emit(LogLevel.lookupByName(action.level), action.format, **fields)
        elif isinstance(action, Record):
            transcript = self.factory.transcript
            if transcript is not None:
                transcript.record(action.entry)
        elif isinstance(action, PauseReading):
            self._pause()
        elif isinstance(action, ResumeReading):
            self._resume()
        elif isinstance(action, Close):
            self._close(action)
            if self._closer is None:
                self._closer = self.factory.clock.callLater(
                    self.factory.settings.close_grace, self._abort
                )
        else:
            self._send(action)

    def _send(self, action: Action) -> None:
        raise NotImplementedError

    def _pause(self) -> None:
        raise NotImplementedError

    def _resume(self) -> None:
        raise NotImplementedError

    def _close(self, action: Close) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError

    # The responder's side.

    def _reply(self, reply: Reply, now: float) -> None:
        """Take the responder's reply; the caller runs the engine's actions."""
        if isinstance(reply, (str, Signed)):
            self.engine.answered(reply, now)
            return
        pending = as_deferred(reply)
        if pending is None:
            why = (
                f"the responder returned {type(reply).__name__}; expected str, a "
                "Deferred or an awaitable"
            )
            if self.engine.failed(now, why=why):
                log.error(
                    "responder failed to answer in conversation {cid}: {why}",
                    cid=self.conversation_id,
                    why=why,
                )
            return
        timeout = self.factory.settings.answer_timeout
        if timeout is not None:
            pending.addTimeout(timeout, self.factory.clock)
        self._pending = pending
        pending.addCallbacks(self._answered_later, self._failed_later)

    def _answered_later(self, reply: object) -> None:
        self._pending = None
        now = self.factory.clock.seconds()
        if isinstance(reply, (str, Signed)):
            self.factory.stats.observe_later(self.factory.stats.kind, now - self._asked)
        self.engine.answered(reply, now)
        self._run(now)

    def _failed_later(self, failure: Failure) -> None:
        if self._pending is None:
            return  # cancelled: the conversation ended first
        self._pending = None
        self._failed(failure)
        self._run(self.factory.clock.seconds())

    def _failed(self, failure: Failure) -> None:
        now = self.factory.clock.seconds()
        if failure.check(TimeoutError):
            self.engine.failed(now, timeout=True)
            return
        if failure.check(Unavailable):
            self.engine.failed(now, unavailable=str(failure.value) or "unavailable")
            return
        if failure.check(AnswerFailed):
            self.engine.failed(now, why=str(failure.value) or "it failed")
            return
        name = failure.type.__name__ if failure.type else "error"
        if self.engine.failed(now, raised=name):
            log.failure(
                "responder failed to answer in conversation {cid}; later failures "
                "are counted in its last log line",
                failure,
                cid=self.conversation_id,
            )
