"""The page's TCP trace panel (``--web`` with ``--trace``) in headless Chromium.

Same set-up as tests/e2e/test_browser.py (its fixtures are reused): Debian's
chromium driven by Playwright, against a real ``twistd``.
"""

from __future__ import annotations

import re

import pytest
from test_browser import browser, page, say, wait_for_turn  # noqa: F401 (fixtures)

from processes import WebServer

pytestmark = pytest.mark.slow


def trace_lines(page) -> list[str]:  # noqa: F811
    return page.locator("#trace-log li").all_text_contents()


def wait_for_trace(page, text: str, who: str = "") -> None:  # noqa: F811
    """Wait for a line of the panel (only the server's or the page's: *who*)."""
    page.wait_for_function(
        "([t, who]) => [...document.querySelectorAll('#trace-log li' + who)]"
        ".some(li => li.textContent.includes(t))",
        arg=[text, f".trace-{who}" if who else ""],
    )


def test_the_panel_tells_the_websockets_story_from_upgrade_to_close(page):  # noqa: F811
    with WebServer("--responder", "echo", "--trace") as server:
        page.goto(server.url)
        wait_for_turn(page)
        assert page.is_hidden("#trace")
        page.wait_for_selector("#trace-toggle:visible")
        page.click("#trace-toggle")
        assert page.is_visible("#trace")
        assert page.get_attribute("#trace-toggle", "aria-expanded") == "true"
        wait_for_trace(page, "Sec-WebSocket-Accept")
        text = "\n".join(trace_lines(page))
        # The server's view: the TCP connection under the socket, and the upgrade.
        assert re.search(
            rf"local 127\.0\.0\.1:{server.web_port} \(this server's end\)", text
        )
        assert "the client's ephemeral port" in text
        assert "GET /chat HTTP/1.1 with Upgrade: websocket" in text
        assert "101 Switching Protocols" in text
        assert "kernel (TCP_INFO)" in text
        # The page's own view: the frames.
        assert "open: the server answered" in text
        say(page, "你好")
        wait_for_trace(page, "frame out: a text message of 6 bytes", "page")
        wait_for_trace(page, "frame in: a text message of 6 bytes", "page")
        wait_for_trace(page, "frame in: a text message of 6 bytes: one", "server")
        say(page, "q")
        wait_for_trace(page, "close: code 1000 (normal closure)")
        text = "\n".join(trace_lines(page))
        assert "Close frame, code 1000 (normal closure), for quit" in text
        assert "the close handshake was done" in text
        # Server text in the panel is text, never markup.
        assert page.locator("#trace-log li script, #trace-log li img").count() == 0
        server.read_until(
            re.compile(rb"\[tcp\] web conversation 1: close: the server sent FIN")
        )
        page.click("#trace-close")
        assert page.is_hidden("#trace")
        assert page.evaluate("document.body.classList.contains('tracing')") is False


def test_the_panel_is_readable_at_phone_width(browser):  # noqa: F811
    context = browser.new_context(viewport={"width": 360, "height": 740})
    phone = context.new_page()
    try:
        with WebServer("--responder", "echo", "--trace") as server:
            phone.goto(server.url)
            wait_for_turn(phone)
            phone.click("#trace-toggle")
            wait_for_trace(phone, "Sec-WebSocket-Accept")
            box = phone.locator("#trace").bounding_box()
            assert box is not None
            assert box["x"] >= 0
            assert box["width"] <= 360
            # Nothing sticks out sideways: long lines wrap.
            assert phone.evaluate("document.documentElement.scrollWidth") <= 360
            widest = phone.evaluate(
                "Math.max(...[...document.querySelectorAll('#trace-log li')]"
                ".map(li => li.getBoundingClientRect().right))"
            )
            assert widest <= 360
            # Its Close button stays in view, however far the lines scrolled.
            close = phone.locator("#trace-close").bounding_box()
            assert close is not None
            assert 0 <= close["y"] <= 740 - close["height"]
            size = phone.evaluate(
                "parseFloat(getComputedStyle(document.querySelector('#trace-log li'))"
                ".fontSize)"
            )
            assert size >= 12
    finally:
        context.close()


def test_without_trace_there_is_no_panel(page):  # noqa: F811
    with WebServer("--responder", "echo") as server:
        page.goto(server.url)
        wait_for_turn(page)
        say(page, "hello")
        page.wait_for_selector("#log li.peer")
        assert page.is_hidden("#trace-toggle")
        assert page.is_hidden("#trace")
        assert b"[tcp]" not in server.output
