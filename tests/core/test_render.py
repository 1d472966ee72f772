"""Peer text never reaches a terminal raw."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockchat import safe_text

BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[2J", "\\x1b[2J"),
        ("a\rb", "a\\rb"),
        ("tab\there", "tab\\there"),
        ("bell\x07", "bell\\x07"),
        ("del\x7f", "del\\x7f"),
        ("c1\x9b31m", "c1\\x9b31m"),
        ("abc\u202edcba", "abc\\u202edcba"),
        ("你好 café 👋", "你好 café 👋"),
    ],
)
def test_controls_are_shown_as_escapes(raw, shown):
    assert safe_text(raw) == shown


@given(st.text())
def test_no_control_or_bidi_character_survives(text):
    shown = safe_text(text)
    for char in shown:
        assert unicodedata.category(char) != "Cc"
        assert char not in BIDI
        assert char not in "\u2028\u2029"


# Cs: lone surrogates, which safe_text escapes too (no UTF-8 output carries them).
@given(
    st.text(alphabet=st.characters(blacklist_categories=["Cc", "Cf", "Cs", "Zl", "Zp"]))
)
def test_ordinary_text_is_unchanged(text):
    assert safe_text(text) == text
