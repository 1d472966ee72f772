"""``python -m sockchat.desk``: the desk's accounts file, and a desk of its own.

``passwd FILE NAME`` adds an operator, or changes the password (and, with
``--display``, the display name) of one.  The password is asked twice
without echo at a terminal; piped in, the first line of stdin is the
password.  It is stored as an scrypt hash (docs/desk.md), never as text,
and the file is replaced atomically, readable by its owner only (0600).
``remove FILE NAME`` takes an operator out.

``serve --broker URL --accounts FILE`` serves the desk in a process of its
own, for every instance that shares the broker: the desk that ``twistd
sockchat --desk PORT`` serves beside its clients, on a machine (or behind
a firewall) of its own, with the same ``--allow`` and ``--deny`` rules.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from twisted.internet.defer import Deferred

from sockchat._broker.interface import BrokerRefused, BrokerUnavailable
from sockchat._broker.join import BROKER_HELP, positive, start_logging
from sockchat._core.defaults import DEFAULT_MAX_LINE
from sockchat._desk.accounts import (
    DEFAULT_COST,
    LN_RANGE,
    MAX_PASSWORD,
    MIN_PASSWORD,
    Account,
    AccountsError,
    AccountsFile,
    Cost,
    check_display,
    check_name,
    hash_password,
    remove_account,
    write_account,
)
from sockchat._desk.canned import Canned, CannedError, load_canned
from sockchat._desk.model import DEFAULT_HOLD
from sockchat._doors.tlsfiles import TLSFileError

__all__ = ["main"]

PROG = "sockchat.desk"


class _Refused(Exception):
    """What the user asked for cannot be done; ``str()`` is one line."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {PROG}",
        description="Manage the accounts of the operators' desk "
        "(twistd sockchat --desk PORT --accounts FILE).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    passwd = commands.add_parser(
        "passwd",
        help="add an operator, or change one's password",
        description="Add operator NAME to FILE (made 0600 if new), or change "
        "its password. The password is asked twice without echo; piped, the "
        "first line of stdin is the password.",
    )
    passwd.add_argument("file", metavar="FILE")
    passwd.add_argument("name", metavar="NAME")
    passwd.add_argument(
        "--display",
        metavar="TEXT",
        help="the name clients and other operators see (default: the one it "
        "had, or NAME; asked for at a terminal)",
    )
    passwd.add_argument(
        "--cost",
        type=int,
        default=DEFAULT_COST.ln,
        metavar="LN",
        help=f"scrypt's N as a power of two, {LN_RANGE.start} to "
        f"{LN_RANGE.stop - 1} (default {DEFAULT_COST.ln}: 32 MiB per login; "
        "each step doubles the memory and the time)",
    )
    remove = commands.add_parser("remove", help="take an operator out of FILE")
    remove.add_argument("file", metavar="FILE")
    remove.add_argument("name", metavar="NAME")
    serve = commands.add_parser(
        "serve",
        help="serve the desk for every instance of a broker",
        description="Serve the operators' desk in this process, for the clients "
        "of every instance that shares the broker (twistd sockchat --broker URL "
        "--responder operators, workers, or a bot that hands over).",
    )
    serve.add_argument("--broker", required=True, metavar="URL", help=BROKER_HELP)
    serve.add_argument(
        "--accounts",
        required=True,
        metavar="FILE",
        help="the operators' accounts, made with: python -m sockchat.desk passwd",
    )
    serve.add_argument(
        "--desk",
        default="8081",
        metavar="PORT|ENDPOINT",
        help="where to serve it: a port number (on 127.0.0.1) or a server "
        "endpoint description, e.g. ssl:8443:privateKey=key.pem:certKey=cert.pem "
        "(default 8081)",
    )
    serve.add_argument(
        "--canned", metavar="FILE", help="canned answers: KEYWORD TEXT lines"
    )
    serve.add_argument(
        "--hold",
        type=positive("--hold"),
        default=DEFAULT_HOLD,
        metavar="N",
        help=f"conversations each operator may hold at once (default {DEFAULT_HOLD})",
    )
    serve.add_argument(
        "--anonymous",
        action="store_true",
        help="do not tell a client who answers it",
    )
    for kind, what in (("allow", "admit only"), ("deny", "refuse")):
        serve.add_argument(
            f"--{kind}",
            dest="ranges",
            action="append",
            default=[],
            type=_written(kind),
            metavar="CIDR",
            help=f"{what} addresses in this range at the desk (repeatable), "
            f"as twistd sockchat's --{kind}",
        )
    serve.add_argument(
        "--max-line",
        type=positive("--max-line"),
        default=DEFAULT_MAX_LINE,
        metavar="BYTES",
        help=f"the longest answer, in bytes (default {DEFAULT_MAX_LINE}: the "
        "instances' --max-line)",
    )
    return parser


def _written(kind: str) -> Callable[[str], tuple[str, str]]:
    """An argparse type: ``--allow`` and ``--deny`` ranges go to one list,
    in the order written (``access_rules``)."""

    def written(text: str) -> tuple[str, str]:
        return kind, text

    written.__name__ = f"--{kind}"
    return written


def _read_password(stdin: TextIO, ask: Callable[[str], str]) -> str:
    if stdin.isatty():
        first = ask("Password: ")
        if ask("Again: ") != first:
            raise _Refused("the two passwords differ; nothing was changed")
        password = first
    else:
        password = stdin.readline().removesuffix("\n").removesuffix("\r")
    if len(password) < MIN_PASSWORD:
        raise _Refused(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise _Refused(f"a password has at most {MAX_PASSWORD} characters")
    return password


def _display(
    options: argparse.Namespace, previous: Account | None, stdin: TextIO
) -> str:
    default = previous.display if previous is not None else options.name
    display: str = options.display if options.display is not None else default
    if options.display is None and stdin.isatty():
        display = input(f"Display name [{default}]: ").strip() or default
    problem = check_display(display)
    if problem is not None:
        raise _Refused(problem)
    return display


def _passwd(options: argparse.Namespace, stdin: TextIO, out: TextIO) -> None:
    problem = check_name(options.name)
    if problem is not None:
        raise _Refused(problem)
    cost = Cost(ln=options.cost, r=DEFAULT_COST.r, p=DEFAULT_COST.p)
    problem = cost.problem()
    if problem is not None:
        raise _Refused(f"--cost: {problem}")
    accounts = AccountsFile(options.file)
    try:
        previous = accounts.load().get(options.name)
    except AccountsError as e:
        if "no such file" not in str(e) and "no accounts" not in str(e):
            raise
        previous = None
    display = _display(options, previous, stdin)
    password = _read_password(stdin, getpass.getpass)
    account = Account(options.name, hash_password(password, cost), display)
    replaced = write_account(options.file, account)
    done = "changed the password of" if replaced else "added"
    out.write(f"{PROG}: {done} {account.name} ({display}) in {options.file}\n")


async def _serve(reactor: Any, options: argparse.Namespace) -> None:
    """The desk, an operator of the broker's queue, until the reactor stops."""
    from twisted.internet.endpoints import serverFromString

    from sockchat._broker.redisbroker import connect
    from sockchat._core.limits import Admission, access_rules
    from sockchat._desk.brokered import BrokerQueue
    from sockchat._desk.door import DeskDoor, DeskSettings
    from sockchat._operations.services import DeskService
    from sockchat.tap import check_tls_files, endpoint_description

    def refused(what: str) -> SystemExit:
        return SystemExit(f"{PROG}: {what}")

    accounts = AccountsFile(options.accounts)
    canned: tuple[Canned, ...] = ()
    try:
        rules = access_rules(options.ranges)
    except ValueError as e:
        raise refused(f"--allow/--deny: {e}") from None
    try:
        accounts.load()
        if options.canned is not None:
            canned = load_canned(options.canned)
        description = endpoint_description(options.desk, "--desk")
        check_tls_files(description, "--desk")
        endpoint = serverFromString(reactor, description)
    except AccountsError as e:
        raise refused(
            f"{e}; make accounts with: python -m {PROG} passwd FILE NAME"
        ) from None
    except (CannedError, TLSFileError) as e:
        raise refused(str(e)) from None
    except SystemExit as e:  # tap's one line, said as ours
        raise refused(str(e).removeprefix("sockchat: ")) from None
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise refused(
            f"--desk {options.desk!r} is neither a port number nor a server "
            f"endpoint description ({e})"
        ) from None
    try:
        broker = await connect(reactor, options.broker, work=True)
    except ValueError as e:
        raise refused(str(e)) from None
    except (BrokerUnavailable, BrokerRefused) as e:
        raise refused(str(e)) from None
    settings = DeskSettings(hold=options.hold, max_answer=options.max_line)
    door = DeskDoor(
        BrokerQueue(broker, reactor, announce=not options.anonymous),
        accounts,
        reactor,
        settings=settings,
        canned=canned,
        admission=Admission(
            max_clients=settings.max_connections,
            max_per_ip=settings.max_per_ip,
            rules=rules,
        ),
    )
    service = DeskService(
        endpoint, description, door, secure=description.startswith("ssl:")
    )
    try:
        service.privilegedStartService()  # listens: a busy port is one line
        service.startService()
    except SystemExit as e:
        await broker.close()
        raise refused(str(e).removeprefix("sockchat: ")) from None

    def stop() -> Deferred[None]:
        stopped: Deferred[Any] = service.stopService()
        return stopped.addBoth(lambda _: broker.close())

    reactor.addSystemEventTrigger("before", "shutdown", stop)
    await Deferred()  # until the reactor stops: Ctrl-C, SIGTERM


def main(
    argv: Sequence[str] | None = None,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
) -> int:
    options = _parser().parse_args(argv)
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    if options.command == "serve":
        from twisted.internet.task import react

        start_logging(PROG)
        react(lambda reactor: Deferred.fromCoroutine(_serve(reactor, options)))
    try:
        if options.command == "passwd":
            _passwd(options, stdin, out)
        elif not remove_account(options.file, options.name):
            raise _Refused(f"{options.file} has no account {options.name}")
        else:
            out.write(f"{PROG}: removed {options.name} from {options.file}\n")
    except (_Refused, AccountsError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; nothing was changed", file=sys.stderr)
        return 1
    except EOFError:
        print(f"\n{PROG}: no password given; nothing was changed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
