"""What the consumer processes share: ``python -m sockchat.operator`` and
``python -m sockchat.worker`` start up the same way (``join``), log the
same way (``start_logging``) and check their options the same way
(``positive``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TextIO, cast

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.logger import (
    ILogObserver,
    LogEvent,
    LogLevel,
    formatEvent,
    globalLogBeginner,
)
from zope.interface import provider

from sockchat._broker.consumer import Consumer, Handler, Outbox, consumer_name
from sockchat._broker.interface import BrokerRefused, BrokerUnavailable, IBroker
from sockchat._broker.redisbroker import connect

__all__ = [
    "BROKER_HELP",
    "Joined",
    "join",
    "positive",
    "start_logging",
    "stderr_observer",
]

#: ``--broker``'s help, the same for every consumer.
BROKER_HELP = (
    "the broker: redis://[:password@]host[:port][/db], rediss://..., "
    "unix:///path/to/redis.sock, or, for Redis Sentinel, "
    "redis+sentinel://host:port[,host:port...]/master[/db] (and "
    "rediss+sentinel://...)"
)


def positive(option: str) -> Callable[[str], int]:
    """An argparse type: a whole number, 1 or more."""

    def check(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(
                f"{text} is not a whole number of 1 or more"
            )
        return int(text)

    check.__name__ = option  # argparse names the option in its error
    return check


def stderr_observer(prog: str, out: TextIO | None = None) -> ILogObserver:
    """One line an event on *out* (default: stderr), after ``prog: ``:
    ours from info, Twisted's from warn, with a traceback for a failure.

    A line that begins with the last part of *prog* already (the desk's
    ``desk: alice logged in``, said so under twistd, where several doors
    log together) says it once: ``sockchat.desk: alice logged in``.
    """
    own = f"{prog.rpartition('.')[2]}: "

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        level = event.get("log_level")
        ours = str(event.get("log_namespace", "")).startswith("sockchat")
        if level is None or level < (LogLevel.info if ours else LogLevel.warn):
            return  # Twisted's own chatter (factories starting) is not for us
        text = formatEvent(event).removeprefix(own)
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback().rstrip("\n")
        stream = out or sys.stderr
        stream.write(f"{prog}: {text}\n")
        stream.flush()

    return cast(ILogObserver, observe)


def start_logging(prog: str) -> None:
    """Log to stderr (``stderr_observer``)."""
    globalLogBeginner.beginLoggingTo([stderr_observer(prog)], redirectStandardIO=False)


@define(eq=False)
class Joined:
    """A consumer process, in its queue: its broker, consumer and handler."""

    broker: IBroker
    consumer: Consumer
    handler: Handler
    _quitting: Deferred[None] | None = field(default=None, init=False)

    def quit(self) -> Deferred[None]:
        """Hand back what it holds, say it is gone, and close the broker
        (once, however often it is asked)."""
        if self._quitting is None:
            self._quitting = Deferred.fromCoroutine(self._quit())
        return self._quitting

    async def _quit(self) -> None:
        self.handler.stop()
        await self.consumer.stop()
        await self.broker.close()


async def join(
    reactor: Any,
    *,
    prog: str,
    url: str,
    group: str,
    handler: Callable[[IBroker, Outbox], Handler],
    capacity: int,
    display: str = "",
    sign: Callable[[str], str] = str,
) -> Joined:
    """Reach the broker at *url*, make the handler (``handler(broker,
    outbox)``) and the consumer of *group*, start both (the handler first),
    and hand back what is held when the reactor stops.

    *display* is the name others see; ``sign(name)`` what answers are
    signed with (*name* is the consumer's unique name).  Every way this
    fails is ``SystemExit`` with one line that begins with *prog*.
    """
    try:
        broker = await connect(reactor, url, work=True)
    except ValueError as e:  # it names --broker and the URL itself
        raise SystemExit(f"{prog}: {e}") from None
    except (BrokerUnavailable, BrokerRefused) as e:
        raise SystemExit(f"{prog}: {e}") from None
    outbox = Outbox(broker, group, reactor)
    made = handler(broker, outbox)
    name = consumer_name()
    consumer = Consumer(
        clock=reactor,
        broker=broker,
        group=group,
        handler=made,
        outbox=outbox,
        name=name,
        display=display,
        by=sign(name),
        capacity=capacity,
    )
    joined = Joined(broker, consumer, made)
    try:
        await made.start()  # the clients first, then their lines
        await consumer.start()
    except (BrokerUnavailable, BrokerRefused) as e:
        await broker.close()
        raise SystemExit(
            f"{prog}: cannot join the queue at {broker.display}: {e}"
        ) from None
    reactor.addSystemEventTrigger("before", "shutdown", joined.quit)
    return joined
