"""The ladder diagram (sockchat._teaching.ladder): from packets and from a
socket, drawn as text (80 and 40 columns) and as SVG (360 px), with hostile
peer text made harmless."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from sockchat._console.screen import columns_of  # the console's own measure
from sockchat._core.render import UNSAFE
from sockchat._teaching.ladder import (
    MAX_STEPS,
    Arrow,
    Kind,
    Ladder,
    Note,
    SocketLadder,
    ladder_from_packets,
    render_svg,
    render_text,
)
from sockchat._teaching.packets import (
    Flows,
    Segment,
    TcpFlags,
    TcpOptions,
    build_frame,
    parse_frame,
)
from sockchat._teaching.trace import Address, ReadTracker, Reset, Side

CLIENT = Address("127.0.0.1", 51234)
SERVER = Address("127.0.0.1", 9527)
SVG = "{http://www.w3.org/2000/svg}"


def conversation(*, server_closes_first: bool = True, reset: bool = False):
    """A whole conversation's packets: handshake, a line each way, the close."""
    c, s, a, f, p = CLIENT, SERVER, TcpFlags.ACK, TcpFlags.FIN, TcpFlags.PSH
    frames = [
        build_frame(c, s, flags=TcpFlags.SYN, seq=100, options=TcpOptions(mss=65495)),
        build_frame(s, c, flags=TcpFlags.SYN | a, seq=500, ack=101),
        build_frame(c, s, flags=a, seq=101, ack=501),
        build_frame(c, s, flags=p | a, seq=101, ack=501, payload=b"hello\n"),
        build_frame(s, c, flags=a, seq=501, ack=107),
        build_frame(s, c, flags=p | a, seq=501, ack=107, payload=b"hello\n"),
    ]
    if reset:
        frames.append(build_frame(c, s, flags=TcpFlags.RST | a, seq=107, ack=507))
    elif server_closes_first:
        frames += [
            build_frame(s, c, flags=f | a, seq=507, ack=107),
            build_frame(c, s, flags=f | a, seq=107, ack=508),
            build_frame(s, c, flags=a, seq=508, ack=108),
        ]
    else:
        frames += [
            build_frame(c, s, flags=f | a, seq=107, ack=507),
            build_frame(s, c, flags=a, seq=507, ack=108),
            build_frame(s, c, flags=f | a, seq=507, ack=108),
            build_frame(c, s, flags=a, seq=108, ack=508),
        ]
    flows = Flows()
    packets = []
    for i, frame in enumerate(frames):
        segment = parse_frame(frame)
        assert isinstance(segment, Segment)
        packets.append(flows.track(segment, 1000.0 + i / 1000))
    return packets


def details(ladder: Ladder) -> list[tuple[str, str]]:
    return [(s.label, s.detail) for s in ladder.steps if isinstance(s, Arrow)]


def test_a_clean_conversations_ladder_numbers_the_handshake_and_the_close():
    ladder = ladder_from_packets(conversation())
    steps = details(ladder)
    assert [label for label, _ in steps] == [
        "SYN",
        "SYN-ACK",
        "ACK",
        "PSH-ACK 6 bytes",
        "ACK",
        "PSH-ACK 6 bytes",
        "FIN-ACK",
        "FIN-ACK",
        "ACK",
    ]
    assert steps[0][1] == "三次握手 1: seq 0 win 65535 mss 65495"
    assert steps[1][1].startswith("三次握手 2: seq 0 ack 1")
    assert steps[2][1].startswith("三次握手 3: seq 1 ack 1")
    assert steps[3][1] == "seq 1:7 ack 1 win 65535 b'hello\\n'"
    assert steps[6][1].startswith("四次挥手 1: seq 7 ack 7")
    assert steps[7][1].startswith("四次挥手 2, 3: seq 7 ack 8")
    assert steps[8][1].startswith("四次挥手 4: seq 8 ack 8")
    assert [s.sender for s in ladder.steps if isinstance(s, Arrow)][6] is Side.SERVER
    assert ladder.time_wait is not None
    assert ladder.time_wait.side is Side.SERVER  # it sent the first FIN
    assert ladder.time_wait.since == 1000.008
    assert ladder.client == "client 127.0.0.1:51234"
    text = "\n".join(render_text(ladder, now=1000.008 + 13))
    assert "TIME_WAIT (时间等待) on the server's side" in text
    assert "47 s left" in text
    assert "TCP_TIMEWAIT_LEN" in text
    assert "from captured packets" in text


def test_time_wait_follows_whoever_sent_the_first_fin():
    ladder = ladder_from_packets(conversation(server_closes_first=False))
    assert ladder.time_wait is not None
    assert ladder.time_wait.side is Side.CLIENT
    steps = details(ladder)
    assert steps[6][1].startswith("四次挥手 1")
    assert steps[7][1].startswith("四次挥手 2")
    assert steps[8][1].startswith("四次挥手 3")
    assert steps[9][1].startswith("四次挥手 4")


def test_a_reset_leaves_no_time_wait_and_is_drawn_as_rst():
    ladder = ladder_from_packets(conversation(reset=True))
    assert ladder.time_wait is None
    last = ladder.steps[-1]
    assert isinstance(last, Arrow)
    assert (last.label, last.kind, last.sender) == ("RST-ACK", Kind.RST, Side.CLIENT)
    assert "TIME_WAIT" not in "\n".join(render_text(ladder))


def test_from_the_socket_the_ladder_says_what_it_did_not_see():
    ladder = SocketLadder(Side.SERVER, SERVER, CLIENT)
    ladder.opened(10.0)
    reads = ReadTracker()
    ladder.read(10.1, reads.read(b"one\ntwo\nthree\n"))
    ladder.wrote(10.2, 4)
    ladder.closing(10.3)
    drawn = ladder.ladder()
    assert drawn.source == "the server's socket (no packets)"
    note = drawn.steps[0]
    assert isinstance(note, Note)
    assert "the kernel had done the three-way handshake" in note.text
    assert "no packet of it was seen here" in note.text
    read = drawn.steps[1]
    assert isinstance(read, Arrow)
    assert (read.sender, read.label, read.kind) == (
        Side.CLIENT,
        "read 14 bytes",
        Kind.READ,
    )
    assert read.detail.startswith("3 lines b'one\\ntwo")
    assert drawn.time_wait is not None
    assert drawn.time_wait.side is Side.SERVER
    assert drawn.time_wait.seen_by is None
    text = "\n".join(render_text(drawn))
    assert "expected, not seen" in text
    ladder.time_wait_seen("ss")
    assert "seen by ss" in "\n".join(render_text(ladder.ladder()))
    ladder.reset(10.4, Reset(Side.CLIENT, "a captured packet"))
    assert ladder.ladder().time_wait is None


def test_the_other_sides_fin_first_puts_time_wait_there():
    ladder = SocketLadder(Side.CLIENT, CLIENT, SERVER)
    ladder.opened(1.0)
    ladder.fin_received(2.0)
    ladder.closing(2.1)
    drawn = ladder.ladder()
    assert drawn.time_wait is not None
    assert drawn.time_wait.side is Side.SERVER
    assert drawn.client == "client 127.0.0.1:51234"


def test_past_its_bound_a_ladder_counts_what_it_leaves_out():
    ladder = SocketLadder(Side.SERVER, SERVER, CLIENT)
    for i in range(MAX_STEPS + 5):
        ladder.wrote(float(i), 1)
    drawn = ladder.ladder()
    assert len(drawn.steps) == MAX_STEPS
    assert drawn.left_out == 5
    assert render_text(drawn)[-1].endswith("5 more steps seen and not drawn")


HOSTILE = "\x1b[2J\x1b]0;owned\x07</text><script>alert(1)</script>&\u202e\r\n"

texts = st.text(
    st.characters(codec="utf-8") | st.sampled_from(list("中文\x1b\u202e\r\n<>&\"'")),
    max_size=120,
)


@st.composite
def ladders(draw):
    steps = []
    for i in range(draw(st.integers(0, 6))):
        side = draw(st.sampled_from([Side.CLIENT, Side.SERVER]))
        if draw(st.booleans()):
            steps.append(
                Note(float(i), draw(st.sampled_from([side, None])), draw(texts))
            )
        else:
            steps.append(
                Arrow(
                    float(i),
                    side,
                    draw(texts),
                    draw(texts),
                    draw(st.sampled_from(Kind)),
                )
            )
    return Ladder(
        client=f"client {draw(texts)}",
        server=f"server {draw(texts)}",
        steps=tuple(steps),
        source=draw(texts),
    )


@given(ladders(), st.integers(40, 120), st.booleans())
def test_text_fits_its_width_and_carries_no_control_character(ladder, width, ascii):
    for line in render_text(ladder, width=width, ascii=ascii):
        assert columns_of(line) <= width, line
        assert UNSAFE.search(line) is None, repr(line)


def test_hostile_peer_text_is_shown_escaped_in_text():
    ladder = Ladder("client", "server", (Note(0.0, Side.CLIENT, HOSTILE),), HOSTILE)
    text = "\n".join(render_text(ladder, width=80))
    assert "\x1b" not in text
    assert "\u202e" not in text
    assert "\\x1b[2J" in text
    assert "\\u202e" in text


def parse_svg(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


@given(ladders())
def test_the_svg_is_well_formed_self_contained_and_escapes_everything(ladder):
    svg = render_svg(ladder)
    root = parse_svg(svg)
    for element in root.iter():
        assert element.tag.removeprefix(SVG) not in ("script", "foreignObject", "image")
        for name, value in element.attrib.items():
            assert "href" not in name
            assert not name.startswith("on")
            assert "url(" not in value or re.fullmatch(r"url\(#[\w-]+\)", value)
            assert "http" not in value  # a peer's text may say http: only as text
    assert UNSAFE.search(svg) is None


def test_hostile_peer_text_in_the_svg_stays_text():
    ladder = Ladder(
        "client <b>",
        "server",
        (Arrow(0.0, Side.CLIENT, HOSTILE, HOSTILE + "\ud800", Kind.DATA),),
        "packets",
    )
    svg = render_svg(ladder)
    root = parse_svg(svg)
    assert [e for e in root.iter() if e.tag == f"{SVG}script"] == []
    shown = "".join(root.itertext())
    assert "<script>alert(1)</script>" in shown  # as text, to be read
    assert "\\x1b[2J" in shown
    assert "\\ud800" in shown


def test_the_svg_is_drawn_for_a_phones_width():
    svg = render_svg(ladder_from_packets(conversation()), now=1010.0)
    root = parse_svg(svg)
    assert root.get("width") == "360"
    assert root.get("viewBox", "").startswith("0 0 360 ")
    sizes = [
        float(e.get("font-size", "12")) for e in root.iter() if e.tag == f"{SVG}text"
    ]
    assert min(sizes) >= 10
    shown = "".join(root.itertext())
    assert "三次握手 1" in shown
    assert "TIME_WAIT" in shown
    assert "50 s left" in shown
    (bar,) = [e for e in root.iter() if e.get("data-time-wait-ends")]
    assert float(bar.get("data-time-wait-ends")) == 1060.008
