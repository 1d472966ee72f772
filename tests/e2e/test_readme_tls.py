"""README's TLS recipes, run as written: the test certificates (server and
client), the TLS and mutual-TLS servers and clients, and openssl s_client."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from processes import LISTENING, TWISTD, Reader, need_tool

pytestmark = pytest.mark.slow

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(title)
    end = README.find("\n##", start + len(title))
    return README[start:end]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def command(line: str, **ports: int) -> list[str]:
    for old, new in ports.items():
        line = line.replace(old.replace("p", ""), str(new))
    words = shlex.split(line)
    if words[0] == "twistd":
        words[0] = TWISTD
    elif words[0] == "python":
        words[0] = sys.executable
    elif words[0] == "openssl":
        words[0] = need_tool("openssl", "openssl")
    return words


class Listening:
    """A server command from README, on a free port instead of its own."""

    def __init__(self, line: str, port: str, where: Path) -> None:
        words = command(line.replace(f"ssl:{port}:", "ssl:0:"))
        self.proc = subprocess.Popen(
            words,
            cwd=where,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        seen = Reader(self.proc.stdout).until(LISTENING)
        self.port = int(LISTENING.search(seen).group(2))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    need_tool("openssl", "openssl")
    where = tmp_path_factory.mktemp("certs")
    (script,) = blocks(section("### Test certificates"), "bash")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return where


def test_the_recipe_makes_a_ca_a_server_and_a_client_certificate(certificates):
    for name in ["ca.pem", "key.pem", "cert.pem", "client-key.pem", "client-cert.pem"]:
        assert (certificates / name).is_file(), name


def talk(line: str, port: int, where: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        command(line, p9527=port, p9528=port),
        cwd=where,
        input=b"over TLS\n",
        capture_output=True,
        timeout=30,
    )


def test_the_tls_server_and_client_commands_work_as_written(certificates):
    text = section("### Test certificates")
    server_line = blocks(text, "sh")[0].strip()
    client_line = re.search(r"and in another, `([^`]+)`", text).group(1)
    server = Listening(server_line, "9527", certificates)
    try:
        done = talk(client_line, server.port, certificates)
    finally:
        server.stop()
    assert (done.returncode, done.stdout) == (0, b"over TLS\n"), done.stderr


def test_the_mutual_tls_commands_work_and_need_the_client_certificate(certificates):
    server_line, client_line = (
        blocks(section("### Test certificates"), "sh")[1].strip().splitlines()
    )
    assert "--tls-client-ca ca.pem" in server_line
    server = Listening(server_line, "9528", certificates)
    try:
        done = talk(client_line, server.port, certificates)
        without = talk(client_line.split(" --cert ")[0], server.port, certificates)
    finally:
        server.stop()
    assert (done.returncode, done.stdout) == (0, b"over TLS\n"), done.stderr
    assert without.returncode == 1
    assert len(without.stderr.decode().splitlines()) == 1


def test_the_openssl_s_client_command_works_as_written(certificates):
    text = section("**openssl s_client**")
    server_line = re.search(r"listener,\n`([^`]+)`", text).group(1)
    client_line = blocks(text, "sh")[0]
    assert "-servername localhost" in client_line
    server = Listening(server_line, "9527", certificates)
    try:
        done = subprocess.run(
            command(client_line.strip(), p9527=server.port),
            cwd=certificates,
            input=b"hello s_client\nq\n",
            capture_output=True,
            timeout=30,
        )
    finally:
        server.stop()
    lines = done.stdout.decode().splitlines()
    assert lines[0].startswith("!info welcome:")
    assert lines[1:] == ["hello s_client", "!bye quit: goodbye."]
