"""``python -m sockchat.worker --broker URL package.module:name``: a bot, elsewhere.

Runs any responder that ``twistd sockchat --responder`` takes (a class, a
factory, a plain ``respond(conversation, text)`` function, ``async def``)
for the instances that run ``--broker URL --responder workers``.  Each
answer goes to the instance that holds the client.  Any number of workers
share the lines, each answering up to ``--concurrency`` at once.

The responder's ``started`` and ``ended`` hooks run in the worker that
takes those events, which need not be the one that answers a
conversation's lines: state that must live across workers (who is
talking, what was said) is the responder's business, in a database or the
broker.  The ``IConversation`` its hooks get sends ``notify`` and ``end``
to the client's instance; a line returned by ``started`` is said first.

A responder that raises: the client gets ``!error responder-failed`` and
its turn back; the traceback is in this worker's log.  A worker that is
killed mid-answer: another takes the line after ``CLAIM_AFTER`` seconds
(the client's ``--answer-timeout`` still runs); quitting (Ctrl-C, SIGTERM)
hands it back at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    formatEvent,
    globalLogBeginner,
)
from zope.interface import provider

from sockchat._broker.consumer import (
    Consumer,
    ConsumerError,
    WorkerHandler,
    open_broker,
)
from sockchat._broker.redis import BrokerUnavailable, RedisError
from sockchat._broker.wire import WORKERS, Keys
from sockchat._operations.loading import ResponderNotLoaded, load_responder
from sockchat._responders.contract import IResponder

__all__ = ["main", "positive", "start_logging"]

PROG = "sockchat.worker"

log = Logger(namespace=PROG)


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


def start_logging(prog: str) -> None:
    """Log to stderr, one line an event (ours from info, Twisted's from
    warn), with a traceback for a failure."""

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        level = event.get("log_level")
        ours = str(event.get("log_namespace", "")).startswith("sockchat")
        if level is None or level < (LogLevel.info if ours else LogLevel.warn):
            return  # Twisted's own chatter (factories starting) is not for us
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback().rstrip("\n")
        sys.stderr.write(f"{prog}: {text}\n")
        sys.stderr.flush()

    globalLogBeginner.beginLoggingTo([observe], redirectStandardIO=False)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {PROG}",
        description=(
            "Answer the clients of every sockchat instance that runs "
            "--broker URL --responder workers, with a responder."
        ),
    )
    parser.add_argument(
        "--broker",
        required=True,
        metavar="URL",
        help="the broker: redis://[:password@]host[:port][/db], rediss://..., "
        "unix:///path/to/redis.sock",
    )
    parser.add_argument(
        "--concurrency",
        type=positive("--concurrency"),
        default=4,
        metavar="N",
        help="lines this worker answers at once (default 4)",
    )
    parser.add_argument(
        "responder",
        metavar="package.module:name",
        help="the responder, as twistd sockchat --responder takes it",
    )
    return parser.parse_args(argv)


def load(reference: str) -> IResponder:
    """The responder, or exit with the loader's one line, said as ours."""
    try:
        return load_responder(reference)
    except ResponderNotLoaded as e:
        raise SystemExit(f"{PROG}: {e}") from None


async def run(reactor: Any, options: argparse.Namespace) -> None:
    responder = load(options.responder)
    keys = Keys()
    holder: list[Consumer] = []

    def state(up: bool) -> None:
        if holder:
            holder[0].broker_state(up)

    try:
        broker = await open_broker(reactor, options.broker, keys, state)
    except ConsumerError as e:
        raise SystemExit(f"{PROG}: {e}") from None

    def send(*args: Any, **fields: Any) -> None:
        consumer.send(*args, **fields)

    handler = WorkerHandler(responder, send)
    consumer = Consumer(
        clock=reactor,
        redis=broker.shared,
        blocking=broker.blocking,
        group=WORKERS,
        handler=handler,
        capacity=options.concurrency,
        keys=keys,
    )
    consumer.by = f"worker {consumer.name}"
    holder.append(consumer)

    async def quit() -> None:
        await consumer.stop()
        await broker.stop()

    try:
        await consumer.start()
    except (BrokerUnavailable, RedisError) as e:
        await broker.stop()
        raise SystemExit(
            f"{PROG}: cannot join the queue at {broker.display}: {e}"
        ) from None
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: Deferred.fromCoroutine(quit())
    )
    log.info(
        "worker {name} on {broker}: {responder} answers, up to {n} lines at once",
        name=consumer.name,
        broker=broker.display,
        responder=options.responder,
        n=options.concurrency,
    )
    await Deferred()  # until the reactor stops (Ctrl-C, SIGTERM)


def main(argv: Sequence[str] | None = None) -> None:
    options = parse(argv)
    start_logging(PROG)
    react(lambda reactor: Deferred.fromCoroutine(run(reactor, options)))


if __name__ == "__main__":
    main()
