"""``--broker``: the twistd shell around the instance side of the broker.

``register_blocking`` (``sockchat._broker.redisbroker``) runs before the
reactor does, with a plain blocking socket, so that a broker that cannot
be reached, refuses the password or speaks another protocol stops
``twistd`` with one line and exit status 1, before it listens.
``BrokerService`` then keeps the instance's two connections (commands, and
the inbox's read that waits; a third, to follow the operators' queue, for
a desk in this process) for as long as the server runs; they reconnect by
themselves.

Without ``--broker``, a desk still meets its instance at a broker: the one
in this process's memory (``LocalBrokerService``).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from sockchat._broker.instance import BrokerInstance
from sockchat._broker.memory import MemoryHub
from sockchat._broker.redis import BrokerAddress, RedisClient
from sockchat._broker.redisbroker import RedisBroker

__all__ = ["BrokerService", "LocalBrokerService"]

log = Logger(namespace="sockchat.broker")


class BrokerService(Service):
    """Keep this instance's broker connections, and its heartbeat."""

    name = "broker"

    def __init__(
        self,
        reactor: Any,
        address: BrokerAddress,
        name: str,
        about: dict[str, Any],
        *,
        follow: bool = False,
    ) -> None:
        # The instance logs the broker's loss and return, once, for all.
        self._connections = [
            RedisClient(reactor, address, logged=False)
            for _ in range(3 if follow else 2)
        ]
        commands, inbox = self._connections[:2]
        work = self._connections[2] if follow else None
        self.broker = RedisBroker(reactor, commands, inbox=inbox, work=work)
        self.instance = BrokerInstance(self.broker, reactor, name, about=about)

    def startService(self) -> None:
        super().startService()
        started = [connection.start() for connection in self._connections]

        def running(results: list[tuple[bool, Any]]) -> None:
            for ok, value in results:
                if not ok:
                    log.warn(
                        "the broker at {broker} could not be reached at start "
                        "({why}); trying again",
                        broker=self.broker.display,
                        why=value.getErrorMessage(),
                    )
            self.instance.start()

        DeferredList(started, consumeErrors=True).addCallback(running)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        said = self.instance.stop()

        def close(_: object) -> Deferred[None]:
            return self.broker.close()

        return said.addBoth(close)


class LocalBrokerService(Service):
    """The broker of one process (no ``--broker``): this instance and the
    desk meet at a ``MemoryHub``, as instances and desks meet at Redis."""

    name = "broker"

    def __init__(self, reactor: Any, about: dict[str, Any]) -> None:
        self.hub = MemoryHub(reactor)
        self.broker = self.hub.broker(display="this process's memory")
        self.hub.register_instance()  # i1: the memory broker answers at once
        self.instance = BrokerInstance(self.broker, reactor, "i1", about=about)

    def startService(self) -> None:
        super().startService()
        self.instance.start()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return self.instance.stop()
