"""The TCP door: a Twisted protocol per connection, and its factory.

The protocol moves bytes between its transport and its conversation's
``Runner`` (``sockchat._doors.runner``), and does what the runner asks of
it: pause or resume reading, close, abort.  It decides nothing.  The
factory holds what every conversation shares (settings, responder, clock,
caps, observers), and is the ``Hub`` its runners report to.
"""

from __future__ import annotations

import heapq
import itertools
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from OpenSSL import SSL
from twisted.internet import address
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
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
from sockchat._core.engine import CLOSE_GRACE, Reason, Settings
from sockchat._core.framing import Framing, LineFraming
from sockchat._core.limits import Admission
from sockchat._core.render import safe_text
from sockchat._core.rules import TRANSPORT_BUFFER
from sockchat._core.stats import ServerStats
from sockchat._core.transcript import ITranscript
from sockchat._core.turns import shutting_down
from sockchat._core.wire import Notice
from sockchat._doors.alarm import Alarm
from sockchat._doors.eager import write_now
from sockchat._doors.observers import ConversationObserver, Metrics, loss_of
from sockchat._doors.quiet import LOG_WINDOW, LogLimiter
from sockchat._doors.runner import Runner
from sockchat._responders.contract import (
    ConversationInfo,
    IAnsweredByPeople,
    IResponder,
)

__all__ = [
    "CLOSE_GRACE",
    "HANDSHAKE_TIMEOUT",
    "TRANSPORT_BUFFER",
    "ChatServerFactory",
    "ChatServerProtocol",
    "describe_address",
]

log = Logger(namespace="sockchat.server")

#: Seconds a TLS client has to finish its handshake, from its accept.  The
#: conversation (its welcome, its idle deadline) starts only once the
#: handshake is done; a client that stalls it is closed when this passes.
HANDSHAKE_TIMEOUT = 10.0
#: Seconds between looks at a connection whose client closed its sending
#: side while its conversation still owes it something (an answer): the
#: reactor reads such a socket no more, so a reset would go unseen.
HALF_CLOSED_CHECK = 5.0


def _probe_idle(transport: object) -> None:
    """Have the kernel probe an idle half-closed connection (TCP keepalive,
    every ``HALF_CLOSED_CHECK`` seconds): a client whose process was killed
    after it closed its side leaves a socket that its kernel forgets a
    minute later (``tcp_fin_timeout``), and only a probe sent after that is
    answered with the reset that ``_look_at_half_closed`` finds."""
    handle = getattr(transport, "getHandle", lambda: None)()
    if not isinstance(handle, socket.socket) or handle.family == socket.AF_UNIX:
        return
    seconds = max(1, int(HALF_CLOSED_CHECK))
    handle.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option in ("TCP_KEEPIDLE", "TCP_KEEPINTVL"):  # Linux's names
        if hasattr(socket, option):
            handle.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), seconds)


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
class ChatServerProtocol(Protocol):
    """One conversation over a byte stream, from connect to close.

    Once the connection is ready (over TLS, once the handshake is done) it
    makes the conversation's ``Runner``, which is the producer of its
    output (the transport pauses it when the client stops reading) and
    the ``IConversation`` a responder's lifecycle hooks get.
    """

    factory: ChatServerFactory
    transport: ITCPTransport  # or any transport with the same methods
    #: The conversation's runner, once it began (None while a TLS handshake
    #: is under way).
    runner: Runner | None = None
    _handshake: IDelayedCall | None = None
    #: The next look at a half-closed connection, and what it found.
    _half_closed: IDelayedCall | None = None
    _reset: OSError | None = None

    def __init__(self, conversation_id: int, host: str | None = None) -> None:
        self.conversation_id = conversation_id
        #: The peer's address, whose admission slot is released at the end.
        self.host = host
        self._observers: tuple[ConversationObserver, ...] = ()

    def connectionMade(self) -> None:
        factory = self.factory
        self._observers = observers = factory.observers("tcp", self.conversation_id)
        now = factory.clock.seconds()
        for observer in observers:
            observer.connected(self.transport, now)
        if ISSLTransport.providedBy(self.transport):
            self._handshake = factory.clock.callLater(
                factory.handshake_timeout, self._handshake_expired
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
        transport = self.transport
        set_buffer_size(transport, TRANSPORT_BUFFER)
        info = ConversationInfo(
            self.conversation_id, describe_address(transport.getPeer())
        )
        # This door's write is its one write path: every byte of the
        # conversation goes through it.
        self.runner = runner = Runner(
            self.factory,
            self,
            self,
            info,
            host=self.host,
            observers=self._observers,
        )
        cast(IConsumer, transport).registerProducer(runner, True)
        # Reads go straight to the runner from now on: a step of the door's
        # own would cost the usual turn a call (about 4% of its
        # instructions, benchmarks/inprocess.py --callgrind).
        self.dataReceived = runner.receive_data  # type: ignore[method-assign]  # see above
        runner.begin()

    def dataReceived(self, data: bytes) -> None:
        raise AssertionError("data before the conversation began")

    def readConnectionLost(self) -> None:  # IHalfCloseableProtocol
        runner = self.runner
        assert runner is not None, "a half-close before the conversation began"
        runner.end_of_input()
        if not getattr(self.transport, "disconnecting", True):  # still owes it
            _probe_idle(self.transport)
            self._look_later()

    def _look_later(self) -> None:
        self._half_closed = self.factory.clock.callLater(
            HALF_CLOSED_CHECK, self._look_at_half_closed
        )

    def _look_at_half_closed(self) -> None:
        """A client that closed its side may have left since (its process
        killed, a close with unread data): the kernel knows, from a reset,
        and keeps it as the socket's pending error (a read would not say:
        after the FIN it reads the end of input first)."""
        self._half_closed = None
        handle = getattr(self.transport, "getHandle", lambda: None)()
        if not isinstance(handle, socket.socket):
            return
        error = handle.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self._reset = OSError(
                error, "the client closed its side, then its connection was reset"
            )
            self.transport.abortConnection()
            return
        self._look_later()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        look, self._half_closed = self._half_closed, None
        if look is not None and look.active():
            look.cancel()
        if self._reset is not None:  # aborted here, for the reset it found
            reason = Failure(ConnectionLost(self._reset.strerror or str(self._reset)))
        handshake, self._handshake = self._handshake, None
        if handshake is not None:  # lost during the TLS handshake
            handshake.cancel()
            peer = describe_address(self.transport.getPeer())
            if reason.check(ConnectionDone):  # a probe or a health check
                log.debug("TLS client {peer} left before its handshake", peer=peer)
            else:
                log.info(
                    "TLS handshake with {peer} failed: {why}",
                    peer=peer,
                    why=safe_text(describe_failure(reason)),
                )
        runner = self.runner
        if runner is not None:
            runner.lost(reason, describe_failure(reason))
            return
        # Lost before its conversation began: only its slot to give back.
        factory = self.factory
        factory.admission.release(self.host)
        now = factory.clock.seconds()
        for observer in self._observers:
            observer.lost(loss_of(reason), reason, now)

    # What the runner asks of its door.

    def write(self, data: bytes) -> None:
        """The door's one write: sent at once when nothing is queued before
        it (Twisted #5303, ``eager.write_now``); the rest as before."""
        write_now(self.transport, data)

    def pause_reading(self) -> None:
        cast(IPushProducer, self.transport).pauseProducing()

    def resume_reading(self) -> None:
        cast(IPushProducer, self.transport).resumeProducing()

    def close(self, reason: Reason) -> None:
        # A registered producer keeps TLS from sending its close_notify.
        cast(IConsumer, self.transport).unregisterProducer()
        self.transport.loseConnection()

    def abort(self) -> None:
        self.transport.abortConnection()


class _IdleWatch:
    """One timer for every conversation's idle deadline.

    No timer is touched per turn: each conversation is looked at when its
    deadline, as it stood when it was last looked at, comes; the engine
    then says whether it was idle, and when to look again.  The timer is
    an ``Alarm``: on Linux a ``timerfd``, which the reactor does not poll
    at each pass as it does a pending ``callLater``.
    """

    __slots__ = ("_alarm", "_armed", "_clock", "_conversations", "_ended", "_heap")

    def __init__(self, clock: IReactorTime, conversations: dict[int, Runner]) -> None:
        self._clock = clock
        self._conversations = conversations
        self._heap: list[tuple[float, int]] = []
        self._alarm = Alarm(clock, self._fire)
        self._armed = False
        self._ended = 0  # entries of ended conversations still in the heap

    def watch(self, runner: Runner) -> None:
        """Look at *runner* again when its engine's idle deadline comes."""
        deadline = runner.engine.deadline
        if deadline is None:
            return
        heapq.heappush(self._heap, (deadline, runner.info.id))
        if not self._armed:
            self._schedule()

    def _schedule(self) -> None:
        self._armed = True
        self._alarm.set(self._heap[0][0] - self._clock.seconds())

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
        self._armed = False
        now = self._clock.seconds()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, cid = heapq.heappop(heap)
            runner = self._conversations.get(cid)
            if runner is not None:
                runner.tick(now)
                self.watch(runner)
        if self._armed:
            return
        if heap:
            self._schedule()
        else:  # nobody to watch: no descriptor held
            self._alarm.cancel()

    def stop(self) -> None:
        self._armed = False
        self._alarm.cancel()


if TYPE_CHECKING:
    _FactoryBase = Factory[Protocol]
else:  # Factory is generic only from Twisted 26 on
    _FactoryBase = Factory

#: Makes an observer for each new connection, from its door's name
#: (``"tcp"``, ``"web"``) and its conversation's id, or None: see
#: ``ChatServerFactory.observe``.
ObserverMaker = Callable[[str, int], ConversationObserver | None]


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

    ``conversations`` holds the conversations open now, by id: each one the
    ``IConversation`` its responder's hooks get (``info``, ``notify``,
    ``end``).  Read it; do not change it.
    """

    noisy = False
    #: Seconds a TLS client has to finish its handshake (``ssl:`` ports).
    handshake_timeout: float = HANDSHAKE_TIMEOUT

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
        #: The conversations open now, by id (see the class's docstring).
        self.conversations: dict[int, Runner] = {}
        self._ids = itertools.count(1)
        self._idle = _IdleWatch(clock, self.conversations)
        #: Rate limits for the log lines any client can cause at will.
        self.quiet = LogLimiter(clock)
        #: What ``--metrics`` reports.
        self.stats = ServerStats(
            live=lambda: (r.engine for r in self.conversations.values()),
            kind=type(responder).__name__,
        )
        #: Every conversation's observers: the metrics, then those made.
        self._observers: tuple[ConversationObserver, ...] = (Metrics(self.stats),)
        self._makers: list[ObserverMaker] = []

    @property
    def framing(self) -> Framing:
        return self.settings.framing

    def observe(self, make: ObserverMaker) -> None:
        """Watch each conversation that connects from now on.

        *make* is called with the door's name (``"tcp"`` or ``"web"``) and
        the conversation's id as each connection is made, and returns the
        observer of that one conversation (a
        ``sockchat._doors.observers.ConversationObserver``), or None.
        Teaching mode's trace attaches itself this way.
        """
        self._makers.append(make)

    def observers(self, door: str, cid: int) -> tuple[ConversationObserver, ...]:
        """The observers of conversation *cid*, through *door* (for the doors)."""
        if not self._makers:
            return self._observers  # shared: nothing made per conversation
        made = (make(door, cid) for make in self._makers)
        return self._observers + tuple(o for o in made if o is not None)

    def opened(self, runner: Runner) -> None:
        """*runner*'s conversation began (a ``Hub`` hook, for the runners)."""
        self.conversations[runner.info.id] = runner
        self._idle.watch(runner)

    def closed(self, runner: Runner) -> None:
        """*runner*'s connection is gone (a ``Hub`` hook, for the runners)."""
        if self.conversations.pop(runner.info.id, None) is not None:
            self._idle.forget()
        self.admission.release(runner.host)

    def refusal(self, addr: Any) -> Notice | None:
        """Why a connection from *addr* is refused, or None (for the doors:
        the refusal is counted and logged here)."""
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
        proto = ChatServerProtocol(self.next_id(), getattr(addr, "host", None))
        proto.factory = self
        return proto

    def next_id(self) -> int:
        """The next conversation's id (for the doors: the web door numbers
        its conversations from the same count)."""
        return next(self._ids)

    def close_all(self, notice: Notice | None = None) -> Deferred[None]:
        """Say goodbye to every conversation; fire when all have closed."""
        notice = notice or shutting_down()
        waiting = list(self.conversations.values())
        self._idle.stop()
        if not waiting:
            return succeed(None)
        for runner in waiting:
            runner.say_goodbye(notice)
        done = DeferredList([r.closed for r in waiting], consumeErrors=True)
        return done.addCallback(lambda _: None)


class _Refusal(Protocol):
    """Tell a refused client why, first thing, then close."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._data)
        self.transport.loseConnection()
