"""Redis Sentinel, without I/O: what to ask the sentinels, what their
answers mean.

A ``redis+sentinel://`` broker URL names sentinels and a master's name,
not a server.  The client (``sockchat._broker.redis``, and
``sockchat._broker.blocking`` at start) follows Redis's Sentinel client
spec:

1. ask each sentinel in turn, with a short timeout,
   ``SENTINEL get-master-addr-by-name NAME`` (``where_is_master``); the
   first that answers is asked first next time (``SentinelList``);
2. connect to that address and check with ``ROLE`` that it is the master
   (``checked_role``): during a failover a sentinel may still name the old
   one;
3. do it again after any loss, and when a sentinel publishes
   ``+switch-master`` for NAME (``switched_to``) or the server answers
   ``READONLY`` (``is_readonly``): then it is a replica now.

Every function here returns a value or raises ``SentinelError`` with one
line.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

__all__ = [
    "DEFAULT_SENTINEL_PORT",
    "SWITCH_MASTER",
    "SentinelError",
    "SentinelList",
    "Survey",
    "checked_role",
    "is_readonly",
    "switched_to",
    "where_is_master",
]

#: The sentinels' port when a URL gives none.
DEFAULT_SENTINEL_PORT = 26379
#: The channel on which a sentinel says that a master moved.
SWITCH_MASTER = "+switch-master"


class SentinelError(Exception):
    """A sentinel or the server it named would not do; ``str()`` is one line."""


@frozen
class Where:
    """A server's address: host and port."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class SentinelList:
    """The sentinels, in the order to ask them: the last one that answered
    first (the spec's step 1)."""

    def __init__(self, sentinels: tuple[tuple[str, int], ...]) -> None:
        self._order = [Where(host, port) for host, port in sentinels]

    def __iter__(self) -> Any:
        return iter(list(self._order))

    def __len__(self) -> int:
        return len(self._order)

    def answered(self, sentinel: Where) -> None:
        """*sentinel* answered: ask it first next time."""
        if sentinel in self._order:
            self._order.remove(sentinel)
            self._order.insert(0, sentinel)


def get_master_command(master: str) -> tuple[str, ...]:
    """The command that asks a sentinel where the master *master* is."""
    return ("SENTINEL", "get-master-addr-by-name", master)


def where_is_master(reply: Any, master: str) -> Where:
    """The master's address from a sentinel's answer to
    ``get_master_command``; ``SentinelError`` if it knows no such master."""
    if reply is None:
        raise SentinelError(f"the sentinels know no master named {master!r}")
    if (
        isinstance(reply, list)
        and len(reply) == 2
        and all(isinstance(part, bytes) for part in reply)
        and reply[1].isdigit()
        and 0 < int(reply[1]) < 65536
    ):
        return Where(reply[0].decode("ascii", "replace"), int(reply[1]))
    raise SentinelError(
        f"a sentinel's answer for {master!r} is not an address: {str(reply)[:80]}"
    )


class Survey:
    """The sentinels' answers, asked in turn: the master's address from
    the first that knows it, or one line that says why none could."""

    def __init__(self, master: str) -> None:
        self.master = master
        self._problems: list[str] = []
        self._unknown = False

    def failed(self, sentinel: Where, why: str) -> None:
        """*sentinel* could not be asked (refused, timed out...)."""
        self._problems.append(f"{sentinel}: {why}")

    def answered(self, sentinel: Where, reply: Any) -> Where | None:
        """*sentinel*'s answer: the master's address, or None (noted)."""
        try:
            return where_is_master(reply, self.master)
        except SentinelError as e:
            self._unknown = self._unknown or reply is None
            self._problems.append(f"{sentinel}: {e}")
            return None

    def error(self) -> SentinelError:
        """Why no sentinel gave an address."""
        if self._unknown:
            return SentinelError(f"the sentinels know no master named {self.master!r}")
        return SentinelError(f"no sentinel answered ({'; '.join(self._problems)})")


def checked_role(reply: Any, where: Where) -> None:
    """Nothing if ``ROLE``'s *reply* says master; else ``SentinelError``."""
    role = reply[0] if isinstance(reply, list) and reply else None
    if role == b"master":
        return
    said = role.decode("ascii", "replace") if isinstance(role, bytes) else "nothing"
    raise SentinelError(f"{where} is not the master (its ROLE is {said}) yet")


def switched_to(message: Any, master: str) -> Where | None:
    """The new address if *message*, from the sentinels' pub/sub, says that
    *master* moved (``+switch-master NAME OLDHOST OLDPORT NEWHOST
    NEWPORT``); None for anything else."""
    if not (
        isinstance(message, list)
        and len(message) == 3
        and message[0] == b"message"
        and message[1] == SWITCH_MASTER.encode()
        and isinstance(message[2], bytes)
    ):
        return None
    parts = message[2].decode("utf-8", "replace").split()
    if len(parts) != 5 or parts[0] != master or not parts[4].isdigit():
        return None
    return Where(parts[3], int(parts[4]))


def is_readonly(error_text: str) -> bool:
    """Whether a server's error says it is a replica now (it was demoted)."""
    return error_text.startswith("READONLY")
