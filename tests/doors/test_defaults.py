"""An embedded ``ChatServerFactory`` behaves as ``twistd sockchat`` does,
unless told otherwise: the same limits, caps and answer timeout."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from examples.bot import FaqBot
from sockchat import (
    Admission,
    ChatServerFactory,
    ChatService,
    ConsoleResponder,
    EchoResponder,
    IResponder,
    PairResponder,
)
from sockchat._core.defaults import DEFAULT_ANSWER_TIMEOUT


async def command_line_factory(*argv: str) -> ChatServerFactory:
    """The factory that ``twistd sockchat --port 0 ARGV`` makes."""
    from sockchat import tap

    options = tap.Options()
    options.parseOptions(["--port", "tcp:0:interface=127.0.0.1", *argv])
    doors = [s for s in tap.makeService(options) if isinstance(s, ChatService)]
    for door in doors:
        assert door.port is not None
        await door.port.stopListening()
    return doors[0].factory


@pytest.mark.parametrize(
    ("reference", "embedded"),
    [
        ("echo", EchoResponder()),
        ("pair", PairResponder()),
        ("examples.bot:FaqBot", FaqBot()),
    ],
)
@pytest_twisted.ensureDeferred
async def test_an_embedded_factory_has_the_command_lines_defaults(
    reference: str, embedded: IResponder
):
    made = await command_line_factory("--responder", reference)
    factory = ChatServerFactory(embedded)
    assert factory.settings == made.settings
    people = reference == "pair"
    assert factory.settings.answer_timeout == (None if people else 30)
    assert factory.admission == made.admission
    assert factory.admission == Admission(max_clients=1000, max_per_ip=20)


def test_code_answers_within_30_seconds_and_people_take_their_time():
    people: list[Any] = [ConsoleResponder(print), PairResponder()]
    for responder in people:
        assert ChatServerFactory(responder).settings.answer_timeout is None
    for responder in [EchoResponder(), FaqBot()]:
        assert ChatServerFactory(responder).settings.answer_timeout == 30
    assert DEFAULT_ANSWER_TIMEOUT == 30


def test_an_answer_timeout_given_is_kept_whoever_answers():
    for responder in [EchoResponder(), PairResponder()]:
        assert (
            ChatServerFactory(responder, answer_timeout=5).settings.answer_timeout == 5
        )
        assert (
            ChatServerFactory(responder, answer_timeout=None).settings.answer_timeout
            is None
        )
