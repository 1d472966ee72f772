"""Transcripts through the real twistd: a file that cannot be opened, and
a server killed mid-conversation."""

from __future__ import annotations

import json
import signal

import pytest

from processes import Server, raw_connect, recv_lines, run_twistd

pytestmark = pytest.mark.slow


def test_a_transcript_that_cannot_be_opened_is_a_one_line_error(tmp_path):
    done = run_twistd(
        "--responder", "echo", "--transcript", str(tmp_path / "no" / "dir.jsonl")
    )
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"sockchat: --transcript {tmp_path}/no/dir.jsonl: ")
    assert "No such file or directory" in line


def test_after_kill_9_the_transcript_holds_every_answered_line(tmp_path):
    path = tmp_path / "chat.jsonl"
    with Server("--responder", "echo", "--transcript", str(path)) as server:
        sock = raw_connect(server.port)
        recv_lines(sock, 1)  # the welcome
        for n in range(40):
            sock.sendall(f"line {n} 你好\n".encode())
            assert recv_lines(sock, 1) == [f"line {n} 你好".encode()]
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        sock.close()
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    said = [(e["direction"], e["text"]) for e in entries if e["kind"] != "notice"]
    expected = []
    for n in range(40):
        expected += [("in", f"line {n} 你好"), ("out", f"line {n} 你好")]
    assert said == expected
