"""``--port haproxy:...``: read the PROXY header before the conversation.

Twisted's own ``haproxy:`` endpoint builds the server's protocol when the
load balancer connects, before the PROXY header has said who the client
is; so the server would admit, cap and name every client by the load
balancer's address.  Here the wrapper waits for the header, then asks the
factory for a protocol with the client's real address, so ``--max-per-ip``,
``--allow``/``--deny`` and every log line see the client, not the proxy.

A connection whose header does not come within ``HEADER_TIMEOUT`` seconds
(a port probe that connects and stays silent), or is not a PROXY header, is
closed; Twisted's wrapper parses the header itself.

A version 2 header with the LOCAL command is the load balancer's own health
check ("established on purpose by the proxy without being relayed", says
the PROXY protocol's specification; haproxy sends it with
``send-proxy-v2`` and ``check-send-proxy``): it gets no conversation, so no
number, no welcome and no log line, and is closed at once.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol

# Twisted makes only proxyEndpoint public; its wrapper, whose header parsing
# this reuses, lives in a private module (setup.cfg pins Twisted below 27,
# and tests/doors/test_proxied.py covers it).
from twisted.protocols.haproxy._wrapper import (
    HAProxyProtocolWrapper,
    HAProxyWrappingFactory,
)
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["HEADER_TIMEOUT", "ProxiedEndpoint", "is_health_check"]

#: Seconds a connection from the load balancer may take to send its header.
HEADER_TIMEOUT = 10.0
#: The first 12 bytes of a version 2 header; the 13th holds the version
#: (high 4 bits) and the command (low 4 bits: 0 LOCAL, 1 PROXY).
_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def is_health_check(header: bytes) -> bool:
    """Whether the PROXY *header* is a version 2 LOCAL one: the proxy's own
    connection (a health check), not a client's."""
    return header[:12] == _V2_SIGNATURE and len(header) > 12 and header[12] & 0x0F == 0


class _Held(Protocol):
    """Stands in for the server's protocol until the header has come."""

    def __init__(self) -> None:
        self.data: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        pass


class _HeaderFirst(HAProxyProtocolWrapper):
    factory: _HeaderFirstFactory

    def __init__(self, factory: _HeaderFirstFactory) -> None:
        super().__init__(cast(Any, factory), _Held())
        self._deadline: Any = None
        self._start = b""

    def connectionMade(self) -> None:
        # Not the wrapped protocol's connectionMade yet: that waits for the
        # header (ProtocolWrapper's would call it now).
        self.factory.registerProtocol(self)
        self._deadline = self.factory.clock.callLater(HEADER_TIMEOUT, self._no_header)

    def _no_header(self) -> None:
        self._deadline = None
        cast(ITCPTransport, self.transport).abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if not isinstance(self.wrappedProtocol, _Held):
            self.wrappedProtocol.dataReceived(data)
            return
        held = self.wrappedProtocol
        if self._parser is None:
            # Twisted's wrapper tells v1 from v2 by the first read, which
            # must hold 16 bytes (or a whole short v1 line): keep the pieces.
            self._start += data
            if len(self._start) < 16 and b"\r\n" not in self._start:
                return
            data, self._start = self._start, b""
        super().dataReceived(data)  # parses; the rest goes to held
        if self._proxyInfo is None:
            return  # more header to come, or it was refused and is closing
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if is_health_check(self._proxyInfo.header):
            # No log line: haproxy checks every few seconds, forever.
            cast(ITCPTransport, self.transport).loseConnection()
            return
        protocol = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if protocol is None:
            cast(ITCPTransport, self.transport).loseConnection()
            return
        self.wrappedProtocol = protocol
        protocol.makeConnection(self)
        for piece in held.data:
            protocol.dataReceived(piece)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        super().connectionLost(reason)


class _HeaderFirstFactory(HAProxyWrappingFactory):
    protocol = _HeaderFirst  # type: ignore[assignment]
    noisy = False  # no "Starting factory <...>" line: the door's own says it

    def __init__(self, wrapped: IProtocolFactory, clock: IReactorTime) -> None:
        super().__init__(wrapped)
        self.clock = clock

    def buildProtocol(self, addr: Any) -> _HeaderFirst:
        return _HeaderFirst(self)


@implementer(IStreamServerEndpoint)
class ProxiedEndpoint:
    """Listen on *inner*; each connection starts with a PROXY header."""

    def __init__(self, inner: IStreamServerEndpoint, clock: IReactorTime) -> None:
        self._inner = inner
        self._clock = clock

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self._inner.listen(_HeaderFirstFactory(protocolFactory, self._clock))


def wrapped_protocol(protocol: IProtocol) -> IProtocol:
    """The server's protocol inside a proxied connection (for tests)."""
    return getattr(protocol, "wrappedProtocol", protocol)
