"""twistd sockchat's desk options: each mistake is one line, made at once."""

from __future__ import annotations

import pytest

from sockchat._desk.accounts import Account, Cost, hash_password
from sockchat.tap import Options

FAST = Cost(ln=10, r=8, p=1)


@pytest.fixture
def accounts(tmp_path):
    path = tmp_path / "accounts"
    path.write_text(Account("alice", hash_password("a password", FAST), "A").line())
    return str(path)


def refusal(*args: str) -> str:
    with pytest.raises(SystemExit) as caught:
        Options().parseOptions(list(args))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_the_desk_answers_with_its_operators_by_default(accounts):
    options = Options()
    options.parseOptions(["--desk", "8081", "--accounts", accounts])
    assert options["responder"] == "operators"
    assert options["desk_endpoint"] == "tcp:8081:interface=127.0.0.1:backlog=1024"
    assert options["hold_count"] == 3


@pytest.mark.parametrize(
    "args",
    [
        ["--broker", "redis://127.0.0.1:6379/0"],
        ["--broker", "redis://127.0.0.1:6379/0", "--responder", "workers"],
        ["--responder", "examples.bot:FaqBot"],
        ["--anonymous"],
    ],
)
def test_the_desk_goes_with_a_broker_a_bot_and_workers(accounts, args):
    options = Options()
    options.parseOptions(["--desk", "8081", "--accounts", accounts, *args])
    assert options["desk_endpoint"] is not None


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--desk", "8081"], "--desk needs --accounts FILE"),
        (["--desk", " "], "--desk needs a port number or an endpoint"),
        (["--desk", "8081", "--accounts", "/nonexistent"], "no such file; make"),
        (["--responder", "echo", "--accounts", "ACCOUNTS"], "--accounts is for the"),
        (["--responder", "echo", "--hold", "2"], "--hold is for the operators' desk"),
        (
            ["--desk", "8081", "--accounts", "ACCOUNTS", "--responder", "echo"],
            "it goes with --responder operators (the default with --desk), "
            "workers, or your own, not echo",
        ),
        (
            ["--desk", "8081", "--accounts", "ACCOUNTS", "--responder", "pair"],
            "not pair",
        ),
        # Refused for the desk, not for a stdin that is no terminal (as
        # under pytest, or twistd's daemon), which would send the user to
        # echo or pair, refused next.
        (
            ["--desk", "8081", "--accounts", "ACCOUNTS", "--responder", "console"],
            "workers, or your own, not console",
        ),
        (["--responder", "echo", "--anonymous"], "--anonymous is for the"),
        (
            ["--desk", "8081", "--accounts", "ACCOUNTS", "--hold", "0"],
            "--hold 0 is not a whole number (1 or more)",
        ),
        (
            ["--desk", "8081", "--accounts", "ACCOUNTS", "--canned", "/nonexistent"],
            "--canned /nonexistent: no such file; make one with an answer a line",
        ),
        (["--desk", "99999", "--accounts", "ACCOUNTS"], "--desk 99999 is not a port"),
        (["--responder", "operators"], "--responder operators needs --broker URL"),
    ],
)
def test_desk_option_mistakes_are_one_line(accounts, args, says):
    message = refusal(*[accounts if a == "ACCOUNTS" else a for a in args])
    assert message.startswith("sockchat: ")
    assert says in message


def test_desk_serve_says_its_name_once_in_its_log():
    """``desk serve``'s lines name it once; another program's keep ``desk:``."""
    from io import StringIO

    from twisted.logger import Logger

    from sockchat._broker.join import stderr_observer

    for prog, says in [
        ("sockchat.desk", "sockchat.desk: alice logged in\n"),
        ("sockchat.operator", "sockchat.operator: desk: alice logged in\n"),
    ]:
        out = StringIO()
        log = Logger(namespace="sockchat.desk", observer=stderr_observer(prog, out))
        log.info("desk: {name} logged in", name="alice")
        assert out.getvalue() == says
