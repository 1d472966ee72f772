"""The six situations of issue 20, at the socket level, with tcpdump as the
witness: the capture's counts (its own packet socket, filter and parser)
equal tcpdump's, and the trace's words, fed what the sockets and packets
showed, say what tcpdump and ``ss`` show.

1. a client that closes with data unread: its kernel sends RST;
2. a clean quit: FIN both ways, TIME_WAIT on the side that closed first;
3. a half-close that still receives;
4. one write of three lines: one segment, one read;
5. two writes that arrive in one read: two segments, one read;
6. a connection to a port where nothing listens: RST.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor

from sockchat._teaching.capture import Capture, open_packet_socket
from sockchat._teaching.ladder import ladder_from_packets
from sockchat._teaching.packets import Connection, TcpFlags, Tracked
from sockchat._teaching.trace import (
    RST_MEANS,
    Address,
    CloseTracker,
    ReadTracker,
    Reset,
    Side,
    Verdict,
    check_time_wait,
    describe_close,
    describe_read,
    describe_reset,
    parse_ss,
    ss_filter,
)

from processes import need_tool
from tcpdump_witness import Witness, counts_of_dump, counts_of_packets

LOCAL = "127.0.0.1"


def own_capture(port: int) -> Capture:
    """sockchat's capture on ``lo`` for *port*, read by hand (no reactor)."""
    try:
        sock = open_packet_socket(port, "lo")
    except PermissionError as e:
        pytest.skip(f"packet sockets are not allowed here: {e}")
    return Capture(sock, port, MemoryReactor(), Clock())


def drained(capture: Capture, connection: Connection) -> list[Tracked]:
    before = -1
    while capture.frames != before:
        before = capture.frames
        capture.doRead()
    return list(capture.kept(connection).packets)


def ss_entries(local: Address, remote: Address):
    ss = need_tool("ss", "iproute2")
    out = subprocess.run(
        [ss, "-tanoH", *ss_filter(local, remote)],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    return parse_ss(out)


def flagged(flag: TcpFlags, count: int = 1) -> Callable[[list[Tracked]], bool]:
    return lambda packets: sum(flag in p.flags for p in packets) >= count


def first_fins(packets: list[Tracked]) -> list[int]:
    """Where each side's FIN is, in order.  A second FIN from a side is its
    kernel sending the same one again (a late ACK on a busy machine), not a
    new one."""
    firsts: dict[Side, int] = {}
    for i, p in enumerate(packets):
        if TcpFlags.FIN in p.flags:
            firsts.setdefault(p.sender, i)
    return sorted(firsts.values())


def last_ack_after_fins(packets: list[Tracked]) -> bool:
    fins = first_fins(packets)
    return len(fins) >= 2 and any(
        TcpFlags.FIN not in p.flags and p.sender is not packets[fins[1]].sender
        for p in packets[fins[1] + 1 :]
    )


class Situation:
    """A listener on a free port, tcpdump and sockchat's capture on it."""

    def __init__(self, folder, *, listen: bool = True) -> None:
        self.listener = socket.socket()
        self.listener.bind((LOCAL, 0))
        if listen:
            self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.server_address = Address(LOCAL, self.port)
        self.witness = Witness(self.port, folder)
        self.capture: Capture | None = None
        self.client: socket.socket | None = None
        self.server: socket.socket | None = None

    def __enter__(self) -> Situation:
        self.witness.start()
        self.capture = own_capture(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        self.witness.stop()
        if self.capture is not None:
            self.capture.stop()
        for sock in (self.client, self.server, self.listener):
            if sock is not None:
                sock.close()

    def connect(self, *, nodelay: bool = False) -> tuple[socket.socket, socket.socket]:
        self.client = socket.create_connection((LOCAL, self.port), timeout=10)
        if nodelay:
            self.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server, _ = self.listener.accept()
        self.server.settimeout(10)
        self.client_address = Address(LOCAL, self.client.getsockname()[1])
        return self.client, self.server

    def connection(self) -> Connection:
        return Connection(self.client_address, self.server_address)

    def observed(self, done: Callable[[list[Tracked]], bool]) -> list[Tracked]:
        """Once tcpdump saw *done*: sockchat's packets, checked against it."""
        witnessed = self.witness.wait_for(done)
        assert self.capture is not None
        ours = drained(self.capture, self.connection())
        dumped = self.witness.dumped()
        assert counts_of_packets(ours) == counts_of_dump(dumped)
        assert counts_of_packets(witnessed) == counts_of_dump(dumped)
        assert [(p.flags, p.data) for p in ours] == [
            (d.flags, d.length) for d in dumped
        ]
        return ours


def time_wait_agrees(it: Situation, entries, *, on: Side) -> None:
    """ss shows TIME-WAIT on the end *on*, and the server's kernel check,
    expecting it there, agrees."""
    ends = [it.server_address, it.client_address]
    if on is Side.CLIENT:
        ends.reverse()
    states = {(e.state, e.local, e.peer) for e in entries}
    assert ("TIME-WAIT", str(ends[0]), str(ends[1])) in states
    check = check_time_wait(
        Side.SERVER,
        it.server_address,
        it.client_address,
        entries,
        expected_here=on is Side.SERVER,
        last_try=True,
    )
    assert check.verdict is Verdict.AGREES, check.line


def from_client(packets: list[Tracked], flag: TcpFlags) -> list[Tracked]:
    return [p for p in packets if p.sender is Side.CLIENT and flag in p.flags]


def test_a_client_that_closes_with_data_unread_resets(tmp_path):
    with Situation(tmp_path) as it:
        client, server = it.connect()
        server.sendall(b"!info welcome\n")  # the client never reads it
        client.sendall(b"hello\n")
        assert server.recv(100) == b"hello\n"
        client.close()
        packets = it.observed(flagged(TcpFlags.RST))
        with pytest.raises(ConnectionResetError):
            server.recv(100)  # the server's socket sees it too: ECONNRESET
        entries = ss_entries(it.server_address, it.client_address)
    (rst,) = [p for p in packets if TcpFlags.RST in p.flags]
    assert rst.sender is Side.CLIENT
    assert from_client(packets, TcpFlags.FIN) == []  # no FIN: a reset instead
    reset = Reset(Side.CLIENT, "a captured packet")
    close = describe_close(
        Side.SERVER,
        it.server_address,
        it.client_address,
        CloseTracker(),
        clean=False,
        reset=reset,
    )
    assert close[0].startswith("close: the client's kernel sent RST (seen: a captured")
    assert "FIN (3)" not in "\n".join(close)
    assert "closes a socket with data still unread" in describe_reset(
        Side.SERVER, reset
    )
    check = check_time_wait(
        Side.SERVER,
        it.server_address,
        it.client_address,
        entries,
        expected_here=False,
        last_try=True,
        reset=True,
    )
    assert check.verdict is Verdict.AGREES, check.line
    assert ladder_from_packets(packets).time_wait is None


def test_a_clean_quit_is_fin_both_ways_and_time_wait_where_ss_sees_it(tmp_path):
    with Situation(tmp_path) as it:
        client, server = it.connect()
        client.sendall(b"q\n")
        assert server.recv(100) == b"q\n"
        server.sendall(b"!bye quit: goodbye.\n")
        server.close()  # the server closes first, as sockchat does after q
        assert client.recv(100) == b"!bye quit: goodbye.\n"
        assert client.recv(100) == b""
        client.close()
        packets = it.observed(last_ack_after_fins)
        entries = ss_entries(it.server_address, it.client_address)
    assert [packets[i].sender for i in first_fins(packets)] == [
        Side.SERVER,
        Side.CLIENT,
    ]
    assert not any(TcpFlags.RST in p.flags for p in packets)
    ladder = ladder_from_packets(packets)
    assert ladder.time_wait is not None
    assert ladder.time_wait.side is Side.SERVER
    # ss: the TIME-WAIT socket is the server's end, as the ladder and trace say.
    time_wait_agrees(it, entries, on=Side.SERVER)
    tracker = CloseTracker()
    tracker.closing(1.0)
    words = describe_close(
        Side.SERVER, it.server_address, it.client_address, tracker, clean=True
    )
    assert words[0].startswith("close: the server sent FIN first")


def test_a_half_close_that_still_receives(tmp_path):
    with Situation(tmp_path) as it:
        client, server = it.connect()
        client.sendall(b"hello\n")
        client.shutdown(socket.SHUT_WR)  # FIN, and it goes on reading
        assert server.recv(100) == b"hello\n"
        assert server.recv(100) == b""  # the client's FIN
        server.sendall(b"!bye end-of-input\n")
        server.close()
        assert client.recv(100) == b"!bye end-of-input\n"
        assert client.recv(100) == b""
        client.close()
        packets = it.observed(last_ack_after_fins)
        entries = ss_entries(it.server_address, it.client_address)
    (client_fin,) = from_client(packets, TcpFlags.FIN)
    after = [p for p in packets if p.time > client_fin.time]
    goodbye = next(p for p in after if p.sender is Side.SERVER and p.data)
    end = goodbye.relative_seq + goodbye.data
    taken = [
        p for p in after if p.sender is Side.CLIENT and (p.relative_ack or 0) >= end
    ]
    assert taken, "the client acknowledged what the server sent after its FIN"
    assert not any(TcpFlags.RST in p.flags for p in packets)
    tracker = CloseTracker()
    tracker.fin_received(1.0)
    tracker.closing(1.1)
    words = "\n".join(
        describe_close(
            Side.SERVER,
            it.server_address,
            it.client_address,
            tracker,
            clean=True,
            peer_received="a captured ACK of what the server sent after the FIN",
        )
    )
    assert "It was a half-close (半关闭)" in words
    time_wait_agrees(it, entries, on=Side.CLIENT)


def test_one_write_of_three_lines_is_one_segment_and_one_read(tmp_path):
    with Situation(tmp_path) as it:
        client, server = it.connect()
        client.sendall(b"one\ntwo\nthree\n")  # one write
        read = server.recv(100)
        client.close()
        server.close()
        packets = it.observed(last_ack_after_fins)  # the whole close: no race
    data = [p for p in packets if p.sender is Side.CLIENT and p.data]
    assert [p.data for p in data] == [14]
    assert TcpFlags.PSH in data[0].flags
    line = describe_read(ReadTracker().read(read), Side.CLIENT, segments=len(data))
    assert "this read carried 3 lines: TCP delivers a byte stream" in line
    assert line.endswith("the capture shows they came in 1 TCP segment")


def test_two_writes_that_arrive_in_one_read(tmp_path):
    with Situation(tmp_path) as it:
        client, server = it.connect(nodelay=True)
        client.sendall(b"one\n")
        it.witness.wait_for(lambda ps: any(p.data for p in ps))  # out, alone
        client.sendall(b"two\n")
        # Both are in the server's socket once the server's kernel ACKed 8 bytes.
        it.witness.wait_for(
            lambda ps: any(p.sender is Side.SERVER and p.relative_ack == 9 for p in ps)
        )
        read = server.recv(100)
        assert read == b"one\ntwo\n"  # one read
        client.close()
        server.close()
        packets = it.observed(last_ack_after_fins)  # the whole close: no race
    data = [p for p in packets if p.sender is Side.CLIENT and p.data]
    assert [p.data for p in data] == [4, 4]
    line = describe_read(ReadTracker().read(read), Side.CLIENT, segments=len(data))
    assert "this read carried 2 lines" in line
    assert line.endswith("the capture shows they came in 2 TCP segments")


def test_a_connection_to_a_port_where_nothing_listens_is_reset(tmp_path):
    with Situation(tmp_path, listen=False) as it:  # bound, so the port is ours
        client = it.client = socket.socket()
        client.settimeout(10)
        with pytest.raises(ConnectionRefusedError):
            client.connect((LOCAL, it.port))
        it.client_address = Address(LOCAL, client.getsockname()[1])
        packets = it.observed(flagged(TcpFlags.RST))
    assert [(p.sender, p.flags) for p in packets] == [
        (Side.CLIENT, TcpFlags.SYN),
        (Side.SERVER, TcpFlags.RST | TcpFlags.ACK),
    ]
    assert "a port where nothing listens" in RST_MEANS
    line = describe_reset(
        Side.CLIENT, Reset(Side.SERVER, "connect() failed: ECONNREFUSED")
    )
    assert line.startswith("RST: the server's kernel reset the connection")


def test_the_witness_waits_for_what_it_is_told(tmp_path):
    # The witness itself: a condition that never holds fails, naming what it saw.
    with Situation(tmp_path) as it:
        it.connect()
        with pytest.raises(AssertionError, match="Flags"):
            it.witness.wait_for(flagged(TcpFlags.RST), timeout=0.5)
