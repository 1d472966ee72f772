"""A ladder (sequence) diagram of one conversation, for a terminal and a page.

Two columns, the client's and the server's, and between them, in the order
they happened and with their times, what went from one to the other:

- from **captured packets** (``ladder_from_packets``): each segment, named
  by its flags (SYN, SYN-ACK, ACK, PSH-ACK, FIN-ACK, RST) with its relative
  sequence and acknowledgement numbers, its window and its length, the
  steps of the three-way handshake (三次握手) and of the four-way close
  (四次挥手) numbered;
- from **one side's socket** when there are no packets (``SocketLadder``):
  ``accept()`` or ``connect()`` returning (the kernel had done the handshake
  before: no packet of it was seen), each read (bytes, lines) and write,
  the other side's FIN as the end of file read, this side's close, and an
  RST where one was seen.

Then TIME_WAIT on the side that closed first, with its countdown: 60 s on
Linux, the kernel's ``TCP_TIMEWAIT_LEN`` (``include/net/tcp.h``: "How long
to wait to destroy TIME-WAIT state, about 60 seconds").  A ladder says
where its steps come from, and says an expected TIME_WAIT is expected
until something (``ss``, or the last ACK captured) shows it.

``render_text`` draws it for a terminal: box-drawing characters (or plain
ASCII), 80 columns, and still readable at 40.  ``render_svg`` draws it as
one self-contained SVG (no scripts, no links, no fonts or images from
elsewhere) that is readable 360 pixels wide, a phone's width.  Every piece
of text goes through ``safe_text`` first, and into the SVG XML-escaped.
Nothing here does I/O.
"""

from __future__ import annotations

import enum
import html
import re
from collections.abc import Sequence

from attrs import frozen

from sockchat._core.render import columns_of, safe_text
from sockchat._teaching.packets import TcpFlags, Tracked, flag_names
from sockchat._teaching.trace import (
    TIME_WAIT_SECONDS,
    Address,
    ReadFact,
    Reset,
    Side,
)

__all__ = [
    "MAX_STEPS",
    "Arrow",
    "Kind",
    "Ladder",
    "Note",
    "SocketLadder",
    "TimeWait",
    "describe_packet",
    "ladder_from_packets",
    "packet_arrow",
    "phases",
    "render_svg",
    "render_text",
]

#: Steps a ladder holds at most; past that they are counted, not drawn.
MAX_STEPS = 400
#: Bytes of a segment's or a read's payload shown.
EXCERPT = 24
TIME_WAIT_SOURCE = (
    f"{TIME_WAIT_SECONDS} s on Linux: TCP_TIMEWAIT_LEN in include/net/tcp.h"
)


class Kind(enum.Enum):
    """What an arrow is, for its look."""

    HANDSHAKE = "handshake"
    DATA = "data"
    ACK = "ack"
    FIN = "fin"
    RST = "rst"
    READ = "read"  # seen from a socket: bytes that came in
    WRITE = "write"  # seen from a socket: bytes handed to the kernel


@frozen
class Arrow:
    """Something that went from *sender* to the other side."""

    time: float
    sender: Side
    label: str
    detail: str = ""
    kind: Kind = Kind.ACK


@frozen
class Note:
    """Something one side saw or did that is not a segment; *side* None:
    about the connection."""

    time: float
    side: Side | None
    text: str


@frozen
class TimeWait:
    """TIME_WAIT on *side*, from *since*: *why* it is there, and *seen_by*,
    what showed the socket in it (``ss``), or None: expected, not seen."""

    side: Side
    since: float
    why: str = "it closed first"
    seen_by: str | None = None
    seconds: int = TIME_WAIT_SECONDS

    def left(self, now: float) -> float:
        return max(0.0, self.since + self.seconds - now)


@frozen
class Ladder:
    client: str
    server: str
    steps: tuple[Arrow | Note, ...]
    #: Where the steps come from: "captured packets", "the server's socket".
    source: str
    time_wait: TimeWait | None = None
    #: Steps seen and not drawn (past ``MAX_STEPS``, or not kept by the capture).
    left_out: int = 0
    start: float = 0.0


# -- From packets --------------------------------------------------------------


def _excerpt(data: bytes, size: int) -> str:
    shown = repr(data[:EXCERPT])
    return shown + ("..." if size > EXCERPT else "")


def packet_arrow(packet: Tracked, phase: str = "") -> Arrow:
    """The arrow of one captured segment; *phase*: its step of the handshake
    or the close (``phases``), or ""."""
    flags = packet.flags
    name = flag_names(flags)
    size = packet.data
    label = f"{name} {size} bytes" if size else name
    seq = f"seq {packet.relative_seq}"
    if size:
        seq += f":{(packet.relative_seq + size) % 2**32}"
    parts = [seq]
    if packet.relative_ack is not None:
        parts.append(f"ack {packet.relative_ack}")
    parts.append(f"win {packet.segment.tcp.window}")
    options = packet.segment.tcp.options
    if TcpFlags.SYN in flags and options.describe():
        parts.append(options.describe())
    detail = " ".join(parts)
    if phase:
        detail = f"{phase}: {detail}"
    if size:
        detail += f" {_excerpt(packet.segment.payload, size)}"
    if TcpFlags.RST in flags:
        kind = Kind.RST
    elif TcpFlags.SYN in flags:
        kind = Kind.HANDSHAKE
    elif TcpFlags.FIN in flags:
        kind = Kind.FIN
    elif size:
        kind = Kind.DATA
    else:
        kind = Kind.ACK
    return Arrow(packet.time, packet.sender, label, detail, kind)


def phases(packets: Sequence[Tracked]) -> list[str]:
    """The steps of the handshake (三次握手 1-3) or of the close (四次挥手 1-4)
    that each packet is, or ""."""
    steps: list[list[tuple[str, int]]] = [[] for _ in packets]
    syn_ack_seen = False
    fins: list[tuple[int, Side, int]] = []  # (index, sender, the seq after its FIN)
    for i, p in enumerate(packets):
        flags = p.flags
        if TcpFlags.SYN in flags:
            first = TcpFlags.ACK not in flags
            steps[i].append(("三次握手", 1 if first else 2))
            syn_ack_seen = syn_ack_seen or not first
        elif (
            syn_ack_seen
            and p.sender is Side.CLIENT
            and p.relative_ack == 1
            and not p.data
            and TcpFlags.FIN not in flags
        ):
            steps[i].append(("三次握手", 3))
            syn_ack_seen = False
        if TcpFlags.FIN in flags and all(
            sender is not p.sender for _, sender, _ in fins
        ):
            fins.append((i, p.sender, (p.relative_seq + p.data + 1) % 2**32))
            steps[i].append(("四次挥手", 1 if len(fins) == 1 else 3))
    for n, (at, sender, end) in enumerate(fins):
        answer = next(
            (j for j in range(at + 1, len(packets))
             if packets[j].sender is not sender and packets[j].relative_ack == end
             and TcpFlags.RST not in packets[j].flags),
            None,
        )  # fmt: skip
        if answer is not None:
            steps[answer].append(("四次挥手", 2 if n == 0 else 4))
    named = []
    for found in steps:
        names = dict.fromkeys(name for name, _ in found)
        named.append(
            "; ".join(
                f"{name} "
                + ", ".join(str(k) for k in sorted(k for m, k in found if m == name))
                for name in names
            )
        )
    return named


def describe_packet(packet: Tracked, phase: str = "", *, start: float) -> str:
    """One captured segment as a trace line: when (in ms from *start*, the
    connection's first packet), who to whom, its flags, numbers and
    payload, as the ladder draws it."""
    arrow = packet_arrow(packet, phase)
    when = _since(packet.time - start)
    sender = packet.sender
    return (
        f"packet {when} ms: {sender.value} -> {sender.other.value} {arrow.label}: "
        f"{arrow.detail}"
    )


def ladder_from_packets(
    packets: Sequence[Tracked],
    *,
    client: Address | None = None,
    server: Address | None = None,
    dropped: int = 0,
    time_wait_seen_by: str | None = None,
) -> Ladder:
    """The ladder of one connection's captured packets, in order.

    TIME_WAIT is put on the side whose FIN came first, once both FINs and
    the last ACK were captured and no RST came: then the packets show it
    (``time_wait_seen_by`` may name another witness, such as ``ss``).
    """
    packets = sorted(packets, key=lambda p: p.time)
    if packets:
        client = client or packets[0].connection.client
        server = server or packets[0].connection.server
    steps_of = phases(packets)
    steps = [packet_arrow(p, step) for p, step in zip(packets, steps_of, strict=True)]
    time_wait = None
    reset = any(TcpFlags.RST in p.flags for p in packets)
    fins = [p for p in packets if TcpFlags.FIN in p.flags]
    last_ack = next(
        (p for p, step in zip(packets, steps_of, strict=True) if step.endswith("4")),
        None,
    )
    if not reset and fins and last_ack is not None:
        time_wait = TimeWait(
            fins[0].sender,
            last_ack.time,
            "it closed first, and the capture shows the four-way close ended in order",
            time_wait_seen_by,
        )
    return _bounded(
        client,
        server,
        steps,
        "captured packets",
        time_wait,
        dropped,
        packets[0].time if packets else 0.0,
    )


def _bounded(
    client: Address | None,
    server: Address | None,
    steps: Sequence[Arrow | Note],
    source: str,
    time_wait: TimeWait | None,
    left_out: int,
    start: float,
) -> Ladder:
    return Ladder(
        client=f"client {client}" if client else "client",
        server=f"server {server}" if server else "server",
        steps=tuple(steps[:MAX_STEPS]),
        source=source,
        time_wait=time_wait,
        left_out=left_out + max(0, len(steps) - MAX_STEPS),
        start=start,
    )


# -- From one side's socket ----------------------------------------------------


class SocketLadder:
    """The ladder as one side's socket sees it, step by step, with no packets.

    Fed by the glue (``tracing.py``): each method takes the time and what
    was seen.  At most *most* steps are kept (``MAX_STEPS``); the rest are
    counted.
    """

    def __init__(
        self,
        side: Side,
        local: Address | None,
        remote: Address | None,
        *,
        most: int = MAX_STEPS,
    ) -> None:
        self.side = side
        self._most = most
        self._local = local
        self._remote = remote
        self._steps: list[Arrow | Note] = []
        self._left_out = 0
        self._first_close: Side | None = None
        self._closed_at: float | None = None
        self._reset = False
        self._time_wait_seen: str | None = None

    def _add(self, step: Arrow | Note) -> None:
        if len(self._steps) >= self._most:
            self._left_out += 1
        else:
            self._steps.append(step)

    def opened(self, now: float) -> None:
        """``accept()`` (the server) or ``connect()`` (the client) returned."""
        call = "accept()" if self.side is Side.SERVER else "connect()"
        self._add(
            Note(
                now,
                self.side,
                f"{call} returned: the kernel had done the three-way handshake "
                "(三次握手: SYN, SYN-ACK, ACK) before; no packet of it was seen here",
            )
        )

    def read(self, now: float, fact: ReadFact) -> None:
        if fact.raw:
            lines = "1 message"
        else:
            lines = f"{fact.lines} line{'' if fact.lines == 1 else 's'}"
        self._add(
            Arrow(
                now,
                self.side.other,
                f"read {fact.size} bytes",
                f"{lines} {_excerpt(fact.excerpt, fact.size)}",
                Kind.READ,
            )
        )

    def wrote(self, now: float, size: int) -> None:
        self._add(Arrow(now, self.side, f"write {size} bytes", "", Kind.WRITE))

    def fin_received(self, now: float) -> None:
        if self._first_close is None:
            self._first_close = self.side.other
        self._add(
            Arrow(now, self.side.other, "FIN", "seen as the end of file read", Kind.FIN)
        )

    def closing(self, now: float) -> None:
        if self._first_close is None:
            self._first_close = self.side
            self._closed_at = now
        self._add(
            Arrow(now, self.side, "FIN", "close(): its kernel sends FIN", Kind.FIN)
        )

    def reset(self, now: float, reset: Reset) -> None:
        self._reset = True
        self._add(Arrow(now, reset.by, "RST", f"seen: {reset.source}", Kind.RST))

    def note(self, now: float, text: str, side: Side | None = None) -> None:
        self._add(Note(now, side, text))

    def time_wait_seen(self, by: str) -> None:
        """Something (``ss``) showed TIME_WAIT where the ladder expects it."""
        self._time_wait_seen = by

    def ladder(self) -> Ladder:
        time_wait = None
        if self._first_close is not None and not self._reset:
            since = max((step.time for step in self._steps), default=0.0)
            time_wait = TimeWait(self._first_close, since, seen_by=self._time_wait_seen)
        client, server = (
            (self._remote, self._local)
            if self.side is Side.SERVER
            else (self._local, self._remote)
        )
        return _bounded(
            client,
            server,
            self._steps,
            f"the {self.side.value}'s socket (no packets)",
            time_wait,
            self._left_out,
            self._steps[0].time if self._steps else 0.0,
        )


# -- Text ----------------------------------------------------------------------


def _columns(text: str) -> int:
    """Terminal columns *text* takes, as the console measures them."""
    return columns_of(text)


def _fit(text: str, columns: int) -> str:
    """*text* cut to *columns*, with ``…`` where it was cut."""
    if _columns(text) <= columns:
        return text
    out, used = "", 0
    for c in text:
        width = _columns(c)
        if used + width > columns - 1:
            break
        out, used = out + c, used + width
    return out + "…"


def _wrap(text: str, columns: int) -> list[str]:
    """*text* in lines of at most *columns*, broken at spaces where it can."""
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        while _columns(word) > columns:  # a word longer than a line: cut it
            room = columns - _columns(line) - (1 if line else 0)
            if room < 8 and line:
                lines.append(line)
                line, room = "", columns
            head = _fit(word, room + 1)[:-1] if room > 0 else ""
            lines.append((line + " " if line else "") + head)
            line, word = "", word[len(head) :]
        candidate = f"{line} {word}" if line else word
        if _columns(candidate) <= columns:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line or not lines:
        lines.append(line)
    return lines


@frozen
class _Glyphs:
    rail: str
    line: str
    right: str
    left: str


_BOX = _Glyphs("│", "─", "▶", "◀")
_ASCII = _Glyphs("|", "-", ">", "<")


def _pad(text: str, columns: int, *, right: bool = False) -> str:
    gap = " " * max(0, columns - _columns(text))
    return gap + text if right else text + gap


def render_text(
    ladder: Ladder, *, width: int = 80, now: float | None = None, ascii: bool = False
) -> list[str]:
    """The ladder as lines for a terminal *width* columns wide (40 at least).

    *now* gives TIME_WAIT's countdown (the seconds left); without it, the
    whole 60 s are said.
    """
    width = max(40, width)
    g = _ASCII if ascii else _BOX
    stamp = 9
    span = width - stamp - 2  # between the two rails
    blank = " " * stamp

    def row(time: str, inner: str) -> str:
        return f"{time}{g.rail}{_pad(inner, span)}{g.rail}"

    def inside(text: str, side: Side | None) -> list[str]:
        lines = _wrap(safe_text(text), span - 2)
        return [
            row(blank, " " + _pad(line, span - 2, right=side is Side.SERVER) + " ")
            for line in lines
        ]

    out = [_fit(safe_text(f"time (ms) {ladder.client} <-> {ladder.server}"), width)]
    client, server = safe_text(ladder.client), safe_text(ladder.server)
    if _columns(client) + _columns(server) + 1 <= span + 2:
        heads = _pad(client, span + 2 - _columns(server)) + server
        out.append(blank + heads)
    else:
        out.append(blank + _pad("client", span + 2 - 6) + "server")
    out.append(blank + g.rail + " " * span + g.rail)
    for step in ladder.steps:
        time = _pad(_since(step.time - ladder.start), stamp - 1, right=True) + " "
        if isinstance(step, Note):
            lines = inside(step.text, step.side)
            out.append(time + lines[0][stamp:])
            out.extend(lines[1:])
            continue
        label = _fit(safe_text(step.label), span - 5)
        fill = g.line * (span - 4 - _columns(label))
        if step.sender is Side.CLIENT:
            arrow = f"{g.line} {label} {fill}{g.right}"
        else:
            arrow = f"{g.left}{fill} {label} {g.line}"
        out.append(row(time, arrow))
        if step.detail:
            out.extend(inside(step.detail, step.sender))
    if ladder.time_wait is not None:
        out.extend(
            inside(_time_wait_text(ladder.time_wait, now), ladder.time_wait.side)
        )
    out.append(blank + g.rail + " " * span + g.rail)
    out.extend(_fit(line, width) for line in _wrap(_footer(ladder), width))
    return out


def _since(seconds: float) -> str:
    """Milliseconds since the first step, as a ladder's time column says them."""
    if seconds < 100:
        return f"{seconds * 1000:.3f}"
    return f"{seconds * 1000:.0f}"


def _time_wait_text(time_wait: TimeWait, now: float | None) -> str:
    if now is None:
        left = f"{time_wait.seconds} s"
    else:
        remaining = time_wait.left(now)
        left = f"{remaining:.0f} s left" if remaining > 0 else "over"
    seen = f"seen by {time_wait.seen_by}" if time_wait.seen_by else "expected, not seen"
    return (
        f"TIME_WAIT (时间等待) on the {time_wait.side.value}'s side ({time_wait.why}): "
        f"{left}; {seen} ({TIME_WAIT_SOURCE})"
    )


def _footer(ladder: Ladder) -> str:
    text = f"from {ladder.source}"
    if ladder.left_out:
        text += f"; {ladder.left_out} more steps seen and not drawn"
    return safe_text(text)


# -- SVG -----------------------------------------------------------------------

#: Characters XML 1.0 does not allow, even as references: shown as escapes.
_NOT_XML = re.compile("[\ud800-\udfff\ufffe\uffff]")
SVG_WIDTH = 360
_LEFT, _RIGHT = 24, SVG_WIDTH - 24
_COLOURS = {
    Kind.HANDSHAKE: "#1f5fbf",
    Kind.DATA: "#111111",
    Kind.ACK: "#777777",
    Kind.FIN: "#b35c00",
    Kind.RST: "#c4001a",
    Kind.READ: "#2b7a2b",
    Kind.WRITE: "#2b7a2b",
}
#: Characters of detail text a line holds at 10 px in 312 px.
_SVG_LINE = 52


def _x(text: str) -> str:
    """*text* made safe (``safe_text``), then escaped for XML."""
    shown = _NOT_XML.sub(lambda m: f"\\u{ord(m.group()):04x}", safe_text(text))
    return html.escape(shown, quote=True)


def render_svg(ladder: Ladder, *, now: float | None = None) -> str:
    """The ladder as one self-contained SVG document, 360 px wide."""
    parts: list[str] = []
    y = 20
    parts.append(
        f'<text x="{SVG_WIDTH // 2}" y="{y}" text-anchor="middle" '
        f'font-size="12" font-weight="bold">{_x("TCP ladder")}</text>'
    )
    y += 18
    parts.append(f'<text x="{_LEFT}" y="{y}" font-size="11">{_x(ladder.client)}</text>')
    y += 14
    parts.append(
        f'<text x="{_RIGHT}" y="{y}" font-size="11" text-anchor="end">'
        f"{_x(ladder.server)}</text>"
    )
    top = y + 8
    y = top + 16
    for step in ladder.steps:
        time = f"{_since(step.time - ladder.start)} ms"
        if isinstance(step, Note):
            lines = _wrap(safe_text(step.text), _SVG_LINE)
            anchor, x = _anchor(step.side)
            parts.append(
                f'<text x="{x}" y="{y}" font-size="10" fill="#555555" '
                f'text-anchor="{anchor}">{_x(time)}</text>'
            )
            for line in lines:
                y += 13
                parts.append(
                    f'<text x="{x}" y="{y}" font-size="10" text-anchor="{anchor}" '
                    f'font-style="italic">{_x(line)}</text>'
                )
            y += 18
            continue
        colour = _COLOURS[step.kind]
        x1, x2 = (_LEFT, _RIGHT) if step.sender is Side.CLIENT else (_RIGHT, _LEFT)
        dash = ' stroke-dasharray="4 3"' if step.kind in (Kind.READ, Kind.WRITE) else ""
        parts.append(
            f'<text x="{SVG_WIDTH // 2}" y="{y - 4}" font-size="11" '
            f'text-anchor="middle" fill="{colour}">{_x(step.label)}</text>'
        )
        parts.append(
            f'<line x1="{x1}" y1="{y}" x2="{x2 - 6 if x2 > x1 else x2 + 6}" y2="{y}" '
            f'stroke="{colour}" stroke-width="1.5"{dash} '
            f'marker-end="url(#head-{step.kind.value})"/>'
        )
        lines = _wrap(safe_text(f"{time} {step.detail}".strip()), _SVG_LINE)
        for line in lines:
            y += 13
            parts.append(
                f'<text x="{SVG_WIDTH // 2}" y="{y}" font-size="10" '
                f'text-anchor="middle" fill="#333333">{_x(line)}</text>'
            )
        y += 22
    bottom = y
    if ladder.time_wait is not None:
        tw = ladder.time_wait
        x = _LEFT if tw.side is Side.CLIENT else _RIGHT
        ends = tw.since + tw.seconds
        parts.append(
            f'<rect x="{x - 4}" y="{bottom - 10}" width="8" height="40" '
            f'fill="#b35c00" opacity="0.5" data-time-wait-ends="{ends:.3f}"/>'
        )
        anchor, tx = _anchor(tw.side)
        for line in _wrap(safe_text(_time_wait_text(tw, now)), _SVG_LINE - 4):
            y += 13
            shift = 10 if anchor == "start" else -10
            parts.append(
                f'<text x="{tx + shift}" y="{y}" font-size="10" '
                f'text-anchor="{anchor}" fill="#b35c00">{_x(line)}</text>'
            )
        y += 36
    for line in _wrap(_footer(ladder), _SVG_LINE):
        y += 13
        parts.append(
            f'<text x="{SVG_WIDTH // 2}" y="{y}" font-size="10" '
            f'text-anchor="middle" fill="#555555">{_x(line)}</text>'
        )
    height = y + 12
    # When it was drawn (seconds since the epoch), for a page's countdown.
    drawn = "" if now is None else f' data-now="{now:.3f}"'
    rails = "".join(
        f'<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" stroke="#999999" '
        'stroke-width="2"/>'
        for x in (_LEFT, _RIGHT)
    )
    heads = "".join(
        f'<marker id="head-{kind.value}" viewBox="0 0 10 10" refX="9" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        f'<path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>'
        for kind, colour in _COLOURS.items()
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {SVG_WIDTH} {height}" '
        f'width="{SVG_WIDTH}" height="{height}" role="img"{drawn} '
        'font-family="DejaVu Sans Mono, Menlo, Consolas, monospace">'
        f"<title>{_x(f'TCP ladder: {ladder.client} <-> {ladder.server}')}</title>"
        f"<defs>{heads}</defs>"
        f'<rect width="{SVG_WIDTH}" height="{height}" fill="#ffffff"/>'
        f"{rails}{''.join(parts)}</svg>"
    )


def _anchor(side: Side | None) -> tuple[str, int]:
    if side is Side.CLIENT:
        return "start", _LEFT + 6
    if side is Side.SERVER:
        return "end", _RIGHT - 6
    return "middle", SVG_WIDTH // 2
