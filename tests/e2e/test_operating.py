"""Operating sockchat: --metrics and /healthz through the real twistd, checked
with promtool and a real haproxy; socket activation under
systemd-socket-activate; the shipped systemd units."""

from __future__ import annotations

import csv
import io
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sockchat.tap import Options

from ports import free_port
from processes import TWISTD, MetricsServer, need_tool, raw_connect, recv_lines

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "contrib" / "systemd"
ON_LOOPBACK = "tcp:0:interface=127.0.0.1"


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}{path}", timeout=5
        ) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def values(text: str) -> dict[tuple, float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return found


def promtool_check(text: bytes) -> subprocess.CompletedProcess[bytes]:
    promtool = need_tool("promtool", "prometheus")
    return subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30
    )


@pytest.mark.slow
def test_promtool_rejects_a_badly_named_counter():
    # The check below can fail: a counter must end in _total.
    done = promtool_check(b"# HELP x An x.\n# TYPE x counter\nx 1\n")
    assert done.returncode != 0, done


@pytest.mark.slow
def test_scrape_after_a_conversation_a_refused_line_and_connection_passes_promtool():
    with MetricsServer("--responder", "echo", "--max-clients", "1") as server:
        with raw_connect(server.port) as sock:
            recv_lines(sock, 1)  # welcome
            sock.sendall(b"hello\n")
            assert recv_lines(sock, 1) == [b"hello"]
            sock.sendall(b"\xff\xfe\n")
            (refusal,) = recv_lines(sock, 1)
            assert refusal.startswith(b"!error invalid-utf8:")
            with raw_connect(server.port) as second:
                (busy,) = recv_lines(second, 1)
                assert busy.startswith(b"!bye busy:")
            sock.sendall(b"q\n")
            assert recv_lines(sock, 1)[0].startswith(b"!bye quit")
        server.read_until(b"ended after 1 turn(s)")
        status, body = get(server.metrics_port, "/metrics")
    assert status == 200
    done = promtool_check(body)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b""), done
    found = values(body.decode())
    assert found[("sockchat_conversations_started_total",)] == 1
    assert found[("sockchat_conversations_ended_total", ("reason", "quit"))] == 1
    assert found[("sockchat_conversations_open",)] == 0
    assert found[("sockchat_lines_answered_total",)] == 1
    assert found[("sockchat_lines_refused_total", ("code", "invalid-utf8"))] == 1
    assert found[("sockchat_connections_refused_total", ("reason", "busy"))] == 1
    assert found[("sockchat_received_bytes_total",)] == len(b"hello\n\xff\xfe\nq\n")
    assert found[("sockchat_sent_bytes_total",)] > 0
    assert found[("sockchat_accepting",)] == 1
    assert (
        found[("sockchat_answer_latency_seconds_count", ("responder", "EchoResponder"))]
        == 1
    )


@pytest.mark.slow
def test_health_checks_and_scrapes_are_no_conversation_and_no_log_line():
    with MetricsServer("--responder", "echo", "--web", ON_LOOPBACK) as server:
        web = re.search(
            rb"sockchat web page at http://127\.0\.0\.1:(\d+)/",
            server.output,
        )
        assert web is not None
        before = server.output
        for _ in range(5):
            assert get(server.metrics_port, "/healthz") == (200, b"ok\n")
            assert get(int(web.group(1)), "/healthz") == (200, b"ok\n")
        status, body = get(server.metrics_port, "/metrics")
        assert status == 200
        assert values(body.decode())[("sockchat_conversations_started_total",)] == 0
        time.sleep(0.3)  # anything it would log has been written by now
        server.stop()
    after = server.output[len(before) :]
    assert b"conversation" not in after
    assert b"GET" not in after
    assert b"healthz" not in after
    assert after.count(b"\n") < 10, after  # only the shutdown's lines


HAPROXY_CONFIG = """\
global
    stats socket {folder}/admin.sock mode 600 level admin
defaults
    mode tcp
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    # A check waits this long for its answer; without it, a check times out
    # after 'inter' (100 ms), and one slow answer on a busy machine marks
    # the server DOWN as L7TOUT, not for the 503 the test is about.
    timeout check 5s
listen chat
    bind 127.0.0.1:{front}
    option httpchk GET /healthz
    server one 127.0.0.1:{chat} check port {metrics} inter 100ms fall 1 rise 1
"""


def haproxy_state(folder: Path) -> dict[str, str]:
    """The ``show stat`` row of server ``one``."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(folder / "admin.sock"))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
    (row,) = [r for r in rows if r["svname"] == "one"]
    return row


def wait_for(condition, timeout: float = 10.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)


def flood_without_reading(sock: socket.socket, quiet: float = 0.3) -> None:
    """Send lines, reading no answer, until the server stops reading them."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    chunk = (b"y" * 1000 + b"\n") * 64
    last = time.monotonic()
    while time.monotonic() - last < quiet:
        try:
            sock.send(chunk)
            last = time.monotonic()
        except BlockingIOError:
            time.sleep(0.01)
    sock.setblocking(True)


def held_back(metrics_port: int) -> float:
    status, body = get(metrics_port, "/metrics")
    assert status == 200
    return values(body.decode())[("sockchat_output_held_bytes",)]


@pytest.mark.slow
def test_haproxy_marks_an_instance_down_while_it_shuts_down(tmp_path: Path):
    haproxy = need_tool("haproxy", "haproxy")
    with MetricsServer("--responder", "echo") as server:
        config = tmp_path / "haproxy.cfg"
        config.write_text(
            HAPROXY_CONFIG.format(
                folder=tmp_path,
                front=free_port(),
                chat=server.port,
                metrics=server.metrics_port,
            )
        )
        proxy = subprocess.Popen(
            [haproxy, "-db", "-f", str(config)],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for(lambda: (tmp_path / "admin.sock").exists())
            wait_for(lambda: haproxy_state(tmp_path)["status"] == "UP")
            # A client that never reads: the shutdown waits out the close
            # grace (3 s) for it, and meanwhile /healthz says 503.
            with raw_connect(server.port) as sock:
                flood_without_reading(sock)
                wait_for(lambda: held_back(server.metrics_port) > 0)
                server.proc.send_signal(signal.SIGTERM)
                row = wait_for(
                    lambda: (r := haproxy_state(tmp_path))["status"] == "DOWN" and r,
                    timeout=3,
                )
                assert server.proc.poll() is None, "down before the server exited"
                assert (row["check_status"], row["check_code"]) == ("L7STS", "503")
                server.stop()
        finally:
            proxy.terminate()
            proxy.wait(10)
            proxy.stderr.close()


# Socket activation.


def test_passed_sockets_follow_systemd_rules():
    from sockchat._doors.systemd import PassedSockets, passed_sockets

    env = {"LISTEN_PID": "42", "LISTEN_FDS": "2"}
    assert passed_sockets(env, 42) == PassedSockets((3, 4), ("unknown", "unknown"))
    assert passed_sockets(env, 43) == PassedSockets(), "meant for another process"
    env["LISTEN_FDNAMES"] = "chat:web"
    assert passed_sockets(env, 42).names == ("chat", "web")
    assert passed_sockets({"LISTEN_PID": "42", "LISTEN_FDS": "x"}, 42) == (
        PassedSockets()
    )


@pytest.mark.parametrize(
    ("description", "error"),
    [
        (
            "systemd:domain=INET:index=2",
            "index=2: 2 socket(s) were passed, so give 0 to 1",
        ),
        ("systemd:domain=INET:name=web", "name=web: no socket of that name"),
        ("systemd:domain=INET", "give index= (from 0) or name="),
        ("systemd:domain=IPX:index=0", "domain=IPX is not one of"),
        ("systemd:domain=INET:index=0:port=1", "unknown option 'port'"),
    ],
)
def test_bad_systemd_descriptions_are_one_line(description: str, error: str):
    from sockchat._doors.systemd import PassedSockets, systemd_endpoint

    passed = PassedSockets((3, 4), ("chat", "unknown"))
    with pytest.raises(ValueError, match=re.escape(error)):
        systemd_endpoint(None, description, passed)


def test_systemd_port_without_a_passed_socket_says_how_to_start_it(
    monkeypatch: pytest.MonkeyPatch,
):
    from sockchat import tap

    monkeypatch.delenv("LISTEN_FDS", raising=False)
    monkeypatch.setattr(tap, "systemd_endpoint", _no_environment(tap.systemd_endpoint))
    with pytest.raises(SystemExit, match="no socket was passed to this process"):
        tap._server_endpoint(None, "systemd:domain=INET:index=0", "--port", "x")


def _no_environment(real):
    from sockchat._doors.systemd import PassedSockets

    return lambda reactor, description: real(reactor, description, PassedSockets())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("activate_args", "port_option"),
    [
        ((), "systemd:domain=INET:index=0"),  # no LISTEN_FDNAMES: the case
        (("--fdname=chat",), "systemd:domain=INET:name=chat"),
    ],
)
def test_socket_activation_serves_nc(activate_args, port_option, tmp_path: Path):
    activate = need_tool("systemd-socket-activate", "systemd")
    nc = need_tool("nc", "netcat-openbsd")
    port = free_port()
    proc = subprocess.Popen(
        [
            activate,
            "-l",
            f"127.0.0.1:{port}",
            *activate_args,
            TWISTD,
            "-n",
            "--pidfile=",
            "sockchat",
            "--port",
            port_option,
            "--responder",
            "echo",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        # It listens at once; twistd starts at the first connection.
        wait_for(lambda: _accepts(port))
        done = subprocess.run(
            [nc, "-N", "127.0.0.1", str(port)],
            input=b"hello\nq\n",
            capture_output=True,
            timeout=20,
        )
        lines = done.stdout.splitlines()
        assert lines[0].startswith(b"!info welcome:"), done
        assert lines[1:] == [b"hello", b"!bye quit: goodbye."]
    finally:
        proc.send_signal(signal.SIGTERM)  # twistd, which activate exec'd
        output = proc.communicate(timeout=15)[0]
    assert b"Traceback" not in output, output.decode()
    assert f"sockchat listening on 127.0.0.1:{port}".encode() in output, output


def _accepts(port: int) -> bool:
    # A plain connect would start twistd and become a conversation; ask the
    # kernel who listens instead.
    with open("/proc/net/tcp") as table:
        return any(
            f":{port:04X} " in line and line.split()[3] == "0A" for line in table
        )


# The shipped units.


def test_the_service_runs_twistd_with_options_sockchat_accepts():
    unit = (UNITS / "sockchat.service").read_text()
    (line,) = [x for x in unit.splitlines() if x.startswith("ExecStart=")]
    command = shlex.split(line.removeprefix("ExecStart="))
    assert command[:4] == ["/opt/sockchat/bin/twistd", "-n", "--pidfile=", "sockchat"]
    options = Options()
    options.parseOptions(command[4:])
    assert options["endpoint"] == "systemd:domain=INET:index=0"
    for setting in (
        "DynamicUser=yes",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "StandardOutput=journal",
    ):
        assert f"\n{setting}\n" in unit, setting


@pytest.mark.slow
def test_systemd_analyze_verify_passes_on_the_shipped_units(tmp_path: Path):
    analyze = need_tool("systemd-analyze", "systemd")
    # verify checks that ExecStart's program exists: point it at this
    # environment's twistd instead of /opt/sockchat's.
    for name in ("sockchat.socket", "sockchat.service"):
        text = (UNITS / name).read_text()
        text = text.replace("/opt/sockchat/bin/twistd", TWISTD)
        (tmp_path / name).write_text(text)
    units = [str(tmp_path / "sockchat.socket"), str(tmp_path / "sockchat.service")]
    done = subprocess.run(
        [analyze, "verify", *units], capture_output=True, text=True, timeout=60
    )
    # verify only warns about an unknown or bad setting: any output fails.
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done
    done = subprocess.run(
        [analyze, "security", "--offline=yes", units[1]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert exposure is not None, done
    assert float(exposure.group(1)) <= 2.0, done.stdout


@pytest.mark.slow
def test_systemd_analyze_verify_reports_a_misspelt_setting(tmp_path: Path):
    analyze = need_tool("systemd-analyze", "systemd")
    unit = tmp_path / "sockchat.service"
    text = (UNITS / "sockchat.service").read_text()
    unit.write_text(
        text.replace("/opt/sockchat/bin/twistd", TWISTD).replace(
            "ProtectSystem=", "ProtectSystm="
        )
    )
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert "Unknown key" in done.stderr, done
    assert shutil.which(TWISTD) or os.path.exists(TWISTD)


# Logs and daemon mode, as docs/operating.md gives them.


def _wait_for_file(path: Path, text: bytes = b"", timeout: float = 15) -> bytes:
    def ready() -> bytes | None:
        if path.exists() and text in (data := path.read_bytes()):
            return data
        return None

    return wait_for(ready, timeout=timeout)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
def test_daemon_mode_with_a_pidfile_and_a_log_file_that_rotates(tmp_path: Path):
    pidfile, logfile = tmp_path / "sockchat.pid", tmp_path / "sockchat.log"
    command = [
        TWISTD,
        "--pidfile",
        str(pidfile),
        "--logfile",
        str(logfile),
        "sockchat",
        "--port",
        ON_LOOPBACK,
        "--responder",
        "echo",
    ]
    started = subprocess.run(command, capture_output=True, timeout=30, cwd=tmp_path)
    assert started.returncode == 0, started  # the daemon went on without it
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip()))
    try:
        log = _wait_for_file(logfile, b"sockchat listening on")
        port = int(re.search(rb"listening on 127\.0\.0\.1:(\d+)", log).group(1))
        # A second one with the same pidfile will not start.
        again = subprocess.run(command, capture_output=True, timeout=30, cwd=tmp_path)
        assert again.returncode != 0
        assert b"Another twistd server is running" in again.stdout + again.stderr
        os.kill(pid, signal.SIGUSR1)  # rotate the log
        _wait_for_file(tmp_path / "sockchat.log.1", b"sockchat listening on")
        with raw_connect(port) as sock:
            recv_lines(sock, 1)
            sock.sendall(b"hello\nq\n")
            assert recv_lines(sock, 2) == [b"hello", b"!bye quit: goodbye."]
        _wait_for_file(logfile, b"conversation 1 with")
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: _gone(pid), timeout=15)
    assert not pidfile.exists(), "twistd removes its pidfile when it stops"
    assert b"conversation 1 started" not in (tmp_path / "sockchat.log.1").read_bytes()


@pytest.mark.slow
def test_the_operators_queue_is_in_the_scrape_and_passes_promtool(tmp_path):
    from sockchat._desk.accounts import Account, Cost, hash_password

    accounts = tmp_path / "accounts"
    cheap = Cost(ln=10, r=8, p=1)
    accounts.write_text(
        Account("ann", hash_password("a password", cheap), "Ann").line()
    )
    with (
        MetricsServer("--desk", ON_LOOPBACK, "--accounts", str(accounts)) as server,
        raw_connect(server.port) as sock,
    ):
        recv_lines(sock, 1)  # welcome
        sock.sendall(b"is anyone there?\n")
        (queued,) = recv_lines(sock, 1)
        assert queued.startswith(b"!info queued:")
        time.sleep(1.1)
        status, body = get(server.metrics_port, "/metrics")
    assert status == 200
    done = promtool_check(body)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b""), done
    found = values(body.decode())
    assert found[("sockchat_operator_queue_lines",)] == 1
    assert found[("sockchat_operator_queue_oldest_seconds",)] >= 1
    assert found[("sockchat_operators_online",)] == 0
    assert found[("sockchat_operator_first_answer_seconds_count",)] == 0
