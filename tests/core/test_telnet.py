"""Telnet's commands in line input: taken out, answered, and said, with no I/O."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sockchat._core.telnet import TelnetFilter, TelnetHeard, telnet_notice

#: What Debian's telnet (inetutils) sends for Ctrl-C: IAC IP, IAC DO TM.
CTRL_C = b"\xff\xf4\xff\xfd\x06"


def test_ctrl_c_is_taken_out_and_its_timing_mark_refused():
    f = TelnetFilter()
    data, heard = f.feed(b"hello\r\n" + CTRL_C + b"after\r\n")
    assert data == b"hello\r\nafter\r\n"
    # WILL TIMING-MARK: telnet shows the server's output again.
    assert heard == TelnetHeard(("IP",), b"\xff\xfb\x06")


def test_plain_text_passes_untouched():
    f = TelnetFilter()
    assert f.feed("你好\r\n".encode()) == ("你好\r\n".encode(), None)


def test_offers_are_refused_and_refusals_need_no_answer():
    f = TelnetFilter()
    data, heard = f.feed(b"\xff\xfb\x01\xff\xfc\x03\xff\xfe\x05x")
    assert data == b"x"
    # WILL ECHO -> DONT ECHO; WONT and DONT ask for what is so: no answer.
    assert heard == TelnetHeard(
        (), b"\xff\xfe\x01", (("WILL", 1), ("WONT", 3), ("DONT", 5))
    )


def test_an_escaped_ff_stays_a_byte_and_a_newline_is_never_taken():
    f = TelnetFilter()
    assert f.feed(b"a\xff\xffb\n") == (b"a\xffb\n", None)
    assert f.feed(b"\xff\xfd\n") == (b"\xff\xfd\n", None)
    assert f.feed(b"\xff\n") == (b"\xff\n", None)
    assert f.feed(b"\xff" + b"A") == (b"\xffA", None)


@given(st.lists(st.integers(1, 8), max_size=20))
def test_a_command_split_anywhere_gives_the_same_result(cuts):
    stream = b"hi\r\n" + CTRL_C + b"\xff\xf6" + b"x\xff\xff\r\n" + CTRL_C
    whole_data, whole_heard = TelnetFilter().feed(stream)
    f = TelnetFilter()
    data, commands, reply = b"", [], b""
    start = 0
    for size in [*cuts, len(stream)]:
        part, heard = f.feed(stream[start : start + size])
        start += size
        data += part
        if heard is not None:
            commands += heard.commands
            reply += heard.reply
        assert f.held <= 2
    assert whole_heard is not None
    assert (data, tuple(commands), reply) == (
        whole_data,
        whole_heard.commands,
        whole_heard.reply,
    )
    assert data == b"hi\r\nx\xff\r\n"


def test_the_notice_says_what_became_of_ctrl_c_and_how_to_quit():
    notice = telnet_notice(TelnetHeard(("IP",), b""))
    assert notice is not None
    assert notice.code == "telnet"
    assert "an interrupt (Ctrl-C)" in notice.text
    assert "Send q to quit" in notice.text
    ayt = telnet_notice(TelnetHeard(("AYT",), b""))
    assert ayt is not None
    assert ayt.text == "yes, sockchat is here."
    assert telnet_notice(TelnetHeard((), b"\xff\xfb\x06")) is None


# The server with a telnet client (line framing)


def test_server_answers_ctrl_c_so_telnet_shows_output_and_the_next_line_is_fine():
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from sockchat import ChatServerFactory, EchoResponder

    factory = ChatServerFactory(EchoResponder(), clock=Clock())
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    transport.clear()
    proto.dataReceived(b"hello\r\n")
    proto.dataReceived(CTRL_C[:3])  # split: the notice waits for the refusal
    proto.dataReceived(CTRL_C[3:] + b"after\r\n")
    out = transport.value()
    assert out.startswith(b"hello\n\xff\xfb\x06!info telnet: telnet sent an interrupt")
    assert out.endswith(b"\nafter\n")
    assert proto.runner.engine.lines == 2, "telnet commands are not lines"


def test_other_bytes_that_are_not_utf8_are_still_refused():
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from sockchat import ChatServerFactory, EchoResponder

    factory = ChatServerFactory(EchoResponder(), clock=Clock())
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    transport.clear()
    proto.dataReceived(b"\xff\xff\xfe\n\xff\n")
    assert transport.value().count(b"!error invalid-utf8: ") == 2


# IAC DONT and any byte (issue 24, item 10): per RFC 854, and never silently.


@given(
    st.integers(0, 255).filter(lambda b: b != 0x0A),
    st.lists(st.integers(1, 4), max_size=6),
)
def test_dont_and_any_byte_is_a_command_that_is_reported(option, cuts):
    stream = b"x\xff\xfe" + bytes([option]) + b"y\n"
    f = TelnetFilter()
    data, negotiations, reply = b"", [], b""
    start = 0
    for size in [*cuts, len(stream)]:
        part, heard = f.feed(stream[start : start + size])
        start += size
        data += part
        if heard is not None:
            negotiations += heard.negotiations
            reply += heard.reply
    assert data == b"xy\n"
    assert reply == b""  # RFC 854: DONT for what is off already gets no answer
    if option == 6:  # TIMING-MARK: part of Ctrl-C, said with the interrupt
        assert negotiations == []
    else:
        assert negotiations == [("DONT", option)]
        notice = telnet_notice(TelnetHeard((), b"", tuple(negotiations)))
        assert notice is not None
        assert f"DONT option {option}" in notice.text


def test_a_utf16_byte_order_mark_is_said_to_have_taken_a_byte():
    # printf '\xff\xfehello\n' | nc ...: the h went as an option.
    data, heard = TelnetFilter().feed(b"\xff\xfehello\n")
    assert data == b"ello\n"
    assert heard is not None
    notice = telnet_notice(heard)
    assert notice is not None
    assert "DONT option 104 (the byte 'h', if it was meant as text)" in notice.text


def test_each_negotiation_is_reported_once_and_still_refused_each_time():
    f = TelnetFilter()
    _, first = f.feed(b"\xff\xfd\x18" * 3)
    _, again = f.feed(b"\xff\xfd\x18")
    assert first == TelnetHeard((), b"\xff\xfc\x18" * 3, (("DO", 24),))
    assert again == TelnetHeard((), b"\xff\xfc\x18")
    assert telnet_notice(again) is None
    notice = telnet_notice(first)
    assert notice is not None
    assert "DO option 24 (TERMINAL-TYPE), refused (WONT)" in notice.text


def test_the_server_says_which_byte_a_telnet_command_took():
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from sockchat import ChatServerFactory, EchoResponder

    factory = ChatServerFactory(EchoResponder(), clock=Clock())
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    transport.clear()
    proto.dataReceived(b"\xff\xfehello\n")
    lines = transport.value().decode().splitlines()
    assert lines[0].startswith("!info telnet: telnet sent DONT option 104 (the byte")
    assert lines[1] == "ello"
