"""Who may connect: address rules and connection caps, with no I/O.

``Admission`` is asked once per new connection and told when one closes.
It answers with ``None`` (admitted) or a ``Notice`` to send before closing:
the refused client always hears why, as the first thing it receives.
``Admission.consider`` gives a ``Refusal`` instead, which also says, for the
operator's log, which option to change.

Loopback peers (127.0.0.0/8, ``::1``) are the operator's own machine: by
default they do not count against the per-address cap, since a bare
``--port`` listens on loopback only and every client there has the same
address.  They still count against the total.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Sequence

from attrs import define, field, frozen

from sockchat._core.defaults import DEFAULT_MAX_CLIENTS, DEFAULT_MAX_PER_IP
from sockchat._core.wire import Notice, NoticeKind

__all__ = ["AccessRules", "Admission", "Refusal", "access_rules", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """Parse CIDR ranges such as ``10.0.0.0/8`` or ``::1``.

    Raises ``ValueError`` naming the first one that is not a range, such as
    ``10.0.0.1/8``, whose host bits are set: it is most likely a typo.
    """
    networks = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text.strip()))
        except ValueError:
            try:
                meant = ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"{text!r} is not an IPv4 or IPv6 address or range"
                ) from None
            raise ValueError(
                f"{text!r} has bits set after its /{meant.prefixlen} prefix; "
                f"did you mean {meant}?"
            ) from None
    return tuple(networks)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return None  # not an IP peer (a UNIX socket): address rules do not apply
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped  # ::ffff:10.1.2.3 is 10.1.2.3
    return address


@frozen
class AccessRules:
    """``--allow`` and ``--deny`` ranges.

    With no allow ranges every address is allowed; with some, only addresses
    inside one of them.  Deny ranges are removed in either case.
    """

    allow: Sequence[Network] = ()
    deny: Sequence[Network] = ()

    def permits(self, host: str) -> bool:
        address = _address(host)
        if address is None:
            return True
        if self.allow and not any(address in net for net in self.allow):
            return False
        return not any(address in net for net in self.deny)


def access_rules(written: Iterable[tuple[str, str]]) -> AccessRules:
    """The rules of ``--allow`` and ``--deny`` ranges as they were written,
    in order: ``("allow", "10.0.0.0/8")``, ``("deny", "10.9.0.0/16")``.

    The same for every program that takes them (``twistd sockchat``,
    ``python -m sockchat.desk serve``).  Raises ``ValueError`` naming the
    first range written that is not one (``parse_networks``).
    """
    pairs = list(written)
    networks = parse_networks(text for _, text in pairs)
    kinds = [kind for kind, _ in pairs]
    ranges = list(zip(kinds, networks, strict=True))
    return AccessRules(
        allow=tuple(n for kind, n in ranges if kind == "allow"),
        deny=tuple(n for kind, n in ranges if kind == "deny"),
    )


@frozen
class Refusal:
    """Why a connection was refused: what its client hears, and what the
    operator's log says."""

    #: The client's first and only line.
    notice: Notice
    #: The option that refused it, e.g. ``--max-per-ip``.
    option: str
    #: For the log: the cap or rule, and which option to change.
    why: str


@define
class Admission:
    """Caps on connections, in total and per address, and the access rules.

    The caps are those of ``twistd sockchat`` unless given (1000 clients,
    20 from one address); ``None`` means no cap.  With *cap_loopback*
    false (the default), loopback peers do not count against *max_per_ip*.
    """

    max_clients: int | None = DEFAULT_MAX_CLIENTS
    max_per_ip: int | None = DEFAULT_MAX_PER_IP
    rules: AccessRules = AccessRules()
    cap_loopback: bool = False
    #: Connections admitted and not yet closed.
    total: int = field(default=0, init=False)
    _per_ip: Counter[str] = field(factory=Counter, init=False)

    def admit(self, host: str | None) -> Notice | None:
        """Admit a new connection from *host*, or say why not."""
        refusal = self.consider(host)
        return None if refusal is None else refusal.notice

    def consider(self, host: str | None) -> Refusal | None:
        """Admit a new connection from *host*, or say why not, and which
        option refused it."""
        if host is not None and not self.rules.permits(host):
            return Refusal(
                Notice(
                    NoticeKind.BYE,
                    "denied",
                    "connections from your address are not accepted here.",
                ),
                "--allow/--deny",
                "the address is outside --allow or inside --deny",
            )
        if self.max_clients is not None and self.total >= self.max_clients:
            return Refusal(
                Notice(
                    NoticeKind.BYE,
                    "busy",
                    f"the server is full ({self.max_clients} clients); try again "
                    "later.",
                ),
                "--max-clients",
                f"{self.total} clients at once, the most --max-clients "
                f"{self.max_clients} allows; raise --max-clients (0: no limit)",
            )
        key = self._key(host)
        if (
            key is not None
            and self.max_per_ip is not None
            and self._per_ip[key] >= self.max_per_ip
        ):
            return Refusal(
                Notice(
                    NoticeKind.BYE,
                    "busy",
                    f"your address already has {self.max_per_ip} connection(s), "
                    "the most allowed; close one and try again.",
                ),
                "--max-per-ip",
                f"{key} already has {self._per_ip[key]} connection(s), the most "
                f"--max-per-ip {self.max_per_ip} allows; raise --max-per-ip "
                "(0: no limit)",
            )
        self.total += 1
        if key is not None:
            self._per_ip[key] += 1
        return None

    def release(self, host: str | None) -> None:
        """An admitted connection closed."""
        self.total -= 1
        key = self._key(host)
        if key is not None:
            self._per_ip[key] -= 1
            if not self._per_ip[key]:
                del self._per_ip[key]

    def _key(self, host: str | None) -> str | None:
        """What the per-address count is kept by; ``None``: not counted."""
        if host is None:
            return None
        address = _address(host)
        if address is None:
            return None
        if address.is_loopback and not self.cap_loopback:
            return None
        return str(address)
