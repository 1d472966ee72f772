"""The broker's messages (``sockchat._broker.wire``): ``encode`` gives the
bytes that ``json.dumps`` gives with the protocol's options (it calls the
json module's C encoder directly, made once), and ``decode`` takes them
back; ``encode_answer``, a worker's every answer, writes the very bytes
that ``encode`` writes; ``decode`` takes any bytes and either gives a
message or says, with a ``WireError``, why not."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sockchat._broker.wire import (
    PROTOCOL,
    WireError,
    decode,
    encode,
    encode_answer,
    encode_line,
)

#: What a message's fields hold: JSON's values, any text, any float.
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
fields = st.dictionaries(
    st.text(max_size=12).filter(lambda k: k not in ("v", "kind")), values, max_size=6
)


@given(st.text(max_size=12), fields)
def test_a_message_is_the_json_of_json_dumps(kind: str, more: dict[str, Any]) -> None:
    expected = json.dumps(
        {"v": PROTOCOL, "kind": kind, **more}, ensure_ascii=True, separators=(",", ":")
    ).encode("ascii")
    assert encode(kind, **more) == expected


@given(st.text(max_size=12), fields)
def test_a_message_decodes_to_what_was_encoded(kind: str, more: dict[str, Any]) -> None:
    message = decode(encode(kind, **more))
    again = json.loads(json.dumps({"v": PROTOCOL, "kind": kind, **more}))
    assert json.dumps(message, sort_keys=True) == json.dumps(again, sort_keys=True)


def test_what_json_cannot_hold_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        encode("line", text={"a"})


def test_a_message_of_another_protocol_is_refused_in_one_line() -> None:
    with pytest.raises(WireError) as refused:
        decode(json.dumps({"v": PROTOCOL + 1, "kind": "line"}), sender="worker w1")
    assert "\n" not in str(refused.value)
    assert "run the same sockchat version everywhere" in str(refused.value)


#: Conversation ids as instances give them, and past 64 bits.
convs = st.integers(min_value=0, max_value=2**70)


@given(conv=convs, entry=st.text(), text=st.text(), by=st.text())
@example(conv=7, entry="1718000000000-0", text='say "hi"\n\x00é\U0001f600', by="ann")
def test_an_answer_is_written_as_encode_writes_it(
    conv: int, entry: str, text: str, by: str
) -> None:
    written = encode_answer(conv, entry, text, by)
    assert written == encode("answer", conv=conv, entry=entry, text=text, by=by)
    assert decode(written) == {
        "v": PROTOCOL,
        "kind": "answer",
        "conv": conv,
        "entry": entry,
        "text": text,
        "by": by,
    }


@given(st.binary())
@example(b"")
@example(b" ")
@example(b'{"v":2,"kind":"x"} ')
@example(b'{"v":2,"kind":"x"}{}')
@example(b"\xff")
@example(b"[1]")
def test_any_bytes_are_a_message_or_a_wire_error(data: bytes) -> None:
    why = ""
    try:
        message = decode(data)
    except WireError as e:
        why = str(e)
    else:
        assert message["v"] == PROTOCOL
        assert isinstance(message["kind"], str)
    assert "\n" not in why  # one line, for the log


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"", "is not JSON"),
        (b'{"v":2,"kind":"x"} ', "is not JSON"),
        (b"[]", "a JSON list, not an object"),
        (b'{"v":1,"kind":"x"}', "speaks broker protocol 1"),
        (b'{"v":2}', "a message with no kind"),
    ],
)
def test_what_is_not_a_message_is_said_in_one_line(data: bytes, said: str) -> None:
    with pytest.raises(WireError, match=said):
        decode(data, sender="instance i3")


#: Times as clocks give them: from a test's Clock (0) to this century's.
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)


@given(
    instance=st.text(),
    conv=convs,
    peer=st.text(),
    n=st.integers(min_value=0, max_value=2**40),
    text=st.text(),
    at=times,
)
@example(instance="i1", conv=3, peer="127.0.0.1:5000", n=1, text="hi", at=0.0)
@example(instance="i1", conv=3, peer="p", n=1, text="é\n", at=1733591234.0015)
def test_a_workers_line_is_the_message_encode_writes(
    instance: str, conv: int, peer: str, n: int, text: str, at: float
) -> None:
    written = decode(encode_line(instance, conv, peer, n, text, at))
    expected = decode(
        encode(
            "line",
            instance=instance,
            conv=conv,
            peer=peer,
            n=n,
            text=text,
            at=round(at, 3),
        )
    )
    assert list(written) == list(expected), "the same fields, in the same order"
    assert written.pop("at") == pytest.approx(expected.pop("at"), abs=0.0011)
    assert written == expected


def test_a_line_before_a_clocks_zero_is_written_the_long_way() -> None:
    assert decode(encode_line("i1", 1, "p", 1, "t", -1.25))["at"] == -1.25
