"""The capture's parts that need no packet socket: the kernel filter (run in
a BPF machine, beside tcpdump's own program), the second guard, the bounded
store, the refusal's one line, and the hand-over to observers."""

from __future__ import annotations

import errno
import socket
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor

from sockchat._teaching.bpf import (
    PACKET_OUTGOING,
    SNAP,
    matches,
    pack,
    tcp_port_filter,
)
from sockchat._teaching.capture import (
    Capture,
    Kept,
    Limits,
    PacketStore,
    Refused,
    describe_drops,
    interface_for,
    open_capture,
    refusal,
)
from sockchat._teaching.packets import (
    Connection,
    Flows,
    Segment,
    TcpFlags,
    build_frame,
    parse_frame,
)
from sockchat._teaching.trace import Address

from bpf_machine import parse_dd, run
from processes import need_tool

PORT = 9527
CLIENT = Address("127.0.0.1", 51234)
SERVER = Address("127.0.0.1", PORT)
LOOPBACK = 1


@pytest.fixture(scope="module")
def tcpdump_program():
    """What tcpdump compiles ``tcp port 9527`` to, for an Ethernet link."""
    tcpdump = need_tool("tcpdump", "tcpdump")
    out = subprocess.run(
        [tcpdump, "-y", "EN10MB", "-i", "lo", "-dd", f"tcp port {PORT}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    program = parse_dd(out.stdout)
    assert program, out.stderr
    return program


hosts = st.sampled_from(
    [("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("10.0.0.1", "10.0.0.2")]
)


@st.composite
def frames(draw):
    """TCP frames of this port and of others, changed here and there."""
    a, b = draw(hosts)
    port = st.sampled_from([PORT, 1, 80, 51234, 65535]) | st.integers(1, 65535)
    frame = bytearray(
        build_frame(
            Address(a, draw(port)),
            Address(b, draw(port)),
            flags=TcpFlags(draw(st.integers(0, 255))),
            payload=draw(st.binary(max_size=8)),
        )
    )
    if frame[12:14] == b"\x08\x00":  # the IPv4 fields the filter reads
        fields = st.sampled_from([(14, 0x45), (14, 0x46), (14, 0x40), (23, 17)])
        fields |= st.tuples(st.sampled_from([20, 21]), st.integers(0, 255))
    else:  # IPv6's next header
        fields = st.tuples(st.just(20), st.sampled_from([6, 0, 17, 44]))
    fields |= st.tuples(st.just(12), st.sampled_from([0x08, 0x86, 0x81]))
    for at, value in draw(st.lists(fields, max_size=3)):
        frame[at] = value
    for at, value in draw(st.lists(st.tuples(st.integers(0, 70), st.integers(0, 255)))):
        if at < len(frame):
            frame[at] = value
    return bytes(frame[: draw(st.integers(0, len(frame)))])


@given(frames())
def test_the_filter_keeps_what_tcpdumps_own_program_keeps(tcpdump_program, frame):
    ours = run(tcp_port_filter(PORT), frame)
    assert ours == run(tcpdump_program, frame)
    assert ours in (0, SNAP)


@given(frames())
def test_the_second_guard_says_what_the_filter_says(frame):
    assert matches(frame, PORT) == bool(run(tcp_port_filter(PORT), frame))


def test_the_filter_keeps_this_ports_tcp_only():
    program = tcp_port_filter(PORT, loopback=LOOPBACK)
    to_us = build_frame(CLIENT, SERVER, flags=TcpFlags.SYN)
    from_us = build_frame(SERVER, CLIENT, flags=TcpFlags.SYN | TcpFlags.ACK)
    six = build_frame(Address("::1", 4000), Address("::1", PORT))
    other = build_frame(CLIENT, Address("127.0.0.1", 9528))
    assert run(program, to_us) == SNAP
    assert run(program, from_us) == SNAP
    assert run(program, six) == SNAP
    assert run(program, other) == 0
    udp = bytearray(to_us)
    udp[23] = 17
    assert run(program, bytes(udp)) == 0
    later_fragment = to_us[:20] + b"\x00\x10" + to_us[22:]
    assert run(program, later_fragment) == 0


def test_loopbacks_outgoing_copy_is_dropped_and_only_loopbacks():
    program = tcp_port_filter(PORT, loopback=LOOPBACK)
    frame = build_frame(CLIENT, SERVER)
    assert run(program, frame, pkttype=PACKET_OUTGOING, ifindex=LOOPBACK) == 0
    assert run(program, frame, pkttype=0, ifindex=LOOPBACK) == SNAP
    assert run(program, frame, pkttype=PACKET_OUTGOING, ifindex=4) == SNAP
    assert len(pack(program)) == 8 * len(program)  # struct sock_filter: 8 bytes
    with pytest.raises(ValueError, match="a TCP port is 1 to 65535"):
        tcp_port_filter(0)


def _packet(flows: Flows, i: int, payload: bytes = b"", client: Address = CLIENT):
    segment = parse_frame(build_frame(client, SERVER, seq=i, payload=payload))
    assert isinstance(segment, Segment)
    return flows.track(segment, float(i))


def test_the_store_keeps_so_many_packets_a_connection_and_counts_the_rest():
    limits = Limits(per_conversation=3, conversations=2, payload=4)
    store, flows = PacketStore(limits), Flows()
    for i in range(5):
        store.add(_packet(flows, i, b"0123456789"))
    connection = Connection(CLIENT, SERVER)
    kept = store.kept(connection)
    assert len(kept.packets) == 3
    assert kept.dropped == 2
    first = kept.packets[0]
    assert first.segment.payload == b"0123"  # cut to the limit...
    assert first.data == 10  # ...and its length still true
    line = describe_drops(kept, limits)
    assert line is not None
    assert "2 more packets of this connection were seen and not kept" in line
    assert "at most 3 are kept" in line
    assert describe_drops(Kept((), 0), limits) is None


def test_the_store_forgets_the_least_recent_connection_past_its_limit():
    store, flows = PacketStore(Limits(conversations=2)), Flows()
    clients = [Address("127.0.0.1", port) for port in (1001, 1002, 1003)]
    for client in clients:
        store.add(_packet(flows, 1, client=client))
    assert store.forgotten == 1
    assert store.forgotten_packets == 1
    assert store.kept(Connection(clients[0], SERVER)).packets == ()
    assert store.connections() == [Connection(c, SERVER) for c in clients[1:]]
    assert len(store) == 2
    store.forget(Connection(clients[2], SERVER))
    assert len(store) == 1


def test_without_cap_net_raw_one_line_says_how_to_grant_it():
    line = refusal(
        PermissionError(errno.EPERM, "Operation not permitted"),
        executable="/usr/bin/python3",
    ).line
    assert "\n" not in line
    assert "CAP_NET_RAW" in line
    assert "run as root" in line
    assert "sudo setcap cap_net_raw+ep /usr/bin/python3" in line
    assert "the trace goes on" in line
    other = refusal(OSError(errno.EAFNOSUPPORT, "Address family not supported"))
    assert "AF_PACKET" in other.line


def test_open_capture_refused_returns_the_line_and_opens_nothing():
    opened = []

    def refuse(port, interface):
        opened.append((port, interface))
        raise PermissionError(errno.EPERM, "Operation not permitted")

    reactor = MemoryReactor()
    result = open_capture(reactor, Clock(), PORT, host="127.0.0.1", opener=refuse)
    assert isinstance(result, Refused)
    assert result.errno == errno.EPERM
    assert opened == [(PORT, "lo")]
    assert reactor.readers == set()


def test_the_interface_is_loopbacks_for_loopback_and_every_one_for_a_wildcard():
    assert interface_for("127.0.0.1") == "lo"
    assert interface_for("::1") == "lo"
    assert interface_for("::ffff:127.0.0.1") == "lo"
    assert interface_for("0.0.0.0") is None
    assert interface_for("::") is None
    assert interface_for("not an address") is None


def test_observers_get_what_was_kept_then_each_packet_as_it_comes():
    reactor, clock = MemoryReactor(), Clock()
    sock, other = socket.socketpair()
    capture = Capture(sock, PORT, reactor, clock)
    try:
        capture.start()
        assert capture in reactor.readers
        frames: list[tuple[float, int]] = []
        capture.frame_observers.append(lambda t, f, n: frames.append((t, n)))
        syn = build_frame(CLIENT, SERVER, flags=TcpFlags.SYN, seq=5)
        capture.received(1.0, syn, len(syn))
        heard = []
        stop = capture.watch(Connection(CLIENT, SERVER), heard.append)
        assert [p.flags for p in heard] == [TcpFlags.SYN]  # replayed
        ack = build_frame(CLIENT, SERVER, flags=TcpFlags.ACK, seq=6, ack=1)
        capture.received(2.0, ack, len(ack))
        assert [p.relative_seq for p in heard] == [0, 1]
        stop()
        capture.received(3.0, ack, len(ack))
        assert len(heard) == 2
        capture.received(4.0, b"\x00" * 20, 20)
        assert capture.undecoded == 1
        assert capture.last_undecoded is not None
        assert frames == [(1.0, len(syn)), (2.0, len(ack)), (3.0, len(ack)), (4.0, 20)]
        assert len(capture.kept(Connection(CLIENT, SERVER)).packets) == 3
        assert capture.kernel_drops() is None  # not a packet socket: cannot say
    finally:
        capture.stop()
        other.close()
    assert capture not in reactor.readers
