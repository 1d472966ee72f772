"""The operator console and the client in a real terminal (tmux), as a person
uses them: half-typed lines, log lines, shutdown, the shell afterwards."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import time

import pytest

from processes import CLIENT, TWISTD, Server, Tmux, raw_connect, recv_lines

pytestmark = pytest.mark.slow

LISTENING = re.compile(r"sockchat listening on 127\.0\.0\.1:(\d+)")


def console_in_tmux(tmp_path, *args: str) -> tuple[Tmux, int]:
    term = Tmux(
        f"cd {tmp_path} && exec {TWISTD} -n --pidfile= sockchat "
        f"--port tcp:0:interface=127.0.0.1 {' '.join(args)}"
    )
    match = LISTENING.search(term.until(LISTENING))
    assert match is not None
    return term, int(match.group(1))


def said(sock: socket.socket, line: bytes) -> None:
    sock.sendall(line + b"\n")


def nothing_arrives(sock: socket.socket, seconds: float = 1.0) -> None:
    sock.settimeout(seconds)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return
    raise AssertionError(f"expected nothing, got {data!r}")


def test_a_line_begun_at_one_clients_prompt_never_goes_to_another(tmp_path):
    # The repro, in a real terminal: A and B wait, the prompt names
    # A, the operator types without Enter, A quits, the operator presses Enter.
    term, port = console_in_tmux(tmp_path)
    a = b = None
    try:
        a, b = raw_connect(port), raw_connect(port)
        recv_lines(a, 1), recv_lines(b, 1)  # the welcomes
        said(a, b"question from A")
        term.until("server --> client 1: ")
        said(b, b"question from B")
        term.until("client 2 (127.0.0.1:")
        term.type("your new password is hunter2")
        # The console has the keys before A quits (tmux sends them at once,
        # the console reads them when it can).
        term.until("server --> client 1: your new password is hunter2")
        said(a, b"q")
        term.until("server --> nobody (client 1 left; Enter): ")
        term.enter()
        shown = term.until("was not sent")
        assert (
            'client 1 left; "your new password is hunter2" was not sent: type it '
            "again to answer client 2, or /to ID TEXT."
        ) in shown
        nothing_arrives(b)
        term.until("server --> client 2: ")
        term.type("this one is for B")
        term.enter()
        b.settimeout(10)
        assert recv_lines(b, 1) == [b"this one is for B"]
    finally:
        for sock in (a, b):
            if sock is not None:
                sock.close()
        term.close()


@pytest.mark.parametrize("stop", ["C-c", "C-d"])
def test_log_lines_start_on_a_fresh_line_and_no_prompt_after_shutdown(tmp_path, stop):
    # A newcomer over --max-clients is refused, and the refusal logged: a
    # log line while the prompt is open, with nothing from the console.
    term, port = console_in_tmux(tmp_path, "--max-clients", "1")
    a = c = None
    try:
        a = raw_connect(port)
        recv_lines(a, 1)
        said(a, b"hello")
        term.until("server --> client 1: ")
        term.type("half typ")
        c = raw_connect(port)
        assert recv_lines(c, 1)[0].startswith(b"!bye busy:")
        shown = term.until(
            re.compile(r"refused a connection from .*\n(.*\n)*server --> client 1: ")
        )
        assert not re.search(r"server --> client 1: half typ\S*\d{4}-\d\d-\d\d", shown)
        assert re.search(r"^server --> client 1: half typ$", shown, re.M), shown
        if stop == "C-d":
            term.key("C-u")  # Ctrl-D ends the input only on an empty line
        term.key(stop)
        shown = term.until("unanswered at shutdown (1):")
        if stop == "C-c":  # the log line erased the prompt: the console says
            assert 'you had typed "half typ" without Enter; it was not sent.' in shown
        term.until("Server Shut Down.")
        # No prompt once shutdown has begun: after the line that says so.
        begun = (
            "Received SIGINT, shutting down."
            if stop == "C-c"
            else "operator console closed (end of input)"
        )
        after = term.screen().split(begun, 1)[1]
        assert "server -->" not in after, after
    finally:
        for sock in (a, c):
            if sock is not None:
                sock.close()
        term.close()


def test_a_half_typed_line_comes_back_after_a_log_line_and_is_sent_whole(tmp_path):
    term, port = console_in_tmux(tmp_path, "--max-clients", "1")
    a = c = None
    try:
        a = raw_connect(port)
        recv_lines(a, 1)
        said(a, b"hello")
        term.until("server --> client 1: ")
        term.type("half typx")
        term.key("BSpace")
        term.key("Left")  # arrows are read and ignored, never inserted
        term.until(re.compile(r"^server --> client 1: half typ$", re.M))
        c = raw_connect(port)  # refused, and logged, while the line is open
        assert recv_lines(c, 1)[0].startswith(b"!bye busy:")
        # The log line on a line of its own, then the prompt with the typing.
        shown = term.until(
            re.compile(
                r"^\d{4}-\d\d-\d\dT.*refused a connection from .*\n"
                r"server --> client 1: half typ$",
                re.M,
            )
        )
        assert "half typ\n" not in shown.split("refused a connection", 1)[0]
        term.type("ed, 你好")
        term.enter()
        a.settimeout(10)
        assert recv_lines(a, 1) == ["half typed, 你好".encode()]
        term.until(re.compile(r"^server --> client 1: half typed, 你好$", re.M))
    finally:
        for sock in (a, c):
            if sock is not None:
                sock.close()
        term.close()


def test_a_client_that_connects_and_speaks_while_the_operator_types(tmp_path):
    term, port = console_in_tmux(tmp_path)
    a = b = None
    try:
        a = raw_connect(port)
        recv_lines(a, 1)
        said(a, b"question from A")
        term.until("server --> client 1: ")
        term.type("an answer for A, half")
        term.until("server --> client 1: an answer for A, half")
        b = raw_connect(port)
        recv_lines(b, 1)
        said(b, b"question from B")
        # The server's log line and the console's line for B, each on a
        # line of its own, then A's prompt with the typing, once.
        shown = term.until(
            re.compile(
                r"^.*conversation 2 started with .*\n"
                r"client 2 \(127\.0\.0\.1:\d+\): question from B  "
                r"\[1 waiting before it\]\n"
                r"server --> client 1: an answer for A, half$",
                re.M,
            )
        )
        assert shown.count("server --> client 1: an answer for A, half") == 1
        term.type(" done")
        term.enter()
        a.settimeout(10)
        assert recv_lines(a, 1) == [b"an answer for A, half done"]
        term.until(re.compile(r"^server --> client 2: $", re.M))
        nothing_arrives(b, 0.3)
    finally:
        for sock in (a, b):
            if sock is not None:
                sock.close()
        term.close()


#: Print the terminal's line mode, echo and CR-to-NL: on (``icanon``) or off
#: (``-icanon``), on one line that ends in ``:STTY``.
STTY = (
    "stty -a | tr ' ;' '\\n\\n' | grep -xE -- '-?(icanon|echo|icrnl)' "
    "| tr '\\n' ' '; echo :STTY"
)
AS_IT_WAS = ["icrnl", "icanon", "echo"]


SETTINGS = re.compile(r"^((?:-?\w+ )+):STTY$", re.M)


def settings_shown(term: Tmux, seen: int = 0) -> list[str]:
    """The settings ``STTY`` printed after the first *seen* times."""
    deadline = time.monotonic() + 10
    while len(found := SETTINGS.findall(term.screen())) <= seen:
        assert time.monotonic() < deadline, f"no new {STTY!r} on:\n{term.screen()}"
        time.sleep(0.05)
    return found[seen].split()


def terminal_settings(term: Tmux) -> list[str]:
    """The shell's terminal settings (see ``STTY``), printed anew."""
    seen = len(SETTINGS.findall(term.screen()))
    term.type(STTY)
    term.enter()
    return settings_shown(term, seen)


@pytest.mark.parametrize("stop", ["C-c", "C-d"])
def test_the_terminal_is_put_back_as_it_was_at_exit(tmp_path, stop):
    # Under a shell without job control, which restores nothing itself.
    script = (
        f"trap : INT; {STTY}; cd {tmp_path} && {TWISTD} -n --pidfile= sockchat "
        f"--port tcp:0:interface=127.0.0.1; {STTY}; sleep 60"
    )
    term = Tmux(f"bash --norc --noprofile -c {shlex.quote(script)}")
    try:
        assert settings_shown(term) == AS_IT_WAS
        term.until("stops the server.")
        term.type("typed")  # the console reads it, key by key
        term.until(re.compile(r"^server --> nobody: typed$", re.M))
        if stop == "C-d":
            term.key("C-u")
        term.key(stop)
        term.until("Server Shut Down.")
        shown = term.until(re.compile(r"Server Shut Down\.(.*\n)*.*:STTY", re.M))
        after = shown.split("Server Shut Down.", 1)[1]
        assert re.search(r"^icrnl icanon echo :STTY$", after, re.M), after
    finally:
        term.close()


CRASH = """
import termios
from twisted.internet import reactor
from sockchat import ConsoleResponder
from sockchat._operations.services import OperatorConsoleService
service = OperatorConsoleService(reactor, ConsoleResponder)
service.startService()
assert not termios.tcgetattr(0)[3] & termios.ICANON
print("key by key now; crashing", flush=True)
raise RuntimeError("a bug")
"""


def test_the_terminal_is_put_back_after_a_crash():
    script = f"{STTY}; {sys.executable} -c {shlex.quote(CRASH)}; {STTY}; sleep 60"
    term = Tmux(f"bash --norc --noprofile -c {shlex.quote(script)}")
    try:
        assert settings_shown(term) == AS_IT_WAS
        shown = term.until(re.compile(r"RuntimeError: a bug\n(.*\n)*.*:STTY", re.M))
        assert "key by key now; crashing" in shown
        after = shown.split("RuntimeError: a bug", 1)[1]
        assert re.search(r"^icrnl icanon echo :STTY$", after, re.M), after
    finally:
        term.close()


def test_ctrl_z_and_exit_give_the_shell_its_terminal_back(tmp_path):
    # The console takes the terminal out of line mode: at Ctrl-Z and at
    # exit, the shell gets it back as it was; after fg, the console takes it
    # again and draws the prompt with what had been typed.
    term = Tmux("env PS1='$ ' bash --norc --noprofile")
    a = None
    try:
        term.until("$ ")
        assert terminal_settings(term) == AS_IT_WAS
        term.type(
            f"cd {tmp_path} && {TWISTD} -n --pidfile= sockchat "
            "--port tcp:0:interface=127.0.0.1"
        )
        term.enter()
        match = LISTENING.search(term.until(LISTENING))
        assert match is not None
        term.until("stops the server.")
        a = raw_connect(int(match.group(1)))
        recv_lines(a, 1)
        said(a, b"hello")
        term.until("server --> client 1: ")
        term.type("before Ctrl-Z")
        term.until("server --> client 1: before Ctrl-Z")
        term.key("C-z")
        term.until("Stopped")
        assert terminal_settings(term) == AS_IT_WAS
        term.type("fg")
        term.enter()
        term.until(re.compile(r"^server --> client 1: before Ctrl-Z$", re.M))
        # Key by key again: Backspace erases what was typed before Ctrl-Z
        # (in line mode the terminal would have nothing to erase).
        term.key("BSpace")
        term.until(re.compile(r"^server --> client 1: before Ctrl-$", re.M))
        term.type("Y, and after")
        term.enter()
        a.settimeout(10)
        assert recv_lines(a, 1) == [b"before Ctrl-Y, and after"]
        term.key("C-c")
        term.until("Server Shut Down.")
        term.until(re.compile(r"^\$ $", re.M))
        assert terminal_settings(term) == AS_IT_WAS
    finally:
        if a is not None:
            a.close()
        term.close()


def test_an_answer_timeout_is_not_reported_as_the_client_leaving(tmp_path):
    term, port = console_in_tmux(tmp_path, "--answer-timeout", "1")
    a = None
    try:
        a = raw_connect(port)
        recv_lines(a, 1)
        said(a, b"are you there?")
        term.until("server --> client 1: ")
        term.type("typing slow")  # a line begun for client 1
        shown = term.until("the client has its turn back.")
        assert "client 1 (127.0.0.1:" in shown
        assert (
            'no answer within --answer-timeout, so its line "are you there?" '
            "timed out; the client has its turn back."
        ) in shown
        assert "left" not in shown.split("are you there?", 1)[1]
        a.settimeout(10)
        assert recv_lines(a, 1)[0].startswith(b"!error responder-timeout:")
        term.until("server --> nobody (client 1's line timed out; Enter): typing slow")
        said(a, b"second try")  # it has its turn back
        term.until("client 1 (127.0.0.1:")
        # The line begun for the line that timed out is still for nobody.
        term.until(re.compile(r"second try\n(.*\n)*server --> nobody .*typing slow"))
    finally:
        if a is not None:
            a.close()
        term.close()


def client_in_a_shell(port: int) -> Tmux:
    """A shell in a real terminal, running the client."""
    term = Tmux("env PS1='$ ' bash --norc --noprofile")
    term.until("$ ")
    term.type(" ".join([*CLIENT, "--port", str(port)]))
    term.enter()
    term.until("client --> server: ")
    return term


def the_shell_runs_only_what_comes_next(term: Tmux) -> str:
    term.enter()  # the Enter that would have run the half-typed text
    term.type("echo DONE$((1+1))")
    term.enter()
    return term.until(re.compile(r"^DONE2$", re.M))


@pytest.mark.parametrize("waiting", [False, True], ids=["at-the-prompt", "waiting"])
def test_text_typed_when_the_server_ends_the_conversation_is_not_run_by_the_shell(
    waiting,
):
    with Server("--responder", "console", stdin=subprocess.PIPE) as server:
        term = client_in_a_shell(server.port)
        try:
            if waiting:  # typed while the answer is awaited, after no prompt
                term.type("a question")
                term.enter()
                server.read_until(b"server --> client 1: ")
            term.type("echo LEAK$((6*7))")  # no Enter
            server.proc.stdin.write(b"/kick 1\n")  # the server ends it
            server.proc.stdin.flush()
            shown = term.until("is discarded.")
            end = (
                "sockchat: the server ended the conversation: the operator ended "
                "this conversation."
            )
            # Its own line, not glued to the half-typed text.
            assert re.search(rf"^{re.escape(end)}$", shown, re.M), shown
            assert (
                '[sockchat] "echo LEAK$((6*7))" was typed without Enter; it was '
                "not sent, and is discarded."
            ) in shown
            shown = the_shell_runs_only_what_comes_next(term)
            assert "LEAK42" not in shown
        finally:
            term.close()
        assert b"LEAK" not in server.output
