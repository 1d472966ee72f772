"""What the terminal client says: pair-mode labels, half-typed text at the
end, and one-line advice for endpoint and TLS mistakes."""

from __future__ import annotations

import argparse
import io
import subprocess

import pytest
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.python.failure import Failure

from sockchat._core.wire import Notice, NoticeKind
from sockchat._doors.client import ConversationEnded, _describe_loss
from sockchat._doors.endpoints import client_endpoint
from sockchat.client import (
    _describe_target,
    _parser,
    _report_end,
    _Screen,
    _settle_target,
)

from certs import make_tls_files
from processes import CLIENT, Server


class Out:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def screen(typed: bytes = b"") -> tuple[_Screen, Out]:
    out = Out()
    return _Screen(out, io.StringIO(), True, lambda: typed), out


def test_once_paired_the_labels_name_the_partner():
    shown, out = screen()
    shown.prompt()
    assert out.data == b"client --> server: "
    shown.notice(Notice(NoticeKind.INFO, "paired", "you are talking with client 2."))
    assert out.data.endswith(b"\nclient --> partner: ")
    shown.prompting = False  # the user pressed Enter
    shown.answer("hello")
    assert out.data.endswith(b"partner --> client: hello\n")  # after the echoed Enter


def kicked() -> ConversationEnded:
    notice = Notice(NoticeKind.BYE, "kicked", "the operator ended this conversation.")
    return ConversationEnded("kicked", clean=True, notice=notice)


def test_text_typed_at_the_prompt_is_said_to_be_unsent():
    shown, out = screen(b"echo LEAKED")
    shown.prompt()
    assert _report_end(shown, kicked()) == 1
    assert out.data.decode() == (
        "client --> server: \n"
        "sockchat: the server ended the conversation: the operator ended this "
        "conversation.\n"
        '[sockchat] "echo LEAKED" was typed without Enter; it was not sent, and '
        "is discarded.\n"
    )


def test_text_typed_while_waiting_gets_a_fresh_line_first():
    shown, out = screen(b"rm -rf \x1b[2J")
    _report_end(shown, kicked())
    text = out.data.decode()
    assert text.startswith("\nsockchat: the server ended the conversation")
    assert '"rm -rf \\x1b[2J" was typed without Enter' in text  # shown safely


def test_nothing_typed_nothing_said():
    shown, out = screen(b"")
    _report_end(shown, kicked())
    assert b"typed without Enter" not in out.data
    assert not out.data.startswith(b"\n")


@pytest.mark.parametrize("connect", ["tcp:127.0.0.1", "tcp:[::1]:9527"])
def test_an_incomplete_connect_is_a_usage_line(connect):
    with pytest.raises(ValueError, match="is incomplete") as refused:
        client_endpoint(reactor, host="127.0.0.1", port=9527, connect=connect)
    message = str(refused.value)
    assert "\n" not in message
    assert "__init__" not in message
    assert message.startswith(
        f"--connect {connect!r} is incomplete: give tcp:HOST:PORT"
    )
    assert "--host ::1" in message


def test_escaped_ipv6_connect_is_understood():
    endpoint = client_endpoint(
        reactor, host="127.0.0.1", port=9527, connect="tcp:\\:\\:1:9527"
    )
    assert endpoint._host == "::1"


def ssl_failure(reason: str) -> Failure:
    return Failure(SSL.Error([("SSL routines", "", reason)]))


def test_tls_to_a_plain_port_says_to_use_tcp():
    assert _describe_loss(ssl_failure("wrong version number")) == (
        "the TLS handshake failed (wrong version number): that port does not "
        "speak TLS; connect with --connect tcp:HOST:PORT (or --host and --port)."
    )


def test_a_missing_client_certificate_says_to_pass_one():
    assert _describe_loss(ssl_failure("tlsv13 alert certificate required")) == (
        "the TLS handshake failed (tlsv13 alert certificate required): the server "
        "wants a client certificate; pass yours with --cert FILE --key FILE."
    )


# The same, from the real client against the real server.


def client(*args: str, typed: str = "hi\n") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLIENT, *args], input=typed, capture_output=True, text=True, timeout=30
    )


@pytest.mark.slow
def test_the_client_says_what_to_do_after_tls_mistakes(tmp_path):
    tls = make_tls_files(tmp_path)
    with Server("--responder", "echo") as plain:
        wrong = client(
            "--connect", f"tls:localhost:{plain.port}", "--ca", str(tls["ca"])
        )
        incomplete = client("--connect", "tcp:127.0.0.1")
    listen = f"ssl:0:interface=127.0.0.1:privateKey={tls['key']}:certKey={tls['cert']}"
    with Server(
        "--responder", "echo", "--tls-client-ca", str(tls["ca"]), port=listen
    ) as mutual:
        no_cert = client(
            "--connect", f"tls:localhost:{mutual.port}", "--ca", str(tls["ca"])
        )
        # Raw framing speaks first: the TLS server closes at once, once it
        # has a record's header (5 bytes) that is not TLS.  ("hi" is too
        # short for one: the server would wait for its handshake deadline,
        # 10 s, and close then, which the client reports the same way.)
        plain = client("--port", str(mutual.port), "--framing", "raw", typed="hello\n")
    assert plain.returncode == 1
    assert plain.stderr.splitlines() == [
        "sockchat: the server closed the connection before sending a single "
        "byte, as a TLS server does when the client does not speak TLS: if that "
        "port speaks TLS, connect with --connect tls:HOST:PORT."
    ]
    assert wrong.returncode == no_cert.returncode == incomplete.returncode == 1
    (line,) = wrong.stderr.splitlines()
    assert line.endswith(
        "that port does not speak TLS; connect with --connect "
        "tcp:HOST:PORT (or --host and --port)."
    )
    (line,) = no_cert.stderr.splitlines()
    assert line.endswith("pass yours with --cert FILE --key FILE.")
    (line,) = incomplete.stderr.splitlines()
    assert line.startswith("sockchat: --connect 'tcp:127.0.0.1' is incomplete")


def has_ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1) here")
def test_the_documented_ways_to_reach_ipv6_work():
    with Server("--responder", "echo", port="tcp6:0:interface=\\:\\:1") as server:
        port = str(server.port)
        for args in (
            ["--host", "::1", "--port", port],
            ["--host", "[::1]", "--port", port],
            ["--connect", f"tcp:\\:\\:1:{port}"],
        ):
            done = client(*args)
            assert (done.returncode, done.stdout, done.stderr) == (0, "hi\n", ""), args


def settled(*argv: str) -> tuple[argparse.Namespace, list[str]]:
    warned: list[str] = []
    args = _parser().parse_args(argv)
    _settle_target(args, warned.append)
    return args, warned


def test_port_and_host_with_connect_are_said_to_be_ignored():
    _, warned = settled("--connect", "tcp:127.0.0.1:9000", "--port", "9001")
    assert warned == [
        "sockchat: --port 9001 ignored: --connect tcp:127.0.0.1:9000 says where "
        "to connect (put the host and port in it, e.g. tcp:HOST:PORT)"
    ]
    _, warned = settled("--host", "::1", "--port", "1", "--connect", "unix:path=x")
    assert warned[0].startswith("sockchat: --host ::1 and --port 1 ignored: ")
    _, warned = settled("--connect", "tcp:127.0.0.1:9000")
    assert warned == []
    args, warned = settled("--port", "9001")
    assert (args.host, args.port, warned) == ("127.0.0.1", 9001, [])


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["--host", "::1", "--port", "19599"], "[::1]:19599"),
        (["--host", "[::1]", "--port", "19599"], "[::1]:19599"),
        (["--host", "fe80::1%eth0"], "[fe80::1%eth0]:9527"),
        (["--port", "19599"], "127.0.0.1:19599"),
        (["--host", "example.org"], "example.org:9527"),
    ],
)
def test_an_ipv6_target_is_written_in_brackets(argv, shown):
    args, _ = settled(*argv)
    assert _describe_target(args) == shown


@pytest.mark.slow
def test_the_client_warns_of_an_ignored_port_and_still_connects():
    with Server("--responder", "echo") as server:
        done = client("--connect", f"tcp:127.0.0.1:{server.port}", "--port", "1")
    assert (done.returncode, done.stdout) == (0, "hi\n")
    assert done.stderr.splitlines() == [
        f"sockchat: --port 1 ignored: --connect tcp:127.0.0.1:{server.port} says "
        "where to connect (put the host and port in it, e.g. tcp:HOST:PORT)"
    ]


@pytest.mark.slow
@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1) here")
def test_a_refused_ipv6_connection_names_the_peer_in_brackets():
    import socket

    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]  # bound, not listening: refused
        done = client("--host", "::1", "--port", str(port))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"sockchat: cannot connect to [::1]:{port}: connection refused (is the "
        "server running, on this port?)"
    ]
