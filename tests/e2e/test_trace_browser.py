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


def ladder_says(page, text: str) -> None:  # noqa: F811
    """Wait until the panel's ladder drawing has a text with *text* in it."""
    page.wait_for_function(
        "t => [...document.querySelectorAll('#ladder-drawing svg text')]"
        ".some(e => e.textContent.includes(t))",
        arg=text,
    )


def test_the_panel_draws_the_ladder_of_its_own_connection_at_phone_width(
    browser,  # noqa: F811
    tmp_path,
):
    context = browser.new_context(viewport={"width": 360, "height": 740})
    phone = context.new_page()
    phone.set_default_timeout(20_000)
    errors: list[str] = []
    asked: list[str] = []
    phone.on("pageerror", lambda error: errors.append(str(error)))
    phone.on("request", lambda request: asked.append(request.url))
    try:
        with WebServer("--responder", "echo", "--trace", "packets") as server:
            phone.goto(server.url)
            wait_for_turn(phone)
            phone.click("#trace-toggle")
            # Its own connection's packets, captured: the handshake first.
            ladder_says(phone, "三次握手 3")
            text = phone.locator("#ladder-drawing svg").text_content()
            assert "SYN-ACK" in text
            say(phone, "hello")
            wait_for_trace(phone, "frame in: a text message of 5 bytes", "server")
            ladder_says(phone, "PSH-ACK")
            say(phone, "q")
            wait_for_trace(phone, "close: code 1000")
            # After the close: the server's FIN, and what ended the
            # connection as the capture saw it.
            ladder_says(phone, "四次挥手 1")
            phone.wait_for_function(
                "() => [...document.querySelectorAll('#ladder-drawing svg text')]"
                ".some(e => /四次挥手 4|RST/.test(e.textContent))"
            )
            drawn = phone.locator("#ladder-drawing svg").text_content()
            logged = server.read_until(
                re.compile(rb"web conversation 1: capture: \d+ segments[^\n]*\n")
            ).decode()
            if "四次挥手 4" in drawn:  # an orderly close: TIME_WAIT, counted down
                assert "TIME_WAIT" in drawn
                phone.wait_for_selector("#ladder-countdown:visible")
                assert "s left" in phone.text_content("#ladder-countdown")
                assert "0 with RST" in logged
            else:  # the browser's Close frame came after the server's close
                assert "TIME_WAIT" not in drawn
                assert phone.is_hidden("#ladder-countdown")
                assert re.search(r"[1-9]\d* with RST", logged)
            # A phone's width: the drawing fits, nothing sticks out sideways.
            # Measured in one step in the page: the page draws the ladder
            # again at each fetch, and a drawing replaced between finding it
            # and measuring it has no box (this failed once in CI).
            box = phone.evaluate(
                "() => { const r = document.querySelector('#ladder-drawing svg')"
                ".getBoundingClientRect(); return {x: r.x, width: r.width}; }"
            )
            assert box["width"] > 0
            assert box["x"] >= 0
            assert box["x"] + box["width"] <= 360
            assert phone.evaluate("document.documentElement.scrollWidth") <= 360
            # The drawing is the server's text, never markup of its own.
            assert phone.locator("#ladder-drawing script").count() == 0
            shot = tmp_path / "ladder-phone.png"
            phone.locator("#trace").screenshot(path=str(shot))
            assert shot.stat().st_size > 1000
        # Nothing was loaded from elsewhere: the page, its files, its ladder.
        assert asked
        assert all(url.startswith(server.url) for url in asked), asked
        assert any("/trace/" in url and "ladder.svg" in url for url in asked)
        assert errors == []
    finally:
        context.close()


LADDER_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 360 100" width="360" '
    'height="100" data-now="1000.000" onload="window.hacked = 1">'
    "<script>window.hacked = 2</script>"
    '<text x="10" y="20">TIME_WAIT on the server\'s side</text>'
    "<foreignObject><p>not drawn</p></foreignObject>"
    '<rect x="1" y="1" width="8" height="40" data-time-wait-ends="1042.000"/></svg>'
)


def test_the_ladder_counts_time_wait_down_and_keeps_only_a_drawing(page):  # noqa: F811
    # The server's drawing is replaced by a fixed one, to count down from a
    # known time (42 s left when drawn) and to hold what must not come in.
    with WebServer("--responder", "echo", "--trace") as server:
        page.route(
            "**/trace/*/ladder.svg",
            lambda route: route.fulfill(
                status=200, content_type="image/svg+xml", body=LADDER_SVG
            ),
        )
        page.goto(server.url)
        wait_for_turn(page)
        page.click("#trace-toggle")
        page.wait_for_selector("#ladder-countdown:visible")
        shown = page.text_content("#ladder-countdown")
        left = int(re.search(r"(\d+) s left", shown)[1])
        assert 38 <= left <= 42
        page.wait_for_function(
            "t => !document.querySelector('#ladder-countdown').textContent.includes(t)",
            arg=f"{left} s left",
        )  # it goes down, a second at a time
        assert "TIME_WAIT" in page.text_content("#ladder-drawing svg")
        assert page.locator("#ladder-drawing script").count() == 0
        assert page.locator("#ladder-drawing foreignObject").count() == 0
        assert page.get_attribute("#ladder-drawing svg", "onload") is None
        assert page.evaluate("window.hacked") is None
