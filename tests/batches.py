"""Run by tests under strace: turns of commands to a real Redis.

    python tests/batches.py URL COMMANDS TURNS

Connects a ``RedisClient`` to URL, then for each of TURNS turns sends
COMMANDS ``ECHO`` commands in one reactor turn and waits for their replies.
Prints the socket's file descriptor first (``fd N``), and ``done`` last.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, gatherResults

from sockchat._broker.redis import RedisClient, parse_broker_url


def socket_fd(transport: Any) -> int:
    """The file descriptor of the socket under *transport* (TLS wraps TCP)."""
    while transport is not None:
        handle = getattr(transport, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket):
            return handle.fileno()
        transport = getattr(transport, "transport", None)
    raise RuntimeError("no socket")


async def main(url: str, commands: int, turns: int) -> None:
    client = RedisClient(reactor, parse_broker_url(url))
    await client.start()
    print("fd", socket_fd(client._proto.transport), flush=True)  # type: ignore[union-attr]
    for turn in range(turns):
        said = [client.command("ECHO", f"t{turn}c{n}") for n in range(commands)]
        replies = await gatherResults(said)
        assert replies == [f"t{turn}c{n}".encode() for n in range(commands)]
    print("done", flush=True)
    await client.stop()


if __name__ == "__main__":
    url, commands, turns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    task.react(lambda _: Deferred.fromCoroutine(main(url, commands, turns)))
