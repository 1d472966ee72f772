"""``--broker``: the twistd shell around the instance side of the broker.

``register`` runs before the reactor does, with a plain blocking socket, so
that a broker that cannot be reached, refuses the password or speaks another
protocol stops ``twistd`` with one line and exit status 1, before it
listens.  ``BrokerService`` then keeps the two connections (commands, and
the inbox's blocking read) for as long as the server runs; they reconnect by
themselves.
"""

from __future__ import annotations

import json
import socket
import ssl
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from sockchat._broker.instance import BrokerInstance
from sockchat._broker.redis import BrokerAddress, RedisClient
from sockchat._broker.resp import ErrorReply, ReplyParser, encode_command
from sockchat._broker.wire import HEARTBEAT_TTL, PROTOCOL, Keys

__all__ = ["BrokerService", "register"]

log = Logger(namespace="sockchat.broker")

#: Seconds to reach the broker at start before giving up.
CONNECT_TIMEOUT = 5.0


class BrokerRefused(Exception):
    """The broker answered, but not as it must; ``str()`` is one line."""


def _open(address: BrokerAddress, timeout: float) -> socket.socket:
    if address.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address.path)
        return sock
    sock = socket.create_connection((address.host, address.port), timeout)
    if not address.tls:
        return sock
    context = ssl.create_default_context(cafile=address.ca)
    if address.cert:
        context.load_cert_chain(address.cert, address.key or address.cert)
    return context.wrap_socket(sock, server_hostname=address.host)


class _Blocking:
    """Commands over a blocking socket, one reply at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = ReplyParser()
        self.replies: list[Any] = []

    def call(self, *args: str | bytes | int | float) -> Any:
        self.sock.sendall(encode_command(*args))
        while not self.replies:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the broker closed the connection")
            self.replies.extend(self.parser.feed(data))
        reply = self.replies.pop(0)
        if isinstance(reply, ErrorReply):
            raise BrokerRefused(str(reply))
        return reply


def register(
    address: BrokerAddress,
    about: dict[str, Any],
    *,
    keys: Keys | None = None,
    timeout: float = CONNECT_TIMEOUT,
) -> str:
    """Reach the broker, check its protocol, and take a name for this
    instance (``i1``, ``i2``...).  ``SystemExit`` with one line if any of
    it fails."""
    keys = keys or Keys()
    where = f"sockchat: cannot use the broker at {address.display}"
    try:
        sock = _open(address, timeout)
    except ssl.SSLCertVerificationError as e:
        raise SystemExit(
            f"{where}: its certificate was refused ({e.verify_message})"
        ) from None
    except ssl.SSLError as e:
        raise SystemExit(f"{where}: TLS failed ({e.reason or e})") from None
    except OSError as e:
        raise SystemExit(f"{where}: {e.strerror or e}") from None
    try:
        redis = _Blocking(sock)
        if address.password is not None:
            if address.username:
                redis.call("AUTH", address.username, address.password)
            else:
                redis.call("AUTH", address.password)
        if address.db:
            redis.call("SELECT", address.db)
        redis.call("SET", keys.protocol, PROTOCOL, "NX")
        theirs = redis.call("GET", keys.protocol)
        if theirs != str(PROTOCOL).encode():
            shown = theirs.decode(errors="replace") if theirs else "none"
            raise SystemExit(
                f"{where}: it holds broker protocol {shown}, and this sockchat "
                f"speaks {PROTOCOL}; run the same sockchat version everywhere"
            )
        number = redis.call("INCR", keys.instance_counter)
        name = f"i{number}"
        redis.call(
            "SET",
            keys.instance(name),
            json.dumps({"v": PROTOCOL, "name": name, **about}),
            "PX",
            int(HEARTBEAT_TTL * 1000),
        )
        redis.call("SADD", keys.instances, name)
    except BrokerRefused as e:
        raise SystemExit(f"{where}: it said {e}") from None
    except (OSError, ConnectionError) as e:
        raise SystemExit(f"{where}: {getattr(e, 'strerror', None) or e}") from None
    finally:
        sock.close()
    return name


class BrokerService(Service):
    """Keep this instance's two broker connections, and its heartbeat."""

    name = "broker"

    def __init__(
        self, reactor: Any, address: BrokerAddress, name: str, about: dict[str, Any]
    ) -> None:
        self._reactor = reactor
        # The instance logs the broker's loss and return, once, for both.
        self._redis = RedisClient(reactor, address, logged=False)
        self._inbox = RedisClient(reactor, address, logged=False)
        self.instance = BrokerInstance(
            self._redis,
            self._inbox,
            reactor,
            name,
            address.display,
            about=about,
        )

    def startService(self) -> None:
        super().startService()
        started = [self._redis.start(), self._inbox.start()]

        def running(results: list[tuple[bool, Any]]) -> None:
            for ok, value in results:
                if not ok:
                    log.warn(
                        "the broker at {broker} could not be reached at start "
                        "({why}); trying again",
                        broker=self.instance.display,
                        why=value.getErrorMessage(),
                    )
            self.instance.start()

        DeferredList(started, consumeErrors=True).addCallback(running)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        said = self.instance.stop()

        def close(_: object) -> Deferred[Any]:
            return DeferredList(
                [self._redis.stop(), self._inbox.stop()], consumeErrors=True
            )

        return said.addBoth(close)
