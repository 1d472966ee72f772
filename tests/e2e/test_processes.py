"""End to end: the real twistd plugin and client as processes over loopback."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess

import pytest

from ports import free_port
from processes import (
    LISTENING,
    TWISTD,
    Reader,
    Server,
    Terminal,
    need_tool,
    raw_connect,
    read_until,
    recv_lines,
    run_client,
    run_twistd,
    start_client,
)

pytestmark = pytest.mark.slow


def test_piped_client_prints_both_answers_and_exits_0():
    with Server("--responder", "echo") as server:
        done = run_client(server.port, "hello\n你好\nq\n".encode())
    assert done.stdout.decode() == "hello\n你好\n"
    assert done.stderr == b""
    assert done.returncode == 0


def test_end_of_input_sends_q_and_a_last_line_needs_no_newline():
    with Server("--responder", "echo") as server:
        done = run_client(server.port, b"one\ntwo")
        assert done.stdout == b"one\ntwo\n"
        assert done.returncode == 0
        server.read_until(b"ended after 2 turn(s)")


def test_client_escapes_control_characters_from_the_server():
    with Server("--responder", "echo") as server:
        done = run_client(server.port, b"\x1b[2Jred\x07\n")
    assert done.stdout == b"\\x1b[2Jred\\x07\n"


def test_refused_connection_exits_1_with_one_line():
    with Server("--responder", "echo") as server:
        port = server.port
    done = run_client(port, b"hello\n")
    assert done.returncode == 1
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1
    assert "connection refused" in lines[0]
    assert f"127.0.0.1:{port}" in lines[0]


def test_lost_connection_exits_1_with_one_line():
    with Server("--responder", "console", stdin=subprocess.PIPE) as server:
        client = start_client(server.port)
        client.stdin.write(b"hello\n")
        client.stdin.flush()
        server.read_until(b"server --> client 1: ")
        server.stop(signal.SIGKILL)
        _out, err = client.communicate(timeout=10)
    assert client.returncode == 1
    assert err.decode() == (
        "sockchat: the server closed the connection without a goodbye.\n"
    )


def test_console_chat_q_from_the_operator_and_the_next_client_is_answered():
    with Server("--responder", "console", stdin=subprocess.PIPE) as server:
        operator = server.proc.stdin
        first = start_client(server.port)
        first.stdin.write(b"hello from one\n")
        first.stdin.flush()
        shown = server.read_until(re.compile(rb"server --> client \d+: "))
        first_id = re.search(rb"client (\d+) \(127.0.0.1:\d+\): hello from one", shown)
        second = start_client(server.port)
        second.stdin.write(b"hello from two\n")
        second.stdin.flush()
        shown = server.read_until(b"hello from two  [1 waiting before it]")
        second_id = re.search(rb"client (\d+) \(127.0.0.1:\d+\): hello from two", shown)
        assert first_id
        assert second_id
        operator.write(b"hi one\n")
        operator.flush()
        assert Reader(first.stdout).until(b"\n") == b"hi one\n"
        server.read_until(b"server --> client " + second_id.group(1) + b": ")
        operator.write(b"q\n")  # the operator ends the second conversation
        operator.flush()
        out2, err2 = second.communicate(timeout=10)
        assert (second.returncode, out2, err2) == (0, b"", b"")
        _out1, err1 = first.communicate(b"q\n", timeout=10)
        assert (first.returncode, err1) == (0, b"")
        server.read_until(b"conversation " + first_id.group(1) + b" with 127.0.0.1")
        assert server.proc.poll() is None, "the server keeps serving"


def test_operator_end_of_input_stops_the_server_and_clients_hear_why():
    with Server("--responder", "console", stdin=subprocess.PIPE) as server:
        with raw_connect(server.port) as sock:
            recv_lines(sock, 1)  # welcome
            server.proc.stdin.close()
            (bye,) = recv_lines(sock, 1)
            assert bye == b"!bye shutdown: the server is shutting down."
        assert server.proc.wait(10) == 0


def test_sigterm_says_goodbye_to_every_client():
    with Server("--responder", "echo") as server, contextlib.ExitStack() as stack:
        socks = [stack.enter_context(raw_connect(server.port)) for _ in range(3)]
        for sock in socks:
            recv_lines(sock, 1)
        # twistd ends by the signal it was sent, after a clean shutdown.
        assert server.stop() == -signal.SIGTERM
        for sock in socks:
            assert recv_lines(sock, 1) == [
                b"!bye shutdown: the server is shutting down."
            ]
            assert sock.recv(10) == b""


def test_bad_input_never_crashes_the_server_or_goes_unanswered():
    with Server("--responder", "echo") as server, raw_connect(server.port) as sock:
        recv_lines(sock, 1)
        sock.sendall(b"y" * 100_000 + b"\n")
        assert recv_lines(sock, 1)[0].startswith(
            b"!error line-too-long: line 1 was skipped, not delivered: "
            b"it has 100000 bytes"
        )
        sock.sendall(b"\xff\xfe\n")
        assert recv_lines(sock, 1)[0].startswith(b"!error invalid-utf8: line 2")
        sock.sendall(b"fine\n")
        assert recv_lines(sock, 1) == [b"fine"]
        sock.sendall(b"half a li")
        sock.close()  # killed mid-line
        server.read_until(
            b"closed in the middle of a line; its 9 bytes were not delivered"
        )
        done = run_client(server.port, b"still serving\n")
        assert done.stdout == b"still serving\n"


def test_without_a_terminal_the_server_asks_for_a_responder():
    done = run_twistd()
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "sockchat: no --responder given, and stdin is not a terminal, so no "
        "operator can answer; choose echo, pair, or your own as "
        "package.module:name"
    ]


def test_the_console_without_n_is_refused_before_twistd_goes_to_the_background(
    tmp_path,
):
    # From a terminal, with no --responder: the console would be chosen, and
    # twistd's daemon mode would take the terminal away from it.
    term = Terminal(
        TWISTD,
        "--pidfile=",
        f"--logfile={tmp_path / 'twistd.log'}",
        "sockchat",
        "--port",
        "tcp:0:interface=127.0.0.1",
    )
    try:
        code = term.proc.wait(10)
        shown = term.screen.until(b"package.module:name\r\n")
    finally:
        term.close()
        os.close(term.slave)
    assert code == 1
    assert shown.decode().splitlines() == [
        "sockchat: the console (the default here) needs this terminal, but "
        "without -n twistd runs in the background and lets go of it; add -n "
        "(twistd -n sockchat ...), or choose a --responder: echo, pair, or "
        "package.module:name"
    ]
    assert not (tmp_path / "twistd.log").exists(), "it never started"


def test_an_explicit_console_without_a_terminal_is_refused_in_one_line():
    done = run_twistd("--responder", "console", "--port", "tcp:0:interface=127.0.0.1")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "sockchat: --responder console reads the operator's answers from stdin, "
        "but stdin is not a terminal (it is closed, or /dev/null); run it from a "
        "terminal, pipe the answers in, or choose a --responder: echo, pair, or "
        "package.module:name"
    ]


def test_a_port_in_use_is_a_clear_error(tmp_path):
    with Server("--responder", "echo") as server:
        done = run_twistd(
            "--responder",
            "echo",
            "--port",
            str(server.port),
            cwd=tmp_path,
            pidfile=True,
        )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"sockchat: cannot listen on tcp:{server.port}:interface=127.0.0.1: the "
        "address is already in use (is another server running? choose another "
        "--port)"
    ]
    assert list(tmp_path.iterdir()) == [], "no stale twistd.pid is left behind"


def test_bare_port_listens_on_loopback_only():
    port = free_port()
    proc = subprocess.Popen(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "sockchat",
            "--responder",
            "echo",
            "--port",
            str(port),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out = read_until(proc.stdout, LISTENING)
        assert f"listening on 127.0.0.1:{port}".encode() in out
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def test_nc_holds_a_conversation():
    nc_path = need_tool("nc", "netcat-openbsd")
    with Server("--responder", "echo") as server:
        nc = subprocess.Popen(
            [nc_path, "127.0.0.1", str(server.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            read_until(nc.stdout, b"!info welcome: ")
            for line in [b"hello", "你好".encode(), b"!tricky"]:
                nc.stdin.write(line + b"\n")
                nc.stdin.flush()
                expect = b"!" + line if line.startswith(b"!") else line
                assert read_until(nc.stdout, expect + b"\n").endswith(expect + b"\n")
            nc.stdin.write(b"q\n")
            nc.stdin.close()  # the person presses Ctrl-D, as nc needs
            assert read_until(nc.stdout, b"!bye quit: goodbye.\n")
            assert nc.wait(10) == 0
            server.read_until(b"ended after 3 turn(s)")
        finally:
            if nc.poll() is None:
                nc.kill()
            nc.wait()
            for pipe in (nc.stdin, nc.stdout, nc.stderr):
                pipe.close()
