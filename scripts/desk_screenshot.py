#!/usr/bin/env python3
"""Take docs/desk-desktop.png and docs/desk-phone.png: the operators' desk.

    .venv/bin/python scripts/desk_screenshot.py [FOLDER]

Needs what the browser tests need: Debian's chromium and playwright.  It
starts ``twistd -n sockchat --responder examples.handoff_bot:HandoffBot
--desk`` on free loopback ports, with two operators (Alice Martin, Bob
Chen) in accounts of its own; three clients ask the bot, which answers one
question and hands the others over; Bob takes one, Alice another, and
Alice's desk is taken at desktop and at phone width, an answer typed.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from playwright.sync_api import sync_playwright  # noqa: E402

from sockchat._desk.accounts import Account, Cost, hash_password  # noqa: E402

from processes import CHROMIUM, CHROMIUM_ARGS, Server, raw_connect  # noqa: E402

DESK = re.compile(rb"sockchat desk at (http://127\.0\.0\.1:\d+/)")
PEOPLE = {
    "alice": ("Alice Martin", "alice's long password"),
    "bob": ("Bob Chen", "bob's long password"),
}
CANNED = (
    "hours We are open from 9:00 to 17:00, Monday to Friday.\n"
    "thanks Thank you for waiting.\n"
)


def client(port: int, *lines: str):
    sock = raw_connect(port)
    for line in lines:
        sock.sendall(line.encode() + b"\n")
        time.sleep(0.3)
    return sock


def log_in(browser, url: str, name: str, width: int, height: int):
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    page.goto(url)
    page.wait_for_url(re.compile(r"/login$"))
    page.fill("#name", name)
    page.fill("#password", PEOPLE[name][1])
    page.click("#submit")
    page.wait_for_selector("body.desk[data-state=ready]")
    return page


def take(page, text: str) -> None:
    page.locator("#queue .line", has_text=text).locator("button.take").click()
    page.locator(".conversation", has_text=text).locator(".answer").wait_for()


def main(folder: Path) -> None:
    with tempfile.TemporaryDirectory() as where:
        accounts, canned = Path(where) / "accounts", Path(where) / "canned"
        cost = Cost(ln=12, r=8, p=1)  # a picture, not a deployment
        accounts.write_text(
            "".join(
                Account(n, hash_password(p, cost), d).line() + "\n"
                for n, (d, p) in PEOPLE.items()
            )
        )
        canned.write_text(CANNED)
        bot = "examples.handoff_bot:HandoffBot"
        args = ("--responder", bot, "--desk", "tcp:0:interface=127.0.0.1")
        with (
            Server(
                *args, "--accounts", str(accounts), "--canned", str(canned), cwd=ROOT
            ) as server,
            sync_playwright() as playwright,
        ):
            url = DESK.search(server.output + server.read_until(DESK)).group(1).decode()
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
            bob = log_in(browser, url, "bob", 1000, 700)
            alice = log_in(browser, url, "alice", 1280, 820)
            talks = [
                client(server.port, "hours", "Can I bring my dog on the tour?"),
                client(server.port, "I lost my ticket, what now?"),
            ]
            take(bob, "I lost my ticket")
            take(alice, "Can I bring my dog")
            talks.append(client(server.port, "Is the café open on Sundays?"))
            alice.locator("#queue .line", has_text="café").wait_for()
            alice.locator("#queue .line.held", has_text="ticket").wait_for()
            time.sleep(4)  # the waits read a few seconds
            answer = alice.locator(".conversation .answer")
            answer.fill("Yes: dogs on a lead are welcome on every tour.")
            alice.screenshot(path=str(folder / "desk-desktop.png"))
            phone = log_in(browser, url, "alice", 360, 740)
            phone.locator(".conversation", has_text="Can I bring my dog").wait_for()
            phone.locator(".conversation .answer").fill(
                "Yes: dogs on a lead are welcome."
            )
            phone.screenshot(path=str(folder / "desk-phone.png"), full_page=True)
            browser.close()
            for talk in talks:
                talk.close()
    print(f"wrote {folder / 'desk-desktop.png'} and {folder / 'desk-phone.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs")
