"""``python -m sockchat.desk``: the desk's accounts file.

``passwd FILE NAME`` adds an operator, or changes the password (and, with
``--display``, the display name) of one.  The password is asked twice
without echo at a terminal; piped in, the first line of stdin is the
password.  It is stored as an scrypt hash (docs/desk.md), never as text,
and the file is replaced atomically, readable by its owner only (0600).
``remove FILE NAME`` takes an operator out.

The desk itself is served by ``twistd sockchat --desk PORT --accounts FILE``.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

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
    return parser


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


def main(
    argv: Sequence[str] | None = None,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
) -> int:
    options = _parser().parse_args(argv)
    stdin = stdin or sys.stdin
    out = out or sys.stdout
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
