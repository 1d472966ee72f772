"""The pcap writer and reader: round trips, the bound, and ``tcpdump -r``."""

from __future__ import annotations

import io
import struct
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockchat._teaching.packets import TcpFlags, TcpOptions, build_frame
from sockchat._teaching.pcap import (
    LINKTYPE_ETHERNET,
    PcapError,
    PcapWriter,
    read_pcap,
)
from sockchat._teaching.trace import Address

from processes import need_tool
from tcpdump_witness import read_with_tcpdump

records = st.lists(
    st.tuples(
        st.integers(0, 2**31 - 1).map(lambda us: us / 1_000_000 + 1_700_000_000),
        st.binary(max_size=100),
    ),
    max_size=20,
)


@given(records)
def test_what_is_written_reads_back(packets):
    out = io.BytesIO()
    writer = PcapWriter(out)
    for time, frame in packets:
        assert writer.write(time, frame)
    read = read_pcap(out.getvalue())
    assert read.linktype == LINKTYPE_ETHERNET
    assert read.trailing == 0
    assert [r.data for r in read.records] == [frame for _, frame in packets]
    for record, (time, _) in zip(read.records, packets, strict=True):
        assert abs(record.time - time) < 1e-6
    assert writer.size == len(out.getvalue())


@given(records, st.integers(24, 600))
def test_the_file_never_passes_its_bound_and_says_what_it_left_out(packets, bound):
    out = io.BytesIO()
    writer = PcapWriter(out, max_bytes=bound)
    written = sum(writer.write(time, frame) for time, frame in packets)
    assert len(out.getvalue()) <= bound
    assert writer.written == written
    assert writer.dropped == len(packets) - written
    assert writer.full == (writer.dropped > 0)
    assert len(read_pcap(out.getvalue()).records) == written


@given(st.binary(max_size=300), st.sampled_from(["<", ">"]))
def test_any_bytes_after_a_header_read_as_records_or_trailing(rest, order):
    header = struct.pack(order + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    read = read_pcap(header + rest)
    used = sum(16 + len(r.data) for r in read.records)
    assert used + read.trailing == len(rest)


@given(st.binary(max_size=40))
def test_anything_else_is_refused_or_read_never_another_error(data):
    error = None
    try:
        read_pcap(data)
    except PcapError as e:
        error = str(e)
    assert error is None or "\n" not in error


def test_a_snap_length_keeps_the_start_and_the_true_length():
    out = io.BytesIO()
    writer = PcapWriter(out, snap_length=10)
    writer.write(1.5, b"x" * 30)
    (record,) = read_pcap(out.getvalue()).records
    assert record.data == b"x" * 10
    assert record.original_length == 30


def test_a_record_still_being_written_is_left_out_and_counted():
    out = io.BytesIO()
    writer = PcapWriter(out)
    writer.write(1.0, b"abc")
    writer.write(2.0, b"defgh")
    data = out.getvalue()[:-2]
    read = read_pcap(data)
    assert [r.data for r in read.records] == [b"abc"]
    assert read.trailing == 16 + 3


def test_other_files_are_refused_in_one_line():
    with pytest.raises(PcapError, match="24-byte header"):
        read_pcap(b"short")
    with pytest.raises(PcapError, match="not a classic pcap file"):
        read_pcap(b"\x0a\x0d\x0d\x0a" + bytes(20))  # pcapng
    big_endian_nano = struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)
    record = struct.pack(">IIII", 3, 500_000_000, 2, 2) + b"hi"
    (read,) = read_pcap(big_endian_nano + record).records
    assert read.time == 3.5
    assert read.data == b"hi"


def test_tcpdump_reads_the_file_and_shows_the_same_packets(tmp_path):
    client, server = Address("127.0.0.1", 40000), Address("::1", 9527)
    six = Address("::1", 40001)
    frames = [
        build_frame(
            client,
            Address("127.0.0.1", 9527),
            flags=TcpFlags.SYN,
            seq=100,
            options=TcpOptions(mss=65495, sack_permitted=True, window_scale=7),
        ),
        build_frame(
            six,
            server,
            flags=TcpFlags.PSH | TcpFlags.ACK,
            seq=5,
            ack=9,
            payload=b"hi\n",
        ),
        build_frame(six, server, flags=TcpFlags.RST, seq=8),
    ]
    path = tmp_path / "made.pcap"
    with open(path, "wb") as out:
        writer = PcapWriter(out)
        for i, frame in enumerate(frames):
            writer.write(1_700_000_000 + i / 10, frame)
    dumped = read_with_tcpdump(path, "-S")
    assert [d.flags for d in dumped] == [
        TcpFlags.SYN,
        TcpFlags.PSH | TcpFlags.ACK,
        TcpFlags.RST,
    ]
    assert [d.seq for d in dumped] == [100, 5, 8]
    assert [d.length for d in dumped] == [0, 3, 0]
    assert dumped[0].source == ("127.0.0.1", 40000)
    assert dumped[1].destination == ("::1", 9527)
    assert "mss 65495,sackOK,wscale 7" in dumped[0].line
    assert dumped[2].time == pytest.approx(1_700_000_000.2)
    # And the builder's checksums are right, as tcpdump -v checks them.
    verbose = subprocess.run(
        [need_tool("tcpdump", "tcpdump"), "-r", str(path), "-nn", "-v"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert verbose.count("(correct)") == 3  # TCP's
    assert "incorrect" not in verbose
    assert "bad cksum" not in verbose  # IPv4's, said only when wrong
