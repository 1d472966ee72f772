"""How fast wrong passwords may be tried at the desk, with no I/O.

Failures are counted per **address** (an IPv6 address by its /64, which
one machine usually has whole) and per **account**.  Each count allows a
few failures free, then makes the next attempt wait: 1 s, 2 s, 4 s...
up to a minute (``Backoff``).  An attempt made while it must wait is
refused at once, without the password being checked, and is not counted:
it costs the server nothing and tells the attacker nothing.  A success
clears the address's count (and the device's, below); every count is
forgotten after a quarter of an hour without failures.

A per-account count would let an attacker who hammers one account keep
its real operator waiting as long as the attack lasts.  So a browser that
has logged in to an account before holds a **device cookie** for it
(OWASP's "device cookies" against online guessing): signed with this
process's key, naming the account.  A login that presents a valid one is
judged by that device's own count instead of the account's, so the
attacker, who has no such cookie, cannot slow the operator down.  An
operator on a new browser during an attack is slowed like the attacker
(at most a minute between attempts), never locked out for good.

Only accounts that exist are counted per account (the table cannot be
filled with made-up names); addresses are kept for at most ``remembered``
addresses, the least recent dropped first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from collections import OrderedDict

from attrs import define, frozen

__all__ = ["Backoff", "DeviceCookies", "LoginThrottle", "ThrottlePolicy"]


@frozen
class Backoff:
    """Failures allowed free, then doubling waits up to ``longest``."""

    free: int
    first: float = 1.0
    longest: float = 60.0
    #: Seconds without a failure after which the count starts again.
    forget: float = 15 * 60.0

    def delay(self, failures: int) -> float:
        """Seconds the attempt after *failures* failures must wait."""
        if failures < self.free:
            return 0.0
        return float(min(self.first * 2 ** (failures - self.free), self.longest))


@frozen
class ThrottlePolicy:
    address: Backoff = Backoff(free=5)
    account: Backoff = Backoff(free=10)
    device: Backoff = Backoff(free=5)
    #: Addresses (and devices) whose failures are remembered at most.
    remembered: int = 10_000


@define
class _Count:
    failures: int
    last: float


def address_key(host: str | None) -> str | None:
    """What an address's failures are counted by: itself, or its /64."""
    if host is None:
        return None
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host  # a UNIX socket's peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class LoginThrottle:
    """The counts, and what they say about the next attempt."""

    def __init__(self, policy: ThrottlePolicy | None = None) -> None:
        self.policy = policy or ThrottlePolicy()
        self._counts: OrderedDict[tuple[str, str], _Count] = OrderedDict()

    def _keys(
        self, address: str | None, account: str | None, device: str | None
    ) -> list[tuple[tuple[str, str], Backoff]]:
        policy = self.policy
        keys = []
        where = address_key(address)
        if where is not None:
            keys.append((("address", where), policy.address))
        if device is not None:
            keys.append((("device", device), policy.device))
        elif account is not None:
            keys.append((("account", account), policy.account))
        return keys

    def wait(
        self, address: str | None, account: str | None, device: str | None, now: float
    ) -> float:
        """Seconds before this attempt may be judged; 0: now.

        *account* is the name tried if it has an account (else None);
        *device* the id of a valid device cookie for that account.
        """
        longest = 0.0
        for key, backoff in self._keys(address, account, device):
            count = self._counts.get(key)
            if count is None:
                continue
            if now - count.last >= backoff.forget:
                del self._counts[key]
                continue
            longest = max(longest, count.last + backoff.delay(count.failures) - now)
        return max(longest, 0.0)

    def failed(
        self, address: str | None, account: str | None, device: str | None, now: float
    ) -> None:
        """A wrong password (or a name with no account)."""
        for key, _ in self._keys(address, account, device):
            count = self._counts.pop(key, None) or _Count(0, now)
            count.failures += 1
            count.last = now
            self._counts[key] = count  # the most recent, last
        while len(self._counts) > self.policy.remembered:
            self._counts.popitem(last=False)

    def succeeded(
        self, address: str | None, account: str | None, device: str | None
    ) -> None:
        """The right password: the address's and the device's counts start
        again.  The account's is left to be forgotten in time: clearing it
        would give an attacker of that account free tries after each of its
        operator's logins."""
        for (kind, name), _ in self._keys(address, account, device):
            if kind != "account":
                self._counts.pop((kind, name), None)

    def failures(self, kind: str, name: str) -> int:
        count = self._counts.get((kind, name))
        return count.failures if count is not None else 0


class DeviceCookies:
    """Signed cookies that say "this browser has logged in to ACCOUNT".

    The key is random per process: after a restart, older cookies are not
    trusted, and logins are judged per account again until the next
    success.  A cookie is ``NONCE.MAC``; the nonce names the device.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def _mac(self, account: str, nonce: str) -> str:
        digest = hmac.new(
            self._key, f"{account}\0{nonce}".encode(), hashlib.sha256
        ).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")

    def issue(self, account: str) -> str:
        nonce = secrets.token_urlsafe(16)
        return f"{nonce}.{self._mac(account, nonce)}"

    def device(self, cookie: str | None, account: str) -> str | None:
        """The device id of *cookie* if it is valid for *account*, else None."""
        if not cookie or cookie.count(".") != 1 or len(cookie) > 200:
            return None
        nonce, mac = cookie.split(".")
        if hmac.compare_digest(mac.encode(), self._mac(account, nonce).encode()):
            return nonce
        return None
