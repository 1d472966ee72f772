"""``twistd sockchat`` and the console: it needs a foreground terminal.

twistd hands the plugin's options their ``parent``, twistd's own options,
so the plugin can see ``-n`` without reading ``sys.argv``.
"""

from __future__ import annotations

import io
import os

import pytest
from twisted.scripts.twistd import ServerOptions


class Tty(io.StringIO):
    """A stdin that says it is a terminal (pytest's own is not one)."""

    def isatty(self) -> bool:
        return True


def parse(*argv: str) -> ServerOptions:
    config = ServerOptions()
    config.parseOptions(list(argv))
    return config


@pytest.fixture
def at_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stdin", Tty())


def test_the_default_console_without_n_is_refused(at_a_terminal):
    with pytest.raises(SystemExit, match="add -n") as refused:
        parse("sockchat", "--port", "0")
    assert str(refused.value).startswith(
        "sockchat: the console (the default here) needs this terminal"
    )


def test_an_explicit_console_without_n_is_refused(at_a_terminal):
    with pytest.raises(SystemExit, match=r"^sockchat: --responder console needs"):
        parse("sockchat", "--responder", "console")


@pytest.mark.parametrize("flag", ["-n", "--nodaemon"])
def test_the_console_in_the_foreground_is_fine(at_a_terminal, flag):
    config = parse(flag, "sockchat", "--port", "0")
    assert config.subOptions["responder"] == "console"


def test_other_responders_may_go_to_the_background(at_a_terminal):
    config = parse("sockchat", "--responder", "echo")
    assert config.subOptions["responder"] == "echo"


def test_an_explicit_console_reading_dev_null_is_refused(monkeypatch):
    with open(os.devnull) as null:
        monkeypatch.setattr("sys.stdin", null)
        with pytest.raises(SystemExit, match="stdin is not a terminal"):
            parse("-n", "sockchat", "--responder", "console")


def test_an_explicit_console_reading_a_pipe_is_allowed(monkeypatch):
    read, write = os.pipe()
    try:
        with os.fdopen(read) as pipe:
            monkeypatch.setattr("sys.stdin", pipe)
            config = parse("-n", "sockchat", "--responder", "console")
    finally:
        os.close(write)
    assert config.subOptions["responder"] == "console"
