"""Sockets that systemd passed in (socket activation), for ``--port systemd:``.

Twisted's own ``systemd:`` endpoint cannot be used from twistd:

- ``twisted.internet.endpoints`` reads ``LISTEN_PID`` and ``LISTEN_FDS``
  once, when it is first imported, and removes them from the environment;
  twistd imports it while it lists its plugins, long before sockchat runs.
- It keeps no descriptor at all unless ``LISTEN_FDNAMES`` names each one.
  systemd sets that variable, but ``systemd-socket-activate`` only with
  ``--fdname``, and ``sd_listen_fds(3)`` says a missing name is
  ``unknown``.  So, under ``systemd-socket-activate -l 9527 twistd -n
  sockchat --port systemd:domain=INET:index=0``, Twisted's parser finds no
  descriptors and fails with an ``IndexError``.

``passed_sockets`` reads the variables as the process was started (from
``/proc/self/environ`` when they are gone from ``os.environ``) and applies
systemd's own rules; ``systemd_endpoint`` parses the same description as
Twisted's ``systemd:`` (``domain``, and ``index`` or ``name``) into an
``AdoptedStreamServerEndpoint``.  Errors are ``ValueError`` with one line
for the user.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from attrs import frozen
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, _parse

__all__ = ["PassedSockets", "passed_sockets", "startup_environment", "systemd_endpoint"]

#: The first descriptor systemd passes (``SD_LISTEN_FDS_START``).
FIRST_FD = 3


@frozen
class PassedSockets:
    """The descriptors systemd passed, and their names, in order."""

    descriptors: tuple[int, ...] = ()
    names: tuple[str, ...] = ()


def passed_sockets(environ: Mapping[str, str], pid: int) -> PassedSockets:
    """What ``sd_listen_fds_with_names(3)`` would return, from *environ*.

    Nothing unless ``LISTEN_PID`` is *pid* (the variables were meant for
    this process, not a parent's) and ``LISTEN_FDS`` is a count.  A missing
    or short ``LISTEN_FDNAMES`` leaves the names ``unknown``.
    """
    if environ.get("LISTEN_PID", "").strip() != str(pid):
        return PassedSockets()
    count_text = environ.get("LISTEN_FDS", "").strip()
    if not count_text.isdigit():
        return PassedSockets()
    count = int(count_text)
    given = environ.get("LISTEN_FDNAMES", "")
    names = given.split(":") if given else []
    names = (names + ["unknown"] * count)[:count]
    return PassedSockets(
        tuple(range(FIRST_FD, FIRST_FD + count)), tuple(n or "unknown" for n in names)
    )


def startup_environment() -> Mapping[str, str]:
    """The ``LISTEN_*`` variables this process was started with.

    From ``os.environ`` while they are there; once Twisted has removed
    them, from ``/proc/self/environ``, which keeps the environment as it
    was at ``exec`` (systemd runs on Linux, which has it).
    """
    if "LISTEN_FDS" in os.environ:
        return dict(os.environ)
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    found = {}
    for entry in raw.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep and key.startswith(b"LISTEN_"):
            found[key.decode("ascii", "replace")] = value.decode("utf-8", "replace")
    return found


def _forget() -> None:
    # As sd_listen_fds(unset_environment=1): a child must not take them.
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)


def systemd_endpoint(
    reactor: Any,
    description: str,
    passed: PassedSockets | None = None,
) -> AdoptedStreamServerEndpoint:
    """An endpoint for ``systemd:domain=INET:index=0`` (or ``name=NAME``).

    *passed* defaults to what this process was started with.
    """
    positional, options = _parse(description)
    if positional[1:]:
        raise ValueError("give its options as domain=INET:index=0 (or name=NAME)")
    unknown = set(options) - {"domain", "index", "name"}
    if unknown:
        raise ValueError(
            f"unknown option {sorted(unknown)[0]!r}; give domain= and index= or name="
        )
    domain = str(options.get("domain", "INET"))
    family = getattr(socket, f"AF_{domain}", None)
    if domain not in ("INET", "INET6", "UNIX") or family is None:
        raise ValueError(f"domain={domain} is not one of INET, INET6, UNIX")
    index, name = options.get("index"), options.get("name")
    if (index is None) == (name is None):
        raise ValueError("give index= (from 0) or name= (FileDescriptorName), not both")
    if passed is None:
        passed = passed_sockets(startup_environment(), os.getpid())
        _forget()
    if not passed.descriptors:
        raise ValueError(
            "no socket was passed to this process (LISTEN_PID and LISTEN_FDS "
            "are not set for it); start it from a systemd .socket unit or "
            "under systemd-socket-activate"
        )
    count = len(passed.descriptors)
    if index is not None:
        text = str(index)
        if not text.isdigit() or int(text) >= count:
            raise ValueError(
                f"index={text}: {count} socket(s) were passed, so give 0 to {count - 1}"
            )
        fileno = passed.descriptors[int(text)]
    else:
        if name not in passed.names:
            raise ValueError(
                f"name={name}: no socket of that name was passed; the names are "
                + ", ".join(passed.names)
            )
        fileno = passed.descriptors[passed.names.index(str(name))]
    return AdoptedStreamServerEndpoint(reactor, fileno, family)
