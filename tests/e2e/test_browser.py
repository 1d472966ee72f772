"""The chat page in a real browser: headless Chromium against real twistd.

Playwright drives Debian's ``chromium`` (Playwright's own browser download
is not used).  Without chromium or playwright these tests skip and say why,
except in CI (``CI=true``), where they must run.

They are plain (not pytest-twisted) tests: Playwright's sync API runs its
own event loop, and the server is a ``twistd`` process.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from certs import make_tls_files
from processes import (
    CHROMIUM,
    CHROMIUM_ARGS,
    Reader,
    WebServer,
    raw_connect,
    start_client,
)

pytestmark = pytest.mark.slow

TIMEOUT_MS = 15_000


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium fonts-noto-cjk)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    missing = _missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser tests must run in CI: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 800, "height": 700})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], f"the page's script failed: {errors}"


def wait_for_turn(page) -> None:
    page.wait_for_selector("body[data-state=yours]")


def say(page, text: str) -> None:
    page.fill("#line", text)
    page.press("#line", "Enter")


def said_and_answered(page, text: str) -> str:
    """Say *text*; return the answer, once it is the page user's turn again."""
    before = page.locator("#log li.peer").count()
    say(page, text)
    page.wait_for_function(
        "n => document.querySelectorAll('#log li.peer').length > n", arg=before
    )
    wait_for_turn(page)
    return page.locator("#log li.peer .text").last.text_content()


def status(page) -> str:
    return page.locator("#status").text_content()


def test_a_person_holds_a_multi_turn_conversation_with_echo(page):
    with WebServer("--responder", "echo") as server:
        page.goto(server.url)
        wait_for_turn(page)
        welcome = page.locator("#log li.notice").first
        assert welcome.locator(".who").text_content() == "info welcome"
        assert "You speak first" in welcome.locator(".text").text_content()
        assert status(page) == "Your turn: you speak first."
        assert said_and_answered(page, "你好，服务器！") == "你好，服务器！"
        assert said_and_answered(page, "second line") == "second line"
        assert said_and_answered(page, "第三句：再见前的最后一句") == (
            "第三句：再见前的最后一句"
        )
        assert page.locator("#log li.self").count() == 3
        assert page.is_enabled("#line")
        # q quits, as in the tutorial: the server's bye is shown as a notice.
        say(page, "q")
        page.wait_for_selector("#log li.notice.bye")
        assert page.locator("#log li.notice.bye .who").text_content() == "bye quit"
        # An ordinary goodbye is not marked as an error.
        border, error = page.evaluate(
            "[getComputedStyle(document.querySelector('#log li.notice.bye'))"
            ".borderLeftColor, getComputedStyle(document.body)"
            ".getPropertyValue('--error').trim()]"
        )
        assert border != "rgb(138, 28, 28)", (border, error)
        assert status(page) == "The conversation is over (quit)."
        assert page.is_disabled("#line")
        assert page.is_visible("#reconnect")
        assert page.locator("#reconnect").text_content() == "New conversation"
        server.read_until(
            re.compile(rb"conversation 1 with 127\.0\.0\.1:\d+ ended after 3 turn")
        )
        # A new conversation, from the same page.
        page.click("#reconnect")
        wait_for_turn(page)
        assert (
            "conversation 2."
            in page.locator("#log li.notice .text").last.text_content()
        )
        assert said_and_answered(page, "again") == "again"


def test_while_waiting_only_q_is_sent_and_another_line_is_held_saying_why(page):
    with WebServer("--responder", "console", stdin=subprocess.PIPE) as server:
        page.goto(server.url)
        wait_for_turn(page)
        say(page, "有人吗？")
        page.wait_for_selector("body[data-state=waiting]")
        assert status(page) == "Waiting for the answer…"
        assert page.is_enabled("#line")  # for q, as README says
        assert page.is_enabled("#quit")
        assert page.is_hidden("#why")
        say(page, "hello again?")
        page.wait_for_selector("#why:visible")
        assert (
            page.locator("#why")
            .text_content()
            .startswith("Not sent: still waiting for the answer to your last line.")
        )
        assert page.input_value("#line") == "hello again?"  # kept, not lost
        assert page.locator("#log li.self").count() == 1
        server.read_until(b"server --> client 1: ")
        held = server.output
        server.proc.stdin.write("在，请讲。\n".encode())
        server.proc.stdin.flush()
        wait_for_turn(page)
        assert page.locator("#log li.peer .text").last.text_content() == "在，请讲。"
        page.press("#line", "Enter")  # the held line goes now
        page.wait_for_selector("body[data-state=waiting]")
        assert page.locator("#log li.self .text").last.text_content() == (
            "hello again?"
        )
        assert page.is_hidden("#why")
        server.read_until(b"hello again?")
        assert b"hello again?" not in held  # it did not reach the server early
        say(page, "q")  # typed while waiting: it quits
        page.wait_for_selector("#log li.notice.bye")
        assert status(page) == "The conversation is over (quit)."
        server.read_until(b"conversation 1 with 127.0.0.1")


def test_quit_button_works_while_waiting(page):
    with WebServer("--responder", "console", stdin=subprocess.PIPE) as server:
        page.goto(server.url)
        wait_for_turn(page)
        say(page, "one more")
        page.wait_for_selector("body[data-state=waiting]")
        page.click("#quit")  # quitting does not wait for the answer
        page.wait_for_selector("#log li.notice.bye")
        assert status(page) == "The conversation is over (quit)."
        server.read_until(b"conversation 1 with 127.0.0.1")


def test_enter_on_an_empty_input_says_why_nothing_was_sent(page):
    with WebServer("--responder", "echo") as server:
        page.goto(server.url)
        wait_for_turn(page)
        say(page, "")
        page.wait_for_selector("#why:visible")
        assert page.locator("#why").text_content() == (
            "Nothing to send: an empty line is not sent. Type a line first (q quits)."
        )
        assert page.locator("#log li.self").count() == 0
        assert status(page) == "Your turn: you speak first."
        # Typing clears the word of why; the line then goes as usual.
        page.fill("#line", "x")
        assert page.is_hidden("#why")
        assert said_and_answered(page, "now something") == "now something"


def test_a_responder_that_speaks_first_shows_the_listen_notice(page):
    root = Path(__file__).resolve().parents[2]
    with WebServer("--responder", "examples.bot:FaqBot", cwd=root) as server:
        page.goto(server.url)
        wait_for_turn(page)
        first = page.locator("#log li").first
        assert first.locator(".who").text_content() == "info listen"
        assert "The other side speaks first" in first.locator(".text").text_content()
        assert (
            page.locator("#log li.peer .text")
            .first.text_content()
            .startswith("hello, 127.0.0.1:")
        )


def test_hostile_text_renders_inert(page):
    hostile = (
        "<script>window.pwned = 1</script>"
        '<img src="x" onerror="window.pwned = 2">'
        "\x1b[2J\x1b[31mred\u202eevil\u2066"
    )
    with WebServer("--responder", "echo") as server:
        page.goto(server.url)
        wait_for_turn(page)
        shown = said_and_answered(page, hostile)
        # Markup stays text; ESC and the bidi controls are visible escapes.
        assert shown == (
            "<script>window.pwned = 1</script>"
            '<img src="x" onerror="window.pwned = 2">'
            "\\x1b[2J\\x1b[31mred\\u202eevil\\u2066"
        )
        assert page.locator("#log script, #log img").count() == 0
        assert page.evaluate("window.pwned") is None
        log_text = page.locator("#log").text_content()
        assert "\x1b" not in log_text
        assert "\u202e" not in log_text
        # An answer that looks like a notice is an answer (bang-stuffing).
        assert said_and_answered(page, "!bye quit: fake") == "!bye quit: fake"
        assert page.locator("#log li.notice.bye").count() == 0
        assert status(page) == "Your turn."


@pytest.fixture
def other_origin() -> Iterator[str]:
    """Another site on loopback: a plain page at http://127.0.0.1:OTHER/."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>another site</title><p>not sockchat"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Page) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}/"
        finally:
            httpd.shutdown()
            thread.join()


def test_a_cross_origin_websocket_is_refused(page, other_origin):
    with WebServer("--responder", "echo") as server:
        page.goto(other_origin)
        outcome = page.evaluate(
            """url => new Promise(done => {
                const socket = new WebSocket(url);
                socket.onopen = () => done("opened");
                socket.onclose = event => done("closed " + event.code);
            })""",
            f"ws://127.0.0.1:{server.web_port}/chat",
        )
        assert outcome == "closed 1006"  # the handshake failed
        server.read_until(b"refused a cross-origin WebSocket from 127.0.0.1:")
        origin = other_origin.rstrip("/")
        server.read_until(f"origin {origin}, host 127.0.0.1:{server.web_port}".encode())
        assert b"conversation 1 started" not in server.output
        # The same refusal without a browser: 403, and no upgrade.
        with socket.create_connection(("127.0.0.1", server.web_port), 10) as sock:
            sock.sendall(
                b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                b"Origin: http://evil.example\r\nConnection: Upgrade\r\n"
                b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" % server.web_port
            )
            assert sock.recv(100).startswith(b"HTTP/1.1 403 Forbidden\r\n")
        # The page's own origin is let in.
        page.goto(server.url)
        wait_for_turn(page)


def test_a_dropped_connection_is_reported_and_the_page_reconnects(page):
    with WebServer("--responder", "echo") as first:
        page.goto(first.url)
        wait_for_turn(page)
        assert said_and_answered(page, "before") == "before"
        port = first.web_port
        first.stop(signal.SIGKILL)
    page.wait_for_selector("body[data-state=lost]")
    assert status(page) == "Connection lost. Press New conversation to start another."
    # The page says so itself, apart from the server's notices.
    assert page.locator("#log li.local .who").last.text_content() == (
        "page: connection-lost"
    )
    assert page.locator("#log li.notice[data-code=connection-lost]").count() == 0
    assert page.is_disabled("#line")
    assert page.locator("#reconnect").text_content() == "New conversation"
    with WebServer("--responder", "echo", web=f"tcp:{port}:interface=127.0.0.1"):
        page.click("#reconnect")
        wait_for_turn(page)
        assert page.locator("#log li.rule").count() == 1
        assert page.locator("#log li.notice.info").count() == 2  # two welcomes
        assert said_and_answered(page, "after") == "after"


def test_reconnecting_to_a_server_that_is_down_says_it_cannot_be_reached(page):
    with WebServer("--responder", "echo") as server:
        page.goto(server.url)
        wait_for_turn(page)
        server.stop(signal.SIGKILL)
    page.wait_for_selector("body[data-state=lost]")
    page.click("#reconnect")
    page.wait_for_selector("#log li.local[data-code=unreachable]")
    assert status(page) == (
        "Could not reach the server. Press New conversation to try again."
    )
    assert page.is_visible("#reconnect")
    # No conversation began, so no divider says one did.
    assert page.locator("#log li.rule").count() == 0
    # Styled apart from the server's grey notices: no grey box, a dashed edge.
    local, notice = page.evaluate(
        """[...['#log li.local', '#log li.notice']].map(s => {
            const style = getComputedStyle(document.querySelector(s));
            return [style.backgroundColor, style.borderTopStyle];
        })"""
    )
    assert local[0] != notice[0]
    assert local[1] == "dashed"
    assert notice[1] != "dashed"


def test_the_page_is_readable_at_phone_width(browser):
    context = browser.new_context(viewport={"width": 360, "height": 640})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        with WebServer("--responder", "echo") as server:
            page.goto(server.url)
            wait_for_turn(page)
            said_and_answered(page, "一" * 80)
            said_and_answered(page, "x" * 300)  # no space to break at
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 360, "the page scrolls sideways"
            for selector in ("#line", "#send", "#quit"):
                box = page.locator(selector).bounding_box()
                assert box is not None
                assert box["x"] >= 0
                assert box["x"] + box["width"] <= 360, selector
            font = page.evaluate(
                "parseFloat(getComputedStyle(document.querySelector"
                "('#log li.peer .text')).fontSize)"
            )
            assert font >= 14
            for n in range(6):
                said_and_answered(page, f"line {n}")
            say(page, "q")
            page.wait_for_selector("#log li.notice.bye")
            page.wait_for_selector("#reconnect:visible")
            # The goodbye stays in view above the footer's new button.
            bottom = page.evaluate(
                "document.querySelector('#log li:last-child')"
                ".getBoundingClientRect().bottom"
            )
            footer = page.evaluate(
                "document.querySelector('footer, form').getBoundingClientRect().top"
            )
            assert bottom <= footer + 1
    finally:
        context.close()


def test_a_browser_and_a_terminal_client_talk_in_pair_mode(page):
    with WebServer("--responder", "pair") as server:
        page.goto(server.url)
        wait_for_turn(page)
        assert page.locator("#log li.notice .who").all_text_contents() == [
            "info welcome",
            "info waiting",
        ]
        say(page, "你好，我在浏览器里。")  # kept for the partner to come
        page.wait_for_selector("body[data-state=waiting]")
        terminal = start_client(server.port)
        try:
            out = Reader(terminal.stdout)
            assert out.until(b"\n") == "你好，我在浏览器里。\n".encode()
            terminal.stdin.write("你好，我在终端里。\n".encode())
            terminal.stdin.flush()
            wait_for_turn(page)
            answer = page.locator("#log li.peer").last
            assert answer.locator(".who").text_content() == "partner"
            assert answer.locator(".text").text_content() == "你好，我在终端里。"
            # Hostile text from a real peer stays inert in the page.
            say(page, "<b>bold?</b>")
            assert out.until(b"\n") == b"<b>bold?</b>\n"
            terminal.stdin.write(
                "\u202e<script>window.pwned = 1</script>\x1b[2J\n".encode()
            )
            terminal.stdin.flush()
            wait_for_turn(page)
            assert page.locator("#log li.peer .text").last.text_content() == (
                "\\u202e<script>window.pwned = 1</script>\\x1b[2J"
            )
            assert page.locator("#log script").count() == 0
            assert page.evaluate("window.pwned") is None
            say(page, "再见！")
            assert out.until(b"\n") == "再见！\n".encode()
            # The terminal user's input ends (a q); the page is told, and why.
            terminal.stdin.close()
            assert terminal.wait(10) == 0
        finally:
            if terminal.poll() is None:
                terminal.kill()
                terminal.wait()
            terminal.stdout.close()
            terminal.stderr.close()
        page.wait_for_selector("#log li.notice.bye")
        assert page.locator("#log li.notice.bye .who").text_content() == (
            "bye partner-left"
        )
        assert status(page) == "The conversation is over (partner-left)."


def test_a_browser_that_joins_second_waits_for_the_first_line(page):
    with WebServer("--responder", "pair") as server, raw_connect(server.port) as sock:
        sock.setblocking(False)  # the Reader waits, with its own deadline
        first = Reader(sock.makefile("rb", buffering=0))
        first.until(b"!info waiting: ")  # in the queue: the browser comes second
        page.goto(server.url)
        page.wait_for_selector("body[data-state=waiting]")
        assert status(page) == "Waiting for the other side's first line…"
        assert page.is_enabled("#line")  # for q
        assert page.locator("#log li.notice .who").first.text_content() == (
            "info listen"
        )
        first.until(b"!info paired: ")
        sock.sendall(b"hello from the line client\n")
        wait_for_turn(page)
        assert page.locator("#log li.peer .text").last.text_content() == (
            "hello from the line client"
        )
        say(page, "hello from the browser")
        first.until(b"\nhello from the browser\n")
        page.click("#quit")
        page.wait_for_selector("#log li.notice.bye")
        first.until(b"!bye partner-left: ")
        assert b"sent q. Connect again to talk with someone new." in first.until(b"\n")
        first.stream.close()


def test_the_page_works_over_https_with_wss(browser, tmp_path):
    tls = make_tls_files(tmp_path, hostname="127.0.0.1")
    web = f"ssl:0:interface=127.0.0.1:privateKey={tls['key']}:certKey={tls['cert']}"
    with WebServer("--responder", "echo", web=web) as server:
        assert server.url.startswith("https://127.0.0.1:")
        # The test CA is not the browser's: accept its certificate.
        context = browser.new_context(ignore_https_errors=True)
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(server.url)
            wait_for_turn(page)  # the page's wss: socket is same-origin
            assert said_and_answered(page, "加密的你好") == "加密的你好"
        finally:
            context.close()
