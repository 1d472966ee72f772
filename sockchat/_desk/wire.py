"""The desk page's messages over its WebSocket: JSON text, both ways.

Each WebSocket message is one JSON object with a ``type``
(docs/desk.md, "The desk's WebSocket").  From the server: ``hello``,
``desk``, ``conversation``, ``said``, ``turn``, ``released``, ``problem``.
From the page, the four commands::

    {"type": "take", "entry": "7"}
    {"type": "answer", "entry": "7", "text": "We open at nine."}
    {"type": "handback", "conversation": "3"}
    {"type": "end", "conversation": "3"}

``decode`` turns a page's message into a ``Command``, or says in one line
why it is not one; nothing here trusts the page.
"""

from __future__ import annotations

import json
from typing import Any

from sockchat._desk.control import Hello, PageMessage, Problem
from sockchat._desk.model import (
    Answer,
    AnswerDue,
    Command,
    ConversationView,
    DeskView,
    End,
    HandBack,
    Released,
    SaidMore,
    Take,
)
from sockchat._desk.queue import Operator, Said

__all__ = ["MAX_ID", "decode", "encode"]

#: Characters an entry or a conversation's key may have.
MAX_ID = 100


def _operator(operator: Operator | None) -> dict[str, str] | None:
    if operator is None:
        return None
    return {"name": operator.name, "display": operator.display}


def _said(said: Said) -> dict[str, Any]:
    return {
        "conversation": said.conversation,
        "n": said.n,
        "who": said.who.value,
        "by": said.by,
        "text": said.text,
        "at": said.at,
    }


def _fields(message: PageMessage) -> dict[str, Any]:
    if isinstance(message, Hello):
        return {
            "type": "hello",
            "me": _operator(message.me),
            "hold": message.hold,
            "canned": [{"keyword": c.keyword, "text": c.text} for c in message.canned],
        }
    if isinstance(message, DeskView):
        return {
            "type": "desk",
            "lines": [
                {
                    "entry": line.entry,
                    "conversation": line.conversation,
                    "label": line.label,
                    "excerpt": line.excerpt,
                    "length": line.length,
                    "waited": round(line.waited, 1),
                    "holder": _operator(line.holder),
                }
                for line in message.lines
            ],
            "held": [
                {
                    "conversation": held.conversation,
                    "label": held.label,
                    "holder": _operator(held.holder),
                }
                for held in message.held
            ],
            "operators": [_operator(o) for o in message.operators],
            "clients": message.clients,
        }
    if isinstance(message, ConversationView):
        return {
            "type": "conversation",
            "conversation": message.conversation,
            "label": message.label,
            "history": [_said(s) for s in message.history],
            "entry": message.entry,
            "text": message.text,
        }
    if isinstance(message, SaidMore):
        return {"type": "said", "said": _said(message.said)}
    if isinstance(message, AnswerDue):
        return {
            "type": "turn",
            "conversation": message.conversation,
            "entry": message.entry,
            "text": message.text,
            "why": message.why,
        }
    if isinstance(message, Released):
        return {
            "type": "released",
            "conversation": message.conversation,
            "why": message.why,
        }
    assert isinstance(message, Problem)
    problem: dict[str, Any] = {"type": "problem", "why": message.why}
    if message.while_holding is not None:
        problem["while_holding"] = message.while_holding
    return problem


def encode(message: PageMessage) -> str:
    """*message* as the page reads it."""
    return json.dumps(_fields(message), ensure_ascii=False, separators=(",", ":"))


def _id(fields: dict[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if isinstance(value, str) and 0 < len(value) <= MAX_ID:
        return value
    return None


def decode(text: str) -> Command | str:
    """The command in a page's message, or why it is not one."""
    try:
        fields = json.loads(text)
    except ValueError:
        return "a desk message is a JSON object"
    if not isinstance(fields, dict):
        return "a desk message is a JSON object"
    kind = fields.get("type")
    if kind in ("take", "answer"):
        entry = _id(fields, "entry")
        if entry is None:
            return f"{kind} needs the line's entry"
        if kind == "take":
            return Take(entry)
        answer = fields.get("text")
        if not isinstance(answer, str):
            return "answer needs its text"
        return Answer(entry, answer)
    if kind in ("handback", "end"):
        key = _id(fields, "conversation")
        if key is None:
            return f"{kind} needs the conversation"
        return HandBack(key) if kind == "handback" else End(key)
    return "not a desk command (take, answer, handback or end)"
