"""The capture against the real kernel: an ``AF_PACKET`` socket on ``lo``
sees the packets tcpdump sees, numbered as tcpdump numbers them; the pcap it
writes reads back with ``tcpdump -r``; and without CAP_NET_RAW, one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater

from sockchat._teaching.capture import Capture, open_capture
from sockchat._teaching.packets import Connection, TcpFlags, Tracked
from sockchat._teaching.pcap import PcapWriter
from sockchat._teaching.trace import Address, Side

from processes import need_tool
from tcpdump_witness import (
    Witness,
    counts_of_dump,
    counts_of_packets,
    read_with_tcpdump,
)


def can_capture() -> None:
    """Skip (or fail in CI) where this process may not open packet sockets."""
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except (PermissionError, AttributeError, OSError) as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs as root, but a packet socket failed: {e}")
        pytest.skip(f"packet sockets are not allowed here: {e}")


async def _until(capture: Capture, connection: Connection, done, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not done(capture.kept(connection).packets):
        assert time.monotonic() < deadline, capture.kept(connection)
        await deferLater(reactor, 0.02)
    return list(capture.kept(connection).packets)


def _reset_seen(packets: list[Tracked]) -> bool:
    return any(TcpFlags.RST in p.flags for p in packets)


@pytest_twisted.ensureDeferred
async def test_the_capture_sees_what_tcpdump_sees_and_numbers_it_alike(tmp_path):
    can_capture()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with Witness(port, tmp_path) as witness:
        capture = open_capture(reactor, reactor, port, host="127.0.0.1")
        assert isinstance(capture, Capture), capture
        pcap = tmp_path / "ours.pcap"
        out = open(pcap, "wb")  # noqa: SIM115 (closed below, after the capture)
        writer = PcapWriter(out)
        capture.frame_observers.append(writer.write)
        try:

            def talk() -> int:
                client = socket.create_connection(("127.0.0.1", port), timeout=10)
                server, _ = listener.accept()
                with server:
                    client.sendall(b"one\ntwo\nthree\n")
                    assert server.recv(100) == b"one\ntwo\nthree\n"
                    server.sendall(b"hi\n")
                    time.sleep(0.1)
                    mine = client.getsockname()[1]
                    client.close()  # "hi\n" unread: the kernel sends RST
                    return mine

            mine = await threads.deferToThread(talk)
            connection = Connection(
                Address("127.0.0.1", mine), Address("127.0.0.1", port)
            )
            ours = await _until(capture, connection, _reset_seen)
            witness.wait_for(_reset_seen)
            assert capture.kernel_drops() == 0
        finally:
            capture.stop()
            out.close()
            listener.close()
    dumped = witness.dumped()
    assert counts_of_packets(ours) == counts_of_dump(dumped)
    assert len(ours) == len(dumped)
    for packet, line in zip(ours, dumped, strict=True):
        assert packet.segment.source.port == line.source[1], line.line
        assert packet.flags == line.flags, line.line
        assert packet.data == line.length, line.line
        assert abs(packet.time - line.time) < 0.01, line.line
        if TcpFlags.SYN not in packet.flags:  # tcpdump numbers these from the SYN
            if line.seq is not None:
                assert packet.relative_seq == line.seq, line.line
            if line.ack is not None:
                assert packet.relative_ack == line.ack, line.line
    assert [p.sender for p in ours[:3]] == [Side.CLIENT, Side.SERVER, Side.CLIENT]
    assert ours[-1].sender is Side.CLIENT
    assert TcpFlags.RST in ours[-1].flags
    # The pcap the capture wrote is the same story, as tcpdump reads it.
    again = read_with_tcpdump(pcap)
    assert [(d.source, d.flags, d.seq, d.ack, d.length) for d in again] == [
        (d.source, d.flags, d.seq, d.ack, d.length) for d in dumped
    ]
    assert capture.undecoded == 0


@pytest_twisted.ensureDeferred
async def test_the_capture_keeps_to_its_port(tmp_path):
    can_capture()
    six = socket.AF_INET6
    ours = socket.create_server(("::1", 0), family=six)
    other = socket.create_server(("::1", 0), family=six)
    port = ours.getsockname()[1]
    capture = open_capture(reactor, reactor, port, host="::1")
    assert isinstance(capture, Capture), capture
    try:

        def talk() -> None:
            for listener in (other, ours):
                client = socket.create_connection(
                    listener.getsockname()[:2], timeout=10
                )
                server, _ = listener.accept()
                client.sendall(b"x\n")
                server.recv(10)
                client.close()
                server.close()

        await threads.deferToThread(talk)
        deadline = time.monotonic() + 10
        while capture.store.forgotten + len(capture.store) < 1:
            assert time.monotonic() < deadline
            await deferLater(reactor, 0.02)
        await deferLater(reactor, 0.2)
    finally:
        capture.stop()
        ours.close()
        other.close()
    assert capture.frames > 0
    assert capture.not_ours == 0  # the kernel filter kept the rest away
    (connection,) = {p.connection for p in _all(capture)}
    assert connection.server == Address("::1", port)


def _all(capture: Capture) -> list[Tracked]:
    return [p for c in capture.store.connections() for p in capture.kept(c).packets]


def test_without_cap_net_raw_the_capture_says_so_in_one_line_and_goes_on():
    can_capture()  # root here: the capability is dropped for the child only
    setpriv = need_tool("setpriv", "util-linux")
    code = (
        "from twisted.internet.task import Clock\n"
        "from twisted.internet.testing import MemoryReactor\n"
        "from sockchat._teaching.capture import open_capture\n"
        "result = open_capture(MemoryReactor(), Clock(), 9527)\n"
        "print(result.line)\n"
    )
    drop = ["--inh-caps=-net_raw", "--bounding-set=-net_raw"]
    done = subprocess.run(
        [setpriv, *drop, "--", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert line.startswith(
        "packet capture is off: reading packets needs the CAP_NET_RAW"
    )
    assert f"sudo setcap cap_net_raw+ep {os.path.realpath(sys.executable)}" in line
    assert done.stderr == ""
