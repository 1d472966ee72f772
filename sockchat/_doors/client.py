"""The client library: a conversation with a sockchat server.

    conversation = await connect(reactor, endpoint)
    answer = await conversation.say("hi")
    await conversation.quit()

``say`` returns the answer, or raises ``LineRefused`` (the server refused the
line; say another) or ``ConversationEnded``.  Notices that do not answer
anything go to the ``on_notice`` callback.  When the other side speaks
first (the second client of a pair), ``my_turn`` is false at first and
``listen`` gives its first line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from attrs import frozen
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    INegotiated,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from sockchat._core.codec import Decoded, InvalidUtf8, LineTooLong
from sockchat._core.framing import Framing, LineFraming
from sockchat._core.turns import (
    Answered,
    ClientTurn,
    ClientTurns,
    Ended,
    Noticed,
    NotYourTurn,
    Refused,
)
from sockchat._core.wire import QUIT, Notice, NoticeKind
from sockchat._doors.observers import ClientObserver, loss_of

__all__ = [
    "Conversation",
    "ConversationEnded",
    "LineRefused",
    "NoGreeting",
    "NotYourTurn",
    "SockchatError",
    "connect",
]

#: Answers longer than this (bytes) are refused by the client.
CLIENT_MAX_LINE = 1024 * 1024

#: A TLS record starts with its content type (change_cipher_spec, alert,
#: handshake, application_data), then the major version 3, then a minor
#: version of 0 (SSL 3) to 4.  A sockchat server's first byte is ``!``.
_TLS_CONTENT_TYPES = (20, 21, 22, 23)
_TLS_HEADER = 3

#: What a plain client says when the port turns out to speak TLS.
TLS_SPOKEN = (
    "the server answered in TLS (its first bytes are a TLS record): that port "
    "speaks TLS; connect with --connect tls:HOST:PORT."
)
CLOSED_UNSPOKEN = (
    "the server closed the connection before sending a single byte, as a TLS "
    "server does when the client does not speak TLS: if that port speaks TLS, "
    "connect with --connect tls:HOST:PORT."
)


def _may_start_tls(data: bytes) -> bool:
    """Whether *data* (the first bytes heard, maybe only some) could begin a
    TLS record."""
    return (
        data[:1] != b""
        and data[0] in _TLS_CONTENT_TYPES
        and (len(data) < 2 or data[1] == 3)
        and (len(data) < 3 or data[2] <= 4)
    )


class SockchatError(Exception):
    """Base class of the errors the client library raises."""


class LineRefused(SockchatError):
    """The server refused the line; it was not delivered.  Say another."""

    def __init__(self, notice: Notice) -> None:
        super().__init__(str(notice))
        self.notice = notice


@frozen
class _End:
    clean: bool
    why: str
    notice: Notice | None


class ConversationEnded(SockchatError):
    """The conversation is over.

    ``clean`` is true when it ended as the protocol says (a ``q`` from either
    side, or a bye notice), false when the connection was lost.
    """

    def __init__(self, why: str, *, clean: bool, notice: Notice | None = None):
        super().__init__(why)
        self.why = why
        self.clean = clean
        self.notice = notice


@implementer(IHalfCloseableProtocol)
class ChatClientProtocol(Protocol):
    """The client's side of one conversation; ``Conversation`` drives it.

    *observer*, if given, hears what happens to the connection (teaching
    mode's trace): see ``sockchat._doors.observers.ClientObserver``.
    """

    transport: ITCPTransport  # or any transport with the same methods

    def __init__(
        self,
        on_notice: Callable[[Notice], None],
        framing: Framing | None = None,
        observer: ClientObserver | None = None,
    ) -> None:
        self._on_notice = on_notice
        self._observer = observer
        self._framing = framing = framing or LineFraming()
        self._decoder = framing.decoder(CLIENT_MAX_LINE, strip_cr=False)
        self.turns = ClientTurns()
        self._waiting: Deferred[str] | None = None
        self._end: _End | None = None
        self._closed: list[Deferred[ConversationEnded]] = []
        #: The other side's first line (or its refusal), not listened for yet.
        self._heard: str | LineRefused | None = None
        self.lost: ConversationEnded | None = None
        #: Fires with None at the server's first line, or when the
        #: connection is lost before it.
        self.greeted: Deferred[None] = Deferred()
        self._heard_anything = False
        #: The first bytes, until there are enough to tell whether they
        #: begin a TLS record (then None).
        self._first: bytes | None = b""

    def connectionMade(self) -> None:
        if self._observer is not None:
            self._observer.connected(self.transport)
        if not self._framing.greets:  # no welcome is coming: it is our turn
            self.greeted.callback(None)

    def listen(self) -> Deferred[str]:
        if self._heard is not None:
            heard, self._heard = self._heard, None
            return fail(heard) if isinstance(heard, LineRefused) else succeed(heard)
        if self.lost is not None:
            return fail(self.lost)
        turn = self.turns.turn
        if turn is ClientTurn.CLIENT:
            return fail(NotYourTurn("nothing to listen for: it is your turn"))
        if turn is ClientTurn.ENDED:
            return fail(NotYourTurn("the conversation has ended"))
        if self._waiting is not None:
            return fail(NotYourTurn("say() is already waiting for the answer"))
        self._waiting = Deferred()
        return self._waiting

    def say(self, text: str) -> Deferred[str]:
        if self.lost is not None:
            return fail(self.lost)
        if self._heard is not None and text != QUIT:
            return fail(
                NotYourTurn("the other side has spoken first: listen() for its line")
            )
        try:
            data = self._framing.encode_message(text)
            self.turns.say(text)
        except (NotYourTurn, ValueError) as e:
            return fail(e)
        if text == QUIT:
            self._end = _End(True, "you quit.", None)
            self._write(text, data)
            return fail(ConversationEnded("you quit.", clean=True))
        self._waiting = Deferred()
        self._write(text, data)
        return self._waiting

    def _write(self, text: str, data: bytes) -> None:
        self.transport.write(data)
        if self._observer is not None:
            self._observer.sent(text, data)

    def dataReceived(self, data: bytes) -> None:
        observer = self._observer
        if observer is not None:
            observer.read(data)
        self._take_in(data)
        if observer is not None:
            observer.handled(self.turns.turn)

    def _take_in(self, data: bytes) -> None:
        if self._first is not None:
            data = self._first + data
            if len(data) < _TLS_HEADER and _may_start_tls(data):
                self._first = data  # too soon to tell
                return
            self._first = None
            if _may_start_tls(data) and not self._over_tls():
                self._end = _End(False, TLS_SPOKEN, None)
                self.transport.loseConnection()
                return
        items = self._decoder.feed(data)
        if items and not self._heard_anything:
            self._heard_anything = True
            if not self._framing.greets and self._greets_in_lines(items[0]):
                return
        self._take(items)
        # After the lines are taken, so that whoever waits for the greeting
        # sees whose turn it is.
        if items and not self.greeted.called:
            self.greeted.callback(None)

    def _greets_in_lines(self, first: Decoded) -> bool:
        """A raw client that hears a line server's welcome says so, and ends."""
        if not isinstance(first, str):
            return False
        if not first.startswith(("!info welcome: ", "!info listen: ")):
            return False
        self._end = _End(
            False,
            "this server speaks line framing (it sent a welcome notice): run "
            "the client without --framing raw.",
            None,
        )
        self.transport.loseConnection()
        return True

    def _take(self, items: list[Decoded]) -> None:
        for item in items:
            if isinstance(item, (LineTooLong, InvalidUtf8)):
                why = (
                    f"a server line of {item.length} bytes was over the client's "
                    f"{item.limit}-byte limit"
                    if isinstance(item, LineTooLong)
                    else f"a server line was not valid UTF-8 ({item.reason})"
                )
                self._on_notice(Notice(NoticeKind.ERROR, "client-refused", why))
                continue
            event = self.turns.receive(self._framing.as_server_line(item))
            if isinstance(event, Answered):
                self._resolve(event.text)
            elif isinstance(event, Refused):
                if self._waiting is None:  # the first line, not listened for
                    self._heard = LineRefused(event.notice)
                else:
                    self._reject(LineRefused(event.notice))
            elif isinstance(event, Noticed):
                self._on_notice(event.notice)
            elif isinstance(event, Ended):
                self._ended(event.notice)

    def _ended(self, notice: Notice | None) -> None:
        if self._end is None:  # the server ended it, not us
            why = (
                "the server ended the conversation (q)."
                if notice is None
                else notice.text
            )
            self._end = _End(True, why, notice)
        if notice is not None:
            self._on_notice(notice)
        else:  # the server's q: a raw server may not close by itself
            self.transport.loseConnection()
        if self._waiting is not None:
            end = self._end
            self._reject(ConversationEnded(end.why, clean=end.clean, notice=end.notice))

    def _resolve(self, text: str) -> None:
        if self._observer is not None:  # before whoever waits says more
            self._observer.answered()
        waiting, self._waiting = self._waiting, None
        if waiting is None:  # the other side's first line, before listen()
            self._heard = text
        else:
            waiting.callback(text)

    def _reject(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(error)

    def _over_tls(self) -> bool:
        return INegotiated.providedBy(self.transport)

    def readConnectionLost(self) -> None:  # IHalfCloseableProtocol
        if self._observer is not None:
            self._observer.peer_closed()
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        end = self._end
        if end is None:
            self.turns.turn = ClientTurn.ENDED
            silent = self._first is not None and not self._over_tls()
            end = _End(
                False, CLOSED_UNSPOKEN if silent else _describe_loss(reason), None
            )
        self.lost = ConversationEnded(end.why, clean=end.clean, notice=end.notice)
        self._reject(self.lost)
        if not self.greeted.called:
            self.greeted.callback(None)
        closed, self._closed = self._closed, []
        for d in closed:
            d.callback(self.lost)
        if self._observer is not None:
            self._observer.lost(loss_of(reason), reason)

    def when_closed(self) -> Deferred[ConversationEnded]:
        if self.lost is not None:
            d: Deferred[ConversationEnded] = Deferred()
            d.callback(self.lost)
            return d
        d = Deferred()
        self._closed.append(d)
        return d


class Conversation:
    """One conversation with a sockchat server; made by ``connect``."""

    def __init__(self, reactor: IReactorTime, proto: ChatClientProtocol) -> None:
        self._reactor = reactor
        self._proto = proto

    @property
    def my_turn(self) -> bool:
        """True when ``say`` may be called (false until ``listen`` has given
        the other side's first line, when it speaks first)."""
        proto = self._proto
        return proto.turns.turn is ClientTurn.CLIENT and proto._heard is None

    def listen(self) -> Deferred[str]:
        """Fire with the other side's first line, when it speaks first.

        That is the case when the server's first notice is ``listen`` (in
        pair mode, the second client of a pair); ``my_turn`` is false until
        this line comes.  Fails with ``NotYourTurn`` when there is nothing
        to listen for, and ``ConversationEnded`` if it ends instead.
        """
        return self._proto.listen()

    def say(self, text: str) -> Deferred[str]:
        """Send one line; fire with the answer.

        Fails with ``LineRefused`` if the server refused the line,
        ``ConversationEnded`` if the conversation ended instead, ``ValueError``
        if *text* is not one line, and ``NotYourTurn`` if an answer is still
        owed.  Saying ``q`` is the same as ``quit()``.
        """
        if text == QUIT:
            return self.quit().addCallback(
                lambda end: _raise(ConversationEnded(end.why, clean=end.clean))
            )
        return self._proto.say(text)

    def quit(self, timeout: float = 5.0) -> Deferred[ConversationEnded]:
        """Send ``q`` and fire, with how it ended, once the server has closed.

        If the server has not closed within *timeout* seconds, the client
        closes the connection itself.
        """
        closed = self._proto.when_closed()
        if self._proto.lost is None and self._proto.turns.turn is not ClientTurn.ENDED:
            self._proto.say(QUIT).addErrback(lambda _: None)
        if self._proto.lost is None:
            transport = self._proto.transport
            timer = self._reactor.callLater(timeout, transport.loseConnection)
            closed.addBoth(_cancel_timer, timer)
        return closed

    def when_ended(self) -> Deferred[ConversationEnded]:
        """A new Deferred that fires (never fails) when the connection closes."""
        return self._proto.when_closed()

    def abort(self) -> None:
        """Close the connection now, without saying ``q``."""
        self._proto.transport.loseConnection()


def _describe_loss(reason: Failure) -> str:
    """Why the connection went, in one line; TLS failures said plainly."""
    if reason.check(VerificationError):
        return (
            "TLS verification failed: the server's certificate is not for the "
            "host name you connected to."
        )
    if reason.check(SSL.Error):
        error = reason.value
        details = error.args[0] if error is not None and error.args else []
        found = [d[-1] for d in details if isinstance(d, tuple) and d and d[-1]]
        why = ", ".join(found) or reason.getErrorMessage()
        if "certificate verify failed" in why:
            return (
                f"the TLS handshake failed ({why}); if the server's certificate "
                "comes from a private CA, pass that CA's certificate with --ca."
            )
        if "wrong version number" in why:
            return (
                f"the TLS handshake failed ({why}): that port does not speak "
                "TLS; connect with --connect tcp:HOST:PORT (or --host and --port)."
            )
        if "certificate required" in why:
            return (
                f"the TLS handshake failed ({why}): the server wants a client "
                "certificate; pass yours with --cert FILE --key FILE."
            )
        return f"the TLS handshake failed ({why})."
    if reason.check(ConnectionDone):
        return "the server closed the connection without a goodbye."
    return f"the connection was lost ({reason.getErrorMessage().rstrip('.')})."


def _raise(error: Exception) -> Any:
    raise error


def _cancel_timer(result: Any, timer: Any) -> Any:
    if timer.active():
        timer.cancel()
    return result


class NoGreeting(SockchatError):
    """The server said nothing after the connection was made."""


def connect(
    reactor: IReactorTime,
    endpoint: IStreamClientEndpoint,
    *,
    on_notice: Callable[[Notice], None] | None = None,
    greeting_timeout: float | None = 10.0,
    framing: Framing | None = None,
) -> Deferred[Conversation]:
    """Connect to a sockchat server; fire with the ``Conversation``.

    It fires once the server's first line (the welcome, which says who
    speaks first) has arrived, so ``my_turn`` is right from the start.
    *on_notice* is called with each notice that answers nothing (the
    welcome, status, an out-of-turn refusal, the bye); the default ignores
    them.  Connection errors fail the Deferred as the endpoint reports them;
    a server that says nothing for *greeting_timeout* seconds fails it with
    ``NoGreeting`` (``None``: wait for ever).

    *framing* is ``LineFraming()`` (the default) or ``RawFraming()``, for a
    server started with ``--framing raw`` or the tutorial's own server.  In
    raw framing the server sends no welcome, so the Deferred fires as soon
    as the connection is made, and every message from the server is an
    answer.
    """
    factory = ClientFactory(on_notice or _ignore, framing)
    return connect_with(reactor, endpoint, factory, greeting_timeout)


def connect_with(
    reactor: IReactorTime,
    endpoint: IStreamClientEndpoint,
    factory: ClientFactory,
    greeting_timeout: float | None,
) -> Deferred[Conversation]:
    """``connect`` with *factory* (teaching mode's has an observer)."""
    connecting = endpoint.connect(factory)

    def greeted(proto: ChatClientProtocol) -> Deferred[Conversation]:
        conversation = Conversation(reactor, proto)
        waiting = proto.greeted.addCallback(lambda _: conversation)
        if greeting_timeout is None:
            return waiting

        def silent(
            result: Conversation | Failure, timeout: float
        ) -> Conversation | Failure:
            proto.transport.abortConnection()
            return Failure(
                NoGreeting(
                    f"the server said nothing for {timeout:g} seconds after the "
                    "connection was made (a sockchat server says welcome at "
                    "once): if that port speaks TLS, connect with --connect "
                    "tls:HOST:PORT; if it is a raw server (--framing raw, or the "
                    "tutorial's), use --framing raw."
                )
            )

        return waiting.addTimeout(greeting_timeout, reactor, silent)

    return connecting.addCallback(
        lambda proto: greeted(cast(ChatClientProtocol, proto))
    )


def _ignore(notice: Notice) -> None:
    pass


if TYPE_CHECKING:
    _FactoryBase = Factory[ChatClientProtocol]
else:  # Factory is generic only from Twisted 26 on
    _FactoryBase = Factory


class ClientFactory(_FactoryBase):
    """Make the client's protocol; *observe*, if given, makes an observer
    for each connection."""

    noisy = False

    def __init__(
        self,
        on_notice: Callable[[Notice], None],
        framing: Framing | None = None,
        *,
        observe: Callable[[], ClientObserver] | None = None,
    ) -> None:
        self._on_notice = on_notice
        self._framing = framing
        self._observe = observe

    def buildProtocol(self, addr: Any) -> ChatClientProtocol:
        observer = self._observe() if self._observe is not None else None
        proto = ChatClientProtocol(self._on_notice, self._framing, observer)
        proto.factory = self
        return proto
