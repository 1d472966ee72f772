"""The operators' desk end to end: real twistd, and a real browser.

As ``test_browser.py``: Playwright drives Debian's headless chromium, and
without chromium or playwright the browser tests skip and say why (in CI
they fail).  Accounts are made by the real ``python -m sockchat.desk
passwd``, at the real scrypt cost; clients speak over plain TCP, as ``nc``
does, or from the chat page.
"""

from __future__ import annotations

import http.client
import re
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from test_browser import browser, other_origin  # noqa: F401 (fixtures)

from sockchat._desk.accounts import AccountsFile

from certs import make_tls_files
from processes import WEB, Server, Terminal, raw_connect, run_twistd

pytestmark = pytest.mark.slow

TIMEOUT_MS = 15_000
DESK = re.compile(rb"sockchat desk at (https?://127\.0\.0\.1:(\d+)/)")
PASSWORDS = {"alice": "amber harbour lantern 42", "bob": "quiet copper meadow 17"}


@pytest.fixture(scope="module")
def accounts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An accounts file made by the real command, piped."""
    path = tmp_path_factory.mktemp("desk") / "accounts"
    for name, password in PASSWORDS.items():
        done = subprocess.run(
            [sys.executable, "-m", "sockchat.desk", "passwd", str(path), name],
            input=(password + "\n").encode(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    canned = path.parent / "canned"
    canned.write_text("# the desk's canned answers\nhours We are open from 9 to 5.\n")
    return path


class DeskServer(Server):
    """twistd with the desk; ``url`` is the desk's address."""

    def __init__(
        self,
        accounts: Path,
        *args: str,
        desk: str = "tcp:0:interface=127.0.0.1",
        **kw: Any,
    ) -> None:
        super().__init__(
            "--desk",
            desk,
            "--accounts",
            str(accounts),
            "--canned",
            str(accounts.parent / "canned"),
            *args,
            **kw,
        )

    def __enter__(self) -> DeskServer:
        super().__enter__()
        match = DESK.search(self.output + self.read_until(DESK))
        assert match is not None
        self.url = match.group(1).decode()
        self.desk_port = int(match.group(2))
        web = WEB.search(self.output)
        self.web_url = web.group(1).decode() if web else None
        return self


@contextmanager
def desk_page(browser, width: int = 1000, height: int = 760) -> Iterator[object]:  # noqa: F811
    """A page in a context of its own (its own cookies): one operator."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert errors == [], f"the desk's script failed: {errors}"


def log_in(page, server: DeskServer | str, name: str = "alice") -> None:
    page.goto(server if isinstance(server, str) else server.url)
    page.wait_for_url(re.compile(r"/login$"))
    page.fill("#name", name)
    page.fill("#password", PASSWORDS[name])
    page.click("#submit")
    page.wait_for_selector("body.desk[data-state=ready]")


def submit(page) -> str | None:
    """Press Log in: None if it let us in, else what the page said."""
    with page.expect_response(lambda r: r.url.endswith("/login")) as response:
        page.click("#submit")
    if response.value.ok:
        return None
    page.wait_for_selector("#error:not([hidden])")
    text = page.locator("#error").text_content()
    page.evaluate("document.getElementById('error').hidden = true")
    return text


class Client:
    """A client that speaks over plain TCP, as nc does."""

    def __init__(self, port: int) -> None:
        self.sock = raw_connect(port)
        self.buffer = b""
        self.welcome = self.line()

    def line(self) -> str:
        deadline = time.monotonic() + 15
        while b"\n" not in self.buffer:
            assert time.monotonic() < deadline, f"no line; saw {self.buffer!r}"
            chunk = self.sock.recv(4096)
            assert chunk, f"closed; saw {self.buffer!r}"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def say(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def until(self, text: str) -> list[str]:
        """The lines read up to *text*, which is the last."""
        lines = [self.line()]
        while lines[-1] != text:
            lines.append(self.line())
        return lines

    def close(self) -> None:
        self.sock.close()


def test_an_operator_logs_in_and_answers_a_client_once_per_line(browser, accounts):  # noqa: F811
    with DeskServer(accounts) as server, desk_page(browser) as page:
        client = Client(server.port)
        client.say("where is my parcel? <b>now</b>")
        assert client.line().startswith("!info queued: no operator is online yet")
        log_in(page, server)
        assert page.locator("#me").text_content() == "alice"
        line = page.locator("#queue .line").first
        assert line.locator(".text").text_content() == "where is my parcel? <b>now</b>"
        assert page.locator("#queue .line b").count() == 0  # text, not HTML
        # The wait is live: it grows while the page is open.
        first = line.locator(".wait").text_content()
        assert re.fullmatch(r"waiting \d+ s", first)
        page.wait_for_function(
            "w => document.querySelector('#queue .wait').textContent !== w", arg=first
        )
        line.locator("button.take").click()
        conversation = page.locator(".conversation").first
        conversation.locator(".history .said.client").first.wait_for()
        assert conversation.locator(
            ".history .said.client .text"
        ).first.text_content() == ("where is my parcel? <b>now</b>")
        page.wait_for_selector("#queue .line.yours")  # the desk's view, for all
        # A canned answer: /hours and Tab, read over, then sent.
        answer = conversation.locator(".answer")
        answer.fill("/hours")
        answer.press("Tab")
        assert answer.input_value() == "We are open from 9 to 5."
        answer.press("Enter")
        # Told once who answers, then the answer.
        assert client.line() == "!info operator: alice is answering you now."
        assert client.line() == "We are open from 9 to 5."
        # One answer per line: the page cannot send a second.
        assert conversation.locator(".send").is_disabled()
        assert conversation.locator(".state").text_content() == (
            "Answered. Waiting for the client."
        )
        answer.fill("a second answer")
        answer.press("Enter")
        assert answer.input_value() == "a second answer"  # not sent
        client.say("thanks, and the hours on Sunday?")
        page.wait_for_selector(".conversation.yours")
        answer.fill("Closed on Sunday.")
        answer.press("Enter")
        assert client.line() == "Closed on Sunday."  # the first thing since
        said = conversation.locator(".said .text")
        page.wait_for_function(
            "() => document.querySelectorAll('.conversation .said').length === 5"
        )
        assert [t.strip() for t in said.all_text_contents()] == [
            "where is my parcel? <b>now</b>",
            "alice took it",
            "We are open from 9 to 5.",
            "thanks, and the hours on Sunday?",
            "Closed on Sunday.",
        ]
        conversation.locator("button.end").click()
        assert client.line() == "!bye kicked: the operator ended this conversation."
        conversation.locator(".state").filter(has_text="over").wait_for()
        client.close()


def test_the_hold_limit_banner_clears_once_the_limit_no_longer_applies(
    browser,  # noqa: F811
    accounts,
):
    """Issue 25's trial: "you hold 1 conversation..." stayed at the top after
    the operator let one go.  The page's clock stands still once logged in,
    so the banner cannot simply fade: only the hand-back may clear it."""
    with DeskServer(accounts, "--hold", "1") as server, desk_page(browser) as page:
        first, second = Client(server.port), Client(server.port)
        first.say("the first question")
        second.say("the second question")
        page.clock.install()
        log_in(page, server)
        page.clock.pause_at(page.evaluate("Date.now()") + 1000)
        queue = page.locator("#queue .line")
        queue.filter(has_text="the first question").locator("button.take").click()
        held = page.locator(".conversation", has_text="the first question")
        held.locator(".answer").wait_for()
        queue.filter(has_text="the second question").locator("button.take").click()
        banner = page.locator("#problem")
        banner.wait_for(state="visible")
        assert banner.text_content() == (
            "you hold 1 conversation, the most you may; hand one back or end one first"
        )
        held.locator("button.handback").click()
        banner.wait_for(state="hidden")
        first.close()
        second.close()


def test_a_reload_keeps_the_session_and_logout_ends_it(browser, accounts):  # noqa: F811
    with DeskServer(accounts) as server, desk_page(browser) as page:
        log_in(page, server)
        cookies = page.context.cookies()
        (session,) = [c for c in cookies if c["name"] == "sockchat-desk"]
        assert session["httpOnly"] is True
        assert session["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # out of the script's reach
        page.reload()
        page.wait_for_selector("body.desk[data-state=ready]")
        assert page.url == server.url
        page.click("#logout")
        page.wait_for_url(re.compile(r"/login$"))
        assert page.locator("#ended").text_content() == "You logged out."
        # The session is over on the server: its cookie, replayed, is refused.
        replay = page.context.request
        page.context.add_cookies([session])
        assert replay.get(server.url + "api/me").status == 401
        page.goto(server.url)
        page.wait_for_url(re.compile(r"/login$"))


def test_a_login_to_a_stopped_desk_says_what_to_do(browser, accounts):  # noqa: F811
    with DeskServer(accounts) as server, desk_page(browser) as page:
        page.goto(server.url)
        page.wait_for_url(re.compile(r"/login$"))
        page.fill("#name", "alice")
        page.fill("#password", PASSWORDS["alice"])
        server.stop()
        page.click("#submit")
        page.wait_for_selector("#error:not([hidden])")
        assert page.locator("#error").text_content() == (
            "the desk cannot be reached: check that its server is running, "
            "then log in again"
        )


def test_without_a_session_the_page_api_and_socket_refuse(browser, accounts):  # noqa: F811
    with DeskServer(accounts) as server, desk_page(browser) as page:
        page.goto(server.url)
        page.wait_for_url(re.compile(r"/login$"))  # the desk page sent us here
        outcome = page.evaluate(
            """async url => {
                const api = await fetch("/api/desk");
                const socket = await new Promise(done => {
                    const s = new WebSocket(url);
                    s.onopen = () => done("opened");
                    s.onclose = event => done("closed " + event.code);
                });
                return [api.status, socket];
            }""",
            f"ws://127.0.0.1:{server.desk_port}/socket",
        )
        assert outcome == [401, "closed 1006"]  # the handshake was refused


def test_another_origin_cannot_use_the_session(browser, accounts, other_origin):  # noqa: F811
    with DeskServer(accounts) as server, desk_page(browser) as page:
        log_in(page, server)
        # Another site on this host (another port: the same site for
        # SameSite, so the cookie goes along): only Origin stops it.
        page.goto(other_origin)
        outcome = page.evaluate(
            """async ([url, logout]) => {
                await fetch(
                    logout, {method: "POST", mode: "no-cors", credentials: "include"}
                );
                return await new Promise(done => {
                    const s = new WebSocket(url);
                    s.onopen = () => done("opened");
                    s.onclose = event => done("closed " + event.code);
                });
            }""",
            [f"ws://127.0.0.1:{server.desk_port}/socket", server.url + "logout"],
        )
        assert outcome == "closed 1006"
        server.read_until(b"refused a cross-origin desk logout from 127.0.0.1:")
        server.read_until(b"refused a cross-origin desk WebSocket from 127.0.0.1:")
        # The session lives on: the desk is still open to its operator.
        page.goto(server.url)
        page.wait_for_selector("body.desk[data-state=ready]")


def test_twenty_wrong_passwords_are_slowed_and_the_right_one_works(browser, accounts):  # noqa: F811
    with DeskServer(accounts) as server, desk_page(browser) as page:
        page.goto(server.url + "login")
        said = []
        for n in range(20):
            page.fill("#name", "alice")
            page.fill("#password", f"a wrong guess, number {n}")
            said.append(submit(page))
        # Five are checked; past them, each attempt must wait, and one made
        # while it must is refused at once, unchecked and uncounted.
        wrong = said.count("wrong name or password")
        assert said[:5] == ["wrong name or password"] * 5
        assert wrong <= 10  # however slow the machine
        waits = [s for s in said if s.startswith("too many failed logins")]
        assert len(waits) == 20 - wrong
        output = server.read_until(b"failed login as alice from 127.0.0.1:")
        assert b"a wrong guess" not in server.output + output
        # The right one: refused while the wait lasts, then let in.
        page.fill("#password", PASSWORDS["alice"])
        for _ in range(3):
            message = submit(page)
            if message is None:
                break
            wait = int(re.search(r"try again in (\d+) s", message).group(1))
            assert wait <= 60
            time.sleep(wait)
        page.wait_for_url(server.url)
        page.wait_for_selector("body.desk[data-state=ready]")
        assert PASSWORDS["alice"].encode() not in server.output


def test_the_desk_works_at_phone_width(browser, accounts):  # noqa: F811
    with DeskServer(accounts) as server, desk_page(browser, 360, 740) as page:
        client = Client(server.port)
        client.say("hello from a phone's point of view")
        client.line()  # queued
        log_in(page, server)
        overflow = "document.scrollingElement.scrollWidth - window.innerWidth"
        assert page.evaluate(overflow) <= 0
        page.locator("#queue button.take").first.click()
        answer = page.locator(".conversation .answer")
        answer.wait_for()
        assert page.locator(".conversation .send").is_visible()
        box = page.locator(".conversation").bounding_box()
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= 360
        answer.fill("Hello! How can I help?")
        answer.press("Enter")
        assert client.line().startswith("!info operator: ")
        assert client.line() == "Hello! How can I help?"
        assert page.evaluate(overflow) <= 0
        client.close()


def test_the_accounts_file_holds_no_password_in_clear(accounts):
    raw = accounts.read_bytes()
    assert accounts.stat().st_mode & 0o077 == 0
    for password in PASSWORDS.values():
        for part in (password, *password.split()):
            if len(part) > 3:
                assert part.encode() not in raw
    assert raw.count(b":$scrypt$ln=15,r=8,p=1$") == 2


def test_no_accounts_file_refuses_to_start_in_one_line(tmp_path):
    done = run_twistd("--desk", "0")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "sockchat: --desk needs --accounts FILE, the operators' accounts; make one "
        "with: python -m sockchat.desk passwd FILE NAME"
    )
    missing = tmp_path / "none"
    done = run_twistd("--desk", "0", "--accounts", str(missing))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"sockchat: --accounts {missing}: no such file; make accounts with: "
        "python -m sockchat.desk passwd FILE NAME"
    )


def test_a_browser_client_is_answered_from_the_desk(browser, accounts):  # noqa: F811
    with (
        DeskServer(accounts, "--web", "tcp:0:interface=127.0.0.1") as server,
        desk_page(browser) as desk,
        desk_page(browser, 400, 700) as chat,
    ):
        chat.goto(server.web_url)
        chat.wait_for_selector("body[data-state=yours]")
        chat.fill("#line", "我的包裹在哪里？")
        chat.press("#line", "Enter")
        log_in(desk, server)
        desk.locator("#queue button.take").first.click()
        answer = desk.locator(".conversation .answer")
        answer.wait_for()
        desk.wait_for_selector(".conversation.yours")
        answer.fill("今天已经寄出了。")
        answer.press("Enter")
        chat.wait_for_selector("#log li.peer")
        assert (
            chat.locator("#log li.peer .text").last.text_content() == "今天已经寄出了。"
        )


def test_the_desk_over_tls_sets_a_secure_host_only_cookie(tmp_path, accounts):
    files = make_tls_files(tmp_path)
    desk = (
        f"ssl:0:interface=127.0.0.1:privateKey={files['key']}:certKey={files['cert']}"
    )
    with DeskServer(accounts, desk=desk) as server:
        assert server.url.startswith("https://")
        context = ssl.create_default_context(cafile=str(files["ca"]))
        connection = http.client.HTTPSConnection(
            "localhost", server.desk_port, context=context, timeout=30
        )
        body = urllib.parse.urlencode({"name": "bob", "password": PASSWORDS["bob"]})
        connection.request(
            "POST",
            "/login",
            body,
            {
                "Origin": f"https://localhost:{server.desk_port}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        response = connection.getresponse()
        assert response.status == 200, response.read()
        cookies = response.headers.get_all("Set-Cookie")
        assert re.fullmatch(
            r"__Host-sockchat-desk=[\w-]{43}; Path=/; Secure; HttpOnly; "
            r"SameSite=strict",
            cookies[0],
        )
        connection.close()


def test_a_bad_desk_tls_file_is_one_line(tmp_path, accounts):
    missing = tmp_path / "missing.pem"
    done = run_twistd(
        "--desk",
        f"ssl:0:privateKey={missing}:certKey={missing}",
        "--accounts",
        str(accounts),
    )
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()[-1:]
    assert line.startswith("sockchat: --desk ")
    assert str(missing) in line


def test_passwd_at_a_terminal_asks_twice_without_echo(tmp_path):
    path = tmp_path / "accounts"
    terminal = Terminal(
        sys.executable, "-m", "sockchat.desk", "passwd", str(path), "alice"
    )
    terminal.screen.until(b"Display name [alice]: ")
    terminal.type("Alice Martin\r")
    terminal.screen.until(b"Password: ")
    terminal.type("a secret typed here\r")
    terminal.screen.until(b"Again: ")
    terminal.type("a secret typed here\r")
    seen = terminal.screen.until(b"added alice (Alice Martin)", timeout=20)
    assert terminal.close() == 0
    assert b"a secret" not in seen  # not echoed
    assert AccountsFile(path).load().check("alice", "a secret typed here")


def test_passwd_piped_reads_the_first_line(tmp_path):
    path = tmp_path / "accounts"
    done = subprocess.run(
        [sys.executable, "-m", "sockchat.desk", "passwd", str(path), "bob"],
        input=b"piped password\nignored\n",
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert AccountsFile(path).load().check("bob", "piped password")
    assert path.stat().st_mode & 0o077 == 0
