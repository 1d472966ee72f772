"""The accounts file: scrypt hashes with their parameters, never a password.

Most tests hash at a low cost (``FAST``) to stay quick; the default cost
is checked on its own.
"""

from __future__ import annotations

import base64
import io
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockchat import desk as desk_command
from sockchat._desk import accounts as accounts_module
from sockchat._desk.accounts import (
    DEFAULT_COST,
    Account,
    AccountsError,
    AccountsFile,
    Cost,
    ScryptHash,
    hash_password,
    parse_accounts,
    verify,
    write_account,
)

FAST = Cost(ln=10, r=8, p=1)
PASSWORD = "correct horse battery"


def test_a_hash_verifies_its_password_and_no_other():
    stored = hash_password(PASSWORD, FAST)
    assert verify(PASSWORD, stored)
    assert not verify(PASSWORD + " ", stored)
    assert not verify("correct horse batterY", stored)
    assert not verify("", stored)


def test_each_hash_has_its_own_random_salt():
    one, two = hash_password(PASSWORD, FAST), hash_password(PASSWORD, FAST)
    assert one.salt != two.salt
    assert one.key != two.key
    assert len(one.salt) == 16
    assert len(one.key) == 32


def test_the_hash_line_carries_its_parameters_and_salt():
    stored = hash_password(PASSWORD, Cost(ln=11, r=4, p=2))
    text = stored.encode()
    assert text.startswith("$scrypt$ln=11,r=4,p=2$")
    again = ScryptHash.parse(text)
    assert again == stored
    assert verify(PASSWORD, again)


def test_the_default_cost_is_memory_hard_within_bounds():
    # scrypt needs 128 * r * N bytes: 32 MiB, within the 16 to 64 MiB asked.
    assert Cost(ln=15, r=8, p=1) == DEFAULT_COST
    assert 16 * 2**20 <= DEFAULT_COST.memory <= 64 * 2**20
    stored = hash_password(PASSWORD)  # at the default cost, for real
    assert stored.encode().startswith("$scrypt$ln=15,r=8,p=1$")
    assert verify(PASSWORD, stored)


def test_a_password_composed_or_not_is_the_same_password():
    stored = hash_password("caf\u00e9 au lait", FAST)
    assert verify("cafe\u0301 au lait", stored)


def test_verification_compares_in_constant_time(monkeypatch):
    compared = []
    real = accounts_module.hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(accounts_module.hmac, "compare_digest", spy)
    stored = hash_password(PASSWORD, FAST)
    assert not verify("wrong password", stored)
    assert len(compared) == 1


def test_a_name_without_an_account_costs_one_derivation_too(monkeypatch):
    """The time a wrong login takes does not say whether the name exists."""
    alice = Account("alice", hash_password(PASSWORD, DEFAULT_COST), "Alice")
    accounts = parse_accounts(alice.line())
    costs = []
    real = accounts_module._derive

    def counting(password, cost, salt, length):
        costs.append(cost)
        return real(password, FAST, salt, length)

    monkeypatch.setattr(accounts_module, "_derive", counting)
    assert accounts.check("alice", "wrong password") is None
    assert accounts.check("mallory", "wrong password") is None
    assert costs == [DEFAULT_COST, DEFAULT_COST]


def test_check_gives_the_account_for_its_password():
    alice = Account("alice", hash_password(PASSWORD, FAST), "Alice Martin")
    accounts = parse_accounts("# a comment\n\n" + alice.line() + "\n")
    assert accounts.check("alice", PASSWORD) == alice
    assert accounts.check("Alice", PASSWORD) is None  # names are exact
    assert accounts.get("alice").display == "Alice Martin"


def test_a_display_name_may_hold_colons():
    line = Account("bob", hash_password(PASSWORD, FAST), "Bob: nights").line()
    assert parse_accounts(line).get("bob").display == "Bob: nights"


GOOD_HASH = "$scrypt$ln=10,r=8,p=1$c2FsdHNhbHRzYWx0$" + base64.b64encode(
    b"k" * 32
).decode().rstrip("=")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("alice", "line 1: not NAME:HASH:DISPLAY NAME"),
        ("alice:" + GOOD_HASH, "line 1: not NAME:HASH:DISPLAY NAME"),
        ("al ice:" + GOOD_HASH + ":Al", "line 1: a name is 1 to 64"),
        ("alice:plaintext:Alice", "line 1: the hash is not $scrypt$"),
        ("alice:$2b$12$abcdefghijklmnopqrstuv:Alice", "the hash is not $scrypt$"),
        ("alice:" + GOOD_HASH.replace("ln=10", "ln=30") + ":A", "ln=30 is outside"),
        ("alice:" + GOOD_HASH.replace("r=8", "r=99") + ":A", "r=99 is outside"),
        (
            "alice:"
            + GOOD_HASH.replace("ln=10", "ln=20").replace("r=8", "r=32")
            + ":A",
            "over 1 GiB",
        ),
        ("alice:" + GOOD_HASH.replace("$c2Fs", "$!!") + ":A", "not base64"),
        ("alice:" + GOOD_HASH + ":", "display name cannot be empty"),
        ("alice:" + GOOD_HASH + ":A\x1b[2J", "control or bidi"),
        (
            "# x\nalice:" + GOOD_HASH + ":A\nalice:" + GOOD_HASH + ":B",
            "line 3: alice has another line above",
        ),
    ],
)
def test_a_broken_accounts_file_is_one_line_naming_the_line(text, says):
    with pytest.raises(AccountsError) as caught:
        parse_accounts(text, "FILE")
    message = str(caught.value)
    assert says in message
    assert message.startswith("FILE, line ")
    assert "\n" not in message


@given(st.text())
def test_any_text_is_accounts_or_one_line_error(text):
    problem = ""
    try:
        parse_accounts(text)
    except AccountsError as e:
        problem = str(e)
    assert "\n" not in problem


def test_a_hash_never_shows_its_key_in_a_repr():
    stored = hash_password(PASSWORD, FAST)
    shown = repr(Account("alice", stored, "Alice"))
    assert base64.b64encode(stored.key).decode()[:20] not in shown
    assert "key=..." in shown


# The file and the passwd command.


def run_passwd(path, name, stdin_text, *args):
    out = io.StringIO()
    code = desk_command.main(
        ["passwd", str(path), name, *args], stdin=io.StringIO(stdin_text), out=out
    )
    return code, out.getvalue()


@pytest.fixture
def fast(monkeypatch):
    """passwd hashes at the low cost, for speed."""
    monkeypatch.setattr(desk_command, "DEFAULT_COST", FAST)
    monkeypatch.setattr(
        desk_command,
        "hash_password",
        lambda password, cost: hash_password(password, FAST),
    )


def test_passwd_makes_a_file_only_its_owner_reads_with_no_password_in_clear(tmp_path):
    path = tmp_path / "accounts"
    code, said = run_passwd(path, "alice", PASSWORD + "\n", "--display", "Alice M.")
    assert code == 0
    assert said == f"sockchat.desk: added alice (Alice M.) in {path}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    for form in (
        PASSWORD.encode(),
        PASSWORD.encode("utf-16-le"),
        base64.b64encode(PASSWORD.encode()),
        PASSWORD.encode().hex().encode(),
        b"correct",
        b"battery",
    ):
        assert form not in raw
    accounts = AccountsFile(path).load()
    assert accounts.check("alice", PASSWORD).display == "Alice M."
    # The real default cost, stored with the hash.
    assert "alice:$scrypt$ln=15,r=8,p=1$" in raw.decode()


def test_passwd_changes_a_password_and_keeps_the_other_lines(tmp_path, fast):
    path = tmp_path / "accounts"
    assert run_passwd(path, "alice", "first password\n", "--display", "Alice")[0] == 0
    assert run_passwd(path, "bob", "bobs password\n")[0] == 0
    with path.open("a") as f:
        f.write("# a note kept by hand\n")
    code, said = run_passwd(path, "alice", "second password\n")
    assert code == 0
    assert said.startswith("sockchat.desk: changed the password of alice (Alice)")
    accounts = AccountsFile(path).load()
    assert accounts.check("alice", "second password") is not None
    assert accounts.check("alice", "first password") is None
    assert accounts.check("bob", "bobs password").display == "bob"
    assert "# a note kept by hand" in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_passwd_remove_takes_an_operator_out(tmp_path, fast):
    path = tmp_path / "accounts"
    run_passwd(path, "alice", "first password\n")
    run_passwd(path, "bob", "bobs password\n")
    out = io.StringIO()
    assert desk_command.main(["remove", str(path), "alice"], out=out) == 0
    assert AccountsFile(path).load().get("alice") is None
    assert desk_command.main(["remove", str(path), "alice"], out=out) == 1


@pytest.mark.parametrize(
    ("name", "stdin_text", "args", "says"),
    [
        ("alice", "short\n", (), "a password needs at least 8 characters"),
        ("alice", "x" * 1025 + "\n", (), "at most 1024 characters"),
        ("al:ice", PASSWORD + "\n", (), "a name is 1 to 64"),
        ("alice", PASSWORD + "\n", ("--display", ""), "cannot be empty"),
        ("alice", PASSWORD + "\n", ("--cost", "40"), "--cost: ln=40 is outside"),
    ],
)
def test_passwd_refuses_in_one_line_and_changes_nothing(
    tmp_path, capsys, name, stdin_text, args, says
):
    path = tmp_path / "accounts"
    code, _ = run_passwd(path, name, stdin_text, *args)
    assert code == 1
    error = capsys.readouterr().err
    assert error.startswith("sockchat.desk: ")
    assert says in error
    assert error.count("\n") == 1
    assert not path.exists()


def test_passwd_will_not_rewrite_a_broken_file(tmp_path, capsys, fast):
    path = tmp_path / "accounts"
    path.write_text("alice:plaintext-password:Alice\n")
    code, _ = run_passwd(path, "bob", PASSWORD + "\n")
    assert code == 1
    assert "line 1: the hash is not" in capsys.readouterr().err
    assert path.read_text() == "alice:plaintext-password:Alice\n"


def test_the_accounts_file_is_read_again_when_it_changes(tmp_path, fast):
    path = tmp_path / "accounts"
    run_passwd(path, "alice", "first password\n")
    file = AccountsFile(path)
    assert set(file.load().by_name) == {"alice"}
    run_passwd(path, "bob", "bobs password\n")
    assert set(file.current().by_name) == {"alice", "bob"}
    # A broken file is not taken: the accounts stay, and the problem is said.
    path.write_text("nonsense\n")
    assert set(file.current().by_name) == {"alice", "bob"}
    assert "line 1" in file.problem


@pytest.mark.parametrize(
    ("content", "says"),
    [(None, "no such file"), ("# nothing yet\n", "it has no accounts")],
)
def test_a_missing_or_empty_accounts_file_is_one_line(tmp_path, content, says):
    path = tmp_path / "accounts"
    if content is not None:
        path.write_text(content)
    with pytest.raises(AccountsError, match=says):
        AccountsFile(path).load()


def test_write_account_replaces_the_file_atomically(tmp_path, monkeypatch):
    path = tmp_path / "accounts"
    write_account(path, Account("alice", hash_password(PASSWORD, FAST), "Alice"))
    before = path.read_text()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(accounts_module.os, "replace", broken_replace)
    with pytest.raises(AccountsError, match="No space left on device"):
        write_account(path, Account("bob", hash_password(PASSWORD, FAST), "Bob"))
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["accounts"]  # no leftovers
