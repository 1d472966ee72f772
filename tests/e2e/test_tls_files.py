"""Every TLS file mistake is one line and exit 1, on the server and the
client: a missing file, a file that is not PEM, a key given as a
certificate (and the other way round), an encrypted key, and a key that is
not the certificate's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from twisted.internet.testing import MemoryReactor

from sockchat._doors.endpoints import client_endpoint
from sockchat._doors.tlsfiles import TLSFileError, check_certificate, check_pair
from sockchat.tap import Options

from certs import make_tls_files
from processes import CLIENT, run_twistd


@pytest.fixture
def tls(tmp_path: Path) -> dict[str, Path]:
    files = make_tls_files(tmp_path)
    other = trustme.CA().issue_cert("localhost")
    files["other_key"] = tmp_path / "other.key"
    other.private_key_pem.write_to_path(files["other_key"])
    files["missing"] = tmp_path / "missing.pem"
    files["text"] = tmp_path / "notes.txt"
    files["text"].write_text("this is not a certificate\n")
    files["damaged"] = tmp_path / "damaged.pem"
    files["damaged"].write_bytes(
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    )
    key = serialization.load_pem_private_key(files["key"].read_bytes(), None)
    files["encrypted"] = tmp_path / "encrypted.key"
    files["encrypted"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return files


#: (the certificate file, the key file, the one blamed, the problem named)
SERVER_MISTAKES = [
    ("cert", "other_key", "certKey", "do not match: that key is not the certificate's"),
    ("key", "key", "certKey", "holds a private key, not a certificate"),
    ("cert", "cert", "privateKey", "holds a certificate, not a private key"),
    ("missing", "key", "certKey", "No such file or directory"),
    ("cert", "missing", "privateKey", "No such file or directory"),
    ("text", "key", "certKey", "is not a PEM file (it has no '-----BEGIN' line)"),
    ("cert", "text", "privateKey", "is not a PEM file (it has no '-----BEGIN' line)"),
    ("damaged", "key", "certKey", "its certificate is damaged"),
    ("cert", "encrypted", "privateKey", "the key is encrypted; give one without a"),
]


def one_line_exit(options: list[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        Options().parseOptions(["--responder", "echo", *options])
    message = str(exited.value)
    assert "\n" not in message
    assert message.startswith("sockchat: ")
    return message


@pytest.mark.parametrize(("cert", "key", "blamed", "problem"), SERVER_MISTAKES)
@pytest.mark.parametrize("option", ["--port", "--web"])
def test_a_tls_listener_with_a_bad_file_is_one_line(
    tls, option, cert, key, blamed, problem
):
    description = f"ssl:0:privateKey={tls[key]}:certKey={tls[cert]}"
    given = ["--port", "0"] if option == "--web" else []
    message = one_line_exit([*given, option, description])
    path = tls[cert] if blamed == "certKey" else tls[key]
    assert message.startswith(f"sockchat: {option} {blamed}={path}")
    assert problem in message


def test_the_mismatch_names_both_files(tls):
    message = one_line_exit(
        ["--port", f"ssl:0:privateKey={tls['other_key']}:certKey={tls['cert']}"]
    )
    assert message == (
        f"sockchat: --port certKey={tls['cert']} and --port "
        f"privateKey={tls['other_key']} do not match: that key is not the "
        "certificate's; give the key the certificate was made for"
    )


def test_without_cert_key_the_key_file_must_hold_the_certificate(tls):
    message = one_line_exit(["--port", f"ssl:0:privateKey={tls['key']}"])
    assert message == (
        f"sockchat: --port privateKey={tls['key']} (no certKey= given, so the "
        "certificate must be in the key's file): holds a private key, not a "
        "certificate"
    )


def test_a_combined_key_and_certificate_file_is_accepted(tls, tmp_path):
    combined = tmp_path / "server-both.pem"
    combined.write_bytes(tls["key"].read_bytes() + tls["cert"].read_bytes())
    options = Options()
    options.parseOptions(["--responder", "echo", "--port", f"ssl:0:{combined}"])
    assert options["endpoint"] == f"ssl:0:{combined}"


@pytest.mark.parametrize(
    ("ca", "problem"),
    [
        ("key", "holds a private key, not a certificate"),
        ("missing", "No such file or directory"),
        ("text", "is not a PEM file"),
        ("damaged", "its certificate is damaged"),
    ],
)
def test_a_bad_tls_client_ca_is_one_line(tls, ca, problem):
    listen = f"ssl:0:privateKey={tls['key']}:certKey={tls['cert']}"
    message = one_line_exit(["--port", listen, "--tls-client-ca", str(tls[ca])])
    assert message.startswith(f"sockchat: --tls-client-ca {tls[ca]}: ")
    assert problem in message


CLIENT_MISTAKES = [
    ({"ca": "key"}, "--ca {key}: holds a private key, not a certificate"),
    ({"ca": "missing"}, "--ca {missing}: No such file or directory"),
    ({"ca": "text"}, "--ca {text}: is not a PEM file"),
    ({"cert": "client_cert", "key": "key"}, "do not match"),
    ({"cert": "client_key", "key": "client_key"}, "holds a private key, not a"),
    ({"cert": "client_cert", "key": "client_cert"}, "holds a certificate, not a"),
    ({"cert": "client_cert", "key": "missing"}, "--key {missing}: No such file"),
    ({"cert": "text", "key": "client_key"}, "--cert {text}: is not a PEM file"),
    ({"cert": "client_cert", "key": "encrypted"}, "the key is encrypted"),
]


@pytest.mark.parametrize(("files", "problem"), CLIENT_MISTAKES)
def test_a_tls_client_with_a_bad_file_is_one_line(tls, files, problem):
    chosen = {option: str(tls[name]) for option, name in files.items()}
    with pytest.raises(TLSFileError) as refused:
        client_endpoint(
            MemoryReactor(),
            host="localhost",
            port=9527,
            connect="tls:localhost:9527",
            **chosen,
        )
    message = str(refused.value)
    assert "\n" not in message
    assert problem.format(**{k: str(v) for k, v in tls.items()}) in message


def test_good_files_are_taken(tls):
    certificate = check_certificate("--ca", str(tls["ca"]))
    assert certificate.subject
    pair = check_pair(
        "--cert", str(tls["client_cert"]), "--key", str(tls["client_key"])
    )
    assert pair.certificate.serial_number


def test_a_directory_is_not_a_pem_file(tmp_path):
    with pytest.raises(TLSFileError, match="is a directory, not a PEM file"):
        check_certificate(f"--ca {tmp_path}", str(tmp_path))


# The same through the real processes: what a user sees.


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--port", "ssl:0:privateKey={other_key}:certKey={cert}"], "do not match"),
        (
            [
                "--port",
                "ssl:0:privateKey={key}:certKey={cert}",
                "--tls-client-ca",
                "{key}",
            ],
            "holds a private key, not a certificate",
        ),
        (["--port", "ssl:0:privateKey={key}:certKey={missing}"], "No such file"),
        (["--port", "ssl:0:privateKey={text}:certKey={cert}"], "is not a PEM file"),
    ],
)
def test_twistd_with_a_bad_tls_file_says_one_line_and_exits_1(tls, args, problem):
    paths = {k: str(v) for k, v in tls.items()}
    done = run_twistd("--responder", "echo", *[a.format(**paths) for a in args])
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("sockchat: ")
    assert problem in line


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--ca", "{ca}", "--cert", "{client_cert}", "--key", "{key}"], "do not match"),
        (["--ca", "{key}"], "holds a private key, not a certificate"),
        (["--ca", "{missing}"], "No such file"),
        (["--ca", "{ca}", "--cert", "{text}", "--key", "{client_key}"], "not a PEM"),
    ],
)
def test_the_client_with_a_bad_tls_file_says_one_line_and_exits_1(tls, args, problem):
    paths = {k: str(v) for k, v in tls.items()}
    done = subprocess.run(
        [*CLIENT, "--connect", "tls:localhost:9", *[a.format(**paths) for a in args]],
        input=b"hi\n",
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 1
    (line,) = done.stderr.decode().splitlines()
    assert line.startswith("sockchat: ")
    assert problem in line
