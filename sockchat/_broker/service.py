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
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from sockchat._broker.blocking import BlockingError, BlockingRefused, connect
from sockchat._broker.instance import BrokerInstance
from sockchat._broker.redis import BrokerAddress, RedisClient
from sockchat._broker.wire import HEARTBEAT_TTL, PROTOCOL, Keys

__all__ = ["BrokerService", "register"]

log = Logger(namespace="sockchat.broker")

#: Seconds to reach the broker at start before giving up.
CONNECT_TIMEOUT = 5.0


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
        redis = connect(address, timeout)
    except BlockingError as e:
        raise SystemExit(f"{where}: {e}") from None
    try:
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
    except BlockingRefused as e:
        raise SystemExit(f"{where}: it said {e}") from None
    except (OSError, ConnectionError) as e:
        raise SystemExit(f"{where}: {getattr(e, 'strerror', None) or e}") from None
    finally:
        redis.close()
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
