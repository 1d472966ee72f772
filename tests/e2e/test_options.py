"""twistd sockchat's options and services: help that matches what is
accepted, ranges without typos, private UNIX sockets, one goodbye at stop."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time

import pytest
from twisted.internet.defer import succeed

from sockchat import EchoResponder
from sockchat._doors.tcp import ChatServerFactory
from sockchat._operations.services import PortChatService, WebChatService
from sockchat.tap import Options, endpoint_description

from processes import TWISTD


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(["--responder", "echo", *args])
    return options


def help_of(option: str) -> str:
    (entry,) = [p for p in Options.optParameters if p[0] == option]
    return entry[3]


def said_to_take_zero() -> set[str]:
    """Every option that --help says takes 0 to mean none or never."""
    names = {p[0] for p in Options.optParameters if re.search(r"\(0: ", p[3])}
    sentence = re.search(r"([^.]*) take 0 to mean none", Options.longdesc)
    assert sentence is not None
    named = set(re.findall(r"--([a-z-]+)", sentence.group(1)))
    assert named, "the sentence names the options it is about"
    names |= named
    return names


def test_help_says_0_means_none_only_for_options_that_take_0():
    assert said_to_take_zero() == {
        "idle-timeout",
        "answer-timeout",
        "max-clients",
        "max-per-ip",
    }
    for name in said_to_take_zero():
        parse(f"--{name}", "0")  # accepted, not refused


@pytest.mark.parametrize("name", ["max-line", "max-output"])
def test_options_that_refuse_0_say_so_in_their_help(name):
    with pytest.raises(SystemExit) as refused:
        parse(f"--{name}", "0")
    assert str(refused.value) == (f"sockchat: --{name} must be 1 or more, not 0")
    assert "(1 or more)" in help_of(name)
    assert name not in said_to_take_zero()


@pytest.mark.parametrize(
    ("given", "meant"),
    [("10.0.0.1/8", "10.0.0.0/8"), ("2001:db8::1/32", "2001:db8::/32")],
)
def test_a_range_with_host_bits_set_is_refused_in_one_line(given, meant):
    with pytest.raises(SystemExit) as refused:
        parse("--allow", given)
    prefix = given.split("/")[1]
    assert str(refused.value) == (
        f"sockchat: --allow/--deny: {given!r} has bits set after its /{prefix} "
        f"prefix; did you mean {meant}?"
    )


def test_exact_ranges_and_single_addresses_are_still_accepted():
    options = parse("--allow", "10.0.0.0/8", "--deny", "10.9.9.9", "--deny", "::1")
    assert not options["rules"].permits("10.9.9.9")
    assert options["rules"].permits("10.1.1.1")


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("unix:/tmp/chat.sock", "unix:/tmp/chat.sock:mode=600"),
        (
            "unix:address=/tmp/c.sock:lockfile=1",
            "unix:address=/tmp/c.sock:lockfile=1:mode=600",
        ),
        ("unix:/tmp/chat.sock:mode=660", "unix:/tmp/chat.sock:mode=660"),
        ("unix:/tmp/odd\\:mode=1", "unix:/tmp/odd\\:mode=1:mode=600"),
        ("haproxy:unix:/tmp/chat.sock", "haproxy:unix:/tmp/chat.sock:mode=600"),
        ("tcp:9527", "tcp:9527"),
    ],
)
def test_unix_sockets_are_private_unless_a_mode_is_given(given, used):
    assert endpoint_description(given) == used
    options = parse("--port", given, "--web", given)
    assert options["endpoint"] == used
    assert options["web_endpoint"] == used
    assert options["where"] == given  # messages show it as the user gave it


def test_stopping_both_doors_says_goodbye_once():
    factory = ChatServerFactory(EchoResponder())
    calls = []

    def close_all(notice=None):
        calls.append(notice)
        return succeed(None)

    factory.close_all = close_all
    tcp = PortChatService(None, factory)
    web = WebChatService(None, "tcp:0", factory)
    for service in (tcp, web):
        service.startService()
    for service in (web, tcp):  # as a MultiService stops them
        service.stopService()
    assert calls == [None]


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "expected"), [(None, 0o600), ("660", 0o660)])
def test_a_unix_socket_is_made_0600_unless_asked(tmp_path, mode, expected):
    path = tmp_path / "chat.sock"
    description = f"unix:{path}" + (f":mode={mode}" if mode else "")
    proc = subprocess.Popen(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "sockchat",
            "--responder",
            "echo",
            "--port",
            description,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not path.exists():
            assert proc.poll() is None, "twistd ended"
            assert time.monotonic() < deadline, "no socket"
            time.sleep(0.05)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == expected
    finally:
        proc.terminate()
        proc.wait(15)
