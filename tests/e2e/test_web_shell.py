"""``twistd sockchat --web``: the option, its errors, and both doors at once."""

from __future__ import annotations

import contextlib
import resource
import socket
import time

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from sockchat.tap import Options

from processes import Server, WebServer, recv_lines, run_twistd


def parsed(*args: str) -> Options:
    options = Options()
    options.parseOptions(["--responder", "echo", *args])
    return options


def test_a_bare_web_port_listens_on_loopback_only():
    assert parsed("--web", "8080")["web_endpoint"].startswith(
        "tcp:8080:interface=127.0.0.1"
    )
    assert parsed("--web", "tcp:8080")["web_endpoint"] == "tcp:8080"
    assert parsed()["web_endpoint"] is None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("70000", "sockchat: --web 70000 is not a port number (0 to 65535)"),
        (
            "nonsense:1",
            "sockchat: --web 'nonsense:1' is neither a port number nor a server "
            "endpoint description (Unknown endpoint type: 'nonsense')",
        ),
    ],
)
def test_bad_web_values_get_one_line(value, message):
    done = run_twistd("--responder", "echo", "--port", "0", "--web", value)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [message]


@pytest.mark.slow
def test_web_with_raw_framing_gets_one_line():
    done = run_twistd(
        "--responder", "echo", "--port", "0", "--web", "0", "--framing", "raw"
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "sockchat: --web needs --framing line: the page sends and shows lines; "
        "serve raw framing and the page from two servers"
    ]


@pytest.mark.slow
def test_a_busy_web_port_gets_one_line():
    with Server("--responder", "echo") as server:
        done = run_twistd(
            "--responder", "echo", "--port", "0", "--web", str(server.port)
        )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"sockchat: cannot listen on tcp:{server.port}:interface=127.0.0.1: the "
        "address is already in use (is another server running? choose another "
        "--web)"
    ]


class WebSocketClient:
    """A blocking wsproto client over a real socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.ws = WSConnection(ConnectionType.CLIENT)
        origin = [(b"origin", f"http://127.0.0.1:{port}".encode())]
        self.sock.sendall(
            self.ws.send(
                Request(host=f"127.0.0.1:{port}", target="/chat", extra_headers=origin)
            )
        )
        self.events: list[object] = []

    def next_text(self) -> str:
        while True:
            for i, event in enumerate(self.events):
                if isinstance(event, TextMessage):
                    del self.events[: i + 1]
                    return event.data
                if isinstance(event, CloseConnection):
                    raise AssertionError(f"closed with {event.code}")
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            self.ws.receive_data(data)
            self.events.extend(
                e for e in self.ws.events() if not isinstance(e, AcceptConnection)
            )

    def say(self, text: str) -> None:
        self.sock.sendall(self.ws.send(TextMessage(text)))

    def close(self) -> None:
        self.sock.close()


@pytest.mark.slow
def test_tcp_and_web_conversations_share_one_server():
    with WebServer("--responder", "echo", "--max-clients", "2") as server:
        with socket.create_connection(("127.0.0.1", server.port), 10) as tcp:
            (welcome,) = recv_lines(tcp, 1)
            assert welcome.startswith(b"!info welcome: sockchat conversation 1.")
            web = WebSocketClient(server.web_port)
            try:
                assert web.next_text().startswith(
                    "!info welcome: sockchat conversation 2."
                )
                web.say("来自浏览器")
                assert web.next_text() == "来自浏览器"
                tcp.sendall("来自终端\n".encode())
                assert recv_lines(tcp, 1) == ["来自终端".encode()]
                # A third client, through either door, is over --max-clients;
                # on the web door it is refused at its accept, in plain text.
                with socket.create_connection(
                    ("127.0.0.1", server.web_port), 10
                ) as third:
                    response = b""
                    while chunk := third.recv(4096):
                        response += chunk
                assert response.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
                assert response.endswith(
                    b"\r\n\r\nsockchat: the server is full (2 clients); try "
                    b"again later.\n"
                )
            finally:
                web.close()
        server.read_until(b"conversation 2 with 127.0.0.1")


@pytest.mark.slow
def test_trickling_web_requests_leave_room_for_honest_tcp_clients():
    """The issue's scale model: a file limit of 256 (for 1,024), and 300
    unfinished requests from one address, each trickling a byte every 0.5 s.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # twistd inherits it
    try:
        # Loopback is the operator's own machine, uncapped unless asked:
        # --cap-loopback makes 127.0.0.1 stand for one remote address.
        server = WebServer("--responder", "echo", "--cap-loopback").__enter__()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    attackers: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", server.web_port), 10)
            sock.setblocking(False)
            attackers.append(sock)
        for byte in b"GET /":
            for sock in attackers:
                with contextlib.suppress(OSError):  # refused and closed
                    sock.send(bytes([byte]))
            time.sleep(0.5)
        # Honest clients, from another address, still get their welcome.
        for _ in range(5):
            with socket.create_connection(
                ("127.0.0.1", server.port), 10, source_address=("127.0.0.2", 0)
            ) as tcp:
                (welcome,) = recv_lines(tcp, 1)
                assert welcome.startswith(b"!info welcome: sockchat conversation ")
        held = 0
        for sock in attackers:
            try:
                sock.recv(4096)  # the 503, or the close
            except BlockingIOError:
                held += 1  # nothing from the server yet: still held
            except OSError:
                continue  # reset: closed
        assert held <= 20
    finally:
        for sock in attackers:
            sock.close()
        server.__exit__()
