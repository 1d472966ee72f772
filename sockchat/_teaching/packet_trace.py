"""Teaching mode's packets (``--trace packets``): the captures of this
process's ports, for the trace, and the pcap file (``--capture-file``).

Imported only in the branch of the option that asks for packets
(``sockchat/tap.py``, ``sockchat/client.py``): without it, no module of the
capture is loaded and no packet socket is opened.

``PacketCapture`` opens one capture (``capture.open_capture``) per port it
is asked for (the server's TCP port, its web port; the client's server
port), says once, through *tell*, why it cannot (no CAP_NET_RAW) or that
its file is full, and is the ``tracing.PacketSource`` the trace follows
connections with.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorFDSet, IReactorTime
from twisted.internet.task import deferLater

from sockchat._teaching.capture import Capture, Refused, open_capture
from sockchat._teaching.packets import Connection, Tracked
from sockchat._teaching.pcap import MAX_BYTES, PcapWriter

__all__ = ["CaptureService", "PacketCapture", "open_capture_file"]


def open_capture_file(path: str) -> BinaryIO:
    """*path*, new or emptied, readable and writable by its owner only; a
    symbolic link is refused.  Raises OSError."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # it may have been there before, with more
        return os.fdopen(fd, "wb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


class _Followed:
    """One connection followed in one capture."""

    def __init__(
        self, capture: Capture, connection: Connection, unwatch: Callable[[], None]
    ) -> None:
        self._capture = capture
        self._connection = connection
        self._unwatch = unwatch

    def stop(self) -> None:
        self._unwatch()
        self._capture.forget(self._connection)


class PacketCapture:
    """The captures of this process, one per port, and their pcap file."""

    def __init__(
        self,
        reactor: IReactorFDSet,
        clock: IReactorTime,
        tell: Callable[[str], None],
        *,
        opener: Callable[..., Capture | Refused] = open_capture,
    ) -> None:
        self._reactor = reactor
        self._clock = clock
        self._tell = tell
        self._open = opener
        self.captures: dict[int, Capture] = {}
        #: Why packets are not captured, once the kernel said so.
        self.refused: Refused | None = None
        self.writer: PcapWriter | None = None
        self._file: BinaryIO | None = None
        self._path = ""
        self._full_told = False

    def write_to(self, path: str, *, max_bytes: int = MAX_BYTES) -> None:
        """Write every packet captured to the pcap file *path* (see
        ``open_capture_file``), at most *max_bytes* of it.  Raises OSError."""
        self._file = open_capture_file(path)
        self._path = path
        self.writer = PcapWriter(self._file, max_bytes=max_bytes)

    def open(self, host: str, port: int) -> bool:
        """Capture *port*'s TCP on the interface that carries *host*; False
        (said once) if the kernel will not."""
        if port in self.captures:
            return True
        if self.refused is not None:
            return False
        opened = self._open(self._reactor, self._clock, port, host=host)
        if isinstance(opened, Refused):
            self.refused = opened
            self._tell(opened.line)
            return False
        if self.writer is not None:
            opened.frame_observers.append(self._write)
        self.captures[port] = opened
        return True

    def _write(self, time: float, frame: bytes, original_length: int) -> None:
        writer = self.writer
        assert writer is not None
        if not writer.write(time, frame, original_length) and not self._full_told:
            self._full_told = True
            self._tell(
                f"the capture file {self._path} is full ({writer.max_bytes} bytes): "
                "later packets are not written to it (tcpdump -r reads it to there); "
                "the trace goes on"
            )

    @property
    def why_not(self) -> str:
        """Why a connection has no packets, for the trace's layers."""
        if self.refused is not None:
            return self.refused.line.removeprefix("packet capture is off: ")
        return "its port is not captured"

    # -- tracing.PacketSource ------------------------------------------------

    def where(self, port: int) -> str | None:
        capture = self.captures.get(port)
        if capture is None:
            return None
        return capture.interface or "every interface"

    def sync(self) -> None:
        for capture in self.captures.values():
            capture.drain()

    def follow(
        self, connection: Connection, observer: Callable[[Tracked], None]
    ) -> _Followed:
        capture = self.captures[connection.server.port]
        return _Followed(capture, connection, capture.watch(connection, observer))

    def seen(self, port: int) -> list[list[Tracked]]:
        capture = self.captures.get(port)
        if capture is None:
            return []
        return [
            list(capture.kept(connection).packets)
            for connection in capture.store.connections()
            if connection.server.port == port
        ]

    def stop(self) -> None:
        """Stop every capture, and close the file (said: what it holds)."""
        for capture in self.captures.values():
            drops = capture.kernel_drops()
            if drops:
                self._tell(
                    f"capture: the kernel dropped {drops} packets of port "
                    f"{capture.port}, its queue full: the counts miss them"
                )
            capture.stop()
        self.captures.clear()
        if self._file is not None:
            self._file.close()
            self._file = None
            writer = self.writer
            assert writer is not None
            self._tell(
                f"the capture file {self._path} holds {writer.written} packets "
                f"({writer.size} bytes): tcpdump -r {self._path} reads it"
            )


#: Seconds the capture goes on after the doors' last conversation closed:
#: the trace says a close once its last packets are in (``tracing.SS_DELAY``).
LAST_PACKETS = 0.5


class CaptureService(Service):
    """Stops a ``PacketCapture`` when the server stops, once the doors'
    conversations have closed (``doors``: each one's ``stopped``) and the
    last packets of their closes have come."""

    def __init__(self, capture: PacketCapture, clock: IReactorTime) -> None:
        self.capture = capture
        self._clock = clock
        self.doors: list[Deferred[None]] = []

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]  # twisted.application has no annotations
        closed = DeferredList(self.doors, consumeErrors=True)
        closed.addCallback(lambda _: deferLater(self._clock, LAST_PACKETS))
        done: Deferred[None] = closed.addCallback(lambda _: self.capture.stop())
        return done
