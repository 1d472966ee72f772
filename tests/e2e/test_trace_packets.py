"""Issue 20's done-when, with the real programs: ``twistd sockchat --trace
packets --capture-file FILE`` and ``python -m sockchat.client --trace
packets`` (or a bare socket, where the situation needs one), with tcpdump
on the server's port as the witness, in the same run:

1. a client that closes with data unread: its kernel sends RST;
2. a clean quit: FIN both ways, TIME_WAIT on the server's side (``ss``);
3. a half-close that still receives;
4. one write of three lines: one segment, one read;
5. two writes that arrive in one read (the server is stopped, SIGSTOP,
   while both arrive: the one read is made to happen, not hoped for);
6. a connection to a port where nothing listens.

For each, the trace's packet lines are tcpdump's packets, one for one
(flags, length, relative numbers), the counts the trace says at the end
are tcpdump's, and the words about the close, the reads and TIME_WAIT say
what tcpdump and ``ss`` show; and the server's pcap file reads back with
``tcpdump -r``, holding the same packets.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import pytest

from sockchat._teaching.packets import Counts, TcpFlags

from processes import CLIENT, Server, need_tool, run_client
from tcpdump_witness import Dumped, Witness, counts_of_dump, read_with_tcpdump

pytestmark = pytest.mark.slow

LOCAL = "127.0.0.1"
COUNTS = re.compile(
    r"capture: (\d+) segments? of this connection seen so far: (\d+) with SYN, "
    r"(\d+) with FIN, (\d+) with RST, (\d+) carrying data"
)
PACKET = re.compile(
    r"packet (?P<ms>[\d.]+) ms: (?P<sender>client|server) -> (?:client|server) "
    r"(?P<flags>[A-Z-]+)(?: (?P<length>\d+) bytes)?: "
    r"(?:(?:三次握手|四次挥手)[^:]*: )?seq (?P<seq>\d+)(?::\d+)?"
    r"(?: ack (?P<ack>\d+))? win (?P<win>\d+)"
)
NAMES = {flag.name: flag for flag in TcpFlags}


@pytest.fixture
def served(tmp_path):
    """The server with --trace packets and its capture file; tcpdump on its port."""
    need_tool("tcpdump", "tcpdump")
    need_tool("ss", "iproute2")
    capture_file = tmp_path / "server.pcap"
    with Server(
        "--responder",
        "echo",
        "--trace",
        "packets",
        "--capture-file",
        str(capture_file),
    ) as server:
        server.capture_file = capture_file
        with Witness(server.port, tmp_path) as witness:
            yield server, witness


def conversation(server: Server, client_port: int) -> list[str]:
    """The server's trace lines of the conversation from *client_port*,
    once it has said its counts (its close is over, ss asked)."""
    opened = re.compile(
        rb"conversation (\d+): connection: local \S+ \(this server's end\) <-> "
        rb"remote 127\.0\.0\.1:%d " % client_port
    )
    if opened.search(server.output) is None:
        server.read_until(opened)
    cid = int(opened.search(server.output).group(1))
    counts = re.compile(rb"\[tcp\] conversation %d: capture: \d+ segm[^\n]*\n" % cid)
    if counts.search(server.output) is None:
        server.read_until(counts, timeout=20)
    prefix = f"[tcp] conversation {cid}: "
    return [
        line.split(prefix, 1)[1]
        for line in server.output.decode("utf-8", "replace").splitlines()
        if prefix in line
    ]


def client_lines(stderr: bytes) -> list[str]:
    return [
        line.removeprefix("[tcp] ")
        for line in stderr.decode("utf-8", "replace").splitlines()
        if line.startswith("[tcp] ")
    ]


def said_counts(lines: list[str]) -> Counts:
    (line,) = [line for line in lines if COUNTS.match(line)]
    segments, syn, fin, rst, data = map(int, COUNTS.match(line).groups())
    return Counts(syn, fin, rst, data, segments)


def of_connection(dumped: list[Dumped], client_port: int) -> list[Dumped]:
    return [d for d in dumped if client_port in (d.source[1], d.destination[1])]


def witnessed(
    witness: Witness, client_port: int, counts: Counts, timeout: float = 10.0
) -> list[Dumped]:
    """tcpdump's packets of the connection, once they count as the trace
    says (or, after *timeout*, as they are, for the assertion to show)."""
    deadline = time.monotonic() + timeout
    while True:
        dumped = of_connection(witness.dumped(), client_port)
        if counts_of_dump(dumped) == counts or time.monotonic() > deadline:
            return dumped
        time.sleep(0.1)


def packet_lines(lines: list[str]) -> list[re.Match[str]]:
    return [m for line in lines if (m := PACKET.match(line))]


def same_packets(lines: list[str], dumped: list[Dumped], server_port: int) -> None:
    """The trace's packet lines are tcpdump's packets, one for one: who sent
    each, its flags, length, relative numbers and window, and when (from the
    connection's first packet, within 5 ms).

    Each socket stamps a packet when it takes it (unless the stack stamped
    it before), and two packets the kernel handled at once on the two CPUs
    may reach two packet sockets in either order: so each line is matched
    with a packet of tcpdump's that says the same, near the same time.
    """
    said = packet_lines(lines)
    assert len(said) == len(dumped), (said, [d.line for d in dumped])
    start = dumped[0].time
    left = list(dumped)
    for match in said:
        flags = TcpFlags(0)
        for name in match["flags"].split("-"):
            flags |= NAMES[name]
        numbered = not flags & (TcpFlags.SYN | TcpFlags.RST)  # else tcpdump's own
        found = [
            dump
            for dump in left
            if ("server" if dump.source[1] == server_port else "client")
            == match["sender"]
            and dump.flags == flags
            and dump.length == int(match["length"] or 0)
            and dump.window == int(match["win"])
            and abs((dump.time - start) * 1000 - float(match["ms"])) < 1.0
            and not (
                numbered and dump.seq is not None and dump.seq != int(match["seq"])
            )
            and not (
                numbered
                and dump.ack is not None
                and (match["ack"] is None or dump.ack != int(match["ack"]))
            )
        ]
        assert found, (match.group(0), [d.line for d in left])
        left.remove(found[0])


def checked(
    server: Server, witness: Witness, client_port: int
) -> tuple[list[str], list[Dumped]]:
    """The conversation's trace, and tcpdump's packets of it: the counts the
    trace said are tcpdump's, and so are its packet lines."""
    lines = conversation(server, client_port)
    counts = said_counts(lines)
    dumped = witnessed(witness, client_port, counts)
    assert counts == counts_of_dump(dumped), [d.line for d in dumped]
    same_packets(lines, dumped, server.port)
    return lines, dumped


def ss_time_wait(port: int) -> set[tuple[str, str]]:
    """(local, peer) of each TIME-WAIT socket to or from *port*, by ss."""
    ss = need_tool("ss", "iproute2")
    out = subprocess.run(
        [ss, "-tanH", "state", "time-wait", f"( sport = :{port} or dport = :{port} )"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    return {(w[2], w[3]) for w in (line.split() for line in out.splitlines())}


def first_fins(dumped: list[Dumped]) -> list[Dumped]:
    """Each side's FIN, in the order they were sent.  A side sends one: a
    second from it is its kernel sending the same FIN again (the same
    sequence number: the FIN's is after the segment's data), which a busy
    machine can make it do when the ACK is late; the trace shows it too
    (``checked``), and it is not a new FIN."""
    firsts: dict[tuple[str, int], Dumped] = {}
    for d in dumped:
        if TcpFlags.FIN not in d.flags:
            continue
        first = firsts.setdefault(d.source, d)
        again = (d.seq or 0) + d.length, (first.seq or 0) + first.length
        assert again[0] == again[1], ("a second FIN", first.line, d.line)
    return list(firsts.values())


def one_line(lines: list[str], start: str) -> str:
    (line,) = [line for line in lines if line.startswith(start)]
    return line


def test_a_client_that_closes_with_data_unread_is_a_reset(served):
    server, witness = served
    sock = socket.create_connection((LOCAL, server.port), timeout=10)
    mine = sock.getsockname()[1]
    sock.sendall(b"hello\n")
    # Both the welcome and the echo are in its socket, unread, when it closes.
    deadline = time.monotonic() + 10
    while sock.recv(4096, socket.MSG_PEEK).count(b"\n") < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    sock.close()
    lines, dumped = checked(server, witness, mine)
    resets = [d for d in dumped if TcpFlags.RST in d.flags]
    assert [d.source[1] for d in resets] == [mine]  # the client's kernel sent it
    assert not any(
        TcpFlags.FIN in d.flags for d in dumped if d.source[1] == mine
    )  # and no FIN
    close = one_line(lines, "close: ")
    assert close.startswith(
        f"close: the client's kernel sent RST (seen: a captured packet: RST from "
        f"127.0.0.1:{mine}"
    )
    assert "closes a socket with data still unread" in one_line(lines, "why an RST")
    text = "\n".join(lines)
    assert "FIN (3)" not in text
    assert "half-close (半关闭): the client could send no more" not in text
    check = one_line(lines, "kernel check: ")
    assert "no TIME-WAIT" in check
    assert check.endswith("as after a reset: the kernel agrees with the trace")
    ends = {f"127.0.0.1:{mine}", f"127.0.0.1:{server.port}"}
    assert not any(set(pair) == ends for pair in ss_time_wait(server.port))


def test_a_clean_quit_is_fin_both_ways_and_time_wait_where_the_server_closed(
    served,
):
    server, witness = served
    done = run_client(server.port, b"hello\nq\n", "--trace", "packets")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"hello\n"
    said = client_lines(done.stderr)
    mine = int(re.search(r"local 127\.0\.0\.1:(\d+) \(this client", "\n".join(said))[1])
    lines, dumped = checked(server, witness, mine)
    fins = first_fins(dumped)
    assert [d.source[1] for d in fins] == [server.port, mine]  # the server's first
    assert not any(TcpFlags.RST in d.flags for d in dumped)
    close = one_line(lines, "close: ")
    assert close.startswith("close: the server sent FIN first (四次挥手 1: FIN, 2: ")
    assert (
        "the client's own FIN (3) came after it (seen: a captured packet: FIN "
        f"from 127.0.0.1:{mine}"
    ) in close
    assert not [line for line in lines if "RST (seen" in line or "why an RST" in line]
    # ss: TIME-WAIT at the server's end, as the trace and its check say.
    assert (f"127.0.0.1:{server.port}", f"127.0.0.1:{mine}") in ss_time_wait(
        server.port
    )
    assert one_line(lines, "kernel check: ").startswith(
        f"kernel check: ss shows TIME-WAIT on this side (127.0.0.1:{server.port} -> "
        f"127.0.0.1:{mine}"
    )
    # The client's own trace: the same packets, counted the same.
    assert said_counts(said) == counts_of_dump(dumped)
    same_packets(said, dumped, server.port)
    assert one_line(said, "kernel check: ").startswith(
        "kernel check: ss shows TIME-WAIT on the other side"
    )
    assert "FIN from the server: this side read its end of file" in "\n".join(said)


def test_a_half_close_that_still_receives(served):
    server, witness = served
    sock = socket.create_connection((LOCAL, server.port), timeout=10)
    mine = sock.getsockname()[1]
    assert sock.recv(4096).startswith(b"!info welcome")
    sock.shutdown(socket.SHUT_WR)  # FIN; it reads on
    heard = b""
    while chunk := sock.recv(4096):
        heard += chunk
    sock.close()
    assert heard.startswith(b"!bye end-of-input: ")
    lines, dumped = checked(server, witness, mine)
    fins = first_fins(dumped)
    assert [d.source[1] for d in fins] == [mine, server.port]  # the client's first
    client_fin = dumped.index(fins[0])
    goodbye = next(
        d for d in dumped[client_fin:] if d.source[1] == server.port and d.length
    )
    end = (goodbye.seq or 0) + goodbye.length
    assert any(
        d.source[1] == mine and (d.ack or 0) >= end
        for d in dumped[dumped.index(goodbye) :]
    ), "tcpdump: the client acknowledged the goodbye sent after its FIN"
    close = one_line(lines, "close: ")
    assert close.startswith("close: the client sent FIN first (四次挥手 1)")
    assert (
        "It was a half-close (半关闭): the client could send no more, but still "
        "received what this side sent after its FIN (seen: a captured packet: the "
        "client's kernel acknowledged the "
    ) in close
    assert (f"127.0.0.1:{mine}", f"127.0.0.1:{server.port}") in ss_time_wait(
        server.port
    )
    assert one_line(lines, "kernel check: ").startswith(
        f"kernel check: ss shows TIME-WAIT on the other side (127.0.0.1:{mine} -> "
    )


def test_one_write_of_three_lines_is_one_segment_and_one_read(served):
    server, witness = served
    sock = socket.create_connection((LOCAL, server.port), timeout=10)
    mine = sock.getsockname()[1]
    assert sock.recv(4096).startswith(b"!info welcome")
    sock.sendall(b"one\ntwo\nthree\n")  # one write
    heard = b""
    while heard.count(b"\n") < 3:
        heard += sock.recv(4096)
    sock.sendall(b"q\n")
    while sock.recv(4096):
        pass
    sock.close()
    lines, dumped = checked(server, witness, mine)
    sent = [d for d in dumped if d.source[1] == mine and d.length]
    assert [d.length for d in sent][:1] == [14]  # one segment: the write
    read = one_line(lines, "read 1: ")
    assert read.startswith(
        "read 1: 14 bytes b'one\\ntwo\\nthree\\n': this read carried 3 lines"
    )
    assert read.endswith("the capture shows they came in 1 TCP segment")
    assert "send()s stuck together" not in read


def test_two_writes_that_arrive_in_one_read(served):
    server, witness = served
    sock = socket.create_connection((LOCAL, server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    mine = sock.getsockname()[1]
    assert sock.recv(4096).startswith(b"!info welcome")

    def acked(upto: int):
        return lambda ps: any(
            p.sender.value == "server"
            and p.connection.client.port == mine
            and p.relative_ack == upto
            for p in ps
        )

    os.kill(server.proc.pid, signal.SIGSTOP)  # it reads nothing meanwhile
    try:
        sock.sendall(b"one\n")
        witness.wait_for(acked(5))  # its own segment, in the server's socket
        sock.sendall(b"two\n")
        witness.wait_for(acked(9))
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    heard = b""
    while heard.count(b"\n") < 2:
        heard += sock.recv(4096)
    sock.sendall(b"q\n")
    while sock.recv(4096):
        pass
    sock.close()
    lines, dumped = checked(server, witness, mine)
    assert [d.length for d in dumped if d.source[1] == mine and d.length][:2] == [4, 4]
    read = one_line(lines, "read 1: ")
    assert read.startswith("read 1: 8 bytes b'one\\ntwo\\n': this read carried 2 lines")
    assert read.endswith("the capture shows they came in 2 TCP segments")


def test_a_connection_to_a_port_where_nothing_listens_is_reset(tmp_path):
    need_tool("tcpdump", "tcpdump")
    with socket.socket() as bound:  # the port is this test's, and nothing listens
        bound.bind((LOCAL, 0))
        port = bound.getsockname()[1]
        with Witness(port, tmp_path) as witness:
            done = run_client(port, b"", "--trace", "packets")
            deadline = time.monotonic() + 10
            while len(dumped := witness.dumped()) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    assert done.returncode == 1
    said = client_lines(done.stderr)
    assert [(d.flags, d.source[1] == port) for d in dumped] == [
        (TcpFlags.SYN, False),
        (TcpFlags.RST | TcpFlags.ACK, True),
    ]
    same_packets(said, dumped, port)
    reset = one_line(said, "RST: ")
    assert reset.startswith(
        f"RST: the server's kernel reset the connection (seen: a captured packet: "
        f"RST from 127.0.0.1:{port}"
    )
    assert "a segment comes to a port where nothing listens" in reset
    assert b"connection refused" in done.stderr


def test_the_capture_file_reads_back_with_tcpdump(served):
    server, witness = served
    done = run_client(server.port, b"hello\nq\n", "--trace", "packets")
    assert done.returncode == 0, done.stderr
    mine = int(re.search(rb"local 127\.0\.0\.1:(\d+) \(this client", done.stderr)[1])
    lines, dumped = checked(server, witness, mine)
    server.stop()
    assert server.capture_file.stat().st_mode & 0o777 == 0o600
    assert b"the capture file" in server.output
    filed = of_connection(read_with_tcpdump(server.capture_file), mine)
    assert [(d.flags, d.length, d.seq, d.ack) for d in filed] == [
        (d.flags, d.length, d.seq, d.ack) for d in dumped
    ]
    assert counts_of_dump(filed) == said_counts(lines)


def test_without_the_capability_one_line_says_so_and_the_trace_goes_on(tmp_path):
    setpriv = need_tool("setpriv", "util-linux")
    done = subprocess.run(
        [
            setpriv,
            "--inh-caps=-net_raw",
            "--bounding-set=-net_raw",
            *CLIENT,
            "--port",
            "1",
            "--trace",
            "packets",
        ],
        input=b"",
        capture_output=True,
        timeout=30,
    )
    said = client_lines(done.stderr)
    off = [line for line in said if line.startswith("packet capture is off")]
    assert len(off) == 1
    assert "CAP_NET_RAW" in off[0]
    assert "setcap cap_net_raw+ep" in off[0]
    assert any(line.startswith("RST: the server's kernel reset") for line in said)
    assert b"connection refused" in done.stderr
