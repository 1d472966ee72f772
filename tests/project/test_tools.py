"""The tools people reach for first, against the real server: telnet, socat, nc.

(nc in line framing is in test_processes.py, openssl s_client in
test_hardening_e2e.py.)  Each test skips, saying why, where its tool is
missing, and fails instead in CI, where .ci/run installs it.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from processes import Server, Terminal, need_tool

pytestmark = pytest.mark.slow


def test_telnet_holds_a_conversation_and_ctrl_c_is_answered_not_fatal():
    telnet = need_tool("telnet", "telnet")
    with Server("--responder", "echo") as server:
        term = Terminal(telnet, "127.0.0.1", str(server.port))
        try:
            term.screen.until(b"!info welcome: ")
            term.type("hello\n")  # telnet sends hello CR LF
            term.screen.until(b"\r\nhello\r\n")
            # Ctrl-C (the terminal's SIGINT): telnet sends IAC IP, IAC DO
            # TIMING-MARK, then hides all output until the mark is answered.
            term.proc.send_signal(signal.SIGINT)
            # Refused at once, so telnet shows the server's output again.
            term.screen.until(b"!info telnet: telnet sent an interrupt (Ctrl-C)")
            term.type("你好\n")
            term.screen.until("\r\n你好\r\n".encode())
            term.type("q\n")
            term.screen.until(b"!bye quit: goodbye.")
            term.screen.until(b"Connection closed by foreign host.")
        finally:
            term.close()
            os.close(term.slave)
        server.read_until(b"ended after 2 turn(s)")
    assert b"refused" not in server.output


def test_socat_holds_a_conversation():
    socat = need_tool("socat", "socat")
    with Server("--responder", "echo") as server:
        done = subprocess.run(
            [socat, "-", f"TCP:127.0.0.1:{server.port}"],
            input="hello\n你好\nq\n".encode(),
            capture_output=True,
            timeout=20,
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0].startswith("!info welcome: ")
    assert lines[1:] == ["hello", "你好", "!bye quit: goodbye."]


def test_nc_against_raw_framing_gets_the_bare_answer():
    nc = need_tool("nc", "netcat-openbsd")
    with Server("--responder", "echo", "--framing", "raw") as server:
        done = subprocess.run(
            [nc, "-N", "127.0.0.1", str(server.port)],
            input="你好".encode(),
            capture_output=True,
            timeout=20,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "你好".encode()  # no greeting, no newline, no bye
