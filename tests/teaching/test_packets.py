"""The packet parser (sockchat._teaching.packets): frames made by hand, and
any bytes at all, never an exception."""

from __future__ import annotations

import struct

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from sockchat._teaching.packets import (
    Connection,
    Flows,
    IPv4,
    IPv6,
    Problem,
    Segment,
    TcpFlags,
    TcpOptions,
    Undecoded,
    build_frame,
    count,
    flag_names,
    mac_text,
    normal_host,
    parse_frame,
)
from sockchat._teaching.trace import Address, Side

CLIENT = Address("127.0.0.1", 51234)
SERVER = Address("127.0.0.1", 9527)
CLIENT6 = Address("::1", 51234)
SERVER6 = Address("::1", 9527)

u32 = st.integers(0, 2**32 - 1)
ports = st.integers(1, 65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
options = st.builds(
    TcpOptions,
    mss=st.none() | st.integers(0, 65535),
    window_scale=st.none() | st.integers(0, 14),
    sack_permitted=st.booleans(),
    timestamps=st.none() | st.tuples(u32, u32),
    sack=st.lists(st.tuples(u32, u32), max_size=2).map(tuple),
)


@st.composite
def frames(draw):
    """(the values, the frame built from them)."""
    hosts = draw(st.sampled_from([ipv4, ipv6]))
    values = dict(
        source=Address(draw(hosts), draw(ports)),
        destination=Address(draw(hosts), draw(ports)),
        flags=TcpFlags(draw(st.integers(0, 255))),
        seq=draw(u32),
        ack=draw(u32),
        window=draw(st.integers(0, 65535)),
        options=draw(options),
        payload=draw(st.binary(max_size=200)),
        ttl=draw(st.integers(0, 255)),
        mac_source=draw(st.binary(min_size=6, max_size=6)),
        mac_destination=draw(st.binary(min_size=6, max_size=6)),
    )
    try:
        frame = build_frame(**values)
    except ValueError:  # too many options for 40 bytes
        assume(False)
    return values, frame


@given(frames())
def test_a_built_frame_parses_back_to_its_values(made):
    values, frame = made
    segment = parse_frame(frame)
    assert isinstance(segment, Segment), str(segment)
    assert segment.source == values["source"]
    assert segment.destination == values["destination"]
    assert segment.link.source == values["mac_source"]
    assert segment.link.destination == values["mac_destination"]
    assert segment.ip.ttl == values["ttl"]
    tcp = segment.tcp
    assert (tcp.flags, tcp.seq, tcp.ack, tcp.window) == (
        values["flags"],
        values["seq"],
        values["ack"],
        values["window"],
    )
    assert tcp.options == values["options"]
    assert segment.payload == values["payload"]
    assert segment.payload_length == len(values["payload"])
    assert not segment.snapped


@given(frames(), st.data())
def test_a_frame_cut_anywhere_is_truncated_never_an_exception(made, data):
    _, frame = made
    cut = data.draw(st.integers(0, len(frame) - 1))
    parsed = parse_frame(frame[:cut])
    assert isinstance(parsed, Undecoded)
    assert parsed.problem is Problem.TRUNCATED, str(parsed)


@given(frames(), st.data())
def test_a_frame_cut_by_a_snap_length_keeps_its_headers_and_true_length(made, data):
    values, frame = made
    headers = len(frame) - len(values["payload"])
    cut = data.draw(st.integers(headers, len(frame)))
    parsed = parse_frame(frame[:cut], original_length=len(frame))
    assert isinstance(parsed, Segment)
    assert parsed.payload == values["payload"][: cut - headers]
    assert parsed.payload_length == len(values["payload"])
    assert parsed.snapped == (cut < len(frame))


@given(st.binary(max_size=200))
def test_any_bytes_give_a_segment_or_a_reason(data):
    parsed = parse_frame(data)
    assert isinstance(parsed, (Segment, Undecoded))
    if isinstance(parsed, Undecoded):
        assert str(parsed)


@given(
    frames(), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=8)
)
def test_a_frame_with_bytes_changed_never_raises(made, changes):
    _, frame = made
    mutable = bytearray(frame)
    for at, value in changes:
        if at < len(mutable):
            mutable[at] = value
    parsed = parse_frame(bytes(mutable))
    assert isinstance(parsed, (Segment, Undecoded))


def test_ethernet_padding_is_not_payload():
    frame = build_frame(CLIENT, SERVER, flags=TcpFlags.ACK)  # 54 bytes
    parsed = parse_frame(frame + bytes(60 - len(frame)))  # padded to Ethernet's 60
    assert isinstance(parsed, Segment)
    assert parsed.payload == b""
    assert parsed.payload_length == 0


def test_ipv4_header_fields_and_the_loopback_frame():
    frame = build_frame(CLIENT, SERVER, flags=TcpFlags.SYN, identification=7)
    parsed = parse_frame(frame)
    assert isinstance(parsed, Segment)
    ip = parsed.ip
    assert isinstance(ip, IPv4)
    assert (ip.version, ip.header_length, ip.total_length, ip.ttl) == (4, 20, 40, 64)
    assert ip.dont_fragment
    assert not ip.more_fragments
    assert ip.identification == 7
    assert mac_text(parsed.link.source) == "00:00:00:00:00:00"


def _with_fragment_bits(frame: bytes, bits: int) -> bytes:
    return frame[:20] + struct.pack("!H", bits) + frame[22:]


@pytest.mark.parametrize(
    ("bits", "says"),
    [(0x2000, "offset 0, more to come"), (0x0003, "offset 24, the last")],
)
def test_ipv4_fragments_are_recognised_not_read_as_tcp(bits, says):
    frame = build_frame(CLIENT, SERVER, payload=b"x" * 40)
    parsed = parse_frame(_with_fragment_bits(frame, bits))
    assert isinstance(parsed, Undecoded)
    assert parsed.problem is Problem.FRAGMENT
    assert says in parsed.detail
    assert "not reassembled" in str(parsed)


def _ipv6_with(frame: bytes, extension: bytes, kind: int) -> bytes:
    """*frame* (IPv6) with one extension header of *kind* before TCP."""
    eth, ip, tcp = frame[:14], frame[14:54], frame[54:]
    length = struct.unpack("!H", ip[4:6])[0] + len(extension)
    ip = ip[:4] + struct.pack("!HB", length, kind) + ip[7:]
    return eth + ip + extension + tcp


def test_ipv6_extension_headers_are_skipped():
    frame = build_frame(CLIENT6, SERVER6, flags=TcpFlags.ACK, payload=b"hi\n")
    hop_by_hop = bytes([6, 0]) + bytes(6)  # next: TCP; 8 bytes; padding
    parsed = parse_frame(_ipv6_with(frame, hop_by_hop, 0))
    assert isinstance(parsed, Segment), str(parsed)
    assert isinstance(parsed.ip, IPv6)
    assert parsed.ip.extensions == (0,)
    assert parsed.ip.header_length == 48
    assert parsed.payload == b"hi\n"
    atomic = bytes([6, 0, 0, 0]) + b"\0\0\0\1"  # a fragment header, no fragmenting
    parsed = parse_frame(_ipv6_with(frame, atomic, 44))
    assert isinstance(parsed, Segment)
    assert parsed.ip.extensions == (44,)


def test_an_ipv6_fragment_is_recognised():
    frame = build_frame(CLIENT6, SERVER6, payload=b"x" * 16)
    fragment = bytes([6, 0]) + struct.pack("!H", (1 << 3) | 1) + b"\0\0\0\1"
    parsed = parse_frame(_ipv6_with(frame, fragment, 44))
    assert isinstance(parsed, Undecoded)
    assert parsed.problem is Problem.FRAGMENT
    assert "offset 8" in parsed.detail


def test_not_ip_and_not_tcp_say_what_they_are():
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    parsed = parse_frame(arp)
    assert isinstance(parsed, Undecoded)
    assert str(parsed) == "Ethernet: not IP: ethertype 0x0806"
    frame = bytearray(build_frame(CLIENT, SERVER))
    frame[23] = 17  # UDP
    parsed = parse_frame(bytes(frame))
    assert isinstance(parsed, Undecoded)
    assert str(parsed) == "IPv4: not TCP: protocol 17"


def test_bad_lengths_are_malformed():
    frame = bytearray(build_frame(CLIENT, SERVER, payload=b"abcd"))
    frame[14 + 20 + 12] = 2 << 4  # data offset 8 bytes
    parsed = parse_frame(bytes(frame))
    assert isinstance(parsed, Undecoded)
    assert parsed.problem is Problem.MALFORMED
    assert "data offset 8" in parsed.detail
    frame = bytearray(build_frame(CLIENT, SERVER, options=TcpOptions(mss=1460)))
    frame[14 + 20 + 21] = 0  # the MSS option's length: 0
    parsed = parse_frame(bytes(frame))
    assert isinstance(parsed, Undecoded)
    assert "option 2 has a bad length" in parsed.detail


def test_flag_names_read_as_people_say_them():
    assert flag_names(TcpFlags.SYN | TcpFlags.ACK) == "SYN-ACK"
    assert flag_names(TcpFlags.FIN | TcpFlags.ACK | TcpFlags.PSH) == "FIN-PSH-ACK"
    assert flag_names(TcpFlags.RST) == "RST"
    assert flag_names(TcpFlags(0)) == "(no flags)"
    options = TcpOptions(mss=65495, sack_permitted=True, timestamps=(1, 0))
    assert options.describe() == "mss 65495, sackOK, TS val 1 ecr 0"


def _handshake_and_data(client: Address, server: Address, isn_c: int, isn_s: int):
    c, s = client, server
    isn_c, isn_s = isn_c % 2**32, isn_s % 2**32

    def w(n):
        return n % 2**32

    return [
        build_frame(c, s, flags=TcpFlags.SYN, seq=isn_c),
        build_frame(
            s, c, flags=TcpFlags.SYN | TcpFlags.ACK, seq=isn_s, ack=w(isn_c + 1)
        ),
        build_frame(c, s, flags=TcpFlags.ACK, seq=w(isn_c + 1), ack=isn_s + 1),
        build_frame(
            c,
            s,
            flags=TcpFlags.PSH | TcpFlags.ACK,
            seq=w(isn_c + 1),
            ack=isn_s + 1,
            payload=b"hello\n",
        ),
        build_frame(s, c, flags=TcpFlags.ACK, seq=isn_s + 1, ack=w(isn_c + 7)),
    ]


def _track(flows: Flows, raw: list[bytes]):
    out = []
    for i, frame in enumerate(raw):
        segment = parse_frame(frame)
        assert isinstance(segment, Segment)
        out.append(flows.track(segment, float(i)))
    return out


def test_relative_numbers_count_from_each_syn_as_wireshark_does():
    flows = Flows()
    isn_c, isn_s = 2**32 - 3, 1000  # the client's wraps around
    tracked = _track(flows, _handshake_and_data(CLIENT, SERVER, isn_c, isn_s))
    assert [(t.sender, t.relative_seq, t.relative_ack) for t in tracked] == [
        (Side.CLIENT, 0, None),
        (Side.SERVER, 0, 1),
        (Side.CLIENT, 1, 1),
        (Side.CLIENT, 1, 1),
        (Side.SERVER, 1, 7),
    ]
    assert {t.connection for t in tracked} == {Connection(CLIENT, SERVER)}
    assert all(t.from_syn for t in tracked)
    assert count((t.flags, t.data) for t in tracked).data == 1


def test_without_the_syn_the_first_number_seen_counts_as_one():
    flows = Flows(server_ports=[9527])
    raw = _handshake_and_data(CLIENT, SERVER, 500, 9000)[3:]
    tracked = _track(flows, raw)
    assert [(t.sender, t.relative_seq, t.relative_ack) for t in tracked] == [
        (Side.CLIENT, 1, 1),
        (Side.SERVER, 1, 7),
    ]
    assert not tracked[0].from_syn
    # The server's port tells who is who, even from the server's first packet.
    other = Flows(server_ports=[9527])
    (first,) = _track(other, raw[1:])
    assert first.sender is Side.SERVER
    assert first.connection == Connection(CLIENT, SERVER)


def test_a_new_syn_on_the_same_four_numbers_is_a_new_connection():
    flows = Flows()
    first = _track(flows, _handshake_and_data(CLIENT, SERVER, 100, 200))
    again = _track(flows, _handshake_and_data(CLIENT, SERVER, 7777, 8888))
    assert first[-1].relative_ack == again[-1].relative_ack == 7
    assert len(flows) == 1


def test_flows_remember_at_most_their_limit():
    flows = Flows(limit=2)
    for port in (1001, 1002, 1003):
        _track(flows, _handshake_and_data(Address("127.0.0.1", port), SERVER, 1, 2)[:1])
    assert len(flows) == 2
    assert flows.forgotten == 1


def test_a_socket_address_and_a_packet_address_name_one_connection():
    assert normal_host("::ffff:127.0.0.1") == "127.0.0.1"
    assert normal_host("fe80::1%eth0") == "fe80::1"
    assert normal_host("0:0:0:0:0:0:0:1") == "::1"
    assert normal_host("localhost") == "localhost"
    mapped = Connection.of(Address("::ffff:127.0.0.1", 51234), SERVER)
    assert mapped == Connection(CLIENT, SERVER)
