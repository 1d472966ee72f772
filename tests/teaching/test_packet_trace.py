"""--trace packets' glue, in memory: the captures' one refusal line, the
pcap file (its mode, its bound said once), and the ladders the server
draws on request (/trace/...)."""

from __future__ import annotations

import errno
import socket

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.web.test.requesthelper import DummyRequest

from sockchat._teaching.capture import Capture, refusal
from sockchat._teaching.packet_trace import PacketCapture, open_capture_file
from sockchat._teaching.packets import Connection, TcpFlags, build_frame
from sockchat._teaching.pcap import read_pcap
from sockchat._teaching.trace import Address, Side
from sockchat._teaching.tracing import ConnectionTrace, LadderBook, LadderResource

CLIENT = Address("127.0.0.1", 51234)
SERVER = Address("127.0.0.1", 9527)


def refused(*args, **kw):
    return refusal(OSError(errno.EPERM, "Operation not permitted"))


def test_without_the_capability_one_line_is_told_once_for_every_port():
    told: list[str] = []
    capture = PacketCapture(MemoryReactor(), Clock(), told.append, opener=refused)
    assert capture.open("127.0.0.1", 9527) is False
    assert capture.open("127.0.0.1", 8080) is False  # the web door's
    assert len(told) == 1
    assert told[0].startswith("packet capture is off: reading packets needs")
    assert "CAP_NET_RAW" in capture.why_not
    assert capture.where(9527) is None


@pytest.fixture
def opened(tmp_path):
    """A PacketCapture whose capture is fed by hand."""
    made: list[Capture] = []

    def opener(reactor, clock, port, *, host):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # any fd will do
        made.append(Capture(sock, port, reactor, clock, interface="lo"))
        return made[-1]

    told: list[str] = []
    capture = PacketCapture(MemoryReactor(), Clock(), told.append, opener=opener)
    yield capture, made, told
    capture.stop()


def test_the_capture_file_is_its_owners_only_even_if_it_was_there(tmp_path):
    path = tmp_path / "capture.pcap"
    path.write_bytes(b"old")
    path.chmod(0o644)
    open_capture_file(str(path)).close()
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes() == b""
    link = tmp_path / "link.pcap"
    link.symlink_to(tmp_path / "elsewhere.pcap")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        open_capture_file(str(link))
    assert not (tmp_path / "elsewhere.pcap").exists()


def test_a_full_capture_file_is_said_once_and_stays_readable(opened, tmp_path):
    capture, made, told = opened
    path = tmp_path / "capture.pcap"
    capture.write_to(str(path), max_bytes=24 + 3 * (16 + 66))
    assert capture.open("127.0.0.1", 9527)
    (ours,) = made
    frame = build_frame(CLIENT, SERVER, flags=TcpFlags.ACK)  # 66 bytes
    for n in range(6):
        ours.received(1000.0 + n, frame, len(frame))
    full = [line for line in told if "is full" in line]
    assert len(full) == 1
    assert full[0].startswith(f"the capture file {path} is full (270 bytes)")
    capture.stop()
    assert len(read_pcap(path.read_bytes()).records) == 3
    assert told[-1].startswith(f"the capture file {path} holds 3 packets")


def test_a_connection_is_followed_then_forgotten(opened):
    capture, made, _ = opened
    capture.open("127.0.0.1", 9527)
    (ours,) = made
    assert capture.where(9527) == "lo"
    syn = build_frame(CLIENT, SERVER, flags=TcpFlags.SYN, seq=7)
    ours.received(1000.0, syn, len(syn))
    heard = []
    following = capture.follow(Connection(CLIENT, SERVER), heard.append)
    assert [p.flags for p in heard] == [TcpFlags.SYN]  # the one kept so far
    assert [len(c) for c in capture.seen(9527)] == [1]
    following.stop()
    ours.received(1000.1, syn, len(syn))
    assert len(heard) == 1  # no longer followed


def traced_book(clock: Clock) -> tuple[LadderBook, str]:
    trace = ConnectionTrace(Side.SERVER, lambda line: None, clock)
    trace.steps.opened(clock.seconds())
    book = LadderBook(clock)
    return book, book.add(3, trace)


def render(resource: LadderResource, path: str, host: str) -> tuple[int, bytes]:
    request = DummyRequest([p.encode() for p in path.strip("/").split("/")[1:]])
    request.client = IPv4Address("TCP", host, 40000)
    body = resource.render_GET(request)
    return request.responseCode or 200, body


def test_a_ladder_is_drawn_for_its_token_from_anywhere_and_by_number_from_here():
    clock = Clock()
    book, token = traced_book(clock)
    resource = LadderResource(book, clock)
    code, body = render(resource, f"/trace/{token}/ladder.svg", "192.0.2.7")
    assert code == 200
    assert body.startswith(b"<svg ")
    code, body = render(resource, "/trace/3/ladder.txt", "127.0.0.1")
    assert code == 200
    assert b"accept() returned" in body
    code, _ = render(resource, "/trace/3/ladder.svg", "192.0.2.7")
    assert code == 404  # by number: this machine only
    code, _ = render(resource, "/trace/4/ladder.svg", "127.0.0.1")
    assert code == 404
    code, _ = render(resource, f"/trace/{token}/other", "127.0.0.1")
    assert code == 404


def test_a_ladder_goes_once_its_time_wait_would_be_over():
    clock = Clock()
    book, token = traced_book(clock)
    (trace,) = [book.find(token, local=False)]
    assert trace is not None
    trace.settled.callback(None)
    clock.advance(60)
    assert book.find(token, local=False) is trace
    clock.advance(2)
    assert book.find(token, local=False) is None
    assert book.find("3", local=True) is None


def test_the_book_keeps_so_many_ladders():
    clock = Clock()
    book = LadderBook(clock, kept=2)
    tokens = [
        book.add(n, ConnectionTrace(Side.SERVER, lambda line: None, clock))
        for n in range(3)
    ]
    assert book.find(tokens[0], local=False) is None
    assert book.find(tokens[2], local=False) is not None


def test_at_most_so_many_connections_keep_a_ladder_at_once():
    from twisted.internet.testing import StringTransport

    from sockchat._teaching.tracing import LadderRoom

    clock = Clock()
    room = LadderRoom(most=1)
    said: list[str] = []

    def traced() -> ConnectionTrace:
        trace = ConnectionTrace(Side.SERVER, said.append, clock, ladders=room)
        trace.connected(
            StringTransport(
                hostAddress=IPv4Address("TCP", "127.0.0.1", 9527),
                peerAddress=IPv4Address("TCP", "127.0.0.1", 51234),
            )
        )
        return trace

    first, second = traced(), traced()
    assert [line for line in said if line.startswith("ladder: none")] == [
        "ladder: none for this connection: at most 64 connections keep one at "
        "once, to bound memory"
    ]
    assert first.ladder().steps
    assert not second.ladder().steps
    first.forget()  # its TIME_WAIT is over: its place is free
    third = traced()
    assert third.ladder().steps
