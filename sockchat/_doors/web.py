"""The web door: the chat page, and a WebSocket per conversation.

A thin adapter around ``twisted.web.websocket``.  Each WebSocket is a
``WebConversation`` with its own engine, from the same ``ChatServerFactory``
as the TCP door (same responder, settings, admission caps, conversation ids
and log events):

- one text message from the browser is one line for the engine, which
  judges it as on TCP (``--max-line``, out of turn, ``q``);
- each answer or notice is one text message, exactly the line TCP sends,
  without its newline;
- the engine's pause and resume reach the TCP connection under the socket,
  and its close becomes a WebSocket close whose code comes from the
  ``Reason`` (see ``CLOSE_CODES``).

Frames that cannot be a line get a close code of their own: binary (1003),
a newline inside a message (1007); wsproto closes invalid UTF-8 with 1007
and broken framing with 1002 itself.  A cross-origin handshake is refused
with HTTP 403 before any upgrade, and so is one that names a loopback
server by another name (DNS rebinding).

Every TCP connection to the site counts against the factory's caps
(``--max-clients``, ``--max-per-ip``) and address rules from its accept
on, whether it becomes a WebSocket or only fetches the page: one over a
cap, or denied, gets a plain-text HTTP 503 (or 403) and is closed.  A
request has ``HEADERS_DEADLINE`` seconds in all to send its headers, and
a request with a body is refused with 413 before the body is read.
"""

from __future__ import annotations

import ipaddress
import typing
from collections.abc import Callable
from contextlib import suppress
from importlib import resources
from typing import Any, cast
from urllib.parse import urlsplit

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from twisted.web.websocket import WebSocketResource, WebSocketTransport
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import CloseConnection
from wsproto.handshake import H11Handshake
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from sockchat._core.engine import Reason
from sockchat._core.limits import Admission
from sockchat._core.render import safe_text
from sockchat._core.rules import TRANSPORT_BUFFER
from sockchat._core.wire import Notice
from sockchat._doors.quiet import LogLimiter
from sockchat._doors.runner import Runner
from sockchat._doors.tcp import ChatServerFactory, describe_address, set_buffer_size
from sockchat._responders.contract import ConversationInfo

__all__ = [
    "CLOSE_CODES",
    "CLOSE_REASONS",
    "CONTENT_SECURITY_POLICY",
    "HEADERS_DEADLINE",
    "SECURITY_HEADERS",
    "AdmissionGate",
    "ChatChannel",
    "ChatSite",
    "Gate",
    "StaticFile",
    "WebChatDoor",
    "WebConversation",
    "chat_site",
    "close_code",
    "handshake_problem",
    "header_text",
    "log_cross_origin",
    "names_this_host",
    "not_a_handshake",
    "origin_problem",
    "plain_response",
    "read_asset",
    "same_origin",
    "stream_messages",
]

log = Logger(namespace="sockchat.web")

#: The WebSocket close code sent after each bye notice (RFC 6455 section
#: 7.4, and 1013 from the IANA registry).  Any other bye closes with 1000.
CLOSE_CODES = {
    Reason.QUIT: 1000,  # normal closure
    Reason.END_OF_INPUT: 1000,
    Reason.IDLE_TIMEOUT: 1000,
    Reason.SHUTDOWN: 1001,  # going away
    Reason.DENIED: 1008,  # policy violation
    Reason.BUSY: 1013,  # try again later
    Reason.BINARY_MESSAGE: 1003,  # unsupported data
    Reason.NEWLINE_IN_MESSAGE: 1007,  # inconsistent data
    Reason.INVALID_UTF8_MESSAGE: 1007,
}
#: wsproto's close code for a text frame that is not UTF-8.
INVALID_UTF8 = 1007
#: The close frame's reason, for the closes that a message caused: ours,
#: not wsproto's Python exception text.
CLOSE_REASONS = {
    Reason.BINARY_MESSAGE: "binary messages are not accepted: send text",
    Reason.NEWLINE_IN_MESSAGE: "a message is one line: it cannot contain a newline",
    Reason.INVALID_UTF8_MESSAGE: "a text message was not valid UTF-8",
}

#: Everything comes from the page's own origin; nothing inline, no frames.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
#: Every page's headers: the policy above, and no sniffing, referrer or framing.
SECURITY_HEADERS = {
    b"content-security-policy": CONTENT_SECURITY_POLICY.encode(),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"x-frame-options": b"DENY",
    b"cache-control": b"no-cache",
}

_DEFAULT_PORTS = {"http": 80, "https": 443}

#: Seconds an HTTP request has, in all, to send its request line and
#: headers: from the connection's accept (its TLS handshake included) or
#: from the end of the previous response on a kept-alive connection.
#: Twisted's own timeout starts again with every byte, so a request that
#: trickles in a byte at a time would hold its slot for ever.
HEADERS_DEADLINE = 10.0
#: Seconds a refused connection is read from (and what it sent thrown
#: away) after its refusal was written, so that closing it does not reset
#: the refusal away before the client has read it.
REFUSAL_LINGER = 1.0
#: At most this many refused connections linger at once; past it, a refused
#: connection is closed at once, so that refusals cannot hold file
#: descriptors either.
MAX_LINGERING = 16


def _host_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host[:port]`` (``[v6][:port]``), or None."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.username is not None or parts.path:
        return None
    return parts.hostname.lower(), port or _DEFAULT_PORTS.get(scheme, 0)


def same_origin(origin: str | None, host: str | None, secure: bool) -> bool:
    """May a WebSocket handshake with this ``Origin`` header proceed?

    *host* is the request's ``Host`` header and *secure* whether it came
    over TLS: together they are the origin the page was served from.  A
    browser always sends ``Origin``; a handshake without one comes from a
    program, not from a page, and could as well use the TCP door, so it is
    let in.  ``null`` (a sandboxed frame, a ``file:`` page) is refused.
    """
    if origin is None:
        return True
    scheme = "https" if secure else "http"
    try:
        parts = urlsplit(origin.strip())
    except ValueError:  # not a URL at all, e.g. http://[
        return False
    if parts.scheme.lower() != scheme or parts.path or parts.query:
        return False
    theirs = _host_port(parts.netloc, scheme)
    ours = _host_port(host, scheme) if host else None
    return theirs is not None and theirs == ours


def names_this_host(host: str | None, local: str) -> bool:
    """Is the ``Host`` header a name that the listening address may have?

    Against DNS rebinding: a server that listens on a loopback address (the
    default for a bare ``--web`` port) is reached by a loopback address or
    ``localhost``, never by another name; a page from ``evil.example``,
    made to resolve to 127.0.0.1, is the same origin as itself, and only
    its name gives it away.  Servers on other addresses accept any name.
    """
    if not _is_loopback(local):
        return True
    where = _host_port(host, "http") if host else None
    if where is None:
        return False
    name = where[0].strip("[]")
    return name == "localhost" or name.endswith(".localhost") or _is_loopback(name)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def header_text(request: Request, name: bytes) -> str | None:
    """A request header as text (latin-1, as HTTP has it), or None."""
    value = request.getHeader(name)
    if value is None:
        return None
    return value.decode("latin-1")


class _Stream:
    """Stands in for the socket's message buffer: nothing piles up there.

    Twisted's WebSocket protocol gathers a message's pieces in a buffer
    before it hands the message over, however big it grows.  This passes
    each piece on at once (the engine bounds what it keeps; a binary piece
    closes the socket), and hands over an empty rest when the message ends.
    """

    __slots__ = ("_empty", "_sink")

    def __init__(self, sink: Callable[[Any], None], empty: str | bytes) -> None:
        self._sink = sink
        self._empty = empty

    def add(self, piece: Any) -> None:
        self._sink(piece)

    def done(self) -> str | bytes:
        return self._empty


def stream_messages(
    socket: WebSocketTransport,
    text: Callable[[str], None],
    binary: Callable[[bytes], None],
    invalid: Callable[[], None] = lambda: None,
) -> bool:
    """Have *socket* hand each piece of a message over as it comes, and
    tell *invalid* of a text message that is not UTF-8.

    Twisted (26.10) has no public way to do either.  It keeps each
    message's pieces in ``_textBuffer`` and ``_bytesBuffer`` until the
    message ends; and when wsproto finds a text frame that is not UTF-8, it
    makes a close event (1007) whose reason is the Python exception's text,
    which Twisted sends back as is, and then the conversation would seem to
    have been closed by the client.  Here wsproto's events (``_wsconn``)
    pass through a filter that takes that one away and calls *invalid*, so
    that the conversation closes itself, with a reason of ours.  This is
    the one place that reaches in, and ``tests/doors/test_web.py`` fails if
    it stops working.  False: the socket has no such buffers, and whole
    messages arrive (still bounded by the engine once they do).
    """
    if not hasattr(socket, "_textBuffer"):
        return False
    inside = cast(Any, socket)
    inside._textBuffer = _Stream(text, "")
    inside._bytesBuffer = _Stream(binary, b"")
    connection = getattr(inside, "_wsconn", None)
    if connection is not None:
        events = connection.events

        def checked() -> Any:
            for event in events():
                # A close that wsproto made itself, on a frame it could not
                # decode: the connection is still open (a close frame from
                # the client would have moved it on).
                if (
                    isinstance(event, CloseConnection)
                    and event.code == INVALID_UTF8
                    and connection.state is ConnectionState.OPEN
                ):
                    invalid()
                    return
                yield event

        connection.events = checked
    return True


def close_code(reason: Reason) -> int:
    """The WebSocket close code that says why a conversation ended."""
    return CLOSE_CODES.get(reason, 1000)


class WebConversation:
    """One conversation over a WebSocket: the web door.

    It is the ``WebSocketProtocol`` that Twisted's ``WebSocketResource``
    talks to.  Once the upgrade is done it makes the conversation's
    ``Runner``: each text message from the browser (or each piece of one)
    goes to it, and each of its writes is one text message.  Its pause and
    resume reach the TCP connection under the socket.
    """

    def __init__(self, factory: ChatServerFactory, request: Request) -> None:
        self.factory = factory
        self._request = request
        #: The connection under the socket: TCP, or TLS over TCP.
        self._tcp = cast(ITCPTransport, request.channel.transport)
        self._peer = request.getClientAddress()
        self._socket: WebSocketTransport | None = None
        #: The HTTP connection, admitted by the caps at its accept.
        self._channel = cast(ChatChannel, request.channel)
        #: The conversation's runner, once the upgrade is done.
        self.runner: Runner | None = None

    # The WebSocket side (twisted.web.websocket.WebSocketProtocol).

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self._socket = transport
        stream_messages(transport, self._piece, self._binary, self._invalid)

    def negotiationFinished(self) -> None:
        set_buffer_size(self._tcp, TRANSPORT_BUFFER)
        factory = self.factory
        info = ConversationInfo(factory.next_id(), describe_address(self._peer))
        observers = factory.observers("web", info.id)
        now = factory.clock.seconds()
        socket = cast(WebSocketTransport, self._socket)
        for observer in observers:
            observer.connected(self._tcp, now)
            observer.upgraded(self._request, socket, now)
        # The connection was admitted at its accept (ChatSite.buildProtocol);
        # its slot passes from the channel to the conversation, which
        # releases it when it ends (Runner.lost).
        self.runner = runner = Runner(
            factory,
            self,
            self,
            info,
            host=self._channel.hand_over(),
            observers=observers,
            websocket=True,
        )
        # The HTTP channel is the TCP connection's producer; it passes pause
        # and resume on to the producer of its request.
        self._request.registerProducer(runner, True)
        runner.begin()

    def textMessageReceived(self, message: str) -> None:
        # Streamed, *message* is the empty rest; otherwise it is all of it.
        self._message(message, final=True)

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        self._binary(bytes(data))

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        # After the upgrade, the channel's own connectionLost is not called:
        # Twisted routes the connection's end here instead.  The slot is
        # the conversation's from negotiationFinished on; before it, still
        # the channel's.
        self._channel.release()
        if self.runner is not None:
            self.runner.lost(reason, reason.getErrorMessage())
        self._socket = None

    def _piece(self, text: str) -> None:
        self._message(text, final=False)

    def _message(self, text: str, *, final: bool) -> None:
        if self.runner is not None:  # None: before the upgrade was done
            self.runner.receive_message(text, final=final)

    def _binary(self, data: bytes) -> None:
        if self.runner is not None:
            self.runner.receive_binary(len(data))

    def _invalid(self) -> None:
        if self.runner is not None:
            self.runner.receive_invalid_utf8()

    # What the runner asks of its door.

    def write(self, data: bytes) -> None:
        """The web door's one write path: *data* as one text message."""
        if self._socket is not None:
            with suppress(LocalProtocolError):  # the browser is closing the socket
                self._socket.sendTextMessage(data.decode("utf-8"))

    def pause_reading(self) -> None:
        cast(IPushProducer, self._tcp).pauseProducing()

    def resume_reading(self) -> None:
        cast(IPushProducer, self._tcp).resumeProducing()

    def close(self, reason: Reason) -> None:
        socket = self._socket
        if socket is None:
            return
        if self._request.producer is not None:
            self._request.unregisterProducer()
        try:
            # The interface takes a code only; Twisted's transport (26.10)
            # also takes the reason, which says why in the close frame.
            cast(Any, socket).loseConnection(
                close_code(reason), CLOSE_REASONS.get(reason, "")
            )
        except LocalProtocolError:  # the browser closed first
            self._tcp.loseConnection()

    def abort(self) -> None:
        self._tcp.abortConnection()


class WebChatDoor:
    """Build each WebSocket's conversation with the shared factory."""

    def __init__(self, factory: ChatServerFactory) -> None:
        self.factory = factory

    def buildProtocol(self, request: Request) -> WebConversation:
        return WebConversation(self.factory, request)


def origin_problem(request: Request, *, required: bool = False) -> str | None:
    """Why *request* does not come from a page of this server, or None.

    Its ``Host`` must be a name the listening address may have
    (``names_this_host``) and its ``Origin`` the page's own
    (``same_origin``); with *required*, a request with no ``Origin`` (not
    from a browser's page) is refused too.
    """
    origin = header_text(request, b"origin")
    host = header_text(request, b"host")
    local = getattr(request.getHost(), "host", "")
    if not names_this_host(host, local):
        return "a loopback server reached by another name (DNS rebinding?)"
    if origin is None and required:
        return "no Origin header (not a page of this server)"
    if not same_origin(origin, host, request.isSecure()):
        return "a page from another origin"
    return None


def log_cross_origin(
    logger: Logger, request: Request, why: str, what: str = "WebSocket"
) -> None:
    """One log line for a request refused by ``origin_problem``."""
    logger.info(
        "refused a cross-origin {what} from {peer}: origin {origin}, host {host}: "
        "{why}",
        what=what,
        peer=describe_address(request.getClientAddress()),
        origin=safe_text(header_text(request, b"origin") or "(none)"),
        host=safe_text(header_text(request, b"host") or "(none)"),
        why=why,
    )


class _ChatSocketResource(WebSocketResource):
    """The WebSocket endpoint: same-origin handshakes only."""

    def render_GET(self, request: Request) -> bytes | int:
        why = origin_problem(request)
        if why is None:
            problem = handshake_problem(request)
            if problem is None:
                return super().render_GET(request)
            return not_a_handshake(request, problem)
        log_cross_origin(log, request, why)
        request.setResponseCode(403)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (
            b"sockchat: cross-origin WebSocket refused; open the chat page "
            b"this server serves instead.\n"
        )


def handshake_problem(request: Request) -> str | None:
    """What makes *request* not a WebSocket handshake, or None.

    ``WebSocketResource`` would say so itself, but at error level and with
    the request's repr; this asks wsproto the same question first.
    """
    raw = request.requestHeaders.getAllRawHeaders()
    headers = [(name, value) for name, values in raw for value in values]
    try:
        H11Handshake(ConnectionType.SERVER).initiate_upgrade_connection(
            headers, request.path
        )
    except RemoteProtocolError as e:
        return str(e)
    return None


#: What a plain GET of the chat page's socket is told to do instead.
CHAT_SOCKET_INSTEAD = (
    b"/chat is the chat page's WebSocket; open / in a browser instead."
)


def not_a_handshake(
    request: Request,
    problem: str,
    instead: bytes = CHAT_SOCKET_INSTEAD,
) -> bytes:
    """426 for a plain GET of the socket's path, 400 for a broken handshake;
    the 426 says what to do *instead*."""
    upgrade = (header_text(request, b"upgrade") or "").strip().lower()
    log.info(
        "refused a request for the WebSocket from {peer}: {why}",
        peer=describe_address(request.getClientAddress()),
        why=safe_text(problem),
    )
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    if upgrade != "websocket":
        request.setResponseCode(426, b"Upgrade Required")
        request.setHeader(b"upgrade", b"websocket")
        request.setHeader(b"connection", b"Upgrade")
        return b"sockchat: " + instead + b"\n"
    request.setResponseCode(400)
    return f"sockchat: not a WebSocket handshake ({safe_text(problem)}).\n".encode()


class _Root(Resource):
    """The page's files and the socket; anything else is not found."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


class StaticFile(Resource):
    """One file of a page, with its type and the security headers."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: str) -> None:
        super().__init__()
        self._body = body
        self._type = content_type.encode()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", self._type)
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        return self._body


#: The page's files, shipped as package data in ``sockchat/web``.
ASSETS = {
    b"": ("index.html", "text/html; charset=utf-8"),
    b"app.js": ("app.js", "text/javascript; charset=utf-8"),
    b"style.css": ("style.css", "text/css; charset=utf-8"),
    b"favicon.svg": ("favicon.svg", "image/svg+xml"),
}
#: Where the page opens its WebSocket.
SOCKET_PATH = b"chat"


def read_asset(*path: str) -> bytes:
    """A file of the pages shipped in ``sockchat/web``, e.g. ``("desk", "desk.js")``."""
    where = resources.files("sockchat") / "web"
    for part in path:
        where = where / part
    return where.read_bytes()


def _read_asset(name: str) -> bytes:
    return read_asset(name)


def plain_response(code: int, reason: str, text: str) -> bytes:
    """A whole HTTP/1.1 response with a plain-text body, and ``close``."""
    body = f"sockchat: {text}\n".encode()
    return (
        f"HTTP/1.1 {code} {reason}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


class Gate(typing.Protocol):
    """Who may connect to a site: a ``ChatServerFactory``, or the like.

    ``refusal`` admits a connection (None) or says why not (and logs it);
    an admitted one gives its slot back with ``admission.release``.
    """

    clock: IReactorTime
    admission: Admission

    def refusal(self, addr: Any) -> Notice | None: ...


class AdmissionGate:
    """A ``Gate`` with caps of its own (*admission*), for a site that is not
    the chat page's (the desk, ``--metrics``).  Each refusal is logged on
    *logger*, at most one line a minute per kind, as ``WHAT: refused a
    connection from PEER: WHY``; *words* may reword the why."""

    def __init__(
        self,
        clock: IReactorTime,
        admission: Admission,
        what: str,
        *,
        logger: Logger = log,
        words: Callable[[str], str] = lambda why: why,
    ) -> None:
        self.clock = clock
        self.admission = admission
        self._what = what
        self._log = logger
        self._words = words
        self._quiet = LogLimiter(clock)

    def refusal(self, addr: Any) -> Notice | None:
        refusal = self.admission.consider(getattr(addr, "host", None))
        if refusal is None:
            return None
        if self._quiet.admit(refusal.notice.code) is not None:
            self._log.info(
                "{what}: refused a connection from {peer}: {why} (one line a minute)",
                what=self._what,
                peer=describe_address(addr) if addr is not None else "unknown",
                why=self._words(refusal.why),
            )
        return refusal.notice


class ChatChannel(HTTPChannel):
    """An HTTP connection to the chat site, admitted at its accept.

    It holds a slot of the gate's caps until the connection closes, or
    until it becomes a WebSocket, whose ``WebConversation`` takes the slot
    over (``hand_over``) and releases it when the conversation ends.  Each
    request must send all its headers (and its body, where the site takes
    one) within the site's ``headers_deadline``, and may not have a body
    of more than the site's ``max_body`` bytes (none, for the chat page).
    """

    site: ChatSite
    _admitted = False
    _host: str | None = None
    _deadline: IDelayedCall | None = None
    #: The current request's head so far: bytes and lines.
    _head_bytes = 0
    _head_lines = 0
    #: Whether a byte came since the deadline was set (an idle connection,
    #: kept alive or opened ahead by a browser, is closed quietly).
    _heard = False

    def admitted(self, host: str | None) -> None:
        """This connection holds a slot of the caps, for *host*."""
        self._admitted = True
        self._host = host

    def hand_over(self) -> str | None:
        """The slot is the WebSocket's now: the host it is counted for."""
        self._admitted = False
        return self._host

    def release(self) -> None:
        """Give the connection's slot back, if it still holds it."""
        if self._admitted:
            self._admitted = False
            self.site.gate.admission.release(self._host)

    def connectionMade(self) -> None:
        super().connectionMade()
        self._await_headers()

    def _await_headers(self) -> None:
        self._stop_deadline()
        self._head_bytes = self._head_lines = 0
        self._heard = False
        self._deadline = self.site.clock.callLater(
            self.site.headers_deadline, self._too_slow
        )

    def _stop_deadline(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    @property
    def _tcp(self) -> ITCPTransport:
        return cast(ITCPTransport, self.transport)

    def _too_slow(self) -> None:
        self._deadline = None
        peer = describe_address(self._tcp.getPeer())
        if self._heard:
            log.info(
                "closed a web connection from {peer}: its request did not send "
                "its headers within {seconds:g}s",
                peer=peer,
                seconds=self.site.headers_deadline,
            )
        else:  # what browsers do: not worth an operator's attention
            log.debug(
                "closed an idle web connection from {peer} after {seconds:g}s",
                peer=peer,
                seconds=self.site.headers_deadline,
            )
        self._tcp.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self._heard = True
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._deadline is not None and self._head_lines >= 0:  # in a head
            self._head_bytes += len(line)
            self._head_lines += 1
            if not line:
                self._head_lines = -1  # the head is over: the body is not counted
            # Twisted's own bounds, but answered 431 (or 414), not a bare 400.
            elif (
                self._head_bytes > self.totalHeadersSize
                or self._head_lines > self.maxHeaders + 1
            ):
                self._too_large(request_line=self._head_lines == 1)
                return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        # One line over the bound (Twisted would close without a word): the
        # request line if it is the first.
        self._too_large(request_line=self._head_lines == 0)

    def _too_large(self, *, request_line: bool) -> None:
        self._stop_deadline()
        code, reason, what = (
            (414, "URI Too Long", "request line")
            if request_line
            else (431, "Request Header Fields Too Large", "headers")
        )
        self._refuse(
            code,
            reason,
            f"its {what} are too large",
            f"a request's line and headers may have {self.totalHeadersSize} bytes "
            f"and {self.maxHeaders} headers at most; send a smaller request.",
        )

    def allHeadersReceived(self) -> None:
        length = self.length  # None: chunked, of a length not known
        if length != 0 and (length is None or length > self.site.max_body):
            self._stop_deadline()
            self._refuse_body()
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._stop_deadline()
        super().allContentReceived()

    def _refuse_body(self) -> None:
        most = self.site.max_body
        self._refuse(
            413,
            "Content Too Large",
            "it has a body",
            f"this server takes request bodies of at most {most} bytes, "
            "with a Content-Length."
            if most
            else f"this server takes no request bodies; {self.site.no_body_needed}.",
        )

    def _refuse(self, code: int, reason: str, why: str, text: str) -> None:
        """Answer *code* at once, read nothing more, and close."""
        log.info(
            "refused a web request from {peer}: {code} ({why})",
            peer=describe_address(self._tcp.getPeer()),
            code=code,
            why=why,
        )
        self._tcp.write(plain_response(code, reason, text))
        # Read nothing more: what is left is neither stored nor parsed.
        self.persistent = False
        for name in ("dataReceived", "lineReceived", "rawDataReceived"):
            setattr(self, name, _ignore)
        self.loseConnection()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        if self.persistent and not self._handlingRequest:
            self._await_headers()  # the next request's headers

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadline()
        self.release()
        super().connectionLost(reason)


def _ignore(*args: object) -> None:
    pass


class _Refused(Protocol):
    """Tell a refused HTTP client why, in a plain-text response, and close.

    What the client sent meanwhile is read and thrown away (for at most
    ``REFUSAL_LINGER`` seconds), so that the close does not reset the
    response away before the client has read it; with ``MAX_LINGERING``
    refusals lingering already, it is closed at once.
    """

    def __init__(self, response: bytes, site: ChatSite) -> None:
        self._response = response
        self._site = site
        self._linger: IDelayedCall | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._response)
        site = self._site
        if site.lingering >= MAX_LINGERING:
            self.transport.loseConnection()
            return
        site.lingering += 1
        self._linger = site.clock.callLater(REFUSAL_LINGER, self._close)

    def dataReceived(self, data: bytes) -> None:
        self._close()

    def _close(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        linger, self._linger = self._linger, None
        if linger is not None:
            self._site.lingering -= 1
            if linger.active():
                linger.cancel()


class ChatSite(Site):
    """A site whose every connection is admitted by *gate*'s caps (the chat
    page's: its ``ChatServerFactory``; the desk's: its own).

    It leaves out the access log: one log line per conversation.  Requests
    may have a body of up to *max_body* bytes (none, by default);
    *no_body_needed* ends the 413's text when none is allowed.
    """

    noisy = False
    protocol = ChatChannel  # type: ignore[assignment]  # HTTP/1.1 only: no h2 proxy
    #: Seconds each request has to send all its headers.
    headers_deadline = HEADERS_DEADLINE

    def __init__(
        self,
        resource: IResource,
        gate: Gate,
        *,
        max_body: int = 0,
        no_body_needed: str = "the chat page needs none",
    ) -> None:
        super().__init__(resource, reactor=gate.clock)
        self.gate = gate
        self.clock = gate.clock
        self.max_body = max_body
        self.no_body_needed = no_body_needed
        #: Refused connections lingering now (see ``_Refused``).
        self.lingering = 0

    def buildProtocol(self, addr: IAddress | None) -> Any:
        refusal = self.gate.refusal(addr)
        if refusal is not None:
            if refusal.code == Reason.DENIED.value:
                code, reason = 403, "Forbidden"
            else:
                code, reason = 503, "Service Unavailable"
            return _Refused(plain_response(code, reason, refusal.text), self)
        channel = super().buildProtocol(addr)
        channel.admitted(getattr(addr, "host", None))
        return channel

    def log(self, request: Any) -> None:
        pass


def chat_site(factory: ChatServerFactory) -> Site:
    """The chat page at ``/`` and its WebSocket at ``/chat``, for *factory*.

    Listen with it as with any factory; share *factory* with the TCP door
    so that both serve one set of conversations::

        endpoint.listen(chat_site(factory))
    """
    if factory.framing.name != "line":
        raise ValueError(
            f"the chat page speaks lines; this factory uses {factory.framing.name} "
            "framing"
        )
    root = _Root()
    for path, (name, content_type) in ASSETS.items():
        root.putChild(path, StaticFile(_read_asset(name), content_type))
    door = WebChatDoor(factory)
    root.putChild(SOCKET_PATH, _ChatSocketResource(door))
    return ChatSite(root, factory)
