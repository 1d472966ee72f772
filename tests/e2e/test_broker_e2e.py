"""The broker with real processes: redis-server, twistd sockchat --broker,
python -m sockchat.worker, and the client.  Faults: Redis down at start,
Redis stopped and started again while clients talk, an instance killed with
kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from ports import free_port
from processes import Server, raw_connect, recv_lines, run_twistd

pytestmark = pytest.mark.slow

WORKER = [sys.executable, "-m", "sockchat.worker"]


def start_worker(
    url: str, responder: str = "sockchat:EchoResponder"
) -> subprocess.Popen[bytes]:
    worker = subprocess.Popen(
        [*WORKER, "--broker", url, responder],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return worker


def wait_for_workers(server, count: int = 1, timeout: float = 15.0) -> None:
    """Until *count* workers are registered at the broker."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", server.port), 5) as s:
            s.sendall(b"HLEN sockchat:consumers:workers\r\n")
            reply = s.recv(100)
        if reply.startswith(b":") and int(reply[1:].strip()) >= count:
            time.sleep(2.5)  # the instances count them at their heartbeat
            return
        time.sleep(0.2)
    raise AssertionError(f"{count} worker(s) did not register within {timeout} s")


def say(sock, text: str) -> str:
    sock.sendall(text.encode() + b"\n")
    [line] = recv_lines(sock, 1)
    return line.decode()


def test_redis_down_at_start_is_one_line_and_exit_1():
    port = free_port()
    ran = run_twistd(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--responder",
        "workers",
        "--broker",
        f"redis://:secret@127.0.0.1:{port}/0",
    )
    assert ran.returncode == 1
    out = (ran.stdout + ran.stderr).strip().splitlines()
    assert out == [
        f"sockchat: cannot use the broker at redis://127.0.0.1:{port}/0: "
        "Connection refused"
    ]
    assert "secret" not in ran.stdout + ran.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--responder", "workers"], "--responder workers needs --broker URL"),
        (
            ["--responder", "echo", "--broker", "redis://127.0.0.1:1/0"],
            "would do nothing",
        ),
        (["--responder", "workers", "--broker", "http://127.0.0.1:1"], "--broker"),
    ],
)
def test_broker_option_mistakes_are_one_line(args, says):
    ran = run_twistd("--port", "tcp:0:interface=127.0.0.1", *args)
    assert ran.returncode == 1
    lines = (ran.stdout + ran.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert says in lines[0]


def test_a_wrong_password_is_one_line(make_redis_server):
    redis = make_redis_server(password="right")
    ran = run_twistd(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--responder",
        "workers",
        "--broker",
        f"redis://:wrong@127.0.0.1:{redis.port}/0",
    )
    assert ran.returncode == 1
    lines = (ran.stdout + ran.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "WRONGPASS" in lines[0] or "invalid" in lines[0]
    assert "wrong" not in lines[0].replace("WRONGPASS", "")


def test_redis_stopped_and_started_while_clients_talk(redis_server):
    worker = start_worker(redis_server.url)
    try:
        with Server("--responder", "workers", "--broker", redis_server.url) as server:
            wait_for_workers(redis_server)
            sock = raw_connect(server.port)
            recv_lines(sock, 1)  # the welcome
            assert say(sock, "before") == "before"
            redis_server.stop()
            for _ in range(3):
                answer = say(sock, "during")
                assert answer.startswith("!error unavailable:"), answer
                assert "unreachable" in answer
            redis_server.start()
            deadline = time.monotonic() + 20
            while True:
                answer = say(sock, "after")
                if answer == "after":
                    break
                assert answer.startswith("!error unavailable:"), answer
                assert time.monotonic() < deadline, "the broker never came back"
                time.sleep(0.5)
            sock.close()
        log = server.output.decode()
        assert log.count("lost the broker at") == 1, log
        assert log.count("is back after") == 1, log
        assert "Traceback" not in log
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=15)


def test_a_stopped_worker_leaves_its_client_the_answer_timeout_on_time(redis_server):
    """--answer-timeout holds for lines sent to the workers (their queue
    times them itself): with the worker stopped (SIGSTOP), the client gets
    responder-timeout once the timeout has passed, not before, and its
    turn; the worker, continued, answers the next line and not the old."""
    import os

    worker = start_worker(redis_server.url)
    try:
        args = ("--responder", "workers", "--answer-timeout", "2")
        with Server(*args, "--broker", redis_server.url) as server:
            wait_for_workers(redis_server)
            sock = raw_connect(server.port)
            recv_lines(sock, 1)  # the welcome
            assert say(sock, "before") == "before"
            os.kill(worker.pid, signal.SIGSTOP)
            asked = time.monotonic()
            answer = say(sock, "stuck")
            waited = time.monotonic() - asked
            assert answer.startswith("!error responder-timeout:"), answer
            assert "(no answer within 2 seconds)" in answer
            assert 2 <= waited < 10, waited
            os.kill(worker.pid, signal.SIGCONT)
            assert say(sock, "after") == "after"
            sock.close()
        assert "Traceback" not in server.output.decode()
    finally:
        os.kill(worker.pid, signal.SIGCONT)
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=15)


def test_an_instance_killed_leaves_nothing_queued_for_ever(redis_server):
    """kill -9 of an instance with a line waiting for an operator: its queue
    entry, client hash and heartbeat go, and no operator gets the line."""
    import socket

    def redis(*command: str) -> bytes:
        with socket.create_connection(("127.0.0.1", redis_server.port), 5) as s:
            s.sendall(" ".join(command).encode() + b"\r\n")
            time.sleep(0.1)
            return s.recv(65536)

    server = Server("--responder", "operators", "--broker", redis_server.url)
    with server:
        sock = raw_connect(server.port)
        recv_lines(sock, 1)
        sock.sendall(b"anyone?\n")
        time.sleep(1)
        assert redis("XLEN", "sockchat:work:operators").strip() == b":1"
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        sock.close()
        # The heartbeat and the client hash expire within HEARTBEAT_TTL.
        time.sleep(11)
        assert redis("EXISTS", "sockchat:instance:i1").strip() == b":0"
        assert redis("EXISTS", "sockchat:clients:i1").strip() == b":0"
        operator = subprocess.Popen(
            [sys.executable, "-m", "sockchat.operator", "--broker", redis_server.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 15
            while redis("XLEN", "sockchat:work:operators").strip() != b":0":
                assert time.monotonic() < deadline, "the dead instance's line stayed"
                time.sleep(0.3)
        finally:
            operator.send_signal(signal.SIGTERM)
            out, _ = operator.communicate(timeout=15)
        assert b"anyone?" not in out, out
    json.dumps(server.output.decode())  # the log is text
