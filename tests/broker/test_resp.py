"""The RESP2 codec (sockchat/_broker/resp.py): commands out, replies in, in pieces.

Both parsers, the pure one (the reference) and hiredis's held to its rules,
are given the same bytes and must give the same replies and the same
protocol errors.
"""

from __future__ import annotations

import re
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockchat._broker import resp
from sockchat._broker.resp import (
    HIREDIS,
    MAX_ARRAY,
    MAX_BULK,
    MAX_DEPTH,
    MAX_LINE,
    ErrorReply,
    HiredisReplyParser,
    IReplyParser,
    ProtocolError,
    ReplyParser,
    encode_arg,
    encode_command,
    new_reply_parser,
)

#: Both parsers, for the tests that every parser must pass.
PARSERS = [ReplyParser, HiredisReplyParser]


def test_hiredis_is_installed_for_the_tests_and_is_the_parser_then() -> None:
    # The test extra installs it (setup.cfg): without it, the tests below
    # would hold only the pure parser to the rules.
    assert HIREDIS
    assert isinstance(new_reply_parser(), HiredisReplyParser)


def test_a_command_is_an_array_of_bulk_strings() -> None:
    assert encode_command("SET", "ключ", b"\x00\r\n", 42, 1.5, -3) == (
        b"*6\r\n$3\r\nSET\r\n$8\r\n\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87\r\n"
        b"$3\r\n\x00\r\n\r\n$2\r\n42\r\n$3\r\n1.5\r\n$2\r\n-3\r\n"
    )


@pytest.mark.parametrize("bad", [True, None, object(), float("nan")])
def test_arguments_that_redis_cannot_take_are_refused(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        encode_command("SET", "k", bad)


def test_an_empty_command_is_refused() -> None:
    with pytest.raises(ValueError, match="at least its name"):
        encode_command()


@pytest.mark.parametrize("parser", PARSERS)
def test_each_reply_type(parser: type[IReplyParser]) -> None:
    data = (
        b"+OK\r\n-ERR bad thing\r\n:-12\r\n$3\r\nabc\r\n$-1\r\n*-1\r\n*0\r\n$0\r\n\r\n"
        b"*2\r\n*1\r\n:1\r\n$-1\r\n*3\r\n+QUEUED\r\n*1\r\n+OK\r\n-ERR in\r\n"
    )
    assert parser().feed(data) == [
        "OK",
        ErrorReply("ERR bad thing"),
        -12,
        b"abc",
        None,
        None,
        [],
        b"",
        [[1], None],
        ["QUEUED", ["OK"], ErrorReply("ERR in")],
    ]


@pytest.mark.parametrize("make", PARSERS)
def test_a_partial_reply_waits_for_the_rest(make: type[IReplyParser]) -> None:
    parser = make()
    assert parser.feed(b"*2\r\n$5\r\nhel") == []
    assert parser.feed(b"lo\r") == []
    assert parser.feed(b"\n:7\r\n+OK") == [[b"hello", 7]]
    assert parser.feed(b"\r\n") == ["OK"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"!3\r\n", "unknown reply type"),
        (b":12a\r\n", "not an integer"),
        (b"$x\r\n", "not an integer"),
        (b"$-2\r\n", "a bulk string of -2 bytes"),
        (b"$%d\r\n" % (MAX_BULK + 1), "limit is 536870912"),
        (b"*%d\r\n" % (MAX_ARRAY + 1), "limit is 1048576"),
        (b"$3\r\nabcde\r\n", "not followed by CRLF"),
        (b"+" + b"x" * (MAX_LINE + 10), "a line longer than"),
        (b"*1\r\n" * (MAX_DEPTH + 1), "nested more than"),
        (b":01\r\n", "not an integer"),
        (b":-0\r\n", "not an integer"),
        (b":+1\r\n", "not an integer"),
        (b":9223372036854775808\r\n", "not an integer"),
        (b"$03\r\nabc\r\n", "not an integer"),
        (b"+a\rb\r\n", "a CR or LF inside"),
        (b"-a\nb\r\n", "a CR or LF inside"),
        (b"$3\r\nabcXY+OK\r\n", "not followed by CRLF"),
    ],
)
def test_malformed_or_oversized_replies_are_protocol_errors(
    data: bytes, message: str
) -> None:
    parser = ReplyParser()
    with pytest.raises(ProtocolError, match=message):
        parser.feed(data)
    with pytest.raises(ProtocolError):  # and it stays broken
        parser.feed(b"+OK\r\n")


#: Replies that RESP2 does not have or that break a bound, whole.  hiredis
#: reads RESP3's types and bounds nothing of its own: the wrapper must.
BAD = [
    b"!3\r\nabc\r\n",
    b"\x00\r\n",
    b"_\r\n",
    b"#t\r\n",
    b"#f\r\n",
    b",1.5\r\n",
    b"(12\r\n",
    b"=9\r\ntxt:hello\r\n",
    b"%1\r\n+a\r\n:1\r\n",
    b"~1\r\n:1\r\n",
    b">1\r\n:1\r\n",
    b"|1\r\n+a\r\n:1\r\n:5\r\n",
    b"*2\r\n:1\r\n_\r\n",
    b"*1\r\n~1\r\n:1\r\n",
    b":01\r\n",
    b":-0\r\n",
    b":99999999999999999999\r\n",
    b"$-2\r\n",
    b"*-2\r\n",
    b"$3\r\nabcXY+OK\r\n",
    b"*1\r\n$3\r\nabcXY",
    b"+a\rb\r\n",
    b"$%d\r\n" % (MAX_BULK + 1),
    b"*%d\r\n" % (MAX_ARRAY + 1),
    b"~%d\r\n" % (MAX_ARRAY + 1),
    b">%d\r\n" % (2**32),
    b"*1\r\n" * (MAX_DEPTH + 1) + b":1\r\n",
    # Stream entries (an id and its fields: hiredis's parser takes them in
    # one step), with an id or a field not followed by CRLF, or too deep.
    b"*1\r\n*2\r\n$3\r\n1-0XY*2\r\n$1\r\na\r\n$1\r\nb\r\n",
    b"*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\na\r\n$1\r\nbXY",
    b"*1\r\n" * (MAX_DEPTH - 1) + b"*2\r\n$1\r\ni\r\n*1\r\n$1\r\nf\r\n",
    b"+" + b"x" * (MAX_LINE + 1) + b"\r\n",
    b"*1\r\n-" + b"x" * (MAX_LINE + 1) + b"\r\n",
]


@pytest.mark.parametrize("make", PARSERS)
@pytest.mark.parametrize("data", BAD, ids=lambda d: repr(d[:12]))
def test_what_resp2_does_not_have_or_allow_is_a_protocol_error(
    make: type[IReplyParser], data: bytes
) -> None:
    parser = make()
    with pytest.raises(ProtocolError) as e:
        parser.feed(data)
    assert "\n" not in str(e.value)
    with pytest.raises(ProtocolError):  # and it stays broken
        parser.feed(b"+OK\r\n")


@pytest.mark.parametrize("make", PARSERS)
@pytest.mark.parametrize("kind", [b"+", b"-", b":", b"$", b"*"])
def test_an_unfinished_line_longer_than_the_bound_is_an_error_at_once(
    make: type[IReplyParser], kind: bytes
) -> None:
    # Not when its end comes: the parser would hold what a peer sends.
    parser = make()
    assert parser.feed(b"*2\r\n" + kind + b"1" * 1000) == []
    with pytest.raises(ProtocolError):
        parser.feed(b"1" * MAX_LINE)


@pytest.mark.parametrize("make", PARSERS)
def test_the_deepest_and_longest_allowed_replies_parse(
    make: type[IReplyParser],
) -> None:
    deep = b"*1\r\n" * MAX_DEPTH + b"*0\r\n"
    line = b"x" * MAX_LINE
    replies = make().feed(deep + b"+" + line + b"\r\n-" + line + b"\r\n")
    innermost = replies[0]
    for _ in range(MAX_DEPTH):
        (innermost,) = innermost
    assert innermost == []
    assert replies[1:] == [line.decode(), ErrorReply(line.decode())]


@pytest.mark.parametrize("make", PARSERS)
def test_the_deepest_stream_entry_allowed_parses(make: type[IReplyParser]) -> None:
    entry = [b"1-0", [b"kind", b"line"]]
    (reply,) = make().feed(b"*1\r\n" * (MAX_DEPTH - 2) + encode_reply(entry))
    for _ in range(MAX_DEPTH - 2):
        (reply,) = reply
    assert reply == entry


@pytest.mark.parametrize("make", PARSERS)
def test_a_big_bulk_string_may_come_in_many_pieces(make: type[IReplyParser]) -> None:
    parser = make()
    body = b"x" * 1_000_000
    data = b"$%d\r\n" % len(body) + body + b"\r\n"
    replies = []
    for i in range(0, len(data), 1000):
        replies += parser.feed(data[i : i + 1000])
    assert replies == [body]


@pytest.mark.parametrize(
    "body",
    [
        b"y" * 100_000,  # past MAX_LINE unfinished: the pure parser finishes it
        b"a *1234567 or $7654321 in a line",  # looks like a huge header
    ],
)
def test_hiredis_hands_a_reply_it_cannot_bound_to_the_pure_parser_and_takes_over_again(
    body: bytes,
) -> None:
    parser = HiredisReplyParser()
    data = b"*2\r\n$%d\r\n%s\r\n+OK\r\n" % (len(body), body)
    replies = []
    for i in range(0, len(data), 30_000):
        replies += parser.feed(data[i : i + 30_000])
    assert replies == [[body, "OK"]]
    assert parser._fallback is None  # hiredis again for what comes next
    assert parser.feed(b":1\r\n+A\r\n") == [1, "A"]


def encode_reply(reply: Any) -> bytes:
    """The RESP2 bytes a server would send for *reply*."""
    if isinstance(reply, ErrorReply):
        return b"-" + reply.message.encode() + b"\r\n"
    if isinstance(reply, str):
        return b"+" + reply.encode() + b"\r\n"
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, bytes):
        return b"$%d\r\n" % len(reply) + reply + b"\r\n"
    if reply is None:
        return b"$-1\r\n"
    return b"*%d\r\n" % len(reply) + b"".join(encode_reply(r) for r in reply)


line_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
    max_size=20,
)
replies = st.recursive(
    st.one_of(
        line_text,
        line_text.map(ErrorReply),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.binary(max_size=40),
        st.none(),
        # A stream entry: an id and its fields.
        st.tuples(st.binary(max_size=20), st.lists(st.binary(max_size=20))).map(list),
    ),
    lambda children: st.lists(children, max_size=5),
    max_leaves=30,
)


@given(
    st.lists(replies, min_size=1, max_size=5),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_replies_split_anywhere_parse_the_same(
    sent: list[Any], cuts: list[int]
) -> None:
    data = b"".join(encode_reply(r) for r in sent)
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [
        data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)
    ]
    for make in PARSERS:
        parser = make()
        got: list[Any] = []
        for piece in pieces:
            got += parser.feed(piece)
        assert got == sent, make
        byte_by_byte = make()
        one_at_a_time: list[Any] = []
        for i in range(len(data)):
            one_at_a_time += byte_by_byte.feed(data[i : i + 1])
        assert one_at_a_time == sent, make


def pieces_of(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@given(
    st.lists(replies, max_size=4),
    st.sampled_from(BAD),
    st.lists(replies, max_size=3),
    st.lists(st.integers(min_value=0, max_value=100_000), max_size=20),
)
def test_a_bad_reply_among_good_ones_split_anywhere_is_an_error_to_both(
    before: list[Any], bad: bytes, after: list[Any], cuts: list[int]
) -> None:
    data = (
        b"".join(encode_reply(r) for r in before)
        + bad
        + b"".join(encode_reply(r) for r in after)
    )
    for make in PARSERS:
        parser = make()
        got: list[Any] = []
        try:
            for piece in pieces_of(data, cuts):
                got += parser.feed(piece)
        except ProtocolError:
            pass
        else:
            pytest.fail(f"{make.__name__} took {bad!r}")
        # What came before the error is some of the good replies, in order.
        assert got == before[: len(got)], make


arguments = st.one_of(
    st.binary(max_size=30),
    st.text(max_size=10),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
)


@given(
    st.lists(
        st.one_of(
            st.binary(max_size=30),
            st.text(max_size=10),
            st.integers(min_value=-(2**70), max_value=2**70),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_hiredis_packs_a_command_as_the_pure_encoder_does(args: list[Any]) -> None:
    packed = encode_command(*args)
    with patch.object(resp, "HIREDIS", False):
        assert encode_command(*args) == packed


@given(st.lists(arguments, min_size=1, max_size=8))
def test_a_command_reads_back_as_its_arguments(args: list[Any]) -> None:
    (parsed,) = ReplyParser().feed(encode_command(*args))
    assert parsed == [encode_arg(a) for a in args]
    for arg, data in zip(args, parsed, strict=True):
        if isinstance(arg, float):
            assert float(data) == arg
        elif isinstance(arg, int):
            assert int(data) == arg


#: What ``_suspect`` finds, as a regular expression (its reference).
SUSPECT = re.compile(rb"[*$~>|%][0-9]{7}")


@given(
    st.lists(
        st.one_of(
            st.sampled_from([b"*", b"$", b"~", b">", b"|", b"%", b"#", b"+", b"\r\n"]),
            st.binary(max_size=4),
            st.text("0123456789", min_size=1, max_size=9).map(str.encode),
        ),
        max_size=20,
    ).map(b"".join),
    st.integers(min_value=0, max_value=40),
)
def test_a_suspect_header_is_found_as_the_regular_expression_finds_it(
    raw: bytes, start: int
) -> None:
    assert resp._suspect(raw, start) == (SUSPECT.search(raw, start) is not None)


@pytest.mark.parametrize("kind", list(b"*$~>|%"))
def test_each_type_byte_with_seven_digits_is_suspect(kind: int) -> None:
    header = bytes([kind]) + b"1234567"
    assert resp._suspect(b"ab" + header, 0)
    assert resp._suspect(b"ab" + header, 2)
    assert not resp._suspect(b"ab" + header, 3)
    assert not resp._suspect(b"ab" + header[:-1] + b"\r\n", 0)
