"""Teaching mode as the issue asks for it: ``twistd -n sockchat --trace`` and
``python -m sockchat.client --trace`` in two real terminals (tmux panes),
each showing the conversation and its own socket's TCP story."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import time

import pytest

from processes import CLIENT, TWISTD, Server, Tmux, need_tool

pytestmark = pytest.mark.slow

LISTENING = re.compile(r"sockchat listening on 127\.0\.0\.1:(\d+)")


def server_in_tmux(tmp_path, *args: str, pidfile: str = "") -> tuple[Tmux, int]:
    # With a pidfile, twistd runs under the pane's shell (which waits, with
    # "; true", rather than exec it), not as the pane's own program: tmux
    # would at once resume its own program if it were stopped.
    command = (
        f"{TWISTD} -n --pidfile={pidfile} sockchat "
        f"--port tcp:0:interface=127.0.0.1 --trace {' '.join(args)}"
    )
    term = Tmux(
        f"cd {tmp_path} && {command}; true"
        if pidfile
        else f"cd {tmp_path} && exec {command}"
    )
    match = LISTENING.search(term.until(LISTENING))
    assert match is not None
    return term, int(match.group(1))


def client_in_tmux(port: int, *args: str) -> Tmux:
    command = shlex.join([*CLIENT, "--port", str(port), "--trace", *args])
    return Tmux(command)


def waiting_in_server(port: int, client: int, size: int) -> None:
    """Wait until ss shows *size* bytes unread in the server's socket."""
    ss = need_tool("ss", "iproute2")
    deadline = time.monotonic() + 10
    while True:
        out = subprocess.run(
            [ss, "-tnH", f"( sport = :{port} and dport = :{client} )"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split()
        if out and out[1] == str(size):  # Recv-Q
            return
        assert time.monotonic() < deadline, out
        time.sleep(0.02)


def test_two_panes_show_a_conversation_and_its_tcp_story(tmp_path):
    need_tool("ss", "iproute2")
    server, port = server_in_tmux(tmp_path)  # the console: you answer
    client = None
    try:
        client = client_in_tmux(port)
        shown = client.until("client --> server: ")
        assert "[tcp] connection: local 127.0.0.1:" in shown
        assert f"remote 127.0.0.1:{port} (the server's end)" in shown
        assert (
            "[tcp] connected: connect() returned once the three-way handshake" in shown
        )
        assert "[sockchat info] sockchat conversation 1." in shown
        client.type("hello")
        client.enter()
        client.until("[tcp] turn: the server's; the client waits")
        # The server's pane: the read, the turn, and the operator's prompt.
        server.until(
            re.compile(r"\[tcp\] conversation 1: read 1: 6 bytes b'hello\\n': 1 line")
        )
        server.until("[tcp] conversation 1: turn: the server's")
        server.until("server --> client 1: ")
        # A line typed out of turn is held by the client, and the trace says so.
        client.type("are you there?")
        client.enter()
        client.until("[tcp] a line typed out of turn (the server's turn) was held")
        server.type("hi, how can I help?")
        server.enter()
        shown = client.until("server --> client: hi, how can I help?")
        client.until("[tcp] turn: the client's")
        client.type("q")
        client.enter()
        shown = client.until(
            re.compile(r"\[tcp\] kernel check: .*\n?.*agrees"), timeout=15
        )
        assert "[tcp] close: the server sent FIN first" in shown
        assert (
            "TIME_WAIT (时间等待) is on the server's side, which closed first" in shown
        )
        assert "ss shows TIME-WAIT on the other side" in shown
        shown = server.until(
            re.compile(
                r"conversation 1: kernel check: ss shows TIME-WAIT on this side"
            ),
            timeout=15,
        )
        assert "conversation 1: close: the server sent FIN first" in shown
        assert f"the server's side (127.0.0.1:{port} <->" in shown
        # The prompt and the trace did not mangle each other.
        assert "client --> server: [tcp]" not in client.screen()
    finally:
        if client is not None:
            client.close()
        server.close()


def test_a_sticky_read_in_raw_framing_shows_in_the_servers_pane(tmp_path):
    pidfile = tmp_path / "twistd.pid"
    server, port = server_in_tmux(
        tmp_path, "--framing", "raw", "--responder", "echo", pidfile=str(pidfile)
    )
    client = None
    try:
        client = client_in_tmux(port, "--framing", "raw")
        client.until("client --> server: ")
        client.type("hello")
        client.enter()
        client.until("server --> client: hello")
        server.until(
            "read 1: 5 bytes b'hello': raw framing takes one read as one message"
        )
        # Two sends, two segments, and one read: the server is stopped
        # (SIGSTOP) until both are in its socket, so that it reads them at once.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mine = sock.getsockname()[1]
            twistd = int(pidfile.read_text())
            os.kill(twistd, signal.SIGSTOP)
            try:
                sock.sendall(b"hello")
                sock.sendall(b"world")
                waiting_in_server(port, mine, 10)
            finally:
                os.kill(twistd, signal.SIGCONT)
            heard = b""
            while len(heard) < 10:
                heard += sock.recv(1024)
            assert heard == b"helloworld"  # one message where two were sent
            sock.sendall(b"q")
        shown = server.until(re.compile(r"conversation 2: read 1: .*raw framing"))
        assert "conversation 2: read 1: 10 bytes b'helloworld': raw framing" in shown
        client.type("q")
        client.enter()
        client.until("[tcp] close: ")
    finally:
        if client is not None:
            client.close()
        server.close()


def test_at_a_terminal_the_client_draws_its_ladder_after_the_close(tmp_path):
    need_tool("ss", "iproute2")
    with Server("--responder", "echo", "--trace") as server:
        client = client_in_tmux(server.port, "packets")
        try:
            client.until("client --> server: ")
            client.type("hello")
            client.enter()
            client.until("server --> client: hello")
            client.type("q")
            client.enter()
            shown = client.until("from captured packets", timeout=20)
            assert re.search(r"time \(ms\) client 127\.0\.0\.1:\d+ <-> server", shown)
            assert "三次握手 1" in shown
            assert "四次挥手 1" in shown
            # Its TIME_WAIT: the server closed first, and the close ended in order.
            assert "TIME_WAIT (时间等待) on the server's side" in shown
        finally:
            client.close()
