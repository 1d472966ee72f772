"""The broker over a plain blocking socket, for the checks at start.

``twistd`` checks its broker before the reactor runs, so that a broker
that cannot be reached, refuses the password or speaks another protocol
stops it with one line.  ``connect(address)`` gives a ``BlockingRedis``
that has said ``AUTH`` and ``SELECT``; for a sentinel URL it first asks the
sentinels where the master is and checks it with ``ROLE``, as the Twisted
client does (``sockchat._broker.sentinel``).  Every failure is a
``BlockingError`` of one line, without the password.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from sockchat._broker.redis import SENTINEL_TIMEOUT, BrokerAddress
from sockchat._broker.resp import ErrorReply, ReplyParser, encode_command
from sockchat._broker.sentinel import (
    SentinelError,
    SentinelList,
    Survey,
    Where,
    checked_role,
    get_master_command,
)

__all__ = ["BlockingError", "BlockingRedis", "BlockingRefused", "connect"]


class BlockingError(Exception):
    """The broker could not be used; ``str()`` is one line."""


class BlockingRefused(BlockingError):
    """The broker answered a command with an error; ``str()`` is its text."""


class BlockingRedis:
    """Commands over a blocking socket, one reply at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = ReplyParser()
        self.replies: list[Any] = []

    def call(self, *args: str | bytes | int | float) -> Any:
        """The reply; ``BlockingRefused`` for an error reply, ``OSError``
        or ``ConnectionError`` when the connection fails."""
        self.sock.sendall(encode_command(*args))
        while not self.replies:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the broker closed the connection")
            self.replies.extend(self.parser.feed(data))
        reply = self.replies.pop(0)
        if isinstance(reply, ErrorReply):
            raise BlockingRefused(reply.message)
        return reply

    def close(self) -> None:
        self.sock.close()


def _open(address: BrokerAddress, timeout: float) -> socket.socket:
    """A socket to *address* (TLS verified as the URL says); ``OSError``
    or ``ssl.SSLError`` otherwise."""
    if address.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address.path)
        return sock
    sock = socket.create_connection((address.host, address.port), timeout)
    if not address.tls:
        return sock
    context = ssl.create_default_context(cafile=address.ca)
    if address.cert:
        context.load_cert_chain(address.cert, address.key or address.cert)
    return context.wrap_socket(sock, server_hostname=address.host)


def _why(e: BaseException) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"its certificate was refused ({e.verify_message})"
    if isinstance(e, ssl.SSLError):
        return f"TLS failed ({e.reason or e})"
    if isinstance(e, TimeoutError | socket.timeout):
        return "no answer in time"
    if isinstance(e, OSError):
        return str(e.strerror or e)
    return " ".join(str(e).split())


def _hello(redis: BlockingRedis, address: BrokerAddress) -> None:
    if address.password is not None:
        if address.username:
            redis.call("AUTH", address.username, address.password)
        else:
            redis.call("AUTH", address.password)
    if address.db:
        redis.call("SELECT", address.db)


def _locate(address: BrokerAddress) -> BrokerAddress:
    """The master's address, from the first sentinel that can say."""
    survey = Survey(address.master)
    for sentinel in SentinelList(address.sentinels):
        there = address.sentinel_at(sentinel.host, sentinel.port)
        try:
            redis = BlockingRedis(_open(there, SENTINEL_TIMEOUT))
        except (OSError, ssl.SSLError) as e:
            survey.failed(sentinel, _why(e))
            continue
        try:
            _hello(redis, there)
            reply = redis.call(*get_master_command(address.master))
        except (BlockingRefused, OSError, ConnectionError) as e:
            survey.failed(sentinel, _why(e))
            continue
        finally:
            redis.close()
        where = survey.answered(sentinel, reply)
        if where is not None:
            return address.at(where.host, where.port)
    raise BlockingError(str(survey.error()))


def connect(address: BrokerAddress, timeout: float) -> BlockingRedis:
    """A connection to the broker (its master, for a sentinel URL) that
    has said ``AUTH`` and ``SELECT``; ``BlockingError`` of one line if
    that cannot be."""
    target = _locate(address) if address.sentinel else address
    try:
        redis = BlockingRedis(_open(target, timeout))
    except (OSError, ssl.SSLError) as e:
        raise BlockingError(_why(e)) from None
    try:
        _hello(redis, target)
        if address.sentinel:
            checked_role(redis.call("ROLE"), Where(target.host, target.port))
    except BlockingRefused as e:
        redis.close()
        raise BlockingError(f"it said {e}") from None
    except SentinelError as e:
        redis.close()
        raise BlockingError(str(e)) from None
    except (OSError, ConnectionError) as e:
        redis.close()
        raise BlockingError(_why(e)) from None
    return redis
