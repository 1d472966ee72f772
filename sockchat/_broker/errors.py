"""What goes wrong between a sockchat process and its broker, whatever the
broker is (Redis, or the memory one of a single process)."""

from __future__ import annotations

__all__ = ["BrokerRefused", "BrokerUnavailable", "NotReplicated"]


class BrokerUnavailable(Exception):
    """No connection to the broker, or it was lost while a command waited.

    The message is one line and names the broker URL without its password.
    """


class NotReplicated(BrokerUnavailable):
    """The broker took a write, but fewer of its replicas than asked for
    (``?wait=N``) had it within the time allowed; ``str()`` says so."""


class BrokerRefused(Exception):
    """The broker answered, but not as it must (another broker protocol, a
    refused password); ``str()`` is one line."""
