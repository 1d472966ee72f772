"""Teaching mode's core (sockchat._teaching.trace): the facts and words, with no I/O."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from sockchat._teaching.trace import (
    RST_MEANS,
    TCP_INFO_SIZE,
    Address,
    CloseTracker,
    ReadTracker,
    Reset,
    Side,
    SocketState,
    TraceBudget,
    Verdict,
    check_time_wait,
    describe_close,
    describe_connection,
    describe_fin,
    describe_read,
    describe_reset,
    describe_tcp_info,
    describe_turn,
    parse_ss,
    parse_tcp_info,
    tcp_info_unavailable,
    websocket_accept,
)

SERVER = Address("127.0.0.1", 9527)
CLIENT = Address("127.0.0.1", 51234)


def tcp_info_bytes(**values: int) -> bytes:
    """A ``struct tcp_info`` as Linux lays it out, with *values* set."""
    head = [6 if values.get("time_wait") else 1, 0, values.get("retransmits", 0)]
    head += [0] * 5
    u32 = [0] * 24
    for index, name in (
        (0, "rto"),
        (2, "mss"),
        (4, "unacked"),
        (15, "rtt"),
        (16, "rttvar"),
        (18, "cwnd"),
        (23, "total_retrans"),
    ):
        u32[index] = values.get(name, 0)
    data = struct.pack("=8B24I", *head, *u32)
    data += struct.pack(
        "=QQQQII", 0, 0, 10, 20, values.get("segs_out", 0), values.get("segs_in", 0)
    )
    data += struct.pack("=I", values.get("notsent", 0))
    return data + bytes(TCP_INFO_SIZE - len(data))


def test_tcp_info_is_read_at_linux_offsets():
    info = parse_tcp_info(
        tcp_info_bytes(
            rtt=1500,
            rttvar=250,
            cwnd=10,
            mss=1448,
            unacked=2,
            total_retrans=3,
            segs_out=7,
            segs_in=5,
            notsent=100,
        ),
        outq=400,
    )
    assert info is not None
    assert (info.state, info.rtt_us, info.rttvar_us, info.snd_cwnd) == (
        "ESTABLISHED",
        1500,
        250,
        10,
    )
    assert (info.unacked, info.total_retrans, info.segs_out, info.segs_in) == (
        2,
        3,
        7,
        5,
    )
    assert info.unacked_bytes == 300  # written and not acknowledged, sent or not
    line = describe_tcp_info(info)
    assert "round trip 1.5 ms" in line
    assert "segments out 7 / in 5" in line
    assert "retransmitted 3" in line
    assert "unacknowledged 2 segments (300 bytes)" in line
    assert "congestion window 10 segments of 1448 bytes" in line


def test_an_old_kernels_short_tcp_info_leaves_the_counters_out():
    info = parse_tcp_info(tcp_info_bytes(rtt=40)[:104])
    assert info is not None
    assert info.segs_out is None
    assert info.unacked_bytes is None
    assert "segments out" not in describe_tcp_info(info)
    assert parse_tcp_info(b"\x01" * 20) is None


def test_without_tcp_info_the_trace_says_what_is_missing():
    line = tcp_info_unavailable("darwin")
    assert "darwin" in line
    assert "retransmissions" in line
    assert "congestion window" in line


def test_the_connection_names_the_listened_port_the_ephemeral_one_and_loopback():
    lines = describe_connection(Side.SERVER, SERVER, CLIENT, ephemeral=(32768, 60999))
    text = "\n".join(lines)
    assert "port 9527 is the port the server listens on" in text
    assert "port 51234 is the client's ephemeral port" in text
    assert "in this machine's ephemeral range 32768-60999" in text
    assert "loopback (回环地址" in text
    assert "before accept() returned" in text
    assert "三次握手" in text
    client = "\n".join(describe_connection(Side.CLIENT, CLIENT, SERVER))
    assert "port 9527 is the port the server listens on" in client
    assert "connect() returned once the three-way handshake" in client
    far = describe_connection(Side.SERVER, Address("10.0.0.1", 9527), CLIENT)
    assert not any("loopback" in line for line in far)


def test_three_lines_in_one_read_are_said_of_the_read_not_of_the_sends():
    fact = ReadTracker().read(b"one\ntwo\nthree\n")
    assert (fact.size, fact.lines, fact.pieces, fact.waiting) == (14, 3, 1, 0)
    line = describe_read(fact, Side.CLIENT)
    assert line.startswith(
        "read 1: 14 bytes b'one\\ntwo\\nthree\\n': this read carried 3 lines: "
        "TCP delivers a byte stream"
    )
    assert "粘包" in line
    assert "whether the client sent them in one send() or in several" in line
    assert "between the sends" not in line
    assert "capture" not in line  # no packets: nothing said of segments
    seen = describe_read(fact, Side.CLIENT, segments=1)
    assert seen.endswith("; the capture shows they came in 1 TCP segment")
    two = describe_read(ReadTracker().read(b"a\nb\n"), Side.SERVER, segments=2)
    assert two.endswith("they came in 2 TCP segments")


def test_one_line_over_three_reads_is_split_and_put_back_together():
    reads = ReadTracker()
    first, second, third = (
        reads.read(b"hel"),
        reads.read(b"lo wo"),
        reads.read(b"rld\n"),
    )
    assert (first.lines, first.waiting) == (0, 3)
    assert (second.lines, second.waiting, second.pieces) == (0, 8, 2)
    assert (third.lines, third.carried, third.pieces, third.waiting) == (1, 8, 3, 0)
    assert "split line (拆包), 8 bytes so far" in describe_read(second, Side.CLIENT)
    assert "(read 1 on)" in describe_read(second, Side.CLIENT)
    assert "one line split over 3 reads" in describe_read(third, Side.CLIENT)
    plain = reads.read(b"again\n")
    assert describe_read(plain, Side.CLIENT) == "read 4: 6 bytes b'again\\n': 1 line"


def test_a_read_that_ends_one_line_and_starts_the_next():
    reads = ReadTracker()
    fact = reads.read(b"first\nsec")
    assert (fact.lines, fact.waiting) == (1, 3)
    assert "3 bytes of the next line wait" in describe_read(fact, Side.CLIENT)
    after = reads.read(b"ond\n")
    assert (after.carried, after.pieces) == (3, 2)


@given(st.lists(st.binary(max_size=30), min_size=1, max_size=20))
def test_lines_counted_over_any_reads_are_the_newlines_sent(pieces):
    reads = ReadTracker()
    facts = [reads.read(piece) for piece in pieces]
    stream = b"".join(pieces)
    assert sum(f.lines for f in facts) == stream.count(b"\n")
    assert facts[-1].waiting == len(stream) - (stream.rfind(b"\n") + 1)


def test_raw_framing_says_one_read_is_one_message_whatever_was_sent():
    fact = ReadTracker(raw=True).read(b"helloworld")
    line = describe_read(fact, Side.CLIENT)
    assert "10 bytes b'helloworld'" in line
    assert "raw framing takes one read as one message, whatever the client sent" in line
    assert "粘包" in line
    assert "nothing in the bytes tells which" in line


def test_a_long_read_is_shown_cut():
    fact = ReadTracker().read(b"x" * 100 + b"\n")
    assert "b'" + "x" * 32 + "'..." in describe_read(fact, Side.CLIENT)


def test_the_budget_shows_so_many_lines_a_second_and_counts_the_rest():
    budget = TraceBudget(per_second=2)
    assert [budget.admit(t) for t in (0.0, 0.1, 0.2, 0.5)] == [0, 0, None, None]
    assert budget.admit(1.0) == 2  # shown, with the two held back
    assert budget.admit(1.1) == 0
    assert budget.total_held == 2


def test_reads_held_back_are_said_with_the_next_one_shown():
    from twisted.internet.task import Clock

    from sockchat._teaching.tracing import ConnectionTrace

    clock, lines = Clock(), []
    trace = ConnectionTrace(Side.SERVER, lines.append, clock, per_second=2)
    assert [trace.read(b"x") for _ in range(4)] == [True, True, False, False]
    clock.advance(1.0)
    assert trace.read(b"\n")
    assert lines == [
        "read 1: 1 byte b'x': no line ends here: a split line (拆包), 1 byte so "
        "far wait for the rest (read 1 on)",
        "read 2: 1 byte b'x': no line ends here: a split line (拆包), 2 bytes so "
        "far wait for the rest (read 1 on)",
        "(2 reads not shown: at most 2 a second)",
        "read 5: 1 byte b'\\n': 1 line; the first line began 4 bytes earlier: one "
        "line split over 5 reads (拆包), put back together at its newline",
    ]


def test_the_turn_and_an_out_of_turn_line():
    lines = describe_turn(Side.SERVER, servers_turn=True, refused=["out-of-turn"])
    assert "refused (!error out-of-turn) and not delivered" in lines[0]
    assert "一端send，另一端recv" in lines[0]
    assert lines[-1].startswith("turn: the server's")
    assert describe_turn(Side.SERVER, servers_turn=False) == [
        "turn: the client's; the server waits for its next line"
    ]
    raw = describe_turn(Side.SERVER, servers_turn=True, raw=True)
    assert "waits its turn in the server's queue" in raw[-1]
    over = describe_turn(Side.SERVER, servers_turn=None, refused=["out-of-turn"])
    assert len(over) == 1  # the refusal; the conversation is over: no turn
    assert "out of turn" in over[0]
    answered = describe_turn(Side.SERVER, servers_turn=False, answered=2)
    assert answered[0].startswith("2 lines delivered and answered at once")
    raw = describe_turn(Side.SERVER, servers_turn=False, answered=1, raw=True)
    assert raw[0].startswith("1 message delivered")


def test_the_side_that_sends_fin_first_holds_time_wait():
    closes = CloseTracker()
    closes.closing(1.0)
    text = "\n".join(describe_close(Side.SERVER, SERVER, CLIENT, closes, clean=True))
    assert "the server sent FIN first" in text
    assert "the server's side (127.0.0.1:9527 <-> 127.0.0.1:51234), for 60 s" in text
    assert "Address already in use" in text
    # The client's FIN was not seen (this program had closed its socket): the
    # trace does not say it came; it says what it would be, and the RST case.
    assert "What the client did next is not seen from this socket" in text
    assert "answered with its own FIN" not in text
    assert "its kernel sent RST instead" in text
    closes.fin_received(1.1)  # read after this side's FIN: now it was seen
    seen = "\n".join(describe_close(Side.CLIENT, CLIENT, SERVER, closes, clean=True))
    assert "the server's own FIN (3) came after it" in seen


def test_a_fin_from_the_client_first_is_called_a_half_close_only_when_seen():
    closes = CloseTracker()
    closes.fin_received(1.0)
    closes.closing(1.0)  # the server's goodbye, then its own FIN
    assert not closes.we_first
    text = "\n".join(describe_close(Side.SERVER, SERVER, CLIENT, closes, clean=True))
    assert "the client sent FIN first" in text
    assert "It was a half-close" not in text
    assert "Whether the client could still receive after its FIN" in text
    # The capture may show the last ACK: only the socket does not.
    assert "the client's last ACK (4) is for this side's kernel, not seen from " in text
    assert "not seen by this program" not in text
    assert "TIME_WAIT (时间等待) is on the client's side" in text
    assert "Address already in use" not in text
    seen = "\n".join(
        describe_close(
            Side.SERVER,
            SERVER,
            CLIENT,
            closes,
            clean=True,
            peer_received="a captured ACK of the goodbye",
        )
    )
    assert (
        "It was a half-close (半关闭): the client could send no more, but still "
        "received what this side sent after its FIN (seen: a captured ACK of the "
        "goodbye)"
    ) in seen
    assert "FIN from the client: this side read its end of file" in describe_fin(
        Side.SERVER
    )
    assert "is not seen from here" in describe_fin(Side.SERVER)


def test_an_abort_is_a_reset_with_no_time_wait():
    closes = CloseTracker()
    closes.abort(2.0)
    (line,) = describe_close(Side.SERVER, SERVER, CLIENT, closes, clean=False)
    assert "RST" in line
    assert "no TIME_WAIT" in line


def test_an_rst_seen_is_told_apart_from_a_fin_and_explained():
    closes = CloseTracker()
    closes.closing(1.0)  # the server said goodbye and sent FIN
    reset = Reset(Side.CLIENT, "a captured packet")
    lines = describe_close(Side.SERVER, SERVER, CLIENT, closes, clean=True, reset=reset)
    assert lines == [
        "close: the server sent FIN first (四次挥手 1), and the client's kernel "
        "answered with RST (seen: a captured packet), not with its own FIN: the "
        "connection ended at once, with no four-way close and no TIME_WAIT on "
        "either side",
        f"why an RST: {RST_MEANS}",
    ]
    assert "closes a socket with data still unread" in RST_MEANS
    assert "a port where nothing listens" in RST_MEANS
    lost = describe_close(
        Side.CLIENT,
        CLIENT,
        SERVER,
        CloseTracker(),
        clean=False,
        reset=Reset(Side.SERVER, "recv() failed with ECONNRESET"),
    )
    assert lost[0].startswith(
        "close: the server's kernel sent RST (seen: recv() failed with ECONNRESET)"
    )
    line = describe_reset(Side.SERVER, reset)
    assert line.startswith("RST: the client's kernel reset the connection (seen: a ")
    assert RST_MEANS in line
    assert "this side's kernel" in describe_reset(Side.CLIENT, reset)


SS_ALL = """\
ESTAB      0      0      127.0.0.1:9527  127.0.0.1:40000
TIME-WAIT  0      0      127.0.0.1:9527  127.0.0.1:51234 timer:(timewait,59sec,0)
FIN-WAIT-2 0      0      127.0.0.1:9527  127.0.0.1:51300 timer:(timewait,1min,0)
TIME-WAIT  0      0      [::1]:9527      [::1]:51234     timer:(timewait,850ms,0)
"""


def test_ss_output_is_read_with_or_without_the_state_column():
    assert parse_ss(SS_ALL) == [
        SocketState("ESTAB", "127.0.0.1:9527", "127.0.0.1:40000", None),
        SocketState("TIME-WAIT", "127.0.0.1:9527", "127.0.0.1:51234", 59.0),
        SocketState("FIN-WAIT-2", "127.0.0.1:9527", "127.0.0.1:51300", 60.0),
        SocketState("TIME-WAIT", "[::1]:9527", "[::1]:51234", 0.85),
    ]
    filtered = "0      0      127.0.0.1:9527 127.0.0.1:51234 timer:(timewait,4sec,0)\n"
    assert parse_ss(filtered) == [
        SocketState("TIME-WAIT", "127.0.0.1:9527", "127.0.0.1:51234", 4.0)
    ]
    assert parse_ss("Recv-Q Send-Q Local Address:Port\n\n") == []


def test_the_kernel_check_agrees_or_says_it_disagrees():
    entries = parse_ss(SS_ALL)
    here = check_time_wait(Side.SERVER, SERVER, CLIENT, entries, expected_here=True)
    assert "TIME-WAIT on this side" in here.line
    assert "59 s left" in here.line
    assert "agrees" in here.line
    assert here.verdict is Verdict.AGREES
    wrong = check_time_wait(Side.SERVER, SERVER, CLIENT, entries, expected_here=False)
    assert "DISAGREE" in wrong.line
    there = check_time_wait(Side.CLIENT, CLIENT, SERVER, entries, expected_here=False)
    assert "on the other side" in there.line
    assert "agrees" in there.line
    none = check_time_wait(Side.SERVER, SERVER, CLIENT, [], expected_here=True)
    assert "DISAGREE" in none.line


def test_no_time_wait_at_either_loopback_end_is_never_agreement():
    # Lesson 5 as the issue found it: both ends on this machine, TIME_WAIT
    # expected on the client's, and ss shows none for the pair.
    check = check_time_wait(Side.SERVER, SERVER, CLIENT, [], expected_here=False)
    assert check.verdict is Verdict.DISAGREES
    assert "agrees" not in check.line
    assert "at either end, and both ends are on this machine" in check.line
    assert "most likely a reset (RST) ended it" in check.line
    after_reset = check_time_wait(
        Side.SERVER, SERVER, CLIENT, [], expected_here=False, reset=True
    )
    assert after_reset.verdict is Verdict.AGREES
    assert "as after a reset" in after_reset.line


def test_an_end_on_another_machine_is_not_checked():
    far = Address("192.0.2.7", 51234)
    check = check_time_wait(Side.SERVER, SERVER, far, [], expected_here=False)
    assert check.verdict is Verdict.NOT_CHECKED
    assert "agrees" not in check.line
    assert "not checked" in check.line
    assert "the client's end is not known to be on this machine" in check.line
    told = check_time_wait(
        Side.SERVER, SERVER, far, [], expected_here=False, peer_here=True
    )
    assert told.verdict is Verdict.DISAGREES  # told it is here: then it would show


states = st.sampled_from([None, "TIME-WAIT", "ESTAB", "CLOSE-WAIT", "FIN-WAIT-2"])


@given(
    here=states,
    there=states,
    expected_here=st.booleans(),
    reset=st.booleans(),
    peer_here=st.sampled_from([None, True, False]),
    far=st.booleans(),
)
def test_the_check_says_agrees_only_about_what_ss_showed(
    here, there, expected_here, reset, peer_here, far
):
    remote = Address("192.0.2.7", 51234) if far else CLIENT
    entries = []
    if here is not None:
        entries.append(SocketState(here, str(SERVER), str(remote), None))
    if there is not None:
        entries.append(SocketState(there, str(remote), str(SERVER), None))
    check = check_time_wait(
        Side.SERVER,
        SERVER,
        remote,
        entries,
        expected_here=expected_here,
        last_try=True,
        peer_here=peer_here,
        reset=reset,
    )
    held_here, held_there = here == "TIME-WAIT", there == "TIME-WAIT"
    sees_both = peer_here or (peer_here is None and not far)
    if "agrees" in check.line:
        assert check.verdict is Verdict.AGREES
        if reset:
            assert not held_here
            assert not held_there
            assert sees_both
        elif expected_here:
            assert held_here
        else:
            assert held_there
    else:
        assert check.verdict is not Verdict.AGREES
    assert "\n" not in check.line


def test_a_side_still_closing_is_asked_again_until_the_last_try():
    closing = Address("127.0.0.1", 51300)
    entries = parse_ss(SS_ALL)
    first = check_time_wait(Side.SERVER, SERVER, closing, entries, expected_here=True)
    assert first.again
    assert "FIN-WAIT-2" in first.line
    last = check_time_wait(
        Side.SERVER, SERVER, closing, entries, expected_here=True, last_try=True
    )
    assert not last.again
    assert "DISAGREE" in last.line


def test_websocket_accept_is_rfc_6455s_example():
    # RFC 6455, section 1.3; and what wsproto (the server's own) computes.
    from wsproto.utilities import generate_accept_token

    assert (
        websocket_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    )
    key = "x3JJHMbDL1EzLkh9GBhXDw=="
    assert websocket_accept(key) == generate_accept_token(key.encode()).decode()
