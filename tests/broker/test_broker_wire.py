"""The broker's messages (``sockchat._broker.wire``): ``encode`` gives the
bytes that ``json.dumps`` gives with the protocol's options (it calls the
json module's C encoder directly, made once), and ``decode`` takes them
back."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockchat._broker.wire import PROTOCOL, WireError, decode, encode

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
