"""Show peer text safely on a terminal, in a log or on a page.

Peer text is data, never terminal input: an ESC could recolour or clear the
operator's screen, a CR could overwrite what is already shown, and a bidi
override could make one message read as another.  ``safe_text`` replaces
every such character with a visible escape and leaves everything else
(Chinese, emoji, accents) untouched.  ``columns_of`` says how many
terminal columns such text takes, as terminals draw it.
"""

from __future__ import annotations

import re

from wcwidth import width

__all__ = ["UNSAFE", "columns_of", "safe_text"]

# What safe_text escapes (and the transcript too, as JSON escapes): C0
# controls (tab, CR and LF included), DEL, C1 controls, the line and
# paragraph separators, the bidirectional formatting characters (Unicode
# TR9: LRM, RLM, ALM, embeddings, overrides and isolates), and lone
# surrogates, which no UTF-8 terminal, page or file can carry (a Python
# string from a responder may hold one; bytes from the wire never do).
UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
    "\ud800-\udfff]"
)

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\x1b": "\\x1b"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: str) -> str:
    """Return *text* with control and bidi characters shown as escapes.

    ``safe_text("a\\x1b[2Jb")`` is ``"a\\\\x1b[2Jb"``: the ESC is shown as the
    four characters ``\\x1b``, so it can no longer act on a terminal.
    """
    if UNSAFE.search(text) is None:
        return text
    return UNSAFE.sub(_escape, text)


def columns_of(text: str) -> int:
    """Terminal columns that *text* (already safe: no control characters)
    takes, as terminals draw it, from the ``wcwidth`` library: East Asian
    wide characters two, combining marks none, and an emoji sequence (❤️
    with its variation selector, 👍🏽, a family joined by zero-width
    joiners, a flag) two, however many code points it has."""
    return int(width(text))
