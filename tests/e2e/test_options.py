"""twistd sockchat's options and services: help that matches what is
accepted, ranges without typos, private UNIX sockets, one goodbye at stop."""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import subprocess
import time

import pytest
import pytest_twisted
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


def test_an_escaped_colon_is_not_taken_for_a_mode():
    # (Twisted itself cannot parse this one: "=" makes it a keyword.)
    given = "unix:/tmp/odd\\:mode=1"
    assert endpoint_description(given) == "unix:/tmp/odd\\:mode=1:mode=600"


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


# One line for each mistake, in the order the options were written (issue 24).


def refusal(*args: str) -> str:
    options = Options()
    with pytest.raises(SystemExit) as refused:
        options.parseOptions(list(args))
    return str(refused.value)


@pytest.mark.parametrize("value", ["-1", "-0.5"])
def test_a_negative_timeout_is_said_to_be_negative(value):
    assert refusal("--responder", "echo", "--answer-timeout", value) == (
        f"sockchat: --answer-timeout must be 0 (never) or more seconds, not {value}"
    )
    assert (
        refusal("--responder", "echo", f"--idle-timeout={value}")
        == (f"sockchat: --idle-timeout must be 0 (never) or more seconds, not {value}")
        or value == "-inf"
    )


@pytest.mark.parametrize("value", ["soon", "nan", "inf", "-inf", ""])
def test_a_timeout_that_is_no_number_is_said_to_be_none(value):
    assert refusal("--responder", "echo", "--answer-timeout", value) == (
        f"sockchat: --answer-timeout {value} is not a number of seconds"
    )


def test_a_bad_port_is_reported_before_the_missing_responder(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    message = refusal("--port", "abc")
    assert message.startswith("sockchat: --port 'abc' is neither a port number")
    assert "\n" not in message
    assert refusal().startswith("sockchat: no --responder given")


@pytest.mark.parametrize(
    ("args", "first"),
    [
        (["--max-line", "x", "--port", "abc"], "--max-line x"),
        (["--port", "abc", "--max-line", "x"], "--port 'abc'"),
        (["--port=abc", "--max-line", "x"], "--port 'abc'"),
        (["-pabc", "--max-line", "x"], "--port 'abc'"),
        (["--max-l", "x", "-p", "abc"], "--max-line x"),
        (["--framing", "odd", "--idle-timeout", "-1"], "unknown --framing"),
        (["--idle-timeout", "-1", "--framing", "odd"], "--idle-timeout must be"),
        (["--deny", "10.0.0.1/8", "--allow", "x"], "--allow/--deny: '10.0.0.1/8'"),
        (["--web", "", "--metrics", ""], "--web needs"),
        (["--metrics", "", "--web", ""], "--metrics needs"),
        (["--responder", "nope", "--port", "abc"], "unknown --responder 'nope'"),
    ],
)
def test_errors_come_in_the_order_the_options_were_written(args, first):
    assert refusal(*args).startswith(f"sockchat: {first}")


@pytest.mark.slow
def test_twistd_reports_the_bad_port_first():
    done = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "sockchat", "--port", "abc"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("sockchat: --port 'abc' is neither a port number nor a")


# UNIX sockets that cannot be made: their folder, not Twisted's lock file.


def cannot_listen(description: str) -> str:
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    endpoint = serverFromString(reactor, endpoint_description(description))
    service = PortChatService(
        endpoint, ChatServerFactory(EchoResponder()), description=description
    )
    with pytest.raises(SystemExit) as refused:
        service.listen()
    return str(refused.value)


def test_a_unix_socket_in_a_missing_folder_names_the_folder(tmp_path):
    path = tmp_path / "nowhere" / "chat.sock"
    assert cannot_listen(f"unix:{path}") == (
        f"sockchat: cannot listen on unix:{path}: the folder {path.parent} does "
        "not exist; create it, or choose another path"
    )
    # Without Twisted's lock file, the bind itself fails: the same words.
    # (Not through Twisted here: its port leaves the socket open then.)
    from twisted.internet.error import CannotListenError

    from sockchat._operations.services import _unix_socket_problem

    bind = CannotListenError(None, str(path), FileNotFoundError(errno.ENOENT, "x"))
    assert _unix_socket_problem(str(path), bind) == (
        f"the folder {path.parent} does not exist; create it, or choose another path"
    )


@pytest_twisted.ensureDeferred
async def test_a_unix_socket_whose_lock_is_held_says_so(tmp_path):
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    path = tmp_path / "chat.sock"
    first = PortChatService(
        serverFromString(reactor, f"unix:{path}"),
        ChatServerFactory(EchoResponder()),
        description=f"unix:{path}",
    )
    first.listen()
    try:
        message = cannot_listen(f"unix:{path}")
    finally:
        await first.port.stopListening()
    assert message == (
        f"sockchat: cannot listen on unix:{path}: another process holds its lock "
        f"({path}.lock): is another server running? choose another path"
    )


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
        (OSError(errno.EROFS, "Read-only file system"), "read-only file system"),
        (OSError(errno.ENOENT, "No such file or directory"), "cannot make the"),
    ],
)
def test_unix_socket_problems_are_said_in_words(error, says):
    from sockchat._operations.services import _unix_socket_problem

    # /tmp exists: ENOENT there is not a missing folder.
    why = _unix_socket_problem("/tmp/chat.sock", error)
    assert why is not None
    assert says in why
    assert why.endswith("choose another path") or "write to" in why


@pytest.mark.parametrize(
    ("description", "path"),
    [
        ("unix:/tmp/a.sock", "/tmp/a.sock"),
        ("unix:/tmp/a.sock:mode=660", "/tmp/a.sock"),
        ("unix:address=/tmp/b.sock:lockfile=0", "/tmp/b.sock"),
        ("haproxy:unix:/tmp/c\\:d.sock", "/tmp/c:d.sock"),
        ("tcp:9527", None),
    ],
)
def test_the_socket_path_is_read_from_the_description(description, path):
    from sockchat._operations.services import unix_socket_path

    assert unix_socket_path(description) == path


# The synopses name every responder and --broker (issue 24, item 11).


def readme_synopsis() -> str:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("```\ntwistd -n sockchat ")
    return readme[start : readme.index("```", start + 3)]


def test_the_synopses_name_every_responder_and_the_broker():
    from sockchat.tap import RESPONDERS

    for synopsis in (readme_synopsis(), Options.synopsis):
        assert "--broker" in synopsis
        choices = re.search(r"--responder ([\w.|:]+)", synopsis)
        assert choices is not None
        assert set(RESPONDERS) <= set(choices.group(1).split("|")), synopsis


def test_the_readme_synopsis_names_every_option():
    synopsis = readme_synopsis()
    names = [p[0] for p in Options.optParameters] + [f[0] for f in Options.optFlags]
    names += ["allow", "deny", "version"]
    missing = [name for name in names if f"--{name}" not in synopsis]
    assert missing == []
