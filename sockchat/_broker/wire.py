"""What sockchat processes say to each other through the broker.

The key names and the messages of broker protocol ``PROTOCOL``, with no
I/O: every message is one JSON object with ``"v"`` (the protocol) and
``"kind"``.  ``decode`` refuses anything else with a ``WireError`` whose
text is one line for the log, so that an operator, worker or instance of
another version is refused clearly rather than misunderstood.
"""

from __future__ import annotations

import json
import json.scanner
from typing import Any

from attrs import frozen

__all__ = [
    "CLAIM_AFTER",
    "GROUPS",
    "HEARTBEAT",
    "HEARTBEAT_TTL",
    "HISTORY_BYTES",
    "HISTORY_ITEMS",
    "INBOX_TTL",
    "OPERATORS",
    "PROTOCOL",
    "WORKERS",
    "Keys",
    "Timings",
    "WireError",
    "decode",
    "encode",
    "encode_answer",
    "said",
]

#: The broker protocol.  Raise it when a message changes meaning.  2: a
#: consumer deletes the entry it answered; the directory says no more
#: which line waits (the queue says it).
PROTOCOL = 2

#: Seconds between an instance's (and a consumer's) heartbeats.
HEARTBEAT = 2.0
#: Seconds after its last heartbeat that an instance counts as dead.
HEARTBEAT_TTL = 10.0
#: Seconds a line held by a consumer that stopped touching it (it died)
#: waits before another consumer takes it.
CLAIM_AFTER = 10.0
#: Seconds an inbox nobody reads lives on after its last message.
INBOX_TTL = 30.0

#: What a conversation's history keeps at most: its last items, up to
#: this many bytes of items in all (its latest item is always kept whole).
HISTORY_ITEMS = 500
HISTORY_BYTES = 64 * 1024

#: The consumer groups, one per shared queue.
OPERATORS = "operators"
WORKERS = "workers"
GROUPS = (OPERATORS, WORKERS)


@frozen
class Timings:
    """The broker's times, in seconds (tests make them shorter)."""

    #: Between an instance's (and a consumer's) heartbeats.
    heartbeat: float = HEARTBEAT
    #: After its last heartbeat, an instance counts as dead.
    heartbeat_ttl: float = HEARTBEAT_TTL
    #: A line held by a consumer that stopped touching it waits this long
    #: before another takes it.
    claim_after: float = CLAIM_AFTER
    #: An inbox nobody reads lives this long after its last message.
    inbox_ttl: float = INBOX_TTL


class WireError(ValueError):
    """A message that this version cannot take; ``str()`` is one line."""


@frozen
class Keys:
    """The broker's key names, all under one *prefix*."""

    prefix: str = "sockchat"

    @property
    def protocol(self) -> str:
        return f"{self.prefix}:protocol"

    @property
    def instance_counter(self) -> str:
        return f"{self.prefix}:instance-counter"

    @property
    def instance_prefix(self) -> str:
        return f"{self.prefix}:instance:"

    def instance(self, name: str) -> str:
        return f"{self.prefix}:instance:{name}"

    @property
    def instances(self) -> str:
        return f"{self.prefix}:instances"

    def clients(self, name: str) -> str:
        return f"{self.prefix}:clients:{name}"

    def inbox(self, name: str) -> str:
        return f"{self.prefix}:inbox:{name}"

    def history(self, name: str) -> str:
        return f"{self.prefix}:history:{name}"

    def consumers(self, group: str) -> str:
        return f"{self.prefix}:consumers:{group}"

    def work(self, group: str) -> str:
        return f"{self.prefix}:work:{group}"

    @property
    def pair_waiting(self) -> str:
        return f"{self.prefix}:pair:waiting"


#: JSON with no spaces, in ASCII (made once: ``json.dumps`` with options
#: makes an encoder at every call).
_encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def _unknown(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


#: The same encoder's C part, made once: ``JSONEncoder.encode`` makes it
#: again at every call, which is about half of a message's encoding.
#: ``None`` where the json module has no C part (then ``_encode``).
_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_encode_c: Any = (
    _make_encoder(
        None,  # no check for cycles: a message is a tree of plain values
        _unknown,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        False,
        False,
        True,
    )
    if _make_encoder is not None
    else None
)
#: A JSON string in ASCII, as that encoder writes one (C, when json has it).
_string = json.encoder.encode_basestring_ascii
#: The scanner under ``JSONDecoder.raw_decode`` (one call less a message):
#: the messages are this encoder's, with no space around.  (typeshed has
#: make_scanner take a make_scanner; it takes the decoder it scans for.)
_scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
#: An answer, as ``encode`` writes one (``encode_answer``).
_ANSWER = f'{{"v":{PROTOCOL},"kind":"answer","conv":%d,"entry":%s,"text":%s,"by":%s}}'


def encode(kind: str, **fields: Any) -> bytes:
    """One message of this protocol, as bytes for the broker."""
    message = {"v": PROTOCOL, "kind": kind, **fields}
    if _encode_c is None:
        return _encode(message).encode("ascii")
    return "".join(_encode_c(message, 0)).encode("ascii")


def encode_answer(conv: int, entry: str, text: str, by: str) -> bytes:
    """``encode("answer", conv=conv, entry=entry, text=text, by=by)``: the
    same bytes, written without the encoder's walk of a dict (a worker
    writes one for every line)."""
    return (_ANSWER % (conv, _string(entry), _string(text), _string(by))).encode(
        "ascii"
    )


#: A workers' line, as ``encode`` writes one, but for its time (``encode_line``).
_LINE = (
    f'{{"v":{PROTOCOL},"kind":"line","instance":%s,"conv":%d,"peer":%s,"n":%d,'
    '"text":%s,"at":%d.%03d}'
)


def encode_line(
    instance: str, conv: int, peer: str, n: int, text: str, at: float
) -> bytes:
    """``encode("line", instance=..., conv=..., peer=..., n=..., text=...,
    at=round(at, 3))``, written without the encoder's walk of a dict, and
    its time (seconds) to the millisecond with integers: ``round`` and a
    float's ``repr`` were the costliest part of a line to write.  The same
    message (*at* may be spelt with trailing zeros), for an instance's
    every line to the workers."""
    if at < 0:  # not a clock's: the long way
        return encode(
            "line", instance=instance, conv=conv, peer=peer, n=n, text=text, at=at
        )
    seconds, ms = divmod(int(at * 1000 + 0.5), 1000)
    return (
        _LINE % (_string(instance), conv, _string(peer), n, _string(text), seconds, ms)
    ).encode("ascii")


def decode(data: bytes | str, *, sender: str = "a sender") -> dict[str, Any]:
    """The message in *data*; ``WireError`` if it is not one of this
    protocol's (*sender* names where it came from, for the error)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        message, end = _scan(text, 0)
        if end != len(text):
            raise ValueError("more after the JSON")
    except (ValueError, UnicodeDecodeError, StopIteration):
        raise WireError(f"{sender} sent something that is not JSON") from None
    if not isinstance(message, dict):
        raise WireError(f"{sender} sent a JSON {type(message).__name__}, not an object")
    version = message.get("v")
    if version != PROTOCOL:
        raise WireError(
            f"{sender} speaks broker protocol {version!r}; this sockchat speaks "
            f"{PROTOCOL}: run the same sockchat version everywhere"
        )
    if not isinstance(message.get("kind"), str):
        raise WireError(f"{sender} sent a message with no kind")
    return message


def said(who: str, by: str, text: str, at: float) -> bytes:
    """One item of a conversation's history (``IHistory``): *who* said it
    (``client``, ``operator``, ``bot``, or ``notice`` for what happened to
    the conversation), *by* whom (a name; empty for the client), *at*
    (seconds, the writer's clock)."""
    return encode("said", who=who, by=by, text=text, at=round(at, 3))
