"""Limits, TLS and shutdown through the real twistd and client processes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import pytest

from certs import make_tls_files
from processes import (
    CLIENT,
    Server,
    need_tool,
    raw_connect,
    recv_lines,
    run_twistd,
    start_client,
)

pytestmark = pytest.mark.slow


def first_line_then_eof(port: int) -> bytes:
    with raw_connect(port) as sock:
        (line,) = recv_lines(sock, 1)
        assert sock.recv(100) == b"", "then a clean close"
    return line


def test_max_clients_newcomer_hears_busy_first():
    with Server("--responder", "echo", "--max-clients", "1") as server:
        with raw_connect(server.port) as first:
            recv_lines(first, 1)
            line = first_line_then_eof(server.port)
            assert (
                line == b"!bye busy: the server is full (1 clients); try again later."
            )
        server.read_until(b"refused a connection from 127.0.0.1:")


def test_denied_address_hears_why_and_is_logged():
    with Server("--responder", "echo", "--deny", "127.0.0.0/8") as server:
        line = first_line_then_eof(server.port)
        assert line.startswith(b"!bye denied:")
        server.read_until(b"refused a connection from 127.0.0.1:")
        # The client says so, and a script can tell from the exit status.
        done = subprocess.run(
            [*CLIENT, "--port", str(server.port)], input=b"hi\n", capture_output=True
        )
    assert done.returncode == 1
    assert done.stderr.decode().splitlines() == [
        "sockchat: the server ended the conversation: connections from your "
        "address are not accepted here."
    ]


def test_idle_timeout_closes_the_idle_connection_only():
    with Server("--responder", "echo", "--idle-timeout", "1") as server:
        with raw_connect(server.port) as sock:
            recv_lines(sock, 1)
            started = time.monotonic()
            (bye,) = recv_lines(sock, 1)
            assert bye == b"!bye idle-timeout: no line from you for 1 seconds; goodbye."
            assert 0.9 < time.monotonic() - started < 5
        done = subprocess.run(
            [*CLIENT, "--port", str(server.port)], input=b"alive\n", capture_output=True
        )
        assert done.stdout == b"alive\n"


def test_sigterm_with_a_client_that_never_reads_exits_within_5_seconds():
    with Server("--responder", "echo") as server, raw_connect(server.port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"x" * 100 + b"\n" * 1)
        sock.sendall((b"y" * 1000 + b"\n") * 2000)  # 2 MB of answers it won't read
        started = time.monotonic()
        code = server.stop(timeout=10)
        assert time.monotonic() - started < 5
        assert code == -signal.SIGTERM


def test_console_lists_unanswered_questions_at_shutdown():
    with Server("--responder", "console", stdin=subprocess.PIPE) as server:
        client = start_client(server.port)
        client.stdin.write(b"is anyone there?\n")
        client.stdin.flush()
        server.read_until(b"server --> client 1: ")
        server.stop()
        assert b"unanswered at shutdown (1):" in server.output
        assert b"client 1 (127.0.0.1:" in server.output
        assert b"): is anyone there?" in server.output
        _, err = client.communicate(timeout=10)
        assert client.returncode == 1
        assert err.decode().splitlines() == [
            "sockchat: the server ended the conversation: the server is shutting down."
        ]


def test_json_logs_keep_the_fields():
    with Server(
        "--responder", "echo", twistd_args=("--logger", "sockchat.jsonlog.observer")
    ) as server:
        subprocess.run(
            [*CLIENT, "--port", str(server.port)], input=b"hi\n", capture_output=True
        )
        server.read_until(b"turn(s) in")
    events = [json.loads(line) for line in server.output.splitlines() if line]
    ended = [
        e
        for e in events
        if "turns" in e and e.get("log_namespace") == "sockchat.server"
    ]
    assert ended[0]["turns"] == 1
    assert ended[0]["peer"].startswith("127.0.0.1:")
    assert "duration" in ended[0]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            ["--idle-timeout", "soon"],
            "sockchat: --idle-timeout soon is not a number of seconds",
        ),
        (
            ["--allow", "10.0.0.300"],
            "sockchat: --allow/--deny: '10.0.0.300' is not an IPv4 or IPv6 "
            "address or range",
        ),
        (
            ["--max-clients", "-1"],
            "sockchat: --max-clients -1 is not a whole number (0 or more)",
        ),
        (
            ["--tls-client-ca", "ca.pem"],
            "sockchat: --tls-client-ca needs a TLS listener: --port ssl:...",
        ),
    ],
)
def test_bad_limit_values_get_one_line(option, message):
    done = run_twistd("--responder", "echo", *option)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [message]


@pytest.fixture
def tls(tmp_path):
    return make_tls_files(tmp_path)


def tls_server(tls, *extra):
    listen = f"ssl:0:interface=127.0.0.1:privateKey={tls['key']}:certKey={tls['cert']}"
    return Server("--responder", "echo", *extra, port=listen)


def tls_client(port, *args, stdin=b"secret\n"):
    return subprocess.run(
        [*CLIENT, "--connect", f"tls:localhost:{port}", *args],
        input=stdin,
        capture_output=True,
        timeout=30,
    )


def test_tls_client_verifies_the_server_with_ca(tls):
    with tls_server(tls) as server:
        done = tls_client(server.port, "--ca", str(tls["ca"]))
    assert (done.returncode, done.stdout, done.stderr) == (0, b"secret\n", b"")


def test_tls_without_the_ca_fails_in_one_line(tls):
    with tls_server(tls) as server:
        done = tls_client(server.port)
    assert done.returncode == 1
    assert done.stderr.decode().splitlines() == [
        "sockchat: the TLS handshake failed (certificate verify failed); if the "
        "server's certificate comes from a private CA, pass that CA's certificate "
        "with --ca."
    ]


def test_tls_hostname_mismatch_fails_in_one_line(tmp_path):
    files = make_tls_files(tmp_path, hostname="elsewhere.example")
    with tls_server(files) as server:
        done = tls_client(server.port, "--ca", str(files["ca"]))
    assert done.returncode == 1
    assert done.stderr.decode().splitlines() == [
        "sockchat: TLS verification failed: the server's certificate is not for "
        "the host name you connected to."
    ]


def test_unreadable_tls_files_are_one_line_errors(tls, tmp_path):
    missing = tmp_path / "missing.key"
    done = run_twistd(
        "--responder",
        "echo",
        "--port",
        f"ssl:0:privateKey={missing}:certKey={tls['cert']}",
    )
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert "missing.key" in done.stderr
    for args in (
        ["--ca", str(tls["key"])],
        [
            "--ca",
            str(tls["ca"]),
            "--cert",
            str(tls["client_cert"]),
            "--key",
            str(tls["key"]),
        ],
    ):
        client = tls_client(9, *args)
        assert client.returncode == 1
        (line,) = client.stderr.decode().splitlines()
        assert line.startswith(("sockchat: --ca ", "sockchat: --cert "))


def test_mutual_tls_requires_a_client_certificate(tls):
    with tls_server(tls, "--tls-client-ca", str(tls["ca"])) as server:
        refused = tls_client(server.port, "--ca", str(tls["ca"]))
        admitted = tls_client(
            server.port,
            "--ca",
            str(tls["ca"]),
            "--cert",
            str(tls["client_cert"]),
            "--key",
            str(tls["client_key"]),
        )
    assert refused.returncode == 1
    assert len(refused.stderr.decode().splitlines()) == 1
    assert (admitted.returncode, admitted.stdout) == (0, b"secret\n")


def test_openssl_s_client_holds_a_conversation(tls):
    openssl = need_tool("openssl", "openssl")
    with tls_server(tls) as server:
        done = subprocess.run(
            [
                openssl,
                "s_client",
                "-quiet",
                "-connect",
                f"127.0.0.1:{server.port}",
                "-servername",
                "localhost",
                "-CAfile",
                str(tls["ca"]),
                "-verify_return_error",
                "-verify_hostname",
                "localhost",
            ],
            input=b"hello over TLS\nq\n",
            capture_output=True,
            timeout=30,
        )
    lines = done.stdout.decode().splitlines()
    assert lines[0].startswith("!info welcome:")
    assert lines[1:] == ["hello over TLS", "!bye quit: goodbye."]


def test_a_loopback_port_welcomes_more_local_clients_than_max_per_ip():
    with Server("--responder", "echo", "--max-per-ip", "2") as server:
        socks = [raw_connect(server.port) for _ in range(5)]
        try:
            firsts = [recv_lines(sock, 1)[0] for sock in socks]
        finally:
            for sock in socks:
                sock.close()
    assert all(line.startswith(b"!info welcome: ") for line in firsts), firsts


def test_cap_loopback_caps_local_clients_and_the_log_names_the_option():
    options = ("--responder", "echo", "--max-per-ip", "1", "--cap-loopback")
    with Server(*options) as server, raw_connect(server.port) as first:
        assert recv_lines(first, 1)[0].startswith(b"!info welcome: ")
        with raw_connect(server.port) as second:
            (line,) = recv_lines(second, 1)
        assert line.startswith(b"!bye busy: your address already has 1 ")
        logged = server.read_until(b"(0: no limit)")
    assert b"raise --max-per-ip" in logged
