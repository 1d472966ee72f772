"""Twisted adapters for the server: a protocol per connection and its factory.

They move bytes between the transport and the core (``LineDecoder``,
``ServerTurns``) and call the responder; every decision is the core's.
"""

from __future__ import annotations

import inspect
import itertools
from collections import deque
from collections.abc import Awaitable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from twisted.internet import address
from twisted.internet.defer import Deferred, DeferredList, TimeoutError, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._codec import DEFAULT_MAX_LINE, Decoded
from ._framing import Decoder, Framing, LineFraming
from ._limits import Admission
from ._render import safe_text
from ._responder import ConversationInfo, IConversation, ILifecycle, IResponder, Reply
from ._telnet import TelnetFilter, TelnetHeard, telnet_notice
from ._transcript import ITranscript, TranscriptEntry
from ._turns import Deliver, ServerTurns, Turn, shutting_down, welcome
from ._wire import QUIT, Notice, NoticeKind, make_notice

__all__ = [
    "CLOSE_GRACE",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_OUTPUT",
    "ChatServerFactory",
    "ChatServerProtocol",
    "describe_address",
]

#: Seconds a client may take over its turn, by default.
DEFAULT_IDLE_TIMEOUT = 600.0
#: Bytes of unread output held for one client before its input is paused.
DEFAULT_MAX_OUTPUT = 256 * 1024
#: Seconds a closing connection gets to take its last notice.
CLOSE_GRACE = 3.0

log = Logger(namespace="sockchat.server")

_T = TypeVar("_T")


def describe_address(addr: IAddress) -> str:
    """``host:port`` for IP peers (``[::1]:port`` for IPv6), else a short name."""
    if isinstance(addr, address.IPv6Address):
        return f"[{addr.host}]:{addr.port}"
    if isinstance(addr, address.IPv4Address):
        return f"{addr.host}:{addr.port}"
    if isinstance(addr, address.UNIXAddress):
        name: object = addr.name
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return f"unix:{safe_text(str(name))}" if name else "unix"
    return safe_text(str(addr))


class BadAnswer(Exception):
    """The responder broke the contract; the message is safe to show the client."""


_END_OF_INPUT = Notice(
    NoticeKind.BYE, "end-of-input", "you closed your side of the connection; goodbye."
)
_ENDED_BECAUSE = {
    "quit": "the client sent q",
    "answered-quit": "the responder answered q",
    "end-of-input": "the client closed its side, and nothing more was owed",
}
_UNAVAILABLE = Notice(
    NoticeKind.BYE,
    "unavailable",
    "the service could not start this conversation; try again later.",
)


#: Twisted's transports read up to ``bufferSize`` bytes at once *and* pause
#: their producer past ``bufferSize`` unsent bytes.  A read of 256 KiB costs
#: a 256 KiB allocation (glibc may even mmap and munmap it each time), so
#: the transport keeps Twisted's default, and the protocol counts the rest
#: of ``max_output`` itself.
_TRANSPORT_BUFFER = 64 * 1024


def _set_buffer_size(transport: object, size: int) -> None:
    """Make the transport pause its producer past *size* unwritten bytes.

    For TLS the bytes are buffered by the TCP transport underneath.
    """
    while transport is not None:
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = size
        transport = getattr(transport, "transport", None)


async def _await(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def _as_deferred(reply: Deferred[str] | Awaitable[str]) -> Deferred[str]:
    if isinstance(reply, Deferred):
        return reply
    if inspect.isawaitable(reply):
        return Deferred.fromCoroutine(_await(reply))
    raise BadAnswer(
        f"the responder returned {type(reply).__name__}; expected str, a "
        "Deferred or an awaitable"
    )


@implementer(IConversation, IHalfCloseableProtocol, IPushProducer)
class ChatServerProtocol(Protocol):
    """One conversation, from connect to close.

    It is the ``IConversation`` that a responder's lifecycle hooks get.

    It is also the producer of its own output: when the client stops
    reading and the transport's buffer fills, the transport pauses it, and
    it stops reading the client's lines until the buffer drains.  So a
    client that floods without reading holds at most about ``max_output``
    bytes of answers, and the others go on as before.
    """

    factory: ChatServerFactory
    transport: ITCPTransport  # or any transport with the same methods

    def __init__(self, conversation_id: int) -> None:
        self.conversation_id = conversation_id
        self.info = ConversationInfo(conversation_id, "unknown")
        self.turns = ServerTurns()
        self.decoder: Decoder | None = None
        self._telnet: TelnetFilter | None = None
        self.closed: Deferred[None] = Deferred()
        self._pending: Deferred[str] | None = None
        # Read, not handled yet: while paused, or (raw framing) until their turn.
        # Made when first needed: an empty deque takes about 760 bytes, and
        # most conversations never hold a line back.
        self._backlog: deque[Decoded] | None = None
        self._paused = False  # by the transport: the client is not reading
        self._buffer_size = _TRANSPORT_BUFFER  # where the transport pauses us
        # While the transport holds over _buffer_size: how many more bytes
        # may be written before max_output is reached.  None: it holds less.
        self._allowance: int | None = None
        self._reading_paused = False  # by us: too many lines held back
        self._backlog_size = 0
        self._told_slow = False  # logged that the client does not read
        self._input_ended = False
        self._started = 0.0
        self._turn_started = 0.0
        self._idle_timer: IDelayedCall | None = None
        self._close_timer: IDelayedCall | None = None
        self._hooked = False  # the responder's started hook ran
        self._held: list[Notice] | None = None  # notices sent while starting
        self._bye_code = "connection-lost"
        self._draining = False
        self._told_early = False  # logged that a raw message waits its turn

    def connectionMade(self) -> None:
        factory = self.factory
        self.decoder = factory.framing.decoder(factory.max_line)
        if factory.framing.takes_telnet:
            self._telnet = TelnetFilter()
        self.info = ConversationInfo(
            self.conversation_id, describe_address(self.transport.getPeer())
        )
        factory.conversations[self.conversation_id] = self
        self._started = self._turn_started = factory.clock.seconds()
        self._buffer_size = min(factory.max_output, _TRANSPORT_BUFFER)
        _set_buffer_size(self.transport, self._buffer_size)
        cast(IConsumer, self.transport).registerProducer(self, True)
        if factory.idle_timeout is not None:
            self._idle_timer = factory.clock.callLater(
                factory.idle_timeout, self._check_idle
            )
        log.info(
            "conversation {cid} started with {peer}",
            cid=self.conversation_id,
            peer=self.info.peer,
        )
        responder = factory.responder
        opening: Reply | None = None
        if ILifecycle.providedBy(responder):
            self._held = []
            try:
                opening = responder.started(self)
            except Exception:
                log.failure(
                    "the responder's started hook failed in conversation {cid}",
                    cid=self.conversation_id,
                )
                self.say_goodbye(_UNAVAILABLE)
                return
            self._hooked = True
            if self.turns.turn is Turn.ENDED:  # it ended the conversation
                return
        if opening is None:
            self._send_notice(welcome(self.conversation_id))
        else:
            self.turns.listen()
            self._send_notice(welcome(self.conversation_id, listen=True))
        self._flush_held()
        if opening is not None:
            self._take_reply(opening)

    def _flush_held(self) -> None:
        held, self._held = self._held, None
        for notice in held or ():
            self._send_notice(notice)

    # IConversation, for the responder's hooks.

    def notify(self, code: str, text: str) -> None:
        notice = make_notice(NoticeKind.INFO, code, text)
        if self.turns.turn is Turn.ENDED:
            return
        if self._held is not None:  # still starting: after the welcome
            self._held.append(notice)
        else:
            self._send_notice(notice)

    def end(self, code: str, text: str) -> None:
        self.say_goodbye(make_notice(NoticeKind.BYE, code, text))

    def dataReceived(self, data: bytes) -> None:
        assert self.decoder is not None
        if self._telnet is not None:
            data, heard = self._telnet.feed(data)
            if heard is not None and self.turns.turn is not Turn.ENDED:
                self._heard_telnet(heard)
        items = self.decoder.feed(data)
        if (
            len(items) == 1
            and self.turns.turn is Turn.CLIENT
            and not self._paused
            and not self._backlog
        ):
            # The usual case: one line, in turn, handled at once.  Its
            # answer, or the notice that refuses it, restarts the client's
            # idle time.
            self._handle_one(items[0])
        elif items:
            self._turn_started = self.factory.clock.seconds()  # lines came
            self._handle(items)

    def _handle(self, items: Iterable[Decoded]) -> None:
        iterator = iter(items)
        for item in iterator:
            if self._paused:
                self._hold_back(item, iterator)
                return
            if self._waits_its_turn(item):
                if not self._told_early:  # once: a flood is not a log flood
                    self._told_early = True
                    log.info(
                        "conversation {cid}: a message arrived before the answer "
                        "to the last one; it waits its turn (raw framing)",
                        cid=self.conversation_id,
                    )
                self._hold_back(item, iter(()))
                continue
            if not self._handle_one(item):
                return

    def _waits_its_turn(self, item: Decoded) -> bool:
        """In raw framing, a message sent ahead is read after the answer."""
        return (
            self.factory.framing.queues_out_of_turn
            and item != QUIT  # q is always allowed, even while waiting
            and (self.turns.turn is Turn.SERVER or bool(self._backlog))
        )

    def _heard_telnet(self, heard: TelnetHeard) -> None:
        if heard.reply:
            self.transport.write(heard.reply)  # before telnet hides our output
        notice = telnet_notice(heard)
        if notice is not None:
            self._send_notice(notice)

    def _handle_one(self, item: Decoded) -> bool:
        """Act on one decoded line; False once the conversation has ended."""
        if self.factory.transcript is not None and self.turns.turn is not Turn.ENDED:
            now = self.factory.clock.seconds()
            if isinstance(item, str):
                self._record(now, "in", "line", item)
            else:
                self._record(now, "in", "invalid", str(item))
        action = self.turns.receive(item)
        if action is None:
            return False
        if isinstance(action, Deliver):
            self._deliver(action.text)
            return True
        self._turn_started = self.factory.clock.seconds()  # a line came
        if action.kind is NoticeKind.ERROR:
            log.info(
                "conversation {cid}: a line was refused ({code})",
                cid=self.conversation_id,
                code=action.code,
            )
        self._send_notice(action)
        if action.kind is NoticeKind.BYE:
            self._close()
            return False
        return True

    def _hold_back(self, item: Decoded, rest: Iterator[Decoded]) -> None:
        """Keep lines read while paused, or early raw messages; past the limit,
        stop reading."""
        added = [item, *rest]
        if self._backlog is None:
            self._backlog = deque()
        self._backlog.extend(added)
        # Characters, not bytes: near enough for a bound.
        self._backlog_size += sum(len(i) if isinstance(i, str) else 1 for i in added)
        if self._backlog_size > self.factory.max_output and not self._reading_paused:
            self._reading_paused = True
            cast(IPushProducer, self.transport).pauseProducing()

    # IPushProducer: the transport says when the client stops reading.

    def pauseProducing(self) -> None:
        # The transport holds more than _buffer_size unsent bytes; past
        # max_output in all, stop handling lines.
        if self._allowance is None:
            self._allowance = self.factory.max_output - self._buffer_size
        if self._allowance <= 0:
            self._stop_handling()

    def _count_unsent(self, size: int) -> None:
        """*size* more bytes join a transport buffer that is already full."""
        assert self._allowance is not None
        self._allowance -= size
        if self._allowance <= 0:
            self._stop_handling()

    def _stop_handling(self) -> None:
        # Not only when the client stops reading: TLS also pauses us until
        # its handshake is done, which needs the input to keep flowing.  So
        # stop *handling* lines here, and stop reading only once too many
        # are held back.
        if not self._paused:
            self._paused = True
            if self.turns.answers and not self._told_slow:  # once, and not for TLS
                self._told_slow = True
                log.info(
                    "conversation {cid}: the client is not reading its answers; "
                    "holding its lines back",
                    cid=self.conversation_id,
                )

    def resumeProducing(self) -> None:
        self._allowance = None  # the transport has sent all it held
        if not self._paused:
            return
        self._paused = False
        self._drain()
        self._finish_if_done()

    def _drain(self) -> None:
        """Handle the lines held back, as far as their turn allows."""
        if self._draining:  # an answer given while draining: the loop goes on
            return
        self._draining = True
        try:
            backlog = self._backlog
            owed = self.factory.framing.queues_out_of_turn
            while backlog and not self._paused:
                if owed and self.turns.turn is Turn.SERVER:
                    break
                item = backlog.popleft()
                self._backlog_size -= len(item) if isinstance(item, str) else 1
                if not self._handle_one(item):
                    backlog.clear()
        finally:
            self._draining = False
        if self._reading_paused and not self._paused and not self._backlog:
            self._reading_paused = False
            if self.turns.turn is not Turn.ENDED:
                cast(IPushProducer, self.transport).resumeProducing()

    def stopProducing(self) -> None:
        pass  # connectionLost follows

    # IHalfCloseableProtocol: the client may close its side and still be
    # owed an answer (``printf 'hi\n' | nc -N``).

    def readConnectionLost(self) -> None:
        # An unfinished last line is not delivered: a killed client closes
        # its side too.  connectionLost logs its size.
        self._input_ended = True
        self._finish_if_done()

    def _finish_if_done(self) -> None:
        """After the client closed its side: bye once nothing is owed."""
        if self._input_ended and self.turns.turn is Turn.CLIENT and not self._backlog:
            self.say_goodbye(_END_OF_INPUT)

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def say_goodbye(self, notice: Notice) -> None:
        """End this conversation from the server's side with a bye notice."""
        if self.turns.turn is Turn.ENDED:
            return
        self.turns.end()
        self._flush_held()
        self._send_notice(notice)
        self._close()

    def _close(self) -> None:
        """Close after the output is flushed; abort if it cannot be."""
        # A registered producer keeps TLS from sending its close_notify.
        cast(IConsumer, self.transport).unregisterProducer()
        self.transport.loseConnection()
        if self._close_timer is None:
            self._close_timer = self.factory.clock.callLater(
                self.factory.close_grace, self.transport.abortConnection
            )

    def _check_idle(self) -> None:
        factory = self.factory
        assert factory.idle_timeout is not None
        now = factory.clock.seconds()
        if self.turns.turn is Turn.SERVER:  # waiting for us is not idling
            due = now + factory.idle_timeout
        else:
            due = self._turn_started + factory.idle_timeout
        if now < due:
            self._idle_timer = factory.clock.callLater(due - now, self._check_idle)
            return
        self._idle_timer = None
        log.info(
            "conversation {cid} with {peer}: idle for {seconds}s; closing it",
            cid=self.conversation_id,
            peer=self.info.peer,
            seconds=factory.idle_timeout,
        )
        self.say_goodbye(
            Notice(
                NoticeKind.BYE,
                "idle-timeout",
                f"no line from you for {factory.idle_timeout:g} seconds; goodbye.",
            )
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.turns.end()
        self.factory.conversations.pop(self.conversation_id, None)
        for timer in (self._idle_timer, self._close_timer):
            if timer is not None and timer.active():
                timer.cancel()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        if self._hooked:
            self._hooked = False
            try:
                cast(ILifecycle, self.factory.responder).ended(self, self._bye_code)
            except Exception:
                log.failure(
                    "the responder's ended hook failed in conversation {cid}",
                    cid=self.conversation_id,
                )
        unfinished = self.decoder.unfinished if self.decoder else 0
        if unfinished:
            log.info(
                "conversation {cid} closed in the middle of a line; its "
                "{count} bytes were not delivered",
                cid=self.conversation_id,
                count=unfinished,
            )
        log.info(
            "conversation {cid} with {peer} ended after {turns} turn(s) in "
            "{duration:.1f}s: {why}",
            cid=self.conversation_id,
            peer=self.info.peer,
            turns=self.turns.answers,
            duration=self.factory.clock.seconds() - self._started,
            why=self._why_ended(reason),
        )
        self.closed.callback(None)

    def _why_ended(self, reason: Failure) -> str:
        code = self._bye_code
        if code in _ENDED_BECAUSE:
            return _ENDED_BECAUSE[code]
        if code != "connection-lost":
            return f"the server ended it ({code})"
        if reason.check(ConnectionDone):
            return "the client closed the connection without a q"
        return safe_text(reason.getErrorMessage())

    # The responder's side.

    def _deliver(self, text: str) -> None:
        try:
            reply: Reply = self.factory.responder.respond(self.info, text)
        except Exception:
            self._fail(Failure())
            return
        if isinstance(reply, str):  # answered at once: the usual case
            self._answer(reply)
        else:
            self._take_reply(reply)

    def _take_reply(self, reply: Reply) -> None:
        if isinstance(reply, str):
            self._answer(reply)
            return
        try:
            pending = _as_deferred(reply)
        except BadAnswer:
            self._fail(Failure())
            return
        timeout = self.factory.answer_timeout
        if timeout is not None:
            pending.addTimeout(timeout, self.factory.clock)
        self._pending = pending
        pending.addCallbacks(self._answered_later, self._failed_later)

    def _answered_later(self, reply: object) -> None:
        self._pending = None
        if self.turns.turn is not Turn.SERVER:
            return  # the conversation ended while the responder worked
        if isinstance(reply, str):
            self._answer(reply)
        else:
            why = f"the responder's result was {type(reply).__name__}, expected str"
            self._fail(Failure(BadAnswer(why)))

    def _failed_later(self, failure: Failure) -> None:
        self._pending = None
        if self.turns.turn is Turn.SERVER:
            self._fail(failure)
        # Otherwise the conversation ended first (a CancelledError, most
        # likely): there is no one left to tell.

    def _answer(self, text: str) -> None:
        try:
            data = self.factory.framing.encode_answer(text)
        except UnicodeEncodeError:
            self._fail(Failure(BadAnswer("the answer is not encodable as UTF-8")))
            return
        except ValueError as e:
            self._fail(Failure(BadAnswer(str(e))))
            return
        if self._allowance is not None:
            self._count_unsent(len(data))
        self.transport.write(data)
        self._turn_started = now = self.factory.clock.seconds()  # the client's turn
        if self.factory.transcript is not None:
            self._record(now, "out", "answer", text)
        if self.turns.answered(text):
            self._bye_code = "answered-quit"
            self._close()
        else:
            if self._backlog or self._reading_paused:
                self._drain()
            if self._input_ended:
                self._finish_if_done()

    def _fail(self, failure: Failure) -> None:
        code = "responder-failed"
        if failure.check(TimeoutError):
            code = "responder-timeout"
            why = f"no answer within {self.factory.answer_timeout:g} seconds"
            log.warn(
                "the responder did not answer conversation {cid} within {seconds}s",
                cid=self.conversation_id,
                seconds=self.factory.answer_timeout,
            )
        else:
            log.failure(
                "responder failed to answer in conversation {cid}",
                failure,
                cid=self.conversation_id,
            )
            if failure.check(BadAnswer):
                why = failure.getErrorMessage()
            else:  # the details stay in the server's log
                name = failure.type.__name__ if failure.type else "error"
                why = f"the responder raised {name}"
        self._send_notice(self.turns.failed(safe_text(why), code))
        self._turn_started = self.factory.clock.seconds()  # the client's turn
        self._drain()
        self._finish_if_done()

    def _send_notice(self, notice: Notice) -> None:
        data = self.factory.framing.encode_notice(notice)
        if data:
            if self._allowance is not None:
                self._count_unsent(len(data))
            self.transport.write(data)
        if notice.kind is NoticeKind.BYE:
            self._bye_code = notice.code
        if self.factory.transcript is not None and data:  # what was sent
            self._record(
                self.factory.clock.seconds(),
                "out",
                "notice",
                notice.text,
                notice.kind.value,
                notice.code,
            )

    def _record(
        self,
        time: float,
        direction: str,
        kind: str,
        text: str,
        notice: str | None = None,
        code: str | None = None,
    ) -> None:
        transcript = self.factory.transcript
        assert transcript is not None
        transcript.record(
            TranscriptEntry(
                time,
                self.conversation_id,
                self.info.peer,
                direction,
                kind,
                text,
                notice,
                code,
            )
        )


if TYPE_CHECKING:
    _FactoryBase = Factory[Protocol]
else:  # Factory is generic only from Twisted 26 on
    _FactoryBase = Factory


class ChatServerFactory(_FactoryBase):
    """Serve turn-taking conversations answered by *responder*.

    Embed it like any factory: ``endpoint.listen(ChatServerFactory(r))``.

    - *max_line*: longest client line, in bytes; longer ones are refused.
    - *idle_timeout*: seconds a client may take over its turn before it is
      told goodbye and closed (``None``: never).  Waiting for an answer is
      not idling.
    - *max_output*: bytes of unread output held for a client before its
      input is paused until it reads.
    - *admission*: caps and address rules (default: none).
    - *answer_timeout*: seconds the responder may take over an answer; past
      it the client gets an ``!error responder-timeout`` notice and its turn
      back, and the responder's ``Deferred`` is cancelled (``None``: wait
      for ever).
    - *transcript*: where every line, answer and notice is recorded.
    - *framing*: ``LineFraming()`` (the default) or ``RawFraming()``, the
      tutorial's bare messages (see docs/protocol.md).
    - *clock*: where timers come from (default: the reactor).
    """

    noisy = False

    def __init__(
        self,
        responder: IResponder,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        max_output: int = DEFAULT_MAX_OUTPUT,
        admission: Admission | None = None,
        answer_timeout: float | None = None,
        transcript: ITranscript | None = None,
        clock: IReactorTime | None = None,
        framing: Framing | None = None,
    ):
        if not IResponder.providedBy(responder):
            raise TypeError(
                f"{responder!r} does not provide IResponder (it needs a "
                "respond(conversation, text) method and @implementer(IResponder))"
            )
        for name, value in [("max_line", max_line), ("max_output", max_output)]:
            if value < 1:
                raise ValueError(f"{name} must be at least 1 byte, not {value}")
        for name, limit in [
            ("idle_timeout", idle_timeout),
            ("answer_timeout", answer_timeout),
        ]:
            if limit is not None and not limit > 0:
                raise ValueError(f"{name} must be positive, not {limit}")
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.responder = responder
        self.max_line = max_line
        self.idle_timeout = idle_timeout
        self.max_output = max_output
        self.admission = admission or Admission()
        self.answer_timeout = answer_timeout
        self.transcript = transcript
        self.framing: Framing = framing or LineFraming()
        self.clock = clock
        #: Seconds a closing connection gets to flush before it is aborted.
        self.close_grace = CLOSE_GRACE
        self.conversations: dict[int, ChatServerProtocol] = {}
        self._ids = itertools.count(1)

    def buildProtocol(self, addr: Any) -> Protocol:
        host = getattr(addr, "host", None)
        refusal = self.admission.admit(host)
        if refusal is not None:
            log.info(
                "refused a connection from {peer}: {code} ({why})",
                peer=describe_address(addr) if addr is not None else "unknown",
                code=refusal.code,
                why=refusal.text,
            )
            return _Refusal(self.framing.encode_notice(refusal))
        proto = ChatServerProtocol(next(self._ids))
        proto.factory = self
        proto.closed.addCallback(lambda _: self.admission.release(host))
        return proto

    def close_all(self, notice: Notice | None = None) -> Deferred[None]:
        """Say goodbye to every conversation; fire when all have closed."""
        notice = notice or shutting_down()
        waiting = list(self.conversations.values())
        if not waiting:
            return succeed(None)
        for proto in waiting:
            proto.say_goodbye(notice)
        done = DeferredList([p.closed for p in waiting], consumeErrors=True)
        return done.addCallback(lambda _: None)


class _Refusal(Protocol):
    """Tell a refused client why, first thing, then close."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._data)
        self.transport.loseConnection()
