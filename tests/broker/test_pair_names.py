"""How a pair's messages name their sender, checked against the long way.

Every relayed line asks whether it comes from the seat's partner
(``_sent_by``), and names are made safe for a notice (``_one_line``);
both take a shortcut for the usual, printable name (issue 23).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sockchat._broker.pairs import _one_line, _Peer, _peer, _sent_by

NAMES = st.one_of(
    st.text(max_size=250),
    st.sampled_from(["web-1", "a\x1bb", "x" * 201, "\u202eevil", ""]),
)


@given(NAMES, st.integers(1, 250))
def test_one_line_is_each_character_made_printable(text, limit):
    assert _one_line(text, limit) == "".join(
        c if c.isprintable() else "?" for c in text[:limit]
    )


FROM = st.one_of(
    st.none(),
    st.integers(),
    st.fixed_dictionaries(
        {
            "instance": st.one_of(NAMES, st.integers(), st.none()),
            "conv": st.one_of(st.integers(0, 3), st.booleans(), st.text(max_size=2)),
        },
        optional={"label": st.one_of(NAMES, st.none())},
    ),
)
PEERS = st.one_of(
    st.none(),
    st.builds(_Peer, NAMES.map(_one_line), st.integers(0, 3), st.just("client")),
)


@given(FROM, PEERS)
def test_sent_by_is_the_same_as_making_a_peer_and_comparing(value, peer):
    made = _peer(value)
    expected = peer is not None and made is not None and peer.same(made)
    assert _sent_by(value, peer) == expected


def test_a_partner_named_with_a_control_character_is_still_recognised():
    partner = _peer({"instance": "a\x1bb", "conv": 2, "label": "x"})
    assert partner is not None
    assert partner.instance == "a?b"
    assert _sent_by({"instance": "a\x1bb", "conv": 2}, partner)
    assert not _sent_by({"instance": "a\x1bb", "conv": 3}, partner)
    assert not _sent_by({"instance": "a?c", "conv": 2}, partner)
