#!/usr/bin/env python3
"""Take docs/web-page.png: a browser and a terminal client in pair mode.

    .venv/bin/python scripts/web_screenshot.py [OUTPUT.png]

Needs what the browser tests need: Debian's chromium, fonts-noto-cjk (the
conversation is in Chinese, like the tutorial) and playwright.  It starts
``twistd -n sockchat --responder pair --web`` on free loopback ports, talks
through the page and ``python -m sockchat.client``, and stops both.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "web-page.png")
