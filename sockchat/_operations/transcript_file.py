"""Append transcript entries to a file, one JSON object per line.

Each entry is one ``write`` to a file opened for appending, so an entry
reaches the operating system as soon as it is recorded: a server killed with
``kill -9`` loses nothing it had recorded.  (Surviving a power cut would need
an ``fsync`` per entry; that is not done.)
"""

from __future__ import annotations

import os

from twisted.logger import Logger
from zope.interface import implementer

from sockchat._core.transcript import ITranscript, TranscriptEntry, encode_entry

__all__ = ["TranscriptFile"]

log = Logger(namespace="sockchat.transcript")


@implementer(ITranscript)
class TranscriptFile:
    """Append to *path*, created readable by its owner only if it is new.

    Raises ``OSError`` at once if the file cannot be opened for appending.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        #: Entries that could not be written (each failure is logged).
        self.lost = 0

    def record(self, entry: TranscriptEntry) -> None:
        if self._fd is None:
            self._lose(entry, "the transcript is closed")
            return
        data = encode_entry(entry)
        try:
            while data:  # one write, unless the disk is nearly full
                data = data[os.write(self._fd, data) :]
        except OSError as e:
            self._lose(entry, e.strerror or str(e))

    def _lose(self, entry: TranscriptEntry, why: str) -> None:
        self.lost += 1
        log.error(
            "transcript {path}: an entry of conversation {cid} was not written "
            "({why}); {lost} lost so far",
            path=self.path,
            cid=entry.conversation,
            why=why,
            lost=self.lost,
        )

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
