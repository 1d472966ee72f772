"""The RESP2 codec (sockchat/_broker/resp.py): commands out, replies in, in pieces."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockchat._broker.resp import (
    MAX_ARRAY,
    MAX_BULK,
    MAX_DEPTH,
    MAX_LINE,
    ErrorReply,
    ProtocolError,
    ReplyParser,
    encode_arg,
    encode_command,
)


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


def test_each_reply_type() -> None:
    data = (
        b"+OK\r\n-ERR bad thing\r\n:-12\r\n$3\r\nabc\r\n$-1\r\n*-1\r\n*0\r\n$0\r\n\r\n"
        b"*2\r\n*1\r\n:1\r\n$-1\r\n"
    )
    assert ReplyParser().feed(data) == [
        "OK",
        ErrorReply("ERR bad thing"),
        -12,
        b"abc",
        None,
        None,
        [],
        b"",
        [[1], None],
    ]


def test_a_partial_reply_waits_for_the_rest() -> None:
    parser = ReplyParser()
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


def test_a_big_bulk_string_may_come_in_many_pieces() -> None:
    parser = ReplyParser()
    body = b"x" * 1_000_000
    data = b"$%d\r\n" % len(body) + body + b"\r\n"
    replies = []
    for i in range(0, len(data), 1000):
        replies += parser.feed(data[i : i + 1000])
    assert replies == [body]


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
    parser = ReplyParser()
    got: list[Any] = []
    for piece in pieces:
        got += parser.feed(piece)
    assert got == sent
    byte_by_byte = ReplyParser()
    one_at_a_time: list[Any] = []
    for i in range(len(data)):
        one_at_a_time += byte_by_byte.feed(data[i : i + 1])
    assert one_at_a_time == sent


arguments = st.one_of(
    st.binary(max_size=30),
    st.text(max_size=10),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
)


@given(st.lists(arguments, min_size=1, max_size=8))
def test_a_command_reads_back_as_its_arguments(args: list[Any]) -> None:
    (parsed,) = ReplyParser().feed(encode_command(*args))
    assert parsed == [encode_arg(a) for a in args]
    for arg, data in zip(args, parsed, strict=True):
        if isinstance(arg, float):
            assert float(data) == arg
        elif isinstance(arg, int):
            assert int(data) == arg
