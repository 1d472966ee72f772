"""The broker's Redis client: its URL, the interface above it, the Twisted door.

The Redis broker (``sockchat._broker.redisbroker``) talks to Redis through
``IRedis``: ``command(*args)``, whose Deferred fires with the reply
(integer -> ``int``, bulk string -> ``bytes``, null -> ``None``, array ->
``list``, status -> ``str``) or fails with ``RedisError`` (the server said
no) or ``BrokerUnavailable`` (there is no connection, or it was lost while
the command was in flight).  ``RedisClient`` is the one.

Why our own Redis client
------------------------
sockchat needs a dozen commands, pipelined on one connection, with one
precise behaviour when the broker goes away: every command in flight fails
at once with ``BrokerUnavailable``, new commands fail fast until the
connection is back, the client reconnects by itself with backoff, and the
loss and the return are each said once.  txredisapi, the Twisted-native
library, is untyped (we check with ``mypy --strict``), its ``rediss``
support does not verify the server's certificate by default, and the
behaviour above would be ours to bolt onto its own reconnection.  RESP2 is a
small, stable protocol: the codec (``sockchat._broker.resp``) is a sans-I/O parser
of a few hundred lines with property tests, and this door is a thin
Twisted protocol around it.  TLS is Twisted's own ``optionsForClientTLS``,
which verifies the certificate and the host name, as the sockchat client
does.
"""

from __future__ import annotations

import collections
import os
import random
import re
import socket
import typing
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from attrs import frozen
from twisted.internet import defer, error
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    UNIXClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from sockchat._broker.errors import BrokerUnavailable
from sockchat._broker.resp import ErrorReply, ProtocolError, ReplyParser, encode_command

__all__ = [
    "BrokerAddress",
    "BrokerUnavailable",
    "IRedis",
    "RedisClient",
    "RedisError",
    "parse_broker_url",
]

log = Logger(namespace="sockchat.redis")

#: Redis's port when a URL gives none.
DEFAULT_PORT = 6379
#: Seconds a connection attempt (connect, TLS, AUTH, SELECT) may take.
CONNECT_TIMEOUT = 5.0
#: The first pause before reconnecting, doubled after each failed attempt
#: up to RECONNECT_MAX, each with +-20% jitter.
RECONNECT_FIRST = 0.2
RECONNECT_MAX = 5.0
#: TCP keepalive: probe after this many idle seconds, then every
#: KEEPALIVE_INTERVAL, and give up after KEEPALIVE_COUNT unanswered probes,
#: so that a broker whose host vanished is noticed within about 30 s even
#: while a blocking command waits.
KEEPALIVE_IDLE = 15
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3


class RedisError(Exception):
    """The server answered a command with an error; ``str(e)`` is its text
    (``WRONGTYPE ...``, ``NOSCRIPT ...``, ``BUSYGROUP ...``)."""


class IRedis(typing.Protocol):
    """What everything above the client uses: a Redis connection."""

    #: Whether the connection is up now.
    connected: bool
    #: The broker's URL without its password, for logs and messages.
    display: str
    #: Called with ``False`` once when the connection is lost, and ``True``
    #: once when it is back (not at the start: ``start()`` says that).
    on_state: Callable[[bool], object] | None

    @property
    def why(self) -> str:
        """Why the broker was last unavailable, in a few words."""

    def command(self, *args: str | bytes | int | float) -> Deferred[Any]: ...

    def start(self) -> Deferred[None]:
        """Connect for the first time; fails with ``BrokerUnavailable``."""

    def stop(self) -> Deferred[None]:
        """Close for good; what is in flight fails with ``BrokerUnavailable``."""


@frozen
class BrokerAddress:
    """Where the broker is and how to reach it (from ``parse_broker_url``).

    *scheme* is ``redis``, ``rediss`` (TLS) or ``unix``.  For ``unix``,
    *path* is the socket and *host*/*port* are unused.
    """

    scheme: str
    host: str = ""
    port: int = DEFAULT_PORT
    path: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"

    @property
    def display(self) -> str:
        """The URL without its password, for logs and messages."""
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        if self.scheme == "unix":
            db = f"?db={self.db}" if self.db else ""
            return f"unix://{user}{self.path}{db}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{user}{host}:{self.port}/{self.db}"


def _masked(text: str) -> str:
    """*text* with any password in it (``:pw@`` or ``password=``) replaced,
    for error messages."""
    text = re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", text)
    try:
        parts = urlsplit(text)
        if parts.password is None:
            return text
    except ValueError:
        return "the broker URL"
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{hostinfo}").geturl()


def _number(url: str, what: str, text: str, *, low: int, high: int) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(
            f"--broker {url}: the {what} must be a number from {low} to {high}, "
            f"not {text!r}"
        )
    return int(text)


def parse_broker_url(text: str) -> BrokerAddress:
    """The broker address a URL names; ``ValueError`` with one line otherwise.

    ``redis://[[user]:password@]host[:port][/db]``,
    ``rediss://...[?ca=ca.pem][&cert=me.pem&key=me.key]`` (TLS, certificate
    and host name verified, against *ca* if given, else the system's CAs),
    ``unix:///path/to/redis.sock[?db=N][&password=PW]``.
    """
    url = _masked(text)
    try:
        parts = urlsplit(text)
        port_text = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise ValueError(
            f"--broker {url}: not a URL (expected redis://HOST:PORT/DB, "
            "rediss://HOST:PORT/DB or unix:///PATH)"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"--broker {url}: the scheme must be redis://, rediss:// or unix://"
        )
    if parts.fragment:
        raise ValueError(f"--broker {url}: a broker URL has no #fragment")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in query:
            raise ValueError(f"--broker {url}: {name}= is given twice")
        query[name] = value
    allowed = {"redis": set(), "rediss": {"ca", "cert", "key"}}.get(
        scheme, {"db", "password"}
    )
    unknown = sorted(set(query) - allowed)
    if unknown:
        if scheme == "redis" and set(unknown) <= {"ca", "cert", "key"}:
            raise ValueError(
                f"--broker {url}: ?{unknown[0]}= is for TLS: use rediss://"
            )
        raise ValueError(
            f"--broker {url}: unknown parameter {unknown[0]}= (this URL takes "
            + (", ".join(f"{a}=" for a in sorted(allowed)) or "none")
            + ")"
        )
    if scheme == "unix":
        if parts.netloc.rpartition("@")[2]:
            raise ValueError(
                f"--broker {url}: a unix:// URL has no host: unix:///PATH "
                "(three slashes)"
            )
        if not parts.path.startswith("/") or parts.path == "/":
            raise ValueError(f"--broker {url}: give the socket's path: unix:///PATH")
        db = (
            _number(url, "db", query["db"], low=0, high=2**31 - 1)
            if "db" in query
            else 0
        )
        return BrokerAddress(
            scheme="unix",
            path=unquote(parts.path),
            db=db,
            username=username,
            password=query.get("password", password),
        )
    host = parts.hostname
    if not host:
        raise ValueError(f"--broker {url}: give the host: {scheme}://HOST:PORT/DB")
    if port_text is None and parts.netloc.endswith(":"):
        raise ValueError(f"--broker {url}: the port is empty")
    port = DEFAULT_PORT if port_text is None else port_text
    if not 1 <= port <= 65535:
        raise ValueError(f"--broker {url}: the port must be from 1 to 65535")
    path = parts.path.strip("/")
    db = _number(url, "db", path, low=0, high=2**31 - 1) if path else 0
    ca, cert, key = query.get("ca"), query.get("cert"), query.get("key")
    if bool(cert) != bool(key):
        raise ValueError(f"--broker {url}: ?cert= and ?key= go together")
    address = BrokerAddress(
        scheme=scheme,
        host=host,
        port=port,
        db=db,
        username=username,
        password=password,
        ca=ca or None,
        cert=cert or None,
        key=key or None,
    )
    if address.tls:
        _tls_options(address)  # each file's mistake is one line, now
    return address


def _tls_options(address: BrokerAddress) -> Any:
    """Twisted's client TLS options for *address*: the server's certificate
    and host name are verified (against ``?ca=`` if given, else the
    system's trusted CAs), as the sockchat client does for ``--ca``."""
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )
    from twisted.internet.ssl import (
        Certificate,
        PrivateCertificate,
        optionsForClientTLS,
    )

    from sockchat._doors.tlsfiles import check_certificate, check_pair

    trust = None
    if address.ca:
        trust = Certificate.loadPEM(
            check_certificate(f"--broker ?ca={address.ca}", address.ca).public_bytes(
                Encoding.PEM
            )
        )
    mine = None
    if address.cert and address.key:
        pair = check_pair(
            f"--broker ?cert={address.cert}",
            address.cert,
            f"--broker ?key={address.key}",
            address.key,
        )
        pem = pair.certificate.public_bytes(Encoding.PEM) + pair.key.private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
        mine = PrivateCertificate.loadPEM(pem)  # type: ignore[no-untyped-call]  # Twisted's ssl is unannotated
    return optionsForClientTLS(address.host, trustRoot=trust, clientCertificate=mine)


def broker_endpoint(
    reactor: Any, address: BrokerAddress, timeout: float = CONNECT_TIMEOUT
) -> IStreamClientEndpoint:
    """The Twisted endpoint that reaches *address*."""
    if address.scheme == "unix":
        return UNIXClientEndpoint(reactor, address.path, timeout=timeout)
    tcp = HostnameEndpoint(reactor, address.host, address.port, timeout=timeout)
    if address.tls:
        return wrapClientTLS(_tls_options(address), tcp)
    return tcp


def _why(failure: Failure, address: BrokerAddress, timeout: float) -> str:
    """What went wrong, in a few words on one line."""
    e = failure.value
    text: str
    if e is None:
        text = "unknown"
    elif isinstance(e, (defer.TimeoutError, error.TimeoutError)):
        text = f"no answer within {timeout:g} s"
    elif isinstance(e, error.ConnectionRefusedError):
        text = "Connection refused"
    elif isinstance(e, error.DNSLookupError):
        text = f"cannot resolve {address.host}"
    elif isinstance(e, error.ConnectionDone):
        text = "the server closed the connection"
    elif isinstance(e, error.ConnectionLost):
        text = "the connection was lost"
    elif isinstance(e, (RedisError, BrokerUnavailable)):
        text = str(e)
    elif isinstance(e, ProtocolError):
        text = f"it does not speak Redis's protocol ({e})"
    elif isinstance(e, error.ConnectError) and isinstance(e.osError, int):
        text = os.strerror(e.osError)
    elif type(e).__name__ == "VerificationError":  # service_identity's
        text = f"TLS: the server's certificate is not for {address.host}"
    elif type(e).__module__.startswith("OpenSSL"):
        reasons = [str(r[-1]) for r in e.args[0]] if e.args and e.args[0] else []
        text = "TLS: " + ("; ".join(reasons) or type(e).__name__)
    else:
        text = str(e).strip() or type(e).__name__
    return " ".join(text.split())


class _RedisProtocol(Protocol):
    """One connection: commands out, replies matched in order to a FIFO of
    Deferreds (so commands may be pipelined)."""

    def __init__(self, keepalive: bool) -> None:
        self._parser = ReplyParser()
        self._pending: collections.deque[Deferred[Any]] = collections.deque()
        self._keepalive = keepalive
        self._broken: ProtocolError | None = None
        self.open = False
        #: Called with the reason when the connection is lost; until set,
        #: the commands in flight fail with BrokerUnavailable(lost_message).
        self.on_lost: Callable[[_RedisProtocol, Failure], None] | None = None
        self.lost_message = "the connection was lost"
        self.lost_reason: Failure | None = None
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.open = True
        if self._keepalive:
            _keep_alive(self.transport)

    def send(self, args: tuple[str | bytes | int | float, ...]) -> Deferred[Any]:
        data = encode_command(*args)
        # Cancelling only stops waiting: the reply, when it comes, is dropped.
        d: Deferred[Any] = Deferred(lambda _: None)
        self._pending.append(d)
        assert self.transport is not None
        self.transport.write(data)
        return d

    def dataReceived(self, data: bytes) -> None:
        if self._broken is not None:
            return
        try:
            replies = self._parser.feed(data)
        except ProtocolError as e:
            self._break(e)
            return
        for reply in replies:
            if not self._pending:
                self._break(ProtocolError("a reply to no command"))
                return
            d = self._pending.popleft()
            if d.called:  # cancelled
                continue
            if isinstance(reply, ErrorReply):
                d.errback(RedisError(reply.message))
            else:
                d.callback(reply)

    def _break(self, problem: ProtocolError) -> None:
        self._broken = problem
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]  # ITCPTransport and TLS have it

    def fail_pending(self, message: str) -> None:
        pending, self._pending = self._pending, collections.deque()
        for d in pending:
            if not d.called:
                d.errback(BrokerUnavailable(message))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.open = False
        self.lost_reason = Failure(self._broken) if self._broken else reason
        if self.on_lost is not None:
            self.on_lost(self, self.lost_reason)
        self.fail_pending(self.lost_message)
        self.closed.callback(None)


def _keep_alive(transport: Any) -> None:
    """TCP keepalive on the socket under *transport* (TLS wraps TCP)."""
    for _ in range(3):
        if transport is None:
            return
        handle = getattr(transport, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket) and handle.family in (
            socket.AF_INET,
            socket.AF_INET6,
        ):
            try:
                handle.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                for name, value in (
                    ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
                    ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                    ("TCP_KEEPCNT", KEEPALIVE_COUNT),
                ):
                    if hasattr(socket, name):
                        handle.setsockopt(
                            socket.IPPROTO_TCP, getattr(socket, name), value
                        )
            except OSError:
                pass
            return
        transport = getattr(transport, "transport", None)


class RedisClient:
    """A connection to the broker that comes back by itself (an ``IRedis``).

    ``start()`` makes the first connection, or fails with one line.  After
    that, a lost connection fails what was in flight, makes ``command``
    fail fast, and is retried with backoff (RECONNECT_FIRST doubling up to
    RECONNECT_MAX, with jitter) until it is back; *on_state* is called with
    ``False`` once when it is lost and ``True`` once when it is back (not at
    the start: ``start()``'s Deferred says that).  The loss and the return
    are logged once each.  ``stop()`` ends it.

    *endpoint* and *rng* are for tests: by default the endpoint is built
    from *address*, and the jitter is random.
    """

    def __init__(
        self,
        reactor: Any,
        address: BrokerAddress,
        *,
        on_state: Callable[[bool], object] | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        endpoint: IStreamClientEndpoint | None = None,
        rng: random.Random | None = None,
        logged: bool = True,
    ) -> None:
        self.connected = False
        #: Whether this client logs its loss and return itself (an owner
        #: that says more of them turns it off).
        self.logged = logged
        self.address = address
        self.display = address.display
        self.on_state = on_state
        self._reactor = reactor
        self._timeout = connect_timeout
        self._endpoint = endpoint or broker_endpoint(reactor, address, connect_timeout)
        self._rng = rng or random.Random()
        self._proto: _RedisProtocol | None = None
        self._started = False
        self._stopping = False
        self._attempt_d: Deferred[_RedisProtocol] | None = None
        self._retry: IDelayedCall | None = None
        self._failures = 0
        self._down_since: float | None = None
        self._last_why = "not connected yet"

    # -- IRedis ------------------------------------------------------------

    def command(self, *args: str | bytes | int | float) -> Deferred[Any]:
        """Send one command; its Deferred fires with the reply.

        Fails with ``RedisError`` for an error reply, ``BrokerUnavailable``
        when not connected or when the connection is lost first.
        """
        if self._proto is None or not self.connected:
            return fail(
                BrokerUnavailable(
                    f"the broker at {self.display} is unavailable ({self._last_why})"
                )
            )
        return self._proto.send(args)

    # -- life ----------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Connect for the first time (and ``AUTH``, ``SELECT``).

        Fails with ``BrokerUnavailable("cannot reach the broker at URL:
        why")``; then the client does not retry.
        """
        if self._started:
            raise RuntimeError("RedisClient.start() was called twice")
        self._started = True
        attempt = self._attempt_d = self._attempt()

        def up(proto: _RedisProtocol) -> None:
            self._attempt_d = None
            self._up(proto)
            if self.logged:
                log.info("connected to the broker at {broker}", broker=self.display)

        def down(failure: Failure) -> Failure:
            self._attempt_d = None
            self._stopping = True
            why = _why(failure, self.address, self._timeout)
            if failure.check(defer.CancelledError):
                why = "the client was stopped"
            return Failure(
                BrokerUnavailable(f"cannot reach the broker at {self.display}: {why}")
            )

        attempt.addCallbacks(up, down)
        return attempt  # type: ignore[return-value]  # fires with None now

    def stop(self) -> Deferred[None]:
        """No more reconnecting; what is in flight fails with
        ``BrokerUnavailable``.  Fires once the connection is closed."""
        self._stopping = True
        self.connected = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt_d is not None:
            self._attempt_d.cancel()
        proto = self._proto
        if proto is None or not proto.open:
            return succeed(None)
        proto.fail_pending(f"the client of the broker at {self.display} was stopped")
        assert proto.transport is not None
        proto.transport.loseConnection()

        # A peer that does not close its side in time is cut off.
        def cut_off() -> None:
            if proto.open:
                assert proto.transport is not None
                proto.transport.abortConnection()  # type: ignore[attr-defined]  # ITCPTransport and TLS have it

        cut = self._reactor.callLater(self._timeout, cut_off)

        def closed(_: None) -> None:
            if cut.active():
                cut.cancel()

        return proto.closed.addCallback(closed)

    # -- inside --------------------------------------------------------------

    def _attempt(self) -> Deferred[_RedisProtocol]:
        """Connect and say hello; the whole attempt has one timeout."""
        keepalive = self.address.scheme != "unix"
        factory = Factory.forProtocol(lambda: _RedisProtocol(keepalive))
        d: Deferred[Any] = self._endpoint.connect(factory)
        d.addCallback(self._hello)
        d.addTimeout(self._timeout, self._reactor)
        return d

    def _hello(self, proto: _RedisProtocol) -> Deferred[_RedisProtocol]:
        address = self.address
        commands: list[tuple[str | int, ...]] = []
        if address.password is not None:
            if address.username:
                commands.append(("AUTH", address.username, address.password))
            else:
                commands.append(("AUTH", address.password))
        if address.db:
            commands.append(("SELECT", address.db))
        commands.append(("PING",))
        said = gatherResults([proto.send(c) for c in commands], consumeErrors=True)

        cancelled = []

        def abort(_: Deferred[_RedisProtocol]) -> None:
            cancelled.append(True)  # so that the Deferred fails with CancelledError
            if proto.open:
                assert proto.transport is not None
                proto.transport.abortConnection()  # type: ignore[attr-defined]  # ITCPTransport and TLS have it

        hello: Deferred[_RedisProtocol] = Deferred(abort)

        def done(result: object) -> None:
            if hello.called or cancelled:  # timed out, or the client stopped
                return
            if isinstance(result, Failure):
                inner = result.value
                if isinstance(inner, defer.FirstError):
                    result = inner.subFailure
                if result.check(BrokerUnavailable) and proto.lost_reason is not None:
                    result = proto.lost_reason
                if proto.open:
                    assert proto.transport is not None
                    proto.transport.loseConnection()
                hello.errback(result)
            else:
                hello.callback(proto)

        said.addBoth(done)
        return hello

    def _up(self, proto: _RedisProtocol) -> None:
        if self._stopping:
            proto.transport.loseConnection()  # type: ignore[union-attr]  # connected: it has one
            return
        self._proto = proto
        proto.on_lost = self._lost
        self.connected = True
        self._failures = 0

    def _lost(self, proto: _RedisProtocol, reason: Failure) -> None:
        if proto is not self._proto:
            return
        self._proto = None
        self.connected = False
        if self._stopping:
            return
        why = _why(reason, self.address, self._timeout)
        proto.lost_message = f"lost the broker at {self.display}: {why}"
        self._last_why = why
        self._down_since = self._reactor.seconds()
        if self.logged:
            log.warn(
                "lost the broker at {broker}: {why}; reconnecting",
                broker=self.display,
                why=why,
            )
        self._notify(False)
        self._schedule()

    def _schedule(self) -> None:
        if self._stopping:
            return
        base = min(RECONNECT_MAX, RECONNECT_FIRST * 2 ** min(self._failures, 10))
        delay = base * self._rng.uniform(0.8, 1.2)
        self._retry = self._reactor.callLater(delay, self._reconnect)

    def _reconnect(self) -> None:
        self._retry = None
        attempt = self._attempt_d = self._attempt()

        def up(proto: _RedisProtocol) -> None:
            self._attempt_d = None
            self._up(proto)
            if self._stopping:
                return
            down = self._reactor.seconds() - (self._down_since or 0.0)
            self._down_since = None
            if self.logged:
                log.info(
                    "the broker at {broker} is back after {down:.1f} s",
                    broker=self.display,
                    down=down,
                )
            self._notify(True)

        def failed(failure: Failure) -> None:
            self._attempt_d = None
            if self._stopping:
                return
            self._failures += 1
            self._last_why = _why(failure, self.address, self._timeout)
            log.debug(
                "the broker at {broker} is still unavailable: {why}",
                broker=self.display,
                why=self._last_why,
            )
            self._schedule()

        attempt.addCallbacks(up, failed)

    @property
    def why(self) -> str:
        """Why the broker was last unavailable, in a few words."""
        return self._last_why

    def _notify(self, state: bool) -> None:
        if self.on_state is None:
            return
        try:
            self.on_state(state)
        except Exception:
            log.failure("on_state({state}) raised", state=state)
