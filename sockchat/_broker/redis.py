"""The broker's Redis client: its URL, the interface above it, the Twisted door.

The Redis broker (``sockchat._broker.redisbroker``) talks to Redis through
``IRedis``: ``command(*args)``, whose Deferred fires with the reply
(integer -> ``int``, bulk string -> ``bytes``, null -> ``None``, array ->
``list``, status -> ``str``) or fails with ``RedisError`` (the server said
no) or ``BrokerUnavailable`` (there is no connection, or it was lost while
the command was in flight).  ``RedisClient`` is the one.

The client pipelines by itself (the commands of one reactor turn leave in
one write), parses replies with hiredis when it is installed
(``sockchat._broker.resp``), and with a ``redis+sentinel://`` URL finds
the master through Redis Sentinel and follows a failover
(``sockchat._broker.sentinel`` says how).  ``replicated()`` is ``WAIT``,
for ``?wait=N``.

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

from attrs import evolve, frozen
from twisted.internet import defer, error
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    UNIXClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from sockchat._broker.errors import BrokerUnavailable, NotReplicated
from sockchat._broker.resp import (
    HIREDIS,
    ErrorReply,
    ProtocolError,
    encode_command,
    new_reply_parser,
)
from sockchat._broker.sentinel import (
    DEFAULT_SENTINEL_PORT,
    SWITCH_MASTER,
    SentinelError,
    SentinelList,
    Survey,
    Where,
    checked_role,
    get_master_command,
    is_readonly,
    switched_to,
)
from sockchat._doors.eager import write_now

__all__ = [
    "BrokerAddress",
    "BrokerUnavailable",
    "IRedis",
    "RedisClient",
    "RedisError",
    "ReplicaWait",
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
#: Seconds a sentinel has to answer (connect, AUTH, the question): the
#: Sentinel client spec's "a few hundred milliseconds", with room for a
#: busy machine.
SENTINEL_TIMEOUT = 1.0
#: Seconds between rounds of the sentinels when none can be listened to.
WATCH_RETRY = 1.0
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

    def command_now(self, *args: str | bytes | int | float) -> Deferred[Any]:
        """``command``, written at once with those before it of this turn,
        not at the turn's end: for a caller at the end of a turn itself
        (a batch made with ``callLater(0)``), whose own ``callLater(0)``
        would wait for another pass of the reactor."""

    def replicated(self) -> Deferred[None]:
        """Fires once the replicas that the URL asks for (``?wait=N``)
        have every write sent so far on this connection (at once if it
        asks for none); fails with ``BrokerUnavailable`` if they do not
        within its time."""

    def start(self) -> Deferred[None]:
        """Connect for the first time; fails with ``BrokerUnavailable``."""

    def stop(self) -> Deferred[None]:
        """Close for good; what is in flight fails with ``BrokerUnavailable``."""


@frozen
class ReplicaWait:
    """``?wait=N[&wait_ms=MS]``: a line counts as queued only once *replicas*
    replicas have it (Redis's ``WAIT``), within *timeout* seconds."""

    replicas: int
    timeout: float = 1.0


@frozen
class BrokerAddress:
    """Where the broker is and how to reach it (from ``parse_broker_url``).

    *scheme* is ``redis``, ``rediss`` (TLS), ``unix``, ``redis+sentinel``
    or ``rediss+sentinel``.  For ``unix``, *path* is the socket and
    *host*/*port* are unused.  For the sentinel schemes, *sentinels* are
    the sentinels to ask and *master* the name they know the master by
    (``at()`` gives the address of the server they name).
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
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    sentinel_password: str | None = None
    wait: ReplicaWait | None = None

    @property
    def tls(self) -> bool:
        return self.scheme in ("rediss", "rediss+sentinel")

    @property
    def sentinel(self) -> bool:
        """Whether the master is found through sentinels."""
        return self.scheme.endswith("+sentinel")

    @property
    def display(self) -> str:
        """The URL without its password, for logs and messages."""
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        if self.scheme == "unix":
            db = f"?db={self.db}" if self.db else ""
            return f"unix://{user}{self.path}{db}"
        if self.sentinel:
            hosts = ",".join(_host_port(host, port) for host, port in self.sentinels)
            master = quote(self.master, safe="")
            return f"{self.scheme}://{user}{hosts}/{master}/{self.db}"
        return f"{self.scheme}://{user}{_host_port(self.host, self.port)}/{self.db}"

    def at(self, host: str, port: int) -> BrokerAddress:
        """The address of the server at *host*:*port* that a sentinel named:
        this one's password, database and TLS files."""
        return evolve(
            self,
            scheme="rediss" if self.tls else "redis",
            host=host,
            port=port,
            sentinels=(),
            master="",
            sentinel_password=None,
        )

    def sentinel_at(self, host: str, port: int) -> BrokerAddress:
        """The address of one of the sentinels (TLS as the URL says, with
        ``?sentinel_password=`` if given)."""
        return evolve(
            self.at(host, port),
            db=0,
            username=None,
            password=self.sentinel_password,
            wait=None,
        )


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _masked(text: str) -> str:
    """*text* with any password in it (``:pw@``, ``password=`` or
    ``sentinel_password=``) replaced, for error messages."""
    text = re.sub(r"(?i)([?&](?:sentinel_)?password=)[^&#]*", r"\1***", text)
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


#: The URL forms, for messages.
_FORMS = (
    "redis://HOST:PORT/DB, rediss://HOST:PORT/DB, unix:///PATH or "
    "redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER[/DB]"
)
#: The query parameters each scheme takes.
_WAIT = {"wait", "wait_ms"}
_TLS = {"ca", "cert", "key"}
_ALLOWED = {
    "redis": _WAIT,
    "rediss": _TLS | _WAIT,
    "unix": {"db", "password"} | _WAIT,
    "redis+sentinel": {"sentinel_password"} | _WAIT,
    "rediss+sentinel": {"sentinel_password"} | _TLS | _WAIT,
}


def parse_broker_url(text: str) -> BrokerAddress:
    """The broker address a URL names; ``ValueError`` with one line otherwise.

    ``redis://[[user]:password@]host[:port][/db]``,
    ``rediss://...[?ca=ca.pem][&cert=me.pem&key=me.key]`` (TLS, certificate
    and host name verified, against *ca* if given, else the system's CAs),
    ``unix:///path/to/redis.sock[?db=N][&password=PW]``,
    ``redis+sentinel://[[user]:password@]host:port[,host:port...]/master[/db]``
    and ``rediss+sentinel://...`` (the master that the sentinels name; the
    password is the master's, ``?sentinel_password=`` the sentinels').
    Each takes ``?wait=N[&wait_ms=MS]`` (see ``ReplicaWait``).
    """
    url = _masked(text)
    try:
        parts = urlsplit(text)
    except ValueError:
        raise ValueError(f"--broker {url}: not a URL (expected {_FORMS})") from None
    scheme = parts.scheme.lower()
    if scheme not in _ALLOWED:
        raise ValueError(
            f"--broker {url}: the scheme must be redis://, rediss://, unix://, "
            "redis+sentinel:// or rediss+sentinel://"
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
    allowed = _ALLOWED[scheme]
    unknown = sorted(set(query) - allowed)
    if unknown:
        if set(unknown) <= _TLS and scheme in ("redis", "redis+sentinel"):
            raise ValueError(
                f"--broker {url}: ?{unknown[0]}= is for TLS: use "
                f"{scheme.replace('redis', 'rediss', 1)}://"
            )
        raise ValueError(
            f"--broker {url}: unknown parameter {unknown[0]}= (this URL takes "
            + ", ".join(f"{a}=" for a in sorted(allowed))
            + ")"
        )
    wait = _wait(url, query)
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
            wait=wait,
        )
    ca, cert, key = query.get("ca"), query.get("cert"), query.get("key")
    if bool(cert) != bool(key):
        raise ValueError(f"--broker {url}: ?cert= and ?key= go together")
    if scheme.endswith("+sentinel"):
        sentinels, master, db = _sentinel_parts(url, scheme, parts)
        address = BrokerAddress(
            scheme=scheme,
            db=db,
            username=username,
            password=password,
            sentinels=sentinels,
            master=master,
            sentinel_password=query.get("sentinel_password"),
            wait=wait,
            ca=ca or None,
            cert=cert or None,
            key=key or None,
        )
    else:
        host, port = _one_host(url, scheme, parts.netloc, DEFAULT_PORT)
        path = parts.path.strip("/")
        db = _number(url, "db", path, low=0, high=2**31 - 1) if path else 0
        address = BrokerAddress(
            scheme=scheme,
            host=host,
            port=port,
            db=db,
            username=username,
            password=password,
            wait=wait,
            ca=ca or None,
            cert=cert or None,
            key=key or None,
        )
    if address.tls:
        _tls_options(address.at("localhost", 1))  # each file's mistake is one line, now
    return address


def _one_host(url: str, scheme: str, netloc: str, default: int) -> tuple[str, int]:
    """The host and port of *netloc* (its userinfo dropped)."""
    hostinfo = netloc.rpartition("@")[2]
    try:
        parts = urlsplit(f"//{hostinfo}")
        port = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"--broker {url}: not a URL (expected {_FORMS})") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"--broker {url}: give the host: {scheme}://HOST:PORT/...")
    if port is None and hostinfo.endswith(":"):
        raise ValueError(f"--broker {url}: the port is empty")
    port = default if port is None else port
    if not 1 <= port <= 65535:
        raise ValueError(f"--broker {url}: the port must be from 1 to 65535")
    return host, port


def _sentinel_parts(
    url: str, scheme: str, parts: Any
) -> tuple[tuple[tuple[str, int], ...], str, int]:
    """The sentinels, the master's name and the db of a sentinel URL."""
    form = f"{scheme}://HOST:PORT[,HOST:PORT...]/MASTER[/DB]"
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts:
        raise ValueError(f"--broker {url}: give the sentinels: {form}")
    sentinels = []
    for item in hosts.split(","):
        if not item:
            raise ValueError(f"--broker {url}: an empty sentinel address: {form}")
        sentinels.append(_one_host(url, scheme, item, DEFAULT_SENTINEL_PORT))
    names = parts.path.strip("/").split("/")
    if not names[0]:
        raise ValueError(f"--broker {url}: give the master's name: {form}")
    if len(names) > 2:
        raise ValueError(
            f"--broker {url}: after the master's name comes only the db: {form}"
        )
    db = _number(url, "db", names[1], low=0, high=2**31 - 1) if len(names) > 1 else 0
    return tuple(sentinels), unquote(names[0]), db


def _wait(url: str, query: dict[str, str]) -> ReplicaWait | None:
    if "wait" not in query:
        if "wait_ms" in query:
            raise ValueError(f"--broker {url}: wait_ms= goes with wait=N (replicas)")
        return None
    replicas = _number(url, "wait= (replicas)", query["wait"], low=1, high=100)
    ms = _number(url, "wait_ms=", query.get("wait_ms", "1000"), low=1, high=60_000)
    return ReplicaWait(replicas, ms / 1000)


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
    elif isinstance(e, (RedisError, BrokerUnavailable, SentinelError)):
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


#: A command's words.
_Args = tuple[str | bytes | int | float, ...]


class _RedisProtocol(Protocol):
    """One connection: commands out, replies matched in order to a FIFO of
    Deferreds.

    Commands are pipelined by themselves: those sent in one turn of the
    reactor are written together, when the turn is over (a
    ``callLater(0)``, which runs before the reactor next waits), and sent
    at once (``eager.write_now``: one ``send``, rather than Twisted's
    queue and a pass more of the reactor).
    """

    def __init__(self, reactor: Any, keepalive: bool) -> None:
        self._reactor = reactor
        self._parser = new_reply_parser()
        self._pending: collections.deque[Deferred[Any]] = collections.deque()
        #: Commands of this turn not written yet, and the call that will.
        self._unsent: list[bytes] = []
        self._flush: IDelayedCall | None = None
        #: The command to send after all of this turn's (``send_last``),
        #: and who waits for its reply.
        self._last: tuple[_Args, list[Deferred[Any]]] | None = None
        self._keepalive = keepalive
        self._broken: ProtocolError | SentinelError | None = None
        self.open = False
        #: Where this connection goes (a sentinel URL's master, once found).
        self.where: Where | None = None
        #: Whether a READONLY answer means "the master moved": the
        #: connection is dropped, so that the client finds the new one.
        self.follow_readonly = False
        #: Called with each reply that answers no command (pub/sub).
        self.on_push: Callable[[Any], None] | None = None
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

    def send(
        self, args: tuple[str | bytes | int | float, ...], now: bool = False
    ) -> Deferred[Any]:
        data = encode_command(*args)
        # Cancelling only stops waiting: the reply, when it comes, is dropped.
        d: Deferred[Any] = Deferred(lambda _: None)
        self._pending.append(d)
        self._unsent.append(data)
        if now:  # with the rest of the turn so far, in order
            if self._flush is not None and self._flush.active():
                self._flush.cancel()
            self._write()
        elif self._flush is None:
            self._flush = self._reactor.callLater(0, self._write)
        return d

    def send_last(self, args: tuple[str | bytes | int | float, ...]) -> Deferred[Any]:
        """Send *args* once, after every other command of this turn, however
        often it is asked for in the turn; each asker gets the reply."""
        d: Deferred[Any] = Deferred(lambda _: None)
        if self._last is None:
            self._last = (args, [])
            if self._flush is None:
                self._flush = self._reactor.callLater(0, self._write)
        self._last[1].append(d)
        return d

    def _write(self) -> None:
        """Write this turn's commands, all in one."""
        self._flush = None
        if self._last is not None:
            args, askers = self._last
            self._last = None
            last: Deferred[Any] = Deferred(lambda _: None)
            last.addBoth(_tell, askers)
            self._pending.append(last)
            self._unsent.append(encode_command(*args))
        unsent, self._unsent = self._unsent, []
        if unsent and self.open:
            # Sent now, in this pass (one send, no epoll_ctl, no wake-up of
            # our own for it), as the doors send their answers: see eager.
            write_now(
                self.transport, unsent[0] if len(unsent) == 1 else b"".join(unsent)
            )

    def _drop_unsent(self, message: str) -> None:
        self._unsent = []
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        if self._last is not None:
            askers = self._last[1]
            self._last = None
            _tell(Failure(BrokerUnavailable(message)), askers)

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
                if self.on_push is not None:
                    self.on_push(reply)
                    continue
                self._break(ProtocolError("a reply to no command"))
                return
            d = self._pending.popleft()
            if (
                isinstance(reply, ErrorReply)
                and self.follow_readonly
                and is_readonly(reply.message)
            ):
                # This server was the master and is a replica now: the
                # command fails as a loss, and the client looks again.
                self._pending.appendleft(d)
                self._break(SentinelError(f"{self.where} is a replica now (READONLY)"))
                return
            if d.called:  # cancelled
                continue
            if isinstance(reply, ErrorReply):
                d.errback(RedisError(reply.message))
            else:
                d.callback(reply)

    def _break(self, problem: ProtocolError | SentinelError) -> None:
        self._broken = problem
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]  # ITCPTransport and TLS have it

    def fail_pending(self, message: str) -> None:
        self._drop_unsent(message)
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


def _tell(result: object, askers: list[Deferred[Any]]) -> None:
    """Give *result* (a reply or a Failure) to each of *askers*."""
    for d in askers:
        if d.called:  # cancelled
            continue
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)


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

    With a sentinel URL, each connection attempt first asks the sentinels
    where the master is, and checks it with ``ROLE`` (``sentinel.py`` says
    how); the client listens on one sentinel for ``+switch-master``, and
    treats a ``READONLY`` answer as a loss, so that it follows a failover
    by itself.  That it followed one is logged once per process.

    *endpoint*, *endpoint_for* and *rng* are for tests: by default
    endpoints are built from the addresses, and the jitter is random.
    """

    def __init__(
        self,
        reactor: Any,
        address: BrokerAddress,
        *,
        on_state: Callable[[bool], object] | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        endpoint: IStreamClientEndpoint | None = None,
        endpoint_for: Callable[[BrokerAddress, float], IStreamClientEndpoint]
        | None = None,
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
        self._endpoint_for = endpoint_for or (
            lambda where, timeout: broker_endpoint(reactor, where, timeout)
        )
        self._endpoint = endpoint
        if endpoint is None and not address.sentinel:
            self._endpoint = self._endpoint_for(address, connect_timeout)
        self._sentinels = SentinelList(address.sentinels)
        self._watch: Deferred[None] | None = None
        self._watching: _RedisProtocol | None = None
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

    def command_now(self, *args: str | bytes | int | float) -> Deferred[Any]:
        """``command``, written at once (see ``IRedis.command_now``)."""
        if self._proto is None or not self.connected:
            return self.command(*args)  # says why not
        return self._proto.send(args, now=True)

    def replicated(self) -> Deferred[None]:
        """With ``?wait=N`` on the URL: fires once N replicas have every
        write sent on this connection up to the end of this turn (Redis's
        ``WAIT``), or fails with ``BrokerUnavailable`` when they have not
        within ``wait_ms`` (``NotReplicated``).  Without it, fires at once.

        Call it in the same turn as the write it is for (``XADD``, say), on
        the same client: ``WAIT`` counts the writes of its own connection.
        All the calls of one turn share one ``WAIT``, sent after the turn's
        other commands, in the same write: it costs one command and one
        round trip between the master and its replicas per turn, during
        which the commands after it on this connection wait too.
        """
        wait = self.address.wait
        if wait is None:
            return succeed(None)
        ms = max(1, round(wait.timeout * 1000))

        def enough(replicas: object) -> None:
            if not isinstance(replicas, int) or replicas < wait.replicas:
                raise NotReplicated(self.display, wait.replicas, ms, replicas)

        if self._proto is None or not self.connected:
            return self.command("WAIT")  # fails, saying why
        said = self._proto.send_last(("WAIT", wait.replicas, ms))
        return said.addCallback(enough)

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
            _say_parser()

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
        if self._watching is not None:
            _let_go(self._watching)  # the watch ends with it
        if self._watch is not None:
            self._watch.cancel()
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
        """Connect and say hello (after asking the sentinels where, for a
        sentinel URL)."""
        if not self.address.sentinel:
            assert self._endpoint is not None
            return self._connect(self._endpoint, self.address, None)
        located = Deferred.fromCoroutine(self._locate())

        def connect(where: Where) -> Deferred[_RedisProtocol]:
            address = self.address.at(where.host, where.port)
            endpoint = self._endpoint_for(address, self._timeout)
            return self._connect(endpoint, address, where)

        return located.addCallback(connect)

    def _connect(
        self,
        endpoint: IStreamClientEndpoint,
        address: BrokerAddress,
        master: Where | None,
    ) -> Deferred[_RedisProtocol]:
        """Connect to *address* and say hello; the whole has one timeout.
        *master*: the server the sentinels named, checked with ``ROLE``."""
        keepalive = address.scheme != "unix"
        reactor = self._reactor
        factory = Factory.forProtocol(lambda: _RedisProtocol(reactor, keepalive))
        factory.noisy = False  # no "Starting factory <...>" line per connection
        d: Deferred[Any] = endpoint.connect(factory)
        d.addCallback(self._hello, master)
        d.addTimeout(self._timeout, self._reactor)
        return d

    def _hello(
        self, proto: _RedisProtocol, master: Where | None
    ) -> Deferred[_RedisProtocol]:
        address = self.address
        commands: list[tuple[str | int, ...]] = []
        if address.password is not None:
            if address.username:
                commands.append(("AUTH", address.username, address.password))
            else:
                commands.append(("AUTH", address.password))
        if address.db:
            commands.append(("SELECT", address.db))
        if master is not None:
            proto.where = master
            proto.follow_readonly = True
            commands.append(("ROLE",))
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
            if not isinstance(result, Failure) and master is not None:
                try:
                    checked_role(result[-2], master)  # type: ignore[index]  # a list
                except SentinelError:
                    result = Failure()
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

    # -- sentinels ---------------------------------------------------------

    async def _locate(self) -> Where:
        """Where the sentinels say the master is (the spec's steps 1 and
        2): each is asked in turn; the first that answers is asked first
        next time.  ``SentinelError`` with one line if none can say."""
        survey = Survey(self.address.master)
        for sentinel in self._sentinels:
            try:
                proto = await self._sentinel_connection(sentinel)
                asked = proto.send(get_master_command(self.address.master))
            except defer.CancelledError:
                raise
            except Exception as e:  # refused, timed out, not resolved, AUTH...
                survey.failed(sentinel, self._why_sentinel(Failure(e), sentinel))
                continue
            asked.addTimeout(SENTINEL_TIMEOUT, self._reactor)
            try:
                reply = await asked
            except (defer.TimeoutError, RedisError, BrokerUnavailable) as e:
                _let_go(proto)
                # A lost connection says best why it was lost (TLS, say).
                lost = isinstance(e, BrokerUnavailable) and proto.lost_reason
                why = proto.lost_reason if lost else Failure(e)
                survey.failed(sentinel, self._why_sentinel(why, sentinel))
                continue
            except defer.CancelledError:
                _let_go(proto)
                raise
            _let_go(proto)
            self._sentinels.answered(sentinel)
            where = survey.answered(sentinel, reply)
            if where is not None:
                return where
        raise survey.error()

    def _why_sentinel(self, failure: Failure | None, sentinel: Where) -> str:
        address = self.address.sentinel_at(sentinel.host, sentinel.port)
        return _why(
            failure or Failure(BrokerUnavailable("lost")), address, SENTINEL_TIMEOUT
        )

    async def _sentinel_connection(self, sentinel: Where) -> _RedisProtocol:
        """A connection to *sentinel*, authenticated if the URL says so."""
        address = self.address.sentinel_at(sentinel.host, sentinel.port)
        reactor = self._reactor
        factory = Factory.forProtocol(lambda: _RedisProtocol(reactor, True))
        connecting: Deferred[Any] = self._endpoint_for(
            address, SENTINEL_TIMEOUT
        ).connect(factory)
        connecting.addTimeout(SENTINEL_TIMEOUT, reactor)
        proto: _RedisProtocol = await connecting
        proto.where = sentinel
        if address.password is not None:
            auth = proto.send(("AUTH", address.password))
            auth.addTimeout(SENTINEL_TIMEOUT, reactor)
            try:
                await auth
            except Exception:
                _let_go(proto)
                raise
        return proto

    def _watch_sentinels(self) -> None:
        """Listen for ``+switch-master`` on one sentinel, then the next
        when it is lost, for as long as the client runs."""

        async def watch() -> None:
            while not self._ended():
                for sentinel in self._sentinels:
                    try:
                        proto = await self._sentinel_connection(sentinel)
                    except defer.CancelledError:
                        raise
                    except Exception:  # refused, timed out, not resolved...
                        continue
                    self._watching = proto
                    proto.on_push = self._pushed
                    subscribed = proto.send(("SUBSCRIBE", SWITCH_MASTER))
                    subscribed.addTimeout(SENTINEL_TIMEOUT, self._reactor)
                    try:
                        await subscribed
                    except (defer.TimeoutError, RedisError, BrokerUnavailable):
                        _let_go(proto)
                        continue
                    except defer.CancelledError:
                        _let_go(proto)
                        raise
                    await proto.closed  # until it is lost, or stop() ends it
                    if self._ended():
                        return
                await deferLater(self._reactor, WATCH_RETRY, lambda: None)

        def ended(failure: Failure) -> None:
            if not self._ended():
                log.failure("listening to the sentinels failed", failure)

        self._watch = Deferred.fromCoroutine(watch())
        self._watch.addErrback(ended)

    def _ended(self) -> bool:
        return self._stopping

    def _pushed(self, message: Any) -> None:
        where = switched_to(message, self.address.master)
        if where is None:
            return
        proto = self._proto
        if proto is not None and proto.where == where:
            return  # already there
        if proto is not None:
            # What is in flight fails as a loss, and the client looks again.
            proto._break(SentinelError(f"the sentinels moved the master to {where}"))
        elif self._retry is not None and self._retry.active():
            self._retry.reset(0)  # look now, not after the backoff

    def _up(self, proto: _RedisProtocol) -> None:
        if self._stopping:
            proto.transport.loseConnection()  # type: ignore[union-attr]  # connected: it has one
            return
        self._proto = proto
        proto.on_lost = self._lost
        self.connected = True
        self._failures = 0
        if self.address.sentinel and proto.where is not None:
            _followed(self.display, self.address.master, proto.where)
            if self._watch is None:
                self._watch_sentinels()

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


#: The master each sentinel URL was last seen at, in this process: a
#: process's connections follow a failover each, and it is said once.
_MASTERS: dict[str, Where] = {}


def _followed(display: str, master: str, where: Where) -> None:
    """A connection reached *master* at *where*: log it if it moved."""
    before = _MASTERS.get(display)
    _MASTERS[display] = where
    if before is not None and before != where:
        log.warn(
            "the broker at {broker} failed over: its master {master} is now "
            "{where} (it was {before}); following it",
            broker=display,
            master=master,
            where=str(where),
            before=str(before),
        )


def _let_go(proto: _RedisProtocol) -> None:
    """Close *proto*'s connection at once, if it is open."""
    if proto.open:
        assert proto.transport is not None
        proto.transport.abortConnection()  # type: ignore[attr-defined]  # ITCPTransport and TLS have it


_PARSER_SAID: list[bool] = []


def _say_parser() -> None:
    """Log once per process which parser reads the broker's replies."""
    if _PARSER_SAID:
        return
    _PARSER_SAID.append(True)
    if HIREDIS:
        log.info("the broker's replies are parsed by hiredis")
    else:
        log.info(
            "the broker's replies are parsed in Python; for a faster "
            "parser, install hiredis (pip install 'hiredis>=3,<4', from a "
            "clone or from PyPI alike)"
        )
