"""Who is logged in to the desk: sessions, with no I/O.

A session is made by a login and named by a token of 256 random bits
(``secrets.token_urlsafe(32)``), which only the browser keeps, in an
``HttpOnly``, ``SameSite=Strict`` cookie.  The store keeps the token's
SHA-256, never the token: a memory dump or a log of the store gives no
cookie to replay, and looking a token up compares digests, not secrets.

A session ends

- after ``idle`` seconds without a request or an open desk page
  (``touch``);
- ``absolute`` seconds after the login, however busy it is;
- at logout (``end``);
- when its account leaves the accounts file or changes its password
  (``stale``);
- when its account opens more than ``per_account`` sessions, or the desk
  more than ``total``: the oldest goes.

Times are plain seconds passed in (``now``), from the door's clock.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable

from attrs import evolve, frozen

__all__ = ["Session", "SessionPolicy", "SessionStore"]

#: What a token looks like: 32 bytes in URL-safe base64, no padding.
TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


@frozen
class SessionPolicy:
    """How long sessions last, and how many there may be."""

    #: Seconds without a request, or a desk page open, before it ends.
    idle: float = 30 * 60.0
    #: Seconds after the login before it ends, however busy.
    absolute: float = 12 * 3600.0
    #: Sessions one account may have at once (browsers, devices).
    per_account: int = 16
    #: Sessions the desk keeps at most.
    total: int = 1000


@frozen
class Session:
    """One login: whose, since when, last used when."""

    #: The SHA-256 of the token, in hex: the session's name in the store.
    key: str
    account: str
    display: str
    #: The account's hash when the session began (``Account.stamp``).
    stamp: str
    opened: float
    seen: float

    def expired(self, policy: SessionPolicy, now: float) -> bool:
        return now - self.seen >= policy.idle or now - self.opened >= policy.absolute


def key_of(token: str) -> str | None:
    """The store's key for a cookie's *token*, or None if it is not one."""
    if TOKEN.fullmatch(token) is None:
        return None
    return hashlib.sha256(token.encode("ascii")).hexdigest()


class SessionStore:
    """Every open session, oldest first."""

    def __init__(self, policy: SessionPolicy | None = None) -> None:
        self.policy = policy or SessionPolicy()
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def open(
        self, account: str, display: str, stamp: str, now: float
    ) -> tuple[str, Session, list[Session]]:
        """A new session: its token (for the cookie only), the session, and
        the sessions it pushed out (the account's or the desk's oldest)."""
        token = secrets.token_urlsafe(32)
        key = key_of(token)
        assert key is not None
        session = Session(key, account, display, stamp, now, now)
        ended = []
        mine = [s for s in self._sessions.values() if s.account == account]
        while len(mine) >= self.policy.per_account:
            ended.append(self._pop(mine.pop(0).key))
        while len(self._sessions) >= self.policy.total:
            ended.append(self._pop(next(iter(self._sessions))))
        self._sessions[key] = session
        return token, session, ended

    def _pop(self, key: str) -> Session:
        return self._sessions.pop(key)

    def find(self, token: str | None, now: float) -> Session | None:
        """The live session of *token*, used now; None if there is none
        (an expired one is ended)."""
        key = key_of(token) if token else None
        session = self._sessions.get(key) if key is not None else None
        if session is None:
            return None
        if session.expired(self.policy, now):
            del self._sessions[session.key]
            return None
        return self.touch(session.key, now)

    def touch(self, key: str, now: float) -> Session | None:
        """*key*'s session was used at *now* (if it is still open)."""
        session = self._sessions.get(key)
        if session is None:
            return None
        session = evolve(session, seen=max(session.seen, now))
        self._sessions[key] = session
        return session

    def get(self, key: str) -> Session | None:
        return self._sessions.get(key)

    def end(self, key: str) -> Session | None:
        """Logout: the session is gone at once."""
        return self._sessions.pop(key, None)

    def expire(self, now: float) -> list[Session]:
        """End every session past its time; the ones ended."""
        gone = [s for s in self._sessions.values() if s.expired(self.policy, now)]
        for session in gone:
            del self._sessions[session.key]
        return gone

    def stale(self, current: Callable[[str], str | None]) -> list[Session]:
        """End the sessions whose account is gone or has a new password;
        *current* gives an account's stamp now (None: no such account)."""
        gone = [s for s in self._sessions.values() if current(s.account) != s.stamp]
        for session in gone:
            del self._sessions[session.key]
        return gone

    def of(self, account: str) -> list[Session]:
        return [s for s in self._sessions.values() if s.account == account]
