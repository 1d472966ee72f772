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
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from contextlib import suppress
from importlib import resources
from typing import Any, cast
from urllib.parse import urlsplit

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from twisted.web.websocket import WebSocketResource, WebSocketTransport
from wsproto.utilities import LocalProtocolError
from zope.interface import implementer

from ._door import Door
from ._engine import Action, Close, Reason, SendMessage, ServerConversation
from ._render import safe_text
from ._server import (
    TRANSPORT_BUFFER,
    ChatServerFactory,
    describe_address,
    set_buffer_size,
)

__all__ = [
    "CLOSE_CODES",
    "CONTENT_SECURITY_POLICY",
    "WebChatDoor",
    "WebConversation",
    "chat_site",
    "close_code",
    "names_this_host",
    "same_origin",
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
}

#: Everything comes from the page's own origin; nothing inline, no frames.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_HEADERS = {
    b"content-security-policy": CONTENT_SECURITY_POLICY.encode(),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"x-frame-options": b"DENY",
    b"cache-control": b"no-cache",
}

_DEFAULT_PORTS = {"http": 80, "https": 443}


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
    parts = urlsplit(origin.strip())
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


def _header(request: Request, name: bytes) -> str | None:
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
) -> bool:
    """Have *socket* hand each piece of a message over as it comes.

    Twisted (26.10) has no public way to do this; it keeps each message's
    pieces in ``_textBuffer`` and ``_bytesBuffer`` until the message ends.
    This is the one place that reaches in, and ``tests/test_web.py`` fails
    if it stops working.  False: the socket has no such buffers, and whole
    messages arrive (still bounded by the engine once they do).
    """
    if not hasattr(socket, "_textBuffer"):
        return False
    buffers = cast(Any, socket)
    buffers._textBuffer = _Stream(text, "")
    buffers._bytesBuffer = _Stream(binary, b"")
    return True


def close_code(reason: Reason) -> int:
    """The WebSocket close code that says why a conversation ended."""
    return CLOSE_CODES.get(reason, 1000)


@implementer(IPushProducer)
class WebConversation(Door):
    """One conversation over a WebSocket.

    It is the ``WebSocketProtocol`` that Twisted's ``WebSocketResource``
    talks to: one text message from the browser is one line for the
    engine, and each answer or notice is one text message.  The engine's
    pause and resume reach the TCP connection under the socket.
    """

    def __init__(self, factory: ChatServerFactory, request: Request) -> None:
        super().__init__(0)
        self.factory = factory
        self._request = request
        #: The connection under the socket: TCP, or TLS over TCP.
        self._tcp = cast(ITCPTransport, request.channel.transport)
        self._peer = request.getClientAddress()
        self._socket: WebSocketTransport | None = None

    # The WebSocket side (twisted.web.websocket.WebSocketProtocol).

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self._socket = transport
        stream_messages(transport, self._piece, self._binary)

    def negotiationFinished(self) -> None:
        factory = self.factory
        set_buffer_size(self._tcp, TRANSPORT_BUFFER)
        # The HTTP channel is the TCP connection's producer; it passes pause
        # and resume on to the producer of its request.
        self._request.registerProducer(self, True)
        peer = describe_address(self._peer)
        refusal = factory.refusal(self._peer)
        if refusal is not None:
            self.engine = ServerConversation(
                factory.settings, 0, peer, factory.clock.seconds(), messages=True
            )
            self.engine.refuse(refusal, factory.clock.seconds())
            self._run(factory.clock.seconds())
            return
        self.conversation_id = factory.next_id()
        self.host = getattr(self._peer, "host", None)  # released when it ends
        self._begin(peer, messages=True)

    def textMessageReceived(self, message: str) -> None:
        # Streamed, *message* is the empty rest; otherwise it is all of it.
        self._message(message, final=True)

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        self._binary(bytes(data))

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        if self.conversation_id:
            self._lost(bool(reason.check(ConnectionDone)), reason.getErrorMessage())
        self._socket = None

    def _piece(self, text: str) -> None:
        self._message(text, final=False)

    def _message(self, text: str, *, final: bool) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            now = self.factory.clock.seconds()
            engine.receive_message(text, now, final=final)
            self._run(now)

    def _binary(self, data: bytes) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            now = self.factory.clock.seconds()
            engine.receive_binary(now)
            self._run(now)

    # IPushProducer: the TCP connection under the socket is full, or not.

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

    # The engine's actions.

    def _send(self, action: Action) -> None:
        if isinstance(action, SendMessage) and self._socket is not None:
            with suppress(LocalProtocolError):  # the browser is closing the socket
                self._socket.sendTextMessage(action.text)
            self.engine.bytes_out += len(action.text)  # characters, as received

    def _pause(self) -> None:
        cast(IPushProducer, self._tcp).pauseProducing()

    def _resume(self) -> None:
        cast(IPushProducer, self._tcp).resumeProducing()

    def _close(self, action: Close) -> None:
        socket = self._socket
        if socket is None:
            return
        if self._request.producer is not None:
            self._request.unregisterProducer()
        try:
            socket.loseConnection(close_code(action.reason))
        except LocalProtocolError:  # the browser closed first
            self._tcp.loseConnection()

    def _abort(self) -> None:
        self._tcp.abortConnection()


class WebChatDoor:
    """Build each WebSocket's conversation with the shared factory."""

    def __init__(self, factory: ChatServerFactory) -> None:
        self.factory = factory

    def buildProtocol(self, request: Request) -> WebConversation:
        return WebConversation(self.factory, request)


class _ChatSocketResource(WebSocketResource):
    """The WebSocket endpoint: same-origin handshakes only."""

    def render_GET(self, request: Request) -> bytes | int:
        origin = _header(request, b"origin")
        host = _header(request, b"host")
        local = getattr(request.getHost(), "host", "")
        if not names_this_host(host, local):
            why = "a loopback server reached by another name (DNS rebinding?)"
        elif not same_origin(origin, host, request.isSecure()):
            why = "a page from another origin"
        else:
            return super().render_GET(request)
        log.info(
            "refused a cross-origin WebSocket from {peer}: origin {origin}, "
            "host {host}: {why}",
            peer=describe_address(request.getClientAddress()),
            origin=safe_text(origin or ""),
            host=safe_text(host or ""),
            why=why,
        )
        request.setResponseCode(403)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (
            b"sockchat: cross-origin WebSocket refused; open the chat page "
            b"this server serves instead.\n"
        )


class _Root(Resource):
    """The page's files and the socket; anything else is not found."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


class _Asset(Resource):
    """One file of the page, with its type and the security headers."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: str) -> None:
        super().__init__()
        self._body = body
        self._type = content_type.encode()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", self._type)
        for name, value in _HEADERS.items():
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


def _read_asset(name: str) -> bytes:
    return (resources.files("sockchat") / "web" / name).read_bytes()


class ChatSite(Site):
    """A site that leaves out the access log: one log line per connection."""

    noisy = False

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
        root.putChild(path, _Asset(_read_asset(name), content_type))
    door = WebChatDoor(factory)
    root.putChild(SOCKET_PATH, _ChatSocketResource(door))
    return ChatSite(root, reactor=factory.clock)
