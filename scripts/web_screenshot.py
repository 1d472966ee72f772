#!/usr/bin/env python3
"""Take docs/web-page.png: a browser and a terminal client in pair mode;
or, with --ladder, docs/trace-ladder.png: the TCP trace panel's ladder at
a phone's width.

    .venv/bin/python scripts/web_screenshot.py [OUTPUT.png]
    .venv/bin/python scripts/web_screenshot.py --ladder [OUTPUT.png]

Needs what the browser tests need: Debian's chromium, fonts-noto-cjk (the
conversation is in Chinese, like the tutorial) and playwright.  It starts
``twistd -n sockchat --responder pair --web`` on free loopback ports, talks
through the page and ``python -m sockchat.client``, and stops both.  With
--ladder (as root, for the capture) it starts ``twistd -n sockchat
--responder echo --web --trace packets``, says hello and q from a page
360 px wide, and takes the panel once its ladder shows an orderly close
(the page's close ends with a reset about half the time: it tries again,
as a new conversation, up to ten times).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "tests"))

from playwright.sync_api import sync_playwright  # noqa: E402

from processes import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    Reader,
    WebServer,
    start_client,
)

BROWSER_SAYS = ["你好！我在浏览器里，什么都不用装。", "那我们轮流说：你一句，我一句。"]
TERMINAL_SAYS = [
    "你好！我在终端里，用的是 sockchat 客户端。",
    "好的。q 可以随时结束对话。",
]


def main(output: Path) -> None:
    with (
        WebServer("--responder", "pair") as server,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 420, "height": 760})
        page.goto(server.url)
        page.wait_for_selector("body[data-state=yours]")
        terminal = start_client(server.port)
        out = Reader(terminal.stdout)
        for mine, theirs in zip(BROWSER_SAYS, TERMINAL_SAYS, strict=True):
            page.fill("#line", mine)
            page.press("#line", "Enter")
            out.until(b"\n")
            terminal.stdin.write(theirs.encode() + b"\n")
            terminal.stdin.flush()
            page.wait_for_selector("body[data-state=yours]")
        page.fill("#line", "明白！")
        page.screenshot(path=str(output))
        browser.close()
        terminal.kill()
        terminal.communicate()
    print(f"wrote {output}")


def ladder(output: Path) -> None:
    with (
        WebServer("--responder", "echo", "--trace", "packets") as server,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 360, "height": 740})
        page.goto(server.url)
        page.wait_for_selector("#trace-toggle:visible")
        page.click("#trace-toggle")
        for _ in range(10):
            server.reader.stream.read()  # the trace's lines: the pipe must not fill
            page.wait_for_selector("body[data-state=yours]")
            for line in ("hello", "q"):
                page.fill("#line", line)
                page.press("#line", "Enter")
            page.wait_for_function(
                "() => [...document.querySelectorAll('#ladder-drawing svg text')]"
                ".some(e => /四次挥手 4|RST/.test(e.textContent))"
            )
            if page.is_visible("#ladder-countdown"):
                break
            page.click("#trace-close")
            page.click("#reconnect")
            page.click("#trace-toggle")
            page.wait_for_function(  # the new conversation's own ladder
                "() => { const svg = document.querySelector('#ladder-drawing svg');"
                " return svg && !svg.textContent.includes('四次挥手'); }"
            )
        # The panel at a phone's width, tall enough for the whole ladder.
        page.set_viewport_size({"width": 360, "height": 2000})
        page.locator("#ladder").screenshot(path=str(output))
        browser.close()
    print(f"wrote {output}")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if arguments[:1] == ["--ladder"]:
        ladder(Path(arguments[1]) if len(arguments) > 1 else DOCS / "trace-ladder.png")
    else:
        main(Path(arguments[0]) if arguments else DOCS / "web-page.png")
