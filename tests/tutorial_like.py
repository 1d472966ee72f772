"""Stand-ins for the socket tutorial's client and server, written for the tests.

They behave as the tutorial's programs do: a blocking socket, each message
sent bare (UTF-8, no newline) with one ``send``, each one read with one
``recv(1024)``, the prompts ``client --> server:`` and ``server --> client:``
typed at with ``input()``, what arrives shown with ``print()``, and ``q`` to
quit.  Unlike the tutorial's, they take the port as an argument.

    python tests/tutorial_like.py client PORT
    python tests/tutorial_like.py server PORT    (prints "listening on PORT")
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable

Ask = Callable[[str], str]
Show = Callable[[str], object]


def client(
    port: int, ask: Ask = input, show: Show = print, timeout: float | None = None
) -> None:
    sock = socket.socket()
    sock.settimeout(timeout)  # None, as in the tutorial; tests set one
    sock.connect(("127.0.0.1", port))
    while True:
        message = ask("client --> server:")
        sock.send(message.encode("utf8"))
        if message == "q":
            break
        show(sock.recv(1024).decode("utf8"))
    sock.close()


def listen(port: int = 0) -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", port))
    server.listen(5)
    return server


def serve_one(
    server: socket.socket,
    ask: Ask = input,
    show: Show = print,
    timeout: float | None = None,
) -> None:
    server.settimeout(timeout)
    conn, addr = server.accept()
    conn.settimeout(timeout)
    show(str(addr))
    while True:
        data = conn.recv(1024).decode("utf8")
        show(data)
        if data == "q":
            break
        conn.send(ask("server --> client:").encode("utf8"))
    conn.close()


if __name__ == "__main__":
    role, number = sys.argv[1], int(sys.argv[2])
    if role == "client":
        client(number)
    else:
        listening = listen(number)
        print(f"listening on {listening.getsockname()[1]}", flush=True)
        serve_one(listening)
