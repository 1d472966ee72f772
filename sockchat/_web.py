"""The web door: the chat page, and a WebSocket per conversation.

A thin adapter around ``twisted.web.websocket``.  Each WebSocket connection
gets a protocol from the same ``ChatServerFactory`` as the TCP door (same
responder, limits, admission caps, conversation ids and log events), and
``WebSocketLines`` presents the socket to it as a transport:

- one text message from the browser is one line, fed to the protocol as
  UTF-8 bytes and a newline, so the same ``LineDecoder`` and ``ServerTurns``
  judge it (``--max-line``, out of turn, ``q``);
- each line the protocol writes (an answer or a notice, exactly as on TCP)
  is one text message, without its newline;
- the protocol's producer and pause calls reach the TCP connection under
  the socket, and its close after a bye becomes a WebSocket close whose code
  says why (see ``CLOSE_CODES``).

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

from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IProtocol,
    IPushProducer,
    ITCPTransport,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from twisted.web.websocket import WebSocketResource, WebSocketTransport
from wsproto.utilities import LocalProtocolError
from zope.interface import implementer

from ._render import safe_text
from ._server import ChatServerFactory, describe_address
from ._wire import Notice, NoticeKind, parse_server_line

__all__ = [
    "CLOSE_CODES",
    "CONTENT_SECURITY_POLICY",
    "WebChatDoor",
    "WebSocketLines",
    "chat_site",
    "names_this_host",
    "same_origin",
]

log = Logger(namespace="sockchat.web")

#: The WebSocket close code sent after each bye notice (RFC 6455 section
#: 7.4, and 1013 from the IANA registry).  Any other bye closes with 1000.
CLOSE_CODES = {
    "quit": 1000,  # normal closure
    "end-of-input": 1000,
    "idle-timeout": 1000,
    "shutdown": 1001,  # going away
    "denied": 1008,  # policy violation
    "busy": 1013,  # try again later
}
#: Close codes for messages that cannot be a line.
UNSUPPORTED_DATA = 1003
INCONSISTENT_DATA = 1007

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
    each piece on at once (the line decoder bounds what it keeps; a binary
    piece closes the socket), and hands over an empty rest when the message
    ends.
    """

    __slots__ = ("_empty", "_sink")

    def __init__(self, sink: Callable[[Any], None], empty: str | bytes) -> None:
        self._sink = sink
        self._empty = empty

    def add(self, piece: Any) -> None:
        self._sink(piece)

    def done(self) -> str | bytes:
        return self._empty


@implementer(ITransport, IConsumer, IPushProducer)
class WebSocketLines:
    """One WebSocket connection, as a line transport for a chat protocol.

    It is the ``WebSocketProtocol`` that Twisted's ``WebSocketResource``
    talks to, and the transport that *protocol* (built by the
    ``ChatServerFactory``) writes to.
    """

    def __init__(self, protocol: IProtocol, request: Request) -> None:
        self.protocol = protocol
        self._request = request
        #: The connection under the socket: TCP, or TLS over TCP.
        self.transport = cast(ITCPTransport, request.channel.transport)
        self._peer = request.getClientAddress()
        self._host = request.getHost()
        self._socket: WebSocketTransport | None = None
        self._out = b""
        self._bye: str | None = None  # the code of the bye notice sent
        self._closing = False

    # The WebSocket side (twisted.web.websocket.WebSocketProtocol).

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self._socket = transport
        # Twisted 26.10's socket buffers whole messages; stream them instead.
        if hasattr(transport, "_textBuffer"):
            buffers = cast(Any, transport)
            buffers._textBuffer = _Stream(self._piece, "")
            buffers._bytesBuffer = _Stream(self._binary, b"")

    def negotiationFinished(self) -> None:
        self.protocol.makeConnection(self)

    def textMessageReceived(self, message: str) -> None:
        # Streamed, *message* is the empty rest; otherwise it is all of it.
        self._piece(message)
        if not self._closing:
            self.protocol.dataReceived(b"\n")

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        self._binary(data)

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        self._closing = True
        self.protocol.connectionLost(reason)

    def _piece(self, text: str) -> None:
        if self._closing or not text:
            return
        if "\n" in text:
            self._refuse(
                INCONSISTENT_DATA, "a message is one line: it cannot contain a newline"
            )
            return
        self.protocol.dataReceived(text.encode("utf-8"))

    def _binary(self, data: object) -> None:
        if not self._closing:
            self._refuse(
                UNSUPPORTED_DATA, "binary messages are not accepted: send text"
            )

    def _refuse(self, code: int, why: str) -> None:
        log.info(
            "WebSocket from {peer}: {why}; closing it with code {code}",
            peer=describe_address(self._peer),
            why=why,
            code=code,
        )
        self._close(code)

    def _close(self, code: int) -> None:
        if self._closing:
            return
        self._closing = True
        assert self._socket is not None
        try:
            self._socket.loseConnection(code)
        except LocalProtocolError:  # the browser closed first
            self.transport.loseConnection()

    # The transport side, for the chat protocol.

    def write(self, data: bytes) -> None:
        self._out += data
        while b"\n" in self._out:
            line, self._out = self._out.split(b"\n", 1)
            self._send(line.decode("utf-8", "replace"))

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def _send(self, line: str) -> None:
        if self._closing or self._socket is None:
            return
        if line.startswith("!bye "):
            message = parse_server_line(line)
            if isinstance(message, Notice) and message.kind is NoticeKind.BYE:
                self._bye = message.code
        with suppress(LocalProtocolError):  # the browser is closing the socket
            self._socket.sendTextMessage(line)

    def loseConnection(self) -> None:
        self._close(CLOSE_CODES.get(self._bye or "", 1000))

    def abortConnection(self) -> None:
        self._closing = True
        self.transport.abortConnection()

    def getPeer(self) -> IAddress:
        return cast(IAddress, self._peer)

    def getHost(self) -> IAddress:
        return cast(IAddress, self._host)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        # The HTTP channel is the TCP connection's producer; it passes
        # pause and resume on to the producer of its request.
        self._request.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self._request.producer is not None:
            self._request.unregisterProducer()

    # The chat protocol pauses the transport to stop reading the client.

    def pauseProducing(self) -> None:
        cast(IPushProducer, self.transport).pauseProducing()

    def resumeProducing(self) -> None:
        cast(IPushProducer, self.transport).resumeProducing()

    def stopProducing(self) -> None:
        cast(IPushProducer, self.transport).stopProducing()


class WebChatDoor:
    """Build each WebSocket's chat protocol with the shared factory."""

    def __init__(self, factory: ChatServerFactory) -> None:
        self.factory = factory

    def buildProtocol(self, request: Request) -> WebSocketLines:
        protocol = self.factory.buildProtocol(request.getClientAddress())
        return WebSocketLines(protocol, request)


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
