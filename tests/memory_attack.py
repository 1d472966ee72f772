"""One memory attack against a real server, measured with tracemalloc.

    python tests/memory_attack.py ATTACK MAX_OUTPUT

Runs a sockchat echo server (TCP and web doors) on loopback in this
process, attacks it from a thread with a blocking socket that never reads,
and prints one line of JSON: the bytes sent and how much the server's
Python memory grew while the attacker held on.  ``tests/e2e/test_memory.py``
runs it once per attack, each in a fresh process.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import tracemalloc

SEND_LIMIT = 48 * 1024 * 1024  # the attacks sent 40-48 MB
QUIET = 1.5  # seconds of blocked sending that mean: the server stopped reading

CHUNKS = {
    "empty-lines": b"\n" * 65536,
    "two-byte-lines": b"a\n" * 32768,
    "telnet": b"\xff\xfd\x01" * 21845,
    "pings": bytes([0x89, 0x80, 1, 2, 3, 4]) * 10922,  # masked, empty pings
}


def attack(kind: str, port: int, web_port: int, result: dict[str, float]) -> None:
    target = web_port if kind == "pings" else port
    sock = socket.create_connection(("127.0.0.1", target))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read
    if kind == "pings":
        sock.sendall(
            b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n" % target
        )
        response = b""
        while b"\r\n\r\n" not in response:  # as a browser, wait for the 101
            response += sock.recv(1)
        assert response.startswith(b"HTTP/1.1 101 "), response
    chunk = memoryview(CHUNKS[kind])
    sent = at = 0
    sock.settimeout(QUIET)
    deadline = time.monotonic() + 60
    try:
        while sent < SEND_LIMIT and time.monotonic() < deadline:
            done = sock.send(chunk[at:])  # frames stay whole across sends
            sent += done
            at = (at + done) % len(chunk)
    except TimeoutError:
        pass  # the server stopped reading us: the attack is held off
    except OSError as e:  # the server closed on us: say so, do not hang
        result["closed"] = str(e)
    result["sent"] = sent
    result["done"] = 1
    time.sleep(0.5)  # let the server settle, still connected
    result["measure"] = 1
    while "measured" not in result:
        time.sleep(0.05)
    sock.close()


def main(kind: str, max_output: int) -> None:
    try:  # coverage's tracer allocates too: it is not the server's memory
        import coverage

        running = coverage.Coverage.current()
        if running is not None:
            running.stop()
    except ImportError:
        pass
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from sockchat import ChatServerFactory, EchoResponder, chat_site
    from sockchat._core.limits import Admission

    factory = ChatServerFactory(
        EchoResponder(), max_output=max_output, admission=Admission()
    )
    ports: list[int] = []

    def listening(port: object) -> None:
        # Small kernel buffers (accepted sockets inherit them): the attack
        # reaches the server's own buffers after kilobytes, not megabytes.
        port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)  # type: ignore[attr-defined]
        port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # type: ignore[attr-defined]
        ports.append(port.getHost().port)  # type: ignore[attr-defined]

    TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory).addCallback(
        listening
    )
    TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        chat_site(factory)
    ).addCallback(listening)
    result: dict[str, float] = {}

    def start() -> None:
        tracemalloc.start()
        result["before"] = tracemalloc.get_traced_memory()[0]
        threading.Thread(
            target=attack, args=(kind, ports[0], ports[1], result), daemon=True
        ).start()
        reactor.callLater(0.05, check)

    def check() -> None:
        if "measure" in result:
            result["grew"] = tracemalloc.get_traced_memory()[0] - result["before"]
            result["peak"] = tracemalloc.get_traced_memory()[1] - result["before"]
            result["measured"] = 1
            reactor.callLater(0.2, reactor.stop)
            return
        reactor.callLater(0.05, check)

    reactor.callWhenRunning(start)
    reactor.run()
    print(
        json.dumps(
            {
                "attack": kind,
                "sent": result["sent"],
                "grew": result["grew"],
                "peak": result["peak"],
                "closed": result.get("closed"),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
