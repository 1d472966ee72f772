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
    (``?wait=N``) had it within the time allowed; ``str()`` says so, and
    ``short`` says it without the broker's address (for its clients)."""

    def __init__(self, display: str, asked: int, ms: int, did: object) -> None:
        self.short = (
            f"could not copy it to {asked} replica(s) within {ms} ms ({did} did)"
        )
        super().__init__(f"the broker at {display} {self.short}")


class BrokerRefused(Exception):
    """The broker answered, but not as it must (another broker protocol, a
    refused password); ``str()`` is one line."""
