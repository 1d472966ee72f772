"""Write at once: the one place where sockchat reaches into Twisted's
transport to send an answer in the same reactor pass.

Twisted's ``transport.write`` never sends: it queues the bytes and asks
the reactor to say when the socket is writable, and the bytes go out on
the next pass (one more ``epoll_wait``, an ``epoll_ctl`` to start
watching for writes and another to stop).  This is Twisted issue #5303,
"Default transport implementation doesn't write out bytes immediately",
open since 2011.  asyncio's selector transport does what ``write_now``
does ("Optimization: try to send now"), and uvloop has a pull request
(MagicStack/uvloop#619) for the same.

``write_now(transport, data)`` sends *data* with one ``socket.send`` when
nothing is queued in the transport before it, and hands whatever the
kernel did not take to ``transport.write``, which queues it behind
nothing and so keeps the order.  Everything else stays Twisted's: what is
queued, when the producer is paused and resumed (it counts only what is
queued), ``loseConnection`` and half-close, which are only reached
through the transport.  It falls back to ``transport.write`` for any
transport it does not know to be a plain TCP or UNIX stream socket of
Twisted's, for TLS (the bytes that reach the socket are not the bytes
written), and for a connection that is closing, half-closed or aborted.

What it relies on, all of ``twisted.internet.abstract.FileDescriptor``
and ``tcp.Connection`` as of Twisted 26.10, is checked by
``tests/doors/test_eager.py``, which fails if any of it changes:

- the queue is ``dataBuffer`` (sent up to ``offset``) and then
  ``_tempDataBuffer`` (``_tempDataLen`` bytes); both empty means nothing
  is queued;
- ``write``, ``doWrite``, ``writeSomeData`` and ``_isSendBufferFull`` are
  Twisted's own (checked per class, once), so that nothing else is queued
  or counted elsewhere;
- ``connected``, ``disconnecting``, ``_writeDisconnecting``,
  ``_aborting`` and ``TLS`` mean what they mean there, and a UNIX socket's
  ``_sendmsgQueue`` holds descriptors waiting for the next byte;
- ``socket`` is the connected, non-blocking socket.
"""

from __future__ import annotations

from errno import ENOBUFS
from typing import Any

from twisted.internet import abstract, tcp

__all__ = ["sends_at_once", "write_now"]

#: What ``write_now`` knows of each transport class: ``_TCP`` (it may send
#: on it), ``_UNIX`` (it may, unless descriptors wait to be passed) or
#: ``_OTHER`` (it may not).
_OTHER, _TCP, _UNIX = 0, 1, 2
_KNOWN: dict[type, int] = {}


def _twisteds_own(kind: type) -> int:
    """Whether *kind* queues and sends exactly as Twisted's TCP transport
    (a UNIX socket's adds only the descriptors it passes)."""
    fd = abstract.FileDescriptor
    if not (
        issubclass(kind, tcp.Connection)
        and getattr(kind, "write", None) in (fd.write, tcp.Connection.write)
        and getattr(kind, "doWrite", None) is fd.doWrite
    ):
        return _OTHER
    sends = getattr(kind, "writeSomeData", None)
    full = getattr(kind, "_isSendBufferFull", None)
    if sends is tcp.Connection.writeSomeData and full is fd._isSendBufferFull:
        return _TCP
    try:
        from twisted.internet import unix
    except ImportError:  # pragma: no cover (a platform without UNIX sockets)
        return _OTHER
    mixin = unix._SendmsgMixin
    if sends is mixin.writeSomeData and full is mixin._isSendBufferFull:
        return _UNIX
    return _OTHER


def sends_at_once(transport: object) -> bool:
    """Whether ``write_now`` may send on *transport* itself (its kind
    only; the connection's state is checked on every write)."""
    kind = type(transport)
    known = _KNOWN.get(kind)
    if known is None:
        known = _KNOWN[kind] = _twisteds_own(kind)
    return known != _OTHER


def write_now(transport: Any, data: bytes) -> None:
    """Write *data* to *transport*, sending it at once if nothing is queued.

    The kernel takes what it can; the rest, if any, is queued by
    ``transport.write`` as if it had been written there, and the producer
    is paused past ``bufferSize`` as usual.  ``EAGAIN`` (and ``ENOBUFS``)
    queue all of it, as Twisted's ``writeSomeData`` does.  Any other error
    from ``send`` means the socket is dead (on Linux it is sticky: a reset
    or a shutdown); ``send`` has taken the pending error, so a read would
    now see a clean end of file.  To end the connection exactly as Twisted
    would when its own ``send`` fails (``connectionLost`` with
    ``ConnectionLost``, not a half-close), reading is stopped and the
    bytes are queued: the reactor then reports the socket's hang-up with no
    read pending, which Twisted treats as the write error it is.
    """
    kind = type(transport)
    known = _KNOWN.get(kind)
    if known is None:
        known = _KNOWN[kind] = _twisteds_own(kind)
    if (
        known
        and not transport._tempDataLen
        and not transport.dataBuffer
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and not transport._aborting
        and not transport.TLS
        and (known == _TCP or not transport._sendmsgQueue)
    ):
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            if e.errno != ENOBUFS:
                transport.stopReading()
                transport.write(data)
                return
            sent = 0
        if sent == len(data):
            return
        if sent:
            data = data[sent:]
    transport.write(data)
