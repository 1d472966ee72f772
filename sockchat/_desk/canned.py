"""Canned answers: text an operator chooses with a short keyword.

The file (``--canned FILE``, docs/desk.md) is UTF-8 text, one answer a
line: a keyword, a space, then the answer.  Blank lines and lines that
start with ``#`` are ignored::

    # keyword  answer
    hours We are open from 9:00 to 17:00, Monday to Friday.
    thanks Thank you for waiting; I am looking into it now.

At the desk, an answer box that holds ``/hours`` becomes that text when
the operator presses Tab or Enter, to be read over (and changed) before it
is sent.
"""

from __future__ import annotations

import re
from pathlib import Path

from attrs import frozen

from sockchat._core.render import safe_text

__all__ = ["Canned", "CannedError", "load_canned", "parse_canned"]

KEYWORD = re.compile(r"[a-z0-9_-]{1,32}")
#: Answers a file may have at most, and characters each.
MAX_ANSWERS = 500
MAX_TEXT = 4096
#: What a missing file's error tells the user to do.
HOW = (
    "make one with an answer a line, its keyword then the text, "
    "e.g. 'hours We are open from 9:00 to 17:00.' (docs/desk.md)"
)


class CannedError(Exception):
    """The file cannot be used; ``str()`` is one line that says why."""


@frozen
class Canned:
    keyword: str
    text: str


def parse_canned(text: str, where: str = "canned answers") -> tuple[Canned, ...]:
    found: dict[str, Canned] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        at = f"{where}, line {number}"
        keyword, _, answer = line.partition(" ")
        keyword = keyword.lower()
        answer = answer.strip()
        if KEYWORD.fullmatch(keyword) is None:
            raise CannedError(
                f"{at}: a keyword is 1 to 32 letters, digits, - or _ "
                f"(not {safe_text(keyword[:40])!r})"
            )
        if not answer:
            raise CannedError(f"{at}: /{keyword} has no answer after it")
        if len(answer) > MAX_TEXT:
            raise CannedError(f"{at}: an answer has at most {MAX_TEXT} characters")
        if safe_text(answer) != answer:
            raise CannedError(f"{at}: an answer cannot have control characters")
        if keyword in found:
            raise CannedError(f"{at}: /{keyword} has another line above")
        found[keyword] = Canned(keyword, answer)
        if len(found) > MAX_ANSWERS:
            raise CannedError(f"{where}: more than {MAX_ANSWERS} answers")
    return tuple(found.values())


def load_canned(path: str) -> tuple[Canned, ...]:
    where = f"--canned {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CannedError(f"{where}: no such file; {HOW}") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise CannedError(f"{where}: cannot read it ({reason})") from None
    return parse_canned(text, where)
