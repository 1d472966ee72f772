"""The socket tutorial's way of talking, against sockchat, over loopback.

``tutorial_like`` behaves as the tutorial's client and server do (blocking
socket, bare sends, ``recv(1024)``, ``q``).  They run in threads, so the
reactor never blocks; the slow tests run them as processes at a terminal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from sockchat import (
    ChatServerFactory,
    ConversationInfo,
    EchoResponder,
    IResponder,
    RawFraming,
    connect,
)

import tutorial_like
from processes import CLIENT, Server, Terminal

HERE = Path(__file__).resolve().parents[1]
TUTORIAL_LIKE = [sys.executable, str(HERE / "tutorial_like.py")]


@implementer(IResponder)
class SlowShout:
    """Answers a little later, in capitals: turn-taking with a real wait."""

    def respond(self, conversation: ConversationInfo, text: str) -> Deferred[str]:
        return deferLater(reactor, 0.05, text.upper)


async def raw_server(responder: IResponder):
    factory = ChatServerFactory(responder, framing=RawFraming())
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    return factory, port


async def all_closed(factory: ChatServerFactory) -> None:
    for _ in range(100):
        if not factory.conversations:
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"still open: {factory.conversations}")


@pytest.mark.parametrize("responder", [EchoResponder(), SlowShout()])
@pytest_twisted.ensureDeferred
async def test_tutorial_client_holds_a_conversation_with_a_raw_server(responder):
    factory, port = await raw_server(responder)
    typed = iter(["hello", "你好", "!bye quit: just text", "q"])
    shown: list[str] = []
    try:
        await deferToThread(
            tutorial_like.client,
            port.getHost().port,
            lambda prompt: next(typed),
            shown.append,
            timeout=10,
        )
        await all_closed(factory)
    finally:
        await port.stopListening()
    said = ["hello", "你好", "!bye quit: just text"]
    if isinstance(responder, SlowShout):
        said = [text.upper() for text in said]
    assert shown == said  # each recv(1024) got exactly one answer


@pytest_twisted.ensureDeferred
async def test_sockchat_client_holds_a_conversation_with_a_tutorial_server():
    listening = tutorial_like.listen()
    answers = iter(["hi", "你也好", "!error looks like a notice"])
    shown: list[str] = []
    serving = deferToThread(
        tutorial_like.serve_one,
        listening,
        lambda prompt: next(answers),
        shown.append,
        timeout=10,
    )
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", listening.getsockname()[1])
        conversation = await connect(reactor, endpoint, framing=RawFraming())
        assert await conversation.say("hello") == "hi"
        assert await conversation.say("你好") == "你也好"
        assert await conversation.say("more") == "!error looks like a notice"
        end = await conversation.quit()
        assert end.clean
        await serving
    finally:
        listening.close()
    assert shown[1:] == ["hello", "你好", "more", "q"]  # each recv got one message


@pytest_twisted.ensureDeferred
async def test_a_bad_message_gets_a_clear_answer_not_silence():
    """A tutorial client never waits forever: errors come as the answer."""
    factory, port = await raw_server(EchoResponder())
    shown: list[str] = []

    def client() -> None:
        import socket

        sock = socket.create_connection(("127.0.0.1", port.getHost().port), 10)
        sock.send(b"\xff\xfe")  # not UTF-8
        shown.append(sock.recv(1024).decode("utf8"))
        sock.send("好".encode()[:2])  # a character split across two sends
        sock.send("好".encode()[2:])
        shown.append(sock.recv(1024).decode("utf8"))
        sock.send(b"q")
        sock.close()

    try:
        await deferToThread(client)
        await all_closed(factory)
    finally:
        await port.stopListening()
    assert shown[0].startswith("!error invalid-utf8: line 1 was refused")
    assert shown[0].endswith("It is your turn again.")
    assert shown[1] == "好"


# At a terminal, as a person types.


@pytest.mark.slow
def test_tutorial_client_at_a_terminal_against_twistd_raw_with_the_console():
    with Server(
        "--framing", "raw", "--responder", "console", stdin=subprocess.PIPE
    ) as server:
        term = Terminal(*TUTORIAL_LIKE, "client", str(server.port))
        try:
            term.screen.until(b"client --> server:")
            for question, answer in [("hello", "hi there"), ("你好", "你也好")]:
                term.type(question + "\n")
                server.read_until(b"server --> client 1: ")
                server.proc.stdin.write(answer.encode() + b"\n")
                server.proc.stdin.flush()
                # Exactly the answer: no greeting, no newline of the server's.
                seen = term.screen.until(b"client --> server:")
                assert seen == f"{question}\r\n{answer}\r\nclient --> server:".encode()
            term.type("q\n")
        finally:
            assert term.close() == 0
            os.close(term.slave)
        server.read_until(b"ended after 2 turn(s)")


@pytest.mark.slow
def test_sockchat_client_at_a_terminal_against_a_tutorial_server_at_a_terminal():
    operator = Terminal(*TUTORIAL_LIKE, "server", "0")
    try:
        listening = operator.screen.until(b"listening on ")
        port = operator.screen.until(b"\r\n").strip().decode()
        assert listening
        person = Terminal(*CLIENT, "--framing", "raw", "--port", port)
        try:
            for question, answer in [("hello", "hi"), ("你好", "你也好")]:
                person.screen.until(b"client --> server: ")
                person.type(question + "\n")
                operator.screen.until(f"{question}\r\nserver --> client:".encode())
                operator.type(answer + "\n")
                person.screen.until(f"server --> client: {answer}\r\n".encode())
            person.screen.until(b"client --> server: ")
            person.type("q\n")
            person.screen.until(b"[sockchat] you quit.")
        finally:
            assert person.close() == 0
            os.close(person.slave)
        operator.screen.until(b"q\r\n")
    finally:
        assert operator.close() == 0
        os.close(operator.slave)


@pytest.mark.slow
def test_sockchat_client_piped_against_a_tutorial_server():
    operator = subprocess.Popen(
        [*TUTORIAL_LIKE, "server", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert operator.stdout is not None
        port = operator.stdout.readline().split()[-1].decode()  # listening on N
        assert operator.stdin is not None
        operator.stdin.write("hi\n你也好\n".encode())
        operator.stdin.flush()
        done = subprocess.run(
            [*CLIENT, "--framing", "raw", "--port", port],
            input="hello\n你好\n".encode(),
            capture_output=True,
            timeout=20,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == "hi\n你也好\n".encode()
        assert operator.wait(10) == 0
    finally:
        if operator.poll() is None:
            operator.kill()
            operator.wait()
        for pipe in (operator.stdin, operator.stdout):
            if pipe is not None:
                pipe.close()
