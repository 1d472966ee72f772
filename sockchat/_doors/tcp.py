"""The TCP door: a Twisted protocol per connection, and its factory.

The protocol moves bytes between the transport and the conversation engine
(``_engine.ServerConversation``), runs the responder's Deferreds and
timeouts, and carries out the engine's actions.  It decides nothing.
"""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING, Any, TypeVar, cast

from OpenSSL import SSL
from twisted.internet import address
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockchat._core.defaults import (
    DEFAULT_ANSWER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_OUTPUT,
    AnswerTimeout,
)
from sockchat._core.engine import CLOSE_GRACE, Close, Settings
from sockchat._core.framing import Framing, LineFraming
from sockchat._core.limits import Admission
from sockchat._core.render import safe_text
from sockchat._core.stats import ServerStats
from sockchat._core.transcript import ITranscript
from sockchat._core.turns import shutting_down
from sockchat._core.wire import Notice
from sockchat._doors.runner import Door
from sockchat._responders.contract import IAnsweredByPeople, IResponder

__all__ = [
    "CLOSE_GRACE",
    "HANDSHAKE_TIMEOUT",
    "ChatServerFactory",
    "ChatServerProtocol",
    "describe_address",
]

log = Logger(namespace="sockchat.server")

_T = TypeVar("_T")

#: Where Twisted's transport pauses us, and how much it reads at once.  It
#: counts bytes, not the objects it keeps them in (about 56 bytes for each
#: write), so a small figure bounds what a client that never reads costs
#: before the engine's own count takes over.
TRANSPORT_BUFFER = 4 * 1024

#: Seconds a TLS client has to finish its handshake, from its accept.  The
#: conversation (its welcome, its idle deadline) starts only once the
#: handshake is done; a client that stalls it is closed when this passes.
HANDSHAKE_TIMEOUT = 10.0


def describe_failure(reason: Failure) -> str:
    """Why a connection was lost, in one readable line.

    OpenSSL's errors carry a list of ``(library, function, reason)``
    tuples; only the reasons are worth reading.
    """
    value = reason.value
    args = getattr(value, "args", ())
    if reason.check(SSL.Error) and args and isinstance(args[0], list):
        reasons = [str(e[-1]) for e in args[0] if isinstance(e, tuple) and e[-1]]
        if reasons:
            return "; ".join(reasons)
    return reason.getErrorMessage()


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


def set_buffer_size(transport: object, size: int) -> None:
    """Make *transport* read at most *size* bytes at once, and pause its
    producer past *size* unsent bytes.

    Twisted has no public way to say this: ``bufferSize`` is an attribute
    of ``FileDescriptor``.  For TLS the bytes are buffered by the TCP
    transport underneath.  ``tests/test_server.py`` fails if it stops
    working.
    """
    while transport is not None:
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = size
        transport = getattr(transport, "transport", None)


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class ChatServerProtocol(Door, Protocol):
    """One conversation over a byte stream, from connect to close.

    It is the ``IConversation`` that a responder's lifecycle hooks get, and
    the producer of its own output: the transport pauses it when the client
    stops reading, and the engine decides what that means.  Over TLS the
    conversation starts once the handshake is done.
    """

    transport: ITCPTransport  # or any transport with the same methods
    _handshake: IDelayedCall | None = None

    def connectionMade(self) -> None:
        if ISSLTransport.providedBy(self.transport):
            self._handshake = self.factory.clock.callLater(
                self.factory.handshake_timeout, self._handshake_expired
            )
            return
        self._connected()

    def handshakeCompleted(self) -> None:  # IHandshakeListener
        handshake, self._handshake = self._handshake, None
        if handshake is None:
            return  # already started, or already expired
        if handshake.active():
            handshake.cancel()
        self._connected()

    def _handshake_expired(self) -> None:
        self._handshake = None
        log.info(
            "TLS handshake with {peer} did not finish within {seconds:g}s; closed",
            peer=describe_address(self.transport.getPeer()),
            seconds=self.factory.handshake_timeout,
        )
        self.transport.abortConnection()

    def _connected(self) -> None:
        set_buffer_size(self.transport, TRANSPORT_BUFFER)
        cast(IConsumer, self.transport).registerProducer(self, True)
        self._begin(describe_address(self.transport.getPeer()))

    def dataReceived(self, data: bytes) -> None:
        now = self.factory.clock.seconds()
        engine = self.engine
        text = engine.take_line(data, now)  # the usual turn, in two calls
        if text is None:
            engine.receive_data(data, now)
        else:
            self._asked = now
            try:
                reply = self.factory.responder.respond(self.info, text)
            except Exception:
                self._failed(Failure())
            else:
                out = engine.answer_now(reply, now)
                if out is not None:
                    self.transport.write(out)
                    engine.bytes_out += len(out)
                    return
                self._reply(reply, now)
        self._run(now)

    def readConnectionLost(self) -> None:  # IHalfCloseableProtocol
        now = self.factory.clock.seconds()
        self.engine.end_of_input(now)
        self._run(now)

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        clean = bool(reason.check(ConnectionDone))
        handshake, self._handshake = self._handshake, None
        if handshake is not None:  # lost during the TLS handshake
            handshake.cancel()
            peer = describe_address(self.transport.getPeer())
            if clean:  # a port probe or a health check: nothing to read
                log.debug("TLS client {peer} left before its handshake", peer=peer)
            else:
                log.info(
                    "TLS handshake with {peer} failed: {why}",
                    peer=peer,
                    why=safe_text(describe_failure(reason)),
                )
        self._lost(clean, describe_failure(reason))

    def _pause(self) -> None:
        cast(IPushProducer, self.transport).pauseProducing()

    def _resume(self) -> None:
        cast(IPushProducer, self.transport).resumeProducing()

    def _close(self, action: Close) -> None:
        # A registered producer keeps TLS from sending its close_notify.
        cast(IConsumer, self.transport).unregisterProducer()
        self.transport.loseConnection()

    def _abort(self) -> None:
        self.transport.abortConnection()


#: Seconds over which events that any client can cause at will (a refused
#: connection, a probe that says nothing) are logged once, then counted.
LOG_WINDOW = 60.0


class LogLimiter:
    """At most one log line per kind of event per ``LOG_WINDOW``.

    The first event of a kind is logged; the next ones in the window are
    counted, and the first one after it is logged with that count.  So a
    loop of refused connections, or of port probes, cannot grow the log
    faster than a line a minute.
    """

    __slots__ = ("_clock", "_counts", "_since")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._since: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def admit(self, kind: str) -> int | None:
        """None: say nothing; else log it, with this many held back before."""
        now = self._clock.seconds()
        since = self._since.get(kind)
        if since is not None and now - since < LOG_WINDOW:
            self._counts[kind] = self._counts.get(kind, 0) + 1
            return None
        self._since[kind] = now
        return self._counts.pop(kind, 0)


class _IdleWatch:
    """One timer for every conversation's idle deadline.

    No timer is touched per turn: each conversation is looked at when its
    deadline, as it stood when it was last looked at, comes; the engine
    then says whether it was idle, and when to look again.
    """

    __slots__ = ("_call", "_clock", "_conversations", "_ended", "_heap")

    def __init__(self, clock: IReactorTime, conversations: dict[int, Door]) -> None:
        self._clock = clock
        self._conversations = conversations
        self._heap: list[tuple[float, int]] = []
        self._call: IDelayedCall | None = None
        self._ended = 0  # entries of ended conversations still in the heap

    def add(self, deadline: float, cid: int) -> None:
        heapq.heappush(self._heap, (deadline, cid))
        if self._call is None:
            self._schedule()

    def _schedule(self) -> None:
        delay = max(0.0, self._heap[0][0] - self._clock.seconds())
        self._call = self._clock.callLater(delay, self._fire)

    def forget(self) -> None:
        """A conversation ended: its entry is dropped, in time.

        Entries are not removed one by one (that is O(n) in a heap); once
        most of the heap is ended conversations, it is rebuilt from the live
        ones.  So it holds at most about twice the open conversations, even
        when thousands connect and leave each second.
        """
        self._ended += 1
        if self._ended > 64 and self._ended * 2 > len(self._heap):
            live = self._conversations
            self._heap = [entry for entry in self._heap if entry[1] in live]
            heapq.heapify(self._heap)
            self._ended = 0

    def _fire(self) -> None:
        self._call = None
        now = self._clock.seconds()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, cid = heapq.heappop(heap)
            proto = self._conversations.get(cid)
            if proto is not None:
                proto.tick(now)
        if heap and self._call is None:
            self._schedule()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


if TYPE_CHECKING:
    _FactoryBase = Factory[Protocol]
else:  # Factory is generic only from Twisted 26 on
    _FactoryBase = Factory


class ChatServerFactory(_FactoryBase):
    """Serve turn-taking conversations answered by *responder*.

    Embed it like any factory: ``endpoint.listen(ChatServerFactory(r))``,
    or run it with ``ChatService``.  Every default is the command line's
    (``twistd sockchat``).

    - *max_line*: longest client line, in bytes (64 KiB); longer ones are
      refused.
    - *idle_timeout*: seconds a client may take over its turn before it is
      told goodbye and closed (600; ``None``: never).  Waiting for an
      answer is not idling.
    - *max_output*: bytes of memory that one client may make the server
      hold for it (lines held back and output it has not read) before its
      input is paused until it reads (256 KiB).
    - *admission*: caps and address rules (default: ``Admission()``, at
      most 1000 clients and 20 from one address).
    - *answer_timeout*: seconds the responder may take over an answer; past
      it the client gets an ``!error responder-timeout`` notice and its turn
      back, and the responder's ``Deferred`` is cancelled (``None``: wait
      for ever).  Not given, it is 30, or ``None`` for the responders that
      people answer (``ConsoleResponder``, ``PairResponder``).
    - *transcript*: where every line, answer and notice is recorded.
    - *framing*: ``LineFraming()`` (the default) or ``RawFraming()``, the
      tutorial's bare messages (see docs/protocol.md).
    - *clock*: where timers come from (default: the reactor).
    """

    noisy = False
    #: Seconds a TLS client has to finish its handshake (``ssl:`` ports).
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    #: What the web door makes for each WebSocket, instead of its own
    #: ``WebConversation`` (teaching mode's tracing factory sets it).
    web_conversation: Any = None

    def __init__(
        self,
        responder: IResponder,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        max_output: int = DEFAULT_MAX_OUTPUT,
        admission: Admission | None = None,
        answer_timeout: float | AnswerTimeout | None = AnswerTimeout.DEFAULT,
        transcript: ITranscript | None = None,
        clock: IReactorTime | None = None,
        framing: Framing | None = None,
    ):
        if not IResponder.providedBy(responder):
            raise TypeError(
                f"{responder!r} does not provide IResponder (it needs a "
                "respond(conversation, text) method and @implementer(IResponder))"
            )
        if answer_timeout is AnswerTimeout.DEFAULT:
            people = IAnsweredByPeople.providedBy(responder)
            answer_timeout = None if people else DEFAULT_ANSWER_TIMEOUT
        #: What every conversation is told, validated once.
        self.settings = Settings(
            max_line=max_line,
            idle_timeout=idle_timeout,
            max_output=max_output,
            answer_timeout=answer_timeout,
            transcript=transcript is not None,
            framing=framing or LineFraming(),
        )
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.responder = responder
        self.admission = admission or Admission()
        self.transcript = transcript
        self.clock = clock
        self.conversations: dict[int, Door] = {}
        self._ids = itertools.count(1)
        self._idle = _IdleWatch(clock, self.conversations)
        #: Rate limits for the log lines any client can cause at will.
        self.quiet = LogLimiter(clock)
        #: What ``--metrics`` reports.
        self.stats = ServerStats(
            live=lambda: (p.engine for p in self.conversations.values()),
            kind=type(responder).__name__,
        )

    @property
    def framing(self) -> Framing:
        return self.settings.framing

    def forget(self, proto: Door) -> None:
        """*proto* has ended: the idle watch may drop it."""
        self._idle.forget()

    def watch(self, proto: Door) -> None:
        """Look at *proto* again when its engine's idle deadline comes."""
        deadline = proto.engine.deadline
        if deadline is not None:
            self._idle.add(deadline, proto.conversation_id)

    def refusal(self, addr: Any) -> Notice | None:
        """Why a connection from *addr* is refused (logged), or None."""
        refusal = self.admission.consider(getattr(addr, "host", None))
        if refusal is None:
            return None
        self.stats.refused_connection(refusal.notice.code)
        held_back = self.quiet.admit("refused " + refusal.notice.code)
        if held_back is not None:
            log.info(
                "refused a connection from {peer}: {code} ({why}){since}",
                peer=describe_address(addr) if addr is not None else "unknown",
                code=refusal.notice.code,
                why=refusal.why,
                option=refusal.option,
                held_back=held_back,
                since=(
                    f"; {held_back} more refused since the last such line"
                    if held_back
                    else f"; more are counted, one line per {LOG_WINDOW:g} s"
                ),
            )
        return refusal.notice

    def buildProtocol(self, addr: Any) -> Protocol:
        refusal = self.refusal(addr)
        if refusal is not None:
            return _Refusal(self.framing.encode_notice(refusal))
        return self.conversation(addr)

    def conversation(self, addr: Any) -> ChatServerProtocol:
        """A new conversation, admitted; its slot is released when it closes."""
        proto = ChatServerProtocol(next(self._ids), getattr(addr, "host", None))
        proto.factory = self
        return proto

    def next_id(self) -> int:
        """The next conversation's id (the web door makes its own protocols)."""
        return next(self._ids)

    def close_all(self, notice: Notice | None = None) -> Deferred[None]:
        """Say goodbye to every conversation; fire when all have closed."""
        notice = notice or shutting_down()
        waiting = list(self.conversations.values())
        self._idle.stop()
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
