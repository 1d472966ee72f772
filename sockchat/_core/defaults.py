"""What a server does unless told otherwise: every default, in one place.

An embedded ``ChatServerFactory`` and ``twistd sockchat`` take their
defaults from here, so that a server behaves the same however it is
started; ``tests/doors/test_defaults.py`` compares the two.
"""

from __future__ import annotations

import enum

__all__ = [
    "DEFAULT_ANSWER_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_MAX_LINE",
    "DEFAULT_MAX_OUTPUT",
    "DEFAULT_MAX_PER_IP",
    "AnswerTimeout",
]

#: The longest line a client may send, in bytes, newline not counted.
DEFAULT_MAX_LINE = 64 * 1024
#: Seconds a client may take over its turn.
DEFAULT_IDLE_TIMEOUT = 600.0
#: Bytes of memory one client may make the server hold for it.
DEFAULT_MAX_OUTPUT = 256 * 1024
#: Seconds a responder may take over an answer, unless a person answers.
DEFAULT_ANSWER_TIMEOUT = 30.0
#: Clients at once, in all and from one address (loopback not counted).
DEFAULT_MAX_CLIENTS = 1000
DEFAULT_MAX_PER_IP = 20


class AnswerTimeout(enum.Enum):
    """An *answer_timeout* that was not given."""

    #: ``DEFAULT_ANSWER_TIMEOUT`` seconds, or none at all for a responder
    #: that a person answers (the console, pair mode, operators): people
    #: take the time they take, and a machine should not.
    DEFAULT = "default"
