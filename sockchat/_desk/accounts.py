"""The desk's accounts: one operator per line, each password hashed with scrypt.

The file (docs/desk.md, "The accounts file") is text, one account a line::

    # comments and blank lines are ignored
    alice:$scrypt$ln=15,r=8,p=1$SALT$HASH:Alice Martin

- ``NAME`` is what the operator types to log in: 1 to 64 of
  ``A-Z a-z 0-9 . _ @ -``;
- then the hash: scrypt's cost as ``ln`` (log2 of N), ``r`` and ``p``, a
  random 16-byte salt and the 32-byte key, both in base64 without padding
  (the layout of passlib's ``$scrypt$``, so the parameters travel with
  each hash and can be raised later without breaking older lines);
- the rest of the line is the display name that clients and other
  operators see (1 to 64 characters, no control or bidi characters).

``hash_password`` and ``verify`` are the only places a password is seen;
neither logs, and ``Accounts.check`` runs the same key derivation for a
name that has no account, so that the time a wrong login takes does not
say whether the name exists.  ``AccountsFile`` reads the file and reads it
again when it changes; ``write_account`` is the ``passwd`` command's: it
replaces the file atomically, created 0600.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import tempfile
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path

from attrs import frozen

from sockchat._core.render import safe_text

__all__ = [
    "DEFAULT_COST",
    "MAX_PASSWORD",
    "MIN_PASSWORD",
    "Account",
    "Accounts",
    "AccountsError",
    "AccountsFile",
    "Cost",
    "ScryptHash",
    "check_display",
    "check_name",
    "hash_password",
    "parse_accounts",
    "remove_account",
    "verify",
    "write_account",
]

#: A login name: short, and nothing that needs escaping anywhere.
NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
#: Characters a display name may have at most.
MAX_DISPLAY = 64
#: Characters a password must have at least (NIST SP 800-63B's minimum).
MIN_PASSWORD = 8
#: Characters a password may have at most: a bound on what a login costs.
MAX_PASSWORD = 1024
SALT_BYTES = 16
KEY_BYTES = 32
#: The parameters a password file may name: beyond these, one login would
#: cost the server too much memory or time (scrypt needs 128 * r * N bytes).
LN_RANGE = range(10, 21)
R_RANGE = range(1, 33)
P_RANGE = range(1, 17)
MAX_MEMORY = 1024 * 1024 * 1024

HEADER = (
    "# sockchat desk accounts, made by: python -m sockchat.desk passwd FILE NAME\n"
    "# NAME:$scrypt$ln=LOG2N,r=R,p=P$SALT$KEY:DISPLAY NAME (see docs/desk.md)\n"
)


class AccountsError(Exception):
    """The accounts file cannot be used; ``str()`` is one line that says why."""


@frozen
class Cost:
    """scrypt's parameters: N = 2**ln, the block size r, the parallelism p."""

    ln: int
    r: int
    p: int

    @property
    def memory(self) -> int:
        """Bytes one derivation needs (scrypt's V array): 128 * r * N."""
        return 128 * self.r * (1 << self.ln)

    def problem(self) -> str | None:
        if self.ln not in LN_RANGE:
            return f"ln={self.ln} is outside {LN_RANGE.start}..{LN_RANGE.stop - 1}"
        if self.r not in R_RANGE:
            return f"r={self.r} is outside {R_RANGE.start}..{R_RANGE.stop - 1}"
        if self.p not in P_RANGE:
            return f"p={self.p} is outside {P_RANGE.start}..{P_RANGE.stop - 1}"
        if self.memory > MAX_MEMORY:
            return f"ln={self.ln}, r={self.r} would need over 1 GiB per login"
        return None


#: 32 MiB and about 50-100 ms a login on one core of a 2020s machine
#: (docs/desk.md, "Why scrypt, and these parameters").
DEFAULT_COST = Cost(ln=15, r=8, p=1)


@frozen(repr=False)
class ScryptHash:
    """A password's scrypt key, with the salt and parameters that made it."""

    cost: Cost
    salt: bytes
    key: bytes

    def __repr__(self) -> str:  # never the key in a traceback or a log
        return f"ScryptHash(cost={self.cost!r}, salt=..., key=...)"

    def encode(self) -> str:
        c = self.cost
        return f"$scrypt$ln={c.ln},r={c.r},p={c.p}${_b64(self.salt)}${_b64(self.key)}"

    @classmethod
    def parse(cls, text: str) -> ScryptHash:
        """The hash in *text*; ``ValueError`` with a short reason if it is not one."""
        parts = text.split("$")
        if len(parts) != 5 or parts[0] or parts[1] != "scrypt":
            raise ValueError("the hash is not $scrypt$ln=..,r=..,p=..$SALT$KEY")
        try:
            fields = dict(item.split("=", 1) for item in parts[2].split(","))
            cost = Cost(ln=int(fields["ln"]), r=int(fields["r"]), p=int(fields["p"]))
        except (ValueError, KeyError):
            raise ValueError("the hash's parameters are not ln=..,r=..,p=..") from None
        problem = cost.problem()
        if problem is not None:
            raise ValueError(f"the hash's parameters are out of range: {problem}")
        try:
            salt, key = _unb64(parts[3]), _unb64(parts[4])
        except (binascii.Error, ValueError):
            raise ValueError("the hash's salt or key is not base64") from None
        if len(salt) < 8 or len(key) < 16:
            raise ValueError("the hash's salt or key is too short")
        return cls(cost, salt, key)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _password_bytes(password: str) -> bytes:
    # The same password typed on two keyboards may arrive composed or not.
    return unicodedata.normalize("NFC", password).encode("utf-8")


def _derive(password: str, cost: Cost, salt: bytes, length: int) -> bytes:
    n = 1 << cost.ln
    return hashlib.scrypt(
        _password_bytes(password),
        salt=salt,
        n=n,
        r=cost.r,
        p=cost.p,
        # OpenSSL's default cap (32 MiB) is just below what N=2**15, r=8
        # needs; this is what the parameters need, and a little more.
        maxmem=128 * cost.r * (n + cost.p + 2) + 1024 * 1024,
        dklen=length,
    )


def hash_password(
    password: str, cost: Cost = DEFAULT_COST, salt: bytes | None = None
) -> ScryptHash:
    """Hash *password* with a new random salt (or *salt*, for tests)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    return ScryptHash(cost, salt, _derive(password, cost, salt, KEY_BYTES))


def verify(password: str, stored: ScryptHash) -> bool:
    """Is *password* the one *stored* was made from?  In constant time."""
    if len(password) > MAX_PASSWORD:
        return False
    derived = _derive(password, stored.cost, stored.salt, len(stored.key))
    return hmac.compare_digest(derived, stored.key)


def check_name(name: str) -> str | None:
    """Why *name* cannot be a login name, or None."""
    if NAME.fullmatch(name) is None:
        return (
            "a name is 1 to 64 letters, digits, dots, dashes, underscores or @ "
            f"(not {safe_text(name[:80])!r})"
        )
    return None


def check_display(display: str) -> str | None:
    """Why *display* cannot be a display name, or None."""
    if not display.strip():
        return "a display name cannot be empty"
    if len(display) > MAX_DISPLAY:
        return f"a display name has at most {MAX_DISPLAY} characters"
    if safe_text(display) != display:
        return "a display name cannot have control or bidi characters"
    return None


@frozen
class Account:
    """One operator: the login name, the password's hash, the display name."""

    name: str
    hash: ScryptHash
    display: str

    def line(self) -> str:
        return f"{self.name}:{self.hash.encode()}:{self.display}"

    @property
    def stamp(self) -> str:
        """Changes when the password does: a session made before ends."""
        return self.hash.encode()


@frozen
class Accounts:
    """Every account of the file, by name."""

    by_name: Mapping[str, Account]

    def __len__(self) -> int:
        return len(self.by_name)

    def get(self, name: str) -> Account | None:
        return self.by_name.get(name)

    def check(self, name: str, password: str) -> Account | None:
        """The account *name*, if *password* is its password; else None.

        It costs one key derivation whether the name exists or not, and the
        key is compared in constant time.  Slow on purpose: run it off the
        reactor thread.
        """
        account = self.by_name.get(name)
        stored = account.hash if account is not None else _DECOY
        matches = verify(password, stored)
        return account if matches and account is not None else None


#: What a name with no account is checked against: a hash that no password
#: matches, at the default cost, so that it takes as long as a real one.
_DECOY = ScryptHash(
    DEFAULT_COST, secrets.token_bytes(SALT_BYTES), secrets.token_bytes(KEY_BYTES)
)


def parse_accounts(text: str, where: str = "accounts file") -> Accounts:
    """The accounts in *text*; ``AccountsError`` naming the first bad line."""
    found: dict[str, Account] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        at = f"{where}, line {number}"
        name, sep, rest = line.partition(":")
        hashed, sep2, display = rest.partition(":")
        if not sep or not sep2:
            raise AccountsError(f"{at}: not NAME:HASH:DISPLAY NAME")
        for problem in (check_name(name), check_display(display)):
            if problem is not None:
                raise AccountsError(f"{at}: {problem}")
        try:
            parsed = ScryptHash.parse(hashed)
        except ValueError as e:
            raise AccountsError(f"{at}: {e}") from None
        if name in found:
            raise AccountsError(f"{at}: {name} has another line above")
        found[name] = Account(name, parsed, display)
    return Accounts(found)


class AccountsFile:
    """The accounts file, read at start and again whenever it changes.

    ``load`` raises ``AccountsError`` (one line: a missing, unreadable,
    broken or empty file); ``current`` looks at the file's size, time and
    inode (one ``stat``), reads it again if they changed, and keeps the
    accounts it had if the new file is broken (``problem`` says why).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int, int] | None = None
        self._accounts = Accounts({})
        #: Why the file was not read again, last time it changed.
        self.problem: str | None = None

    def load(self) -> Accounts:
        where = f"--accounts {self.path}"
        try:
            status = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise AccountsError(f"{where}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise AccountsError(f"{where}: cannot read it ({_reason(e)})") from None
        accounts = parse_accounts(text, where)
        if not accounts:
            raise AccountsError(f"{where}: it has no accounts")
        self._seen = (status.st_mtime_ns, status.st_size, status.st_ino)
        self._accounts = accounts
        self.problem = None
        return accounts

    def current(self) -> Accounts:
        try:
            status = self.path.stat()
        except OSError as e:
            self.problem = f"--accounts {self.path}: {_reason(e)}"
            return self._accounts
        if (status.st_mtime_ns, status.st_size, status.st_ino) != self._seen:
            try:
                self.load()
            except AccountsError as e:
                self.problem = str(e)
        return self._accounts


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)


def _read_lines(path: Path) -> list[str]:
    """The file's lines, checked; none if it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise AccountsError(f"{path}: cannot read it ({_reason(e)})") from None
    parse_accounts(text, str(path))  # refuse to rewrite a broken file
    return text.splitlines()


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    """Replace *path* with *lines*, atomically, readable by its owner only."""
    folder = path.parent if str(path.parent) else Path(".")
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o600)
            out.write("".join(line + "\n" for line in lines))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_account(path: str | os.PathLike[str], account: Account) -> bool:
    """Add *account* to the file (made 0600 if new), or replace the line of
    the same name.  True if it replaced one."""
    where = Path(path)
    try:
        lines = _read_lines(where)
        replaced = False
        out = []
        for line in lines or HEADER.splitlines():
            name = line.strip().partition(":")[0]
            if not line.strip().startswith("#") and name == account.name:
                out.append(account.line())
                replaced = True
            else:
                out.append(line)
        if not replaced:
            out.append(account.line())
        _write_lines(where, out)
    except OSError as e:
        raise AccountsError(f"{where}: cannot write it ({_reason(e)})") from None
    return replaced


def remove_account(path: str | os.PathLike[str], name: str) -> bool:
    """Take *name*'s line out of the file.  False if it had none."""
    where = Path(path)
    try:
        lines = _read_lines(where)
        kept = [
            line
            for line in lines
            if line.strip().startswith("#") or line.strip().partition(":")[0] != name
        ]
        if len(kept) == len(lines):
            return False
        _write_lines(where, kept)
    except OSError as e:
        raise AccountsError(f"{where}: cannot write it ({_reason(e)})") from None
    return True
