"""Which interface carries an address: ``lo`` for loopback, the one that
holds it, or None (every interface, or not one of this machine's).

Teaching mode's capture opens its packet socket there, and the trace's
kernel check asks it whether the other end of a connection is on this
machine too (then ``ss`` sees both ends).  It asks the kernel
(``SIOCGIFADDR``, ``/proc/net/if_inet6``): I/O, kept apart from the
sans-I/O modules beside it.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from sockchat._teaching.packets import normal_host

__all__ = ["interface_for"]

SIOCGIFADDR = 0x8915


def _ipv4_interfaces() -> dict[str, str]:
    """Each IPv4 address of this machine and its interface (SIOCGIFADDR)."""
    import fcntl

    found: dict[str, str] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                answer = fcntl.ioctl(
                    probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode())
                )
            except OSError:
                continue
            found[socket.inet_ntoa(answer[20:24])] = name
    return found


def _ipv6_interfaces() -> dict[str, str]:
    """Each IPv6 address of this machine and its interface (/proc/net/if_inet6)."""
    found: dict[str, str] = {}
    try:
        with open("/proc/net/if_inet6") as table:
            for row in table:
                words = row.split()
                if len(words) >= 6:
                    found[str(ipaddress.IPv6Address(bytes.fromhex(words[0])))] = words[
                        5
                    ]
    except (OSError, ValueError):
        pass
    return found


def interface_for(host: str) -> str | None:
    """The interface that carries *host*: ``lo`` for loopback, None (every
    interface) for a wildcard address or one not found here."""
    try:
        address = ipaddress.ip_address(normal_host(host))
    except ValueError:
        return None
    if address.is_loopback:
        return "lo"
    if address.is_unspecified:
        return None
    table = _ipv4_interfaces() if address.version == 4 else _ipv6_interfaces()
    return table.get(str(address))
