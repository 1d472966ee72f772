"""The broker's Redis client: its URL, the interface above it, the Twisted door.

Everything that talks to the broker uses ``IRedis``: one method,
``command(*args)``, whose Deferred fires with the reply (integer -> ``int``,
bulk string -> ``bytes``, null -> ``None``, array -> ``list``, status ->
``str``) or fails with ``RedisError`` (the server said no) or
``BrokerUnavailable`` (there is no connection, or it was lost while the
command was in flight).  ``RedisClient`` is the real one;
``tests/fakeredis.py`` holds an in-memory one with the same interface.

Why our own Redis client
------------------------
sockchat needs a dozen commands, pipelined on one connection, with one
precise behaviour when the broker goes away: every command in flight fails
at once with ``BrokerUnavailable``, new commands fail fast until the
connection is back, the client reconnects by itself with backoff, and the
loss and the return are each said once.  txredisapi, the Twisted-native
library, is untyped (we check with ``mypy --strict``), its ``rediss``
support does not verify the server's certificate by default, and its
reconnection keeps commands waiting rather than failing them.  RESP2 is a
small, stable protocol: the codec (``sockchat._resp``) is a sans-I/O parser
of a few hundred lines with property tests, and this door is a thin
Twisted protocol around it.  TLS is Twisted's own ``optionsForClientTLS``,
which verifies the certificate and the host name, as the sockchat client
does.
"""

from __future__ import annotations

import typing
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from attrs import frozen
from twisted.internet.defer import Deferred

__all__ = [
    "BrokerAddress",
    "BrokerUnavailable",
    "IRedis",
    "RedisError",
    "parse_broker_url",
]

#: Redis's port when a URL gives none.
DEFAULT_PORT = 6379


class BrokerUnavailable(Exception):
    """No connection to the broker, or it was lost while a command waited.

    The message is one line and names the broker URL without its password.
    """


class RedisError(Exception):
    """The server answered a command with an error; ``str(e)`` is its text
    (``WRONGTYPE ...``, ``NOSCRIPT ...``, ``BUSYGROUP ...``)."""


class IRedis(typing.Protocol):
    """What everything above the client uses: a Redis connection."""

    connected: bool

    def command(self, *args: str | bytes | int | float) -> Deferred[Any]: ...


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
    """*text* with any password in it replaced, for error messages."""
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

    from ._tlsfiles import check_certificate, check_pair

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
