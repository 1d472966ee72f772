"""What one connection's captured packets show the trace (followed.py): the
segments of each read, a reset, a half-close only with its ACK, the other
side's FIN, the counts; with frames made by hand, and hypothesis over how
bytes are cut into segments and into reads."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sockchat._teaching.followed import FollowedPackets
from sockchat._teaching.packets import (
    Flows,
    Segment,
    TcpFlags,
    Tracked,
    build_frame,
    parse_frame,
)
from sockchat._teaching.trace import Address, Side

CLIENT = Address("127.0.0.1", 51234)
SERVER = Address("127.0.0.1", 9527)
A, F, P, R = TcpFlags.ACK, TcpFlags.FIN, TcpFlags.PSH, TcpFlags.RST


class Wire:
    """Frames of one connection, tracked as the capture tracks them."""

    def __init__(self) -> None:
        self.flows = Flows(server_ports=(9527,))
        self.time = 1000.0
        self.seq = {Side.CLIENT: 100, Side.SERVER: 500}

    def send(self, sender: Side, flags: TcpFlags, payload: bytes = b"") -> Tracked:
        source, destination = (
            (CLIENT, SERVER) if sender is Side.CLIENT else (SERVER, CLIENT)
        )
        seq, other = self.seq[sender], self.seq[sender.other]
        frame = build_frame(
            source, destination, flags=flags, seq=seq, ack=other, payload=payload
        )
        self.seq[sender] = seq + len(payload) + bool(flags & (TcpFlags.SYN | F))
        segment = parse_frame(frame)
        assert isinstance(segment, Segment)
        self.time += 0.001
        return self.flows.track(segment, self.time)

    def handshake(self) -> list[Tracked]:
        return [
            self.send(Side.CLIENT, TcpFlags.SYN),
            self.send(Side.SERVER, TcpFlags.SYN | A),
            self.send(Side.CLIENT, A),
        ]


def followed(side: Side, packets: list[Tracked]) -> FollowedPackets:
    seen = FollowedPackets(side)
    for packet in packets:
        seen.add(packet)
    return seen


@given(
    st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=8),
    st.data(),
)
def test_each_read_is_said_to_come_in_the_segments_that_carried_its_bytes(sends, data):
    wire = Wire()
    seen = followed(Side.SERVER, wire.handshake())
    bounds = []  # where each segment's bytes begin and end in the stream
    at = 0
    for payload in sends:
        seen.add(wire.send(Side.CLIENT, P | A, payload))
        bounds.append((at, at + len(payload)))
        at += len(payload)
    # Any cutting of the same bytes into reads, in order.
    cuts = sorted(
        data.draw(st.sets(st.integers(1, at - 1), max_size=6)) if at > 1 else []
    )
    start = 0
    for end in [*cuts, at]:
        expected = sum(1 for a, b in bounds if a < end and b > start)
        assert seen.segments(start, end - start) == expected
        start = end


def test_a_segment_sent_again_is_counted_once_for_its_read():
    wire = Wire()
    packets = wire.handshake()
    first = wire.send(Side.CLIENT, P | A, b"one\n")
    wire.seq[Side.CLIENT] -= 4  # the same bytes again: a retransmission
    again = wire.send(Side.CLIENT, P | A, b"one\n")
    seen = followed(Side.SERVER, [*packets, first, again])
    assert seen.segments(0, 4) == 1
    assert seen.counts().data == 2  # both segments were seen, and counted


def test_without_the_others_syn_no_segments_are_claimed():
    wire = Wire()
    wire.handshake()
    wire.flows = Flows(server_ports=(9527,))  # the capture began after it
    seen = followed(Side.SERVER, [wire.send(Side.CLIENT, P | A, b"late\n")])
    assert seen.segments(0, 5) is None


def test_a_reset_is_who_sent_it_and_when():
    wire = Wire()
    packets = [*wire.handshake(), wire.send(Side.CLIENT, R | A)]
    reset = followed(Side.SERVER, packets).reset()
    assert reset is not None
    assert reset.by is Side.CLIENT
    assert reset.source.startswith(
        "a captured packet: RST from 127.0.0.1:51234, 3.000 ms after"
    )
    assert followed(Side.SERVER, wire.handshake()).reset() is None


def half_close(*, acked: bool, reset: bool = False) -> FollowedPackets:
    wire = Wire()
    packets = wire.handshake()
    packets.append(wire.send(Side.CLIENT, F | A))  # the client's FIN first
    packets.append(wire.send(Side.SERVER, P | A, b"!bye end-of-input\n"))
    if acked:
        packets.append(wire.send(Side.CLIENT, A))
    if reset:
        packets.append(wire.send(Side.CLIENT, R))
    return followed(Side.SERVER, packets)


def test_a_half_close_is_said_only_with_the_ack_of_what_came_after_the_fin():
    assert half_close(acked=True).peer_received() == (
        "a captured packet: the client's kernel acknowledged the 18 bytes this "
        "side sent after its FIN (ack 19)"
    )
    assert half_close(acked=False).peer_received() is None
    assert half_close(acked=False, reset=True).peer_received() is None
    assert half_close(acked=True, reset=True).peer_received() is None


def test_the_others_fin_and_this_sides_ack_of_it_are_said_as_captured():
    wire = Wire()
    packets = wire.handshake()
    packets.append(wire.send(Side.SERVER, F | A))
    packets.append(wire.send(Side.CLIENT, F | A))
    said = followed(Side.SERVER, packets).fin_from_other()
    assert said is not None
    assert said.startswith("a captured packet: FIN from 127.0.0.1:51234")
    assert "its ACK" not in said  # the last ACK is not captured yet
    packets.append(wire.send(Side.SERVER, A))
    said = followed(Side.SERVER, packets).fin_from_other()
    assert said is not None
    assert said.endswith(", and this side's kernel's ACK of it (4)")
    assert followed(Side.SERVER, packets[:4]).fin_from_other() is None


def test_past_what_is_kept_packets_are_still_counted():
    wire = Wire()
    seen = FollowedPackets(Side.SERVER, kept=4)
    for packet in wire.handshake():
        seen.add(packet)
    for _ in range(5):
        seen.add(wire.send(Side.CLIENT, P | A, b"x\n"))
    assert len(seen.packets) == 4
    assert seen.left_out == 4
    counts = seen.counts()
    assert (counts.segments, counts.syn, counts.data) == (8, 2, 5)
    assert seen.ladder().left_out == 4


def test_the_payload_kept_is_cut_and_its_length_stays_whole():
    wire = Wire()
    seen = FollowedPackets(Side.SERVER, payload=8)
    for packet in wire.handshake():
        seen.add(packet)
    seen.add(wire.send(Side.CLIENT, P | A, b"a long line, longer than eight\n"))
    kept = seen.packets[-1]
    assert kept.segment.payload == b"a long l"
    assert kept.data == 31
    assert seen.first_data is not None  # kept longer, for its layers
    assert seen.first_data.segment.payload == b"a long line, longer than eight\n"


def test_each_packet_is_named_as_its_step_of_the_handshake_and_the_close():
    wire = Wire()
    seen = FollowedPackets(Side.SERVER)
    steps = [seen.add(p) for p in wire.handshake()]
    steps.append(seen.add(wire.send(Side.SERVER, F | A)))
    steps.append(seen.add(wire.send(Side.CLIENT, A)))
    steps.append(seen.add(wire.send(Side.CLIENT, F | A)))
    steps.append(seen.add(wire.send(Side.SERVER, A)))
    assert steps == [
        "三次握手 1",
        "三次握手 2",
        "三次握手 3",
        "四次挥手 1",
        "四次挥手 2",
        "四次挥手 3",
        "四次挥手 4",
    ]
    # An RST that happens to acknowledge a FIN is not its ACK.
    wire = Wire()
    seen = FollowedPackets(Side.SERVER)
    for packet in wire.handshake():
        seen.add(packet)
    seen.add(wire.send(Side.SERVER, F | A))
    assert seen.add(wire.send(Side.CLIENT, R | A)) == ""
