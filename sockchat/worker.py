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
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.logger import Logger

from sockchat._broker.join import BROKER_HELP, join, positive, start_logging
from sockchat._broker.wire import WORKERS
from sockchat._broker.workers import WorkerHandler
from sockchat._operations.loading import ResponderNotLoaded, load_responder
from sockchat._responders.contract import IResponder

__all__ = ["main"]

PROG = "sockchat.worker"

log = Logger(namespace=PROG)

#: Lines a worker answers at once, by default.  Measured (docs/broker.md,
#: benchmarks/concurrency.py): two workers whose bot takes 25 ms answer at
#: most 2 × N ÷ 0.025 lines a second, 320 with 4, whatever the machine; with
#: 32, the CPU is the limit first, and a batch of lines costs Redis fewer
#: commands a line.  More only lets a worker that dies hold more lines
#: until they are taken over.
CONCURRENCY = 32


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
        help=BROKER_HELP,
    )
    parser.add_argument(
        "--concurrency",
        type=positive("--concurrency"),
        default=CONCURRENCY,
        metavar="N",
        help=f"lines this worker answers at once (default {CONCURRENCY}): N ÷ the "
        "responder's time per answer caps the lines a second it can answer",
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
    joined = await join(
        reactor,
        prog=PROG,
        url=options.broker,
        group=WORKERS,
        handler=lambda broker, outbox: WorkerHandler(responder, outbox),
        capacity=options.concurrency,
        sign=lambda name: f"worker {name}",
    )
    log.info(
        "worker {name} on {broker}: {responder} answers, up to {n} lines at once",
        name=joined.consumer.name,
        broker=joined.broker.display,
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
