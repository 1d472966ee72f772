"""The examples in examples/ work, in memory and as real processes, and the
framework's shells (pair mode, --responder MODULE:NAME) work end to end."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from examples.bot import ANSWERS, FaqBot
from sockchat.testing import MemoryServer, NoResultYet

from ports import free_port
from processes import (
    TWISTD,
    Server,
    raw_connect,
    recv_lines,
    run_client,
    run_twistd,
    start_client,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_bot_speaks_first_and_answers_keywords_at_once():
    clock = Clock()
    bot = FaqBot(clock=clock, delay=2)
    server = MemoryServer(bot, clock=clock)
    conversation = server.connect()
    assert server.result(conversation.listen()).startswith("hello, 127.0.0.1:")
    assert server.say(conversation, "TCP") == ANSWERS["tcp"]
    assert bot.talking == {1}
    server.result(conversation.quit())
    assert bot.talking == set()


def test_the_bot_thinks_before_answering_anything_else():
    clock = Clock()
    server = MemoryServer(FaqBot(clock=clock, delay=2), clock=clock)
    conversation = server.connect()
    server.result(conversation.listen())
    answer = conversation.say("ipv6")
    server.advance(1.9)
    with pytest.raises(NoResultYet):
        server.result(answer)
    server.advance(0.2)
    assert server.result(answer).startswith("I do not know about 'ipv6' yet.")


@pytest.mark.slow
def test_the_bot_runs_behind_twistd_with_the_real_client():
    with Server("--responder", "examples.bot:FaqBot", cwd=ROOT) as server:
        done = run_client(server.port, b"port\nq\n")
    assert done.returncode == 0, done.stderr
    opening, answer = done.stdout.decode().splitlines()
    assert opening.startswith("hello, 127.0.0.1:")
    assert answer == ANSWERS["port"]


@pytest.mark.slow
def test_a_bad_responder_reference_is_one_line_at_startup():
    done = run_twistd("--responder", "examples.bot:NoSuchBot", cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "sockchat: --responder examples.bot:NoSuchBot: module examples.bot has "
        "no 'NoSuchBot'"
    ]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


@pytest.mark.slow
def test_the_multiservice_application_serves_chat_and_status(tmp_path):
    chat_port, status_port = free_port(), free_port()
    env = {
        **os.environ,
        "SOCKCHAT_PORT": str(chat_port),
        "STATUS_PORT": str(status_port),
    }
    proc = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "-y", str(ROOT / "examples" / "multiservice.tac")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(status_port, proc)
        wait_for_port(chat_port, proc)
        sock = raw_connect(chat_port)
        assert recv_lines(sock, 1)[0].startswith(b"!info welcome: ")
        sock.sendall(b"hello\n")
        assert recv_lines(sock, 1) == [b"hello"]
        url = f"http://127.0.0.1:{status_port}/status"
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert json.load(reply) == {"conversations": 1}
        proc.terminate()
        assert recv_lines(sock, 1) == [b"!bye shutdown: the server is shutting down."]
        sock.close()
        output = proc.communicate(timeout=15)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert b"Traceback" not in output, output.decode()


@pytest.mark.slow
def test_two_real_clients_hold_a_paired_conversation_until_one_quits():
    with Server("--responder", "pair") as server:
        alice = start_client(server.port)
        alice.stdin.write(b"hello from alice\n")
        alice.stdin.flush()
        server.read_until(b"conversation 1 started")
        bob = start_client(server.port)
        bob.stdin.write("hi alice, 你好\nare you there?\n".encode())
        bob.stdin.flush()
        # Alice hears bob's answer, then quits; bob is told.
        assert alice.stdout.readline() == "hi alice, 你好\n".encode()
        _, a_err = alice.communicate(b"q\n", timeout=20)
        b_out, b_err = bob.communicate(timeout=20)
        server.read_until(re.compile(rb"conversation 2 with .* ended"))
    assert alice.returncode == 0, a_err
    assert b_out.decode().splitlines() == ["hello from alice"]
    assert bob.returncode == 0, b_err
    assert "client 1 (127.0.0.1:" in b_err.decode()
    assert "sent q" in b_err.decode()
    assert b"Traceback" not in server.output
