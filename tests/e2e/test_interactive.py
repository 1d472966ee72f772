"""The client at a real terminal (a pseudo-terminal), as a person uses it."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from processes import CLIENT, Server, Terminal

pytestmark = pytest.mark.slow


def test_interactive_chat_prompts_answers_and_quits():
    with Server("--responder", "echo") as server:
        term = Terminal(*CLIENT, "--port", str(server.port))
        try:
            assert b"[sockchat info] sockchat conversation 1" in term.screen.until(
                b"q to quit.\r\n"
            )
            term.screen.until(b"client --> server: ")
            term.type("hello \x1b[31m\n")
            term.screen.until(b"server --> client: hello \\x1b[31m\r\n")
            term.screen.until(b"client --> server: ")
            term.type("q\n")
            term.screen.until(b"[sockchat] you quit.")
        finally:
            assert term.close() == 0
        # Twisted made stdin non-blocking; the client must put it back, or
        # the shell's next command would fail with EAGAIN.
        assert os.get_blocking(term.slave)
        os.close(term.slave)


def test_q_while_waiting_quits_at_once():
    with Server("--responder", "console", stdin=subprocess.PIPE) as server:
        term = Terminal(*CLIENT, "--port", str(server.port))
        try:
            term.screen.until(b"client --> server: ")
            term.type("anyone there?\n")
            server.read_until(b"server --> client 1: ")
            time.sleep(0.2)
            term.type("q\n")
            term.screen.until(b"[sockchat] you quit.")
            server.read_until(b'left; its line "anyone there?" goes unanswered.')
        finally:
            assert term.close() == 0
            os.close(term.slave)


def test_a_line_typed_while_waiting_is_refused_with_a_word():
    with Server("--responder", "console", stdin=subprocess.PIPE) as server:
        term = Terminal(*CLIENT, "--port", str(server.port))
        try:
            term.screen.until(b"client --> server: ")
            term.type("first\n")
            server.read_until(b"server --> client 1: ")
            term.type("typed too soon\n")
            term.screen.until(
                b'[sockchat] still waiting for the answer to your last line; "typed '
                b'too soon" was not sent.'
            )
            server.proc.stdin.write(b"answer\n")
            server.proc.stdin.flush()
            term.screen.until(b"server --> client: answer\r\nclient --> server: ")
            term.type("q\n")
            term.screen.until(b"[sockchat] you quit.")
        finally:
            assert term.close() == 0
            os.close(term.slave)
        assert b"typed too soon" not in server.output


def test_ctrl_c_while_waiting_quits_cleanly():
    with Server("--responder", "console", stdin=subprocess.PIPE) as server:
        term = Terminal(*CLIENT, "--port", str(server.port))
        try:
            term.screen.until(b"client --> server: ")
            term.type("hello\n")
            server.read_until(b"server --> client 1: ")
            term.proc.send_signal(signal.SIGINT)  # Ctrl-C
            term.screen.until(b"[sockchat] you quit.")
            server.read_until(b"with 127.0.0.1")
        finally:
            assert term.close() == 0
            os.close(term.slave)


def test_pair_partner_at_a_terminal_listens_then_is_told_who_left():
    with Server("--responder", "pair") as server:
        first = Terminal(*CLIENT, "--port", str(server.port))
        second = None
        try:
            first.screen.until(b"no partner yet")
            first.screen.until(b"client --> server: ")
            first.type("hello from the first terminal\n")
            second = Terminal(*CLIENT, "--port", str(server.port))
            second.screen.until(b"The other side speaks first")
            # In pair mode the labels name the partner, not a server.
            second.screen.until(
                b"partner --> client: hello from the first terminal\r\n"
            )
            second.screen.until(b"client --> partner: ")
            second.type("hi back\n")
            first.screen.until(b"partner --> client: hi back\r\n")
            first.screen.until(b"client --> partner: ")  # the first has the turn
            second.type("q\n")
            assert second.close() == 0
            shown = first.screen.until(b"Connect again to talk with someone new.\r\n")
            assert b"client 2 (127.0.0.1:" in shown
            assert b"sent q" in shown
            assert first.proc.wait(10) == 0
            # No prompt after the conversation is over.
            time.sleep(0.2)
            tail = first.screen.buffer + (first.screen.stream.read() or b"")
            assert b"client --> " not in tail
            first.close()
        finally:
            for term in (first, second):
                if term is not None and term.proc.poll() is None:
                    term.proc.kill()
