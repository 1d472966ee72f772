"""What goes wrong between a sockchat process and its broker, whatever the
broker is (Redis, or the memory one of a single process)."""

from __future__ import annotations

__all__ = ["BrokerRefused", "BrokerUnavailable"]


class BrokerUnavailable(Exception):
    """No connection to the broker, or it was lost while a command waited.

    The message is one line and names the broker URL without its password.
    """


class BrokerRefused(Exception):
    """The broker answered, but not as it must (another broker protocol, a
    refused password); ``str()`` is one line."""
