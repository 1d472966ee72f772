"""JSON log lines for twistd: ``twistd -n --logger sockchat.jsonlog.observer sockchat``.

Every event keeps its fields (``cid``, ``peer``, ``turns``, ``code``...), one
JSON object per line on stdout, for log collectors.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver

__all__ = ["observer"]


def observer() -> ILogObserver:
    """The observer factory that twistd's ``--logger`` option asks for."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
