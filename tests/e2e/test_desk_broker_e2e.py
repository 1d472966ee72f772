"""The desk on the broker, end to end: real twistd, a real browser, and
across instances a real redis-server (issue 25, part 2).

Two operators, each in a browser context of their own, answer clients who
speak from a plain TCP socket (as ``nc``) and from the chat page: in one
process (the desk and the instance meet in its memory), and across two
instances that share a redis-server, each serving a desk.  A bot hands
over what it does not know, in the server and from a worker (to a desk
in a process of its own), and the client learns who answers.  As the
other browser tests, these wait on conditions, never on time, and skip
(saying why) without chromium.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_browser import browser  # noqa: F401 (a fixture)
from test_desk_e2e import (  # noqa: F401 (accounts is a fixture)
    DESK,
    Client,
    DeskServer,
    accounts,
    desk_page,
    log_in,
)

from processes import Reader, Server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ON_LOOPBACK = "tcp:0:interface=127.0.0.1"
HOURS = "We are open from 9:00 to 17:00, Monday to Friday."


def take(page, text: str) -> None:
    """Take the waiting line that says *text*."""
    line = page.locator("#queue .line", has_text=text)
    line.locator("button.take").click()
    page.locator(".conversation", has_text=text).locator(".answer").wait_for()


def held_by(page, text: str, who: str) -> None:
    """Wait until the desk shows the line that says *text* as held by *who*,
    with nothing to take it with."""
    line = page.locator("#queue .line.held", has_text=text)
    line.locator(".holder", has_text=f"held by {who}").wait_for()
    assert line.locator("button.take").count() == 0


def answer(page, text: str, reply: str) -> None:
    """Answer, in the conversation that shows *text*, its line waiting."""
    conversation = page.locator(".conversation.yours", has_text=text)
    conversation.locator(".answer").fill(reply)
    conversation.locator(".answer").press("Enter")


def web_client(page, url: str, line: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-state=yours]")
    page.fill("#line", line)
    page.press("#line", "Enter")


def web_answer(page) -> str:
    page.wait_for_selector("#log li.peer")
    return str(page.locator("#log li.peer .text").last.text_content())


def test_two_operators_answer_tcp_and_web_clients_in_one_process(
    browser,  # noqa: F811
    accounts,  # noqa: F811
):
    with (
        DeskServer(accounts, "--web", ON_LOOPBACK) as server,
        desk_page(browser) as alice,
        desk_page(browser) as bob,
        desk_page(browser, 400, 700) as chat,
    ):
        log_in(alice, server, "alice")
        log_in(bob, server, "bob")
        nc = Client(server.port)
        nc.say("from the terminal: where is my parcel?")
        web_client(chat, server.web_url, "from the page: 你好，有人吗？")
        take(alice, "from the terminal")
        take(bob, "from the page")
        # Each sees the other's as held, and cannot take it.
        held_by(bob, "from the terminal", "alice")
        held_by(alice, "from the page", "bob")
        answer(alice, "from the terminal", "It left this morning.")
        said = nc.until("It left this morning.")
        assert said[-2:] == [
            "!info operator: alice is answering you now.",
            "It left this morning.",
        ]
        answer(bob, "from the page", "在的，请讲。")
        assert web_answer(chat) == "在的，请讲。"
        notices = chat.locator("#log li.notice").all_text_contents()
        assert any("bob is answering you now." in n for n in notices)
        # A reload keeps the session, and what Alice holds.
        alice.reload()
        alice.wait_for_selector("body.desk[data-state=ready]")
        alice.locator(".conversation", has_text="from the terminal").wait_for()
        nc.say("thanks!")
        answer(alice, "thanks!", "You are welcome.")
        assert nc.line() == "You are welcome."
        # Logging out ends Bob's session on the server.
        bob.click("#logout")
        bob.wait_for_url(re.compile(r"/login$"))
        assert bob.context.request.get(server.url + "api/me").status == 401
        nc.close()


def redis_url(redis_server) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/0"


def test_two_operators_answer_across_two_instances_through_redis(
    browser,  # noqa: F811
    accounts,  # noqa: F811
    redis_server,
):
    broker = ("--broker", redis_url(redis_server))
    with (
        DeskServer(accounts, *broker) as first,
        DeskServer(accounts, *broker, "--web", ON_LOOPBACK) as second,
        desk_page(browser) as alice,
        desk_page(browser) as bob,
        desk_page(browser, 400, 700) as chat,
    ):
        log_in(alice, first, "alice")  # at the first instance's desk
        log_in(bob, second, "bob")  # at the second's
        nc = Client(first.port)
        nc.say("a client of the first instance")
        web_client(chat, second.web_url, "a client of the second instance")
        # Every desk shows every instance's lines: each takes the other's.
        take(alice, "a client of the second instance")
        take(bob, "a client of the first instance")
        held_by(alice, "a client of the first instance", "bob")
        held_by(bob, "a client of the second instance", "alice")
        alice.locator("#online .operator", has_text="bob").wait_for()
        answer(bob, "a client of the first instance", "Bob here, from i2's desk.")
        said = nc.until("Bob here, from i2's desk.")
        assert "!info operator: bob is answering you now." in said
        answer(alice, "a client of the second instance", "Alice here.")
        assert web_answer(chat) == "Alice here."
        # The client's next line is its holder's at once, across instances.
        nc.say("one more thing")
        answer(bob, "one more thing", "Go on.")
        assert nc.line() == "Go on."
        nc.close()


class Background:
    """A process whose output is read as it comes, stopped by its pid."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        self.out = Reader(self.proc.stdout)

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def hand_over_and_answer(page, client: Client) -> None:
    """The bot answers a known question and hands over an unknown one; the
    operator sees both lines and the bot's part, answers, and the client
    learns who answered."""
    if client.welcome.startswith("!info listen"):  # the bot speaks first
        assert client.line().startswith("Hello, I am the help bot.")
    client.say("hours")
    assert client.line() == HOURS
    client.say("can I bring my dog?")
    said = client.until(
        "!info handoff: your conversation goes to a person now; the first "
        "operator free answers you"
    )
    take(page, "can I bring my dog?")
    history = page.locator(".conversation", has_text="can I bring my dog?")
    history.locator(".said.notice", has_text="the bot handed it over").wait_for()
    history.locator(".said.notice", has_text="alice took it").wait_for()
    texts = history.locator(".said .text").all_text_contents()
    assert texts[-5:] == [
        "hours",
        HOURS,
        "the bot handed it over: the bot has no answer to 'can I bring my dog?'",
        "can I bring my dog?",
        "alice took it",
    ]
    assert history.locator(".said.bot", has_text=HOURS).count() == 1
    answer(page, "can I bring my dog?", "Yes, dogs are welcome.")
    said = client.until("Yes, dogs are welcome.")
    assert said[-2:] == [
        "!info operator: alice is answering you now.",
        "Yes, dogs are welcome.",
    ]


def test_a_bot_in_the_server_hands_over_to_the_desk(browser, accounts):  # noqa: F811
    bot = ("--responder", "examples.handoff_bot:HandoffBot")
    with (
        DeskServer(accounts, *bot, cwd=ROOT) as server,
        desk_page(browser) as alice,
    ):
        log_in(alice, server, "alice")
        client = Client(server.port)
        hand_over_and_answer(alice, client)
        client.close()


def test_a_bot_in_a_worker_hands_over_to_a_desk_of_its_own(
    browser,  # noqa: F811
    accounts,  # noqa: F811
    redis_server,
):
    url = redis_url(redis_server)
    serve = ("-m", "sockchat.desk", "serve", "--broker", url, "--desk", ON_LOOPBACK)
    bot = ("-m", "sockchat.worker", "--broker", url, "examples.handoff_bot:HandoffBot")
    with (
        Background(*serve, "--accounts", str(accounts)) as desk,
        Background(*bot) as worker,
        Server("--responder", "workers", "--broker", url) as server,
        desk_page(browser) as alice,
    ):
        found = DESK.search(desk.out.until(DESK))
        assert found is not None
        worker.out.until(b"lines at once")
        # The worker is up; the instance learns of it at its next heartbeat.
        server.read_until(b"1 live consumer(s) of workers at the broker")
        log_in(alice, found.group(1).decode(), "alice")
        client = Client(server.port)
        hand_over_and_answer(alice, client)
        client.close()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--broker", "http://example.com/"], "sockchat.desk: --broker http://"),
        (
            ["--broker", "redis://127.0.0.1:1/0"],
            "sockchat.desk: cannot reach the broker at redis://127.0.0.1:1/0",
        ),
        (["--accounts", "/nonexistent"], "no such file; make accounts with: "),
        (["--desk", "bogus:1"], "sockchat.desk: --desk 'bogus:1' is neither"),
        (
            ["--allow", "127.0.0.0/8", "--deny", "10.0.0.1/8"],
            "sockchat.desk: --allow/--deny: '10.0.0.1/8' has bits set",
        ),
    ],
)
def test_desk_serve_mistakes_are_one_line(accounts, args, says):  # noqa: F811
    given = {"--broker": "redis://127.0.0.1:1/0", "--accounts": str(accounts)}
    given.update(dict(zip(args[::2], args[1::2], strict=True)))
    done = subprocess.run(
        [sys.executable, "-m", "sockchat.desk", "serve"]
        + [part for pair in given.items() for part in pair],
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 1
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert says in lines[0]


@pytest.mark.parametrize(
    "rules",
    [
        ("--deny", "127.0.0.0/8"),
        ("--allow", "10.0.0.0/8", "--allow", "192.168.0.0/16"),
    ],
)
def test_desk_serve_keeps_its_address_rules_and_says_so_once(
    accounts,  # noqa: F811
    redis_server,
    rules,
):
    """``desk serve`` takes ``--allow``/``--deny`` as twistd does, and its
    log says its name once (issue 25: ``sockchat.desk: desk: ...`` before)."""
    url = redis_url(redis_server)
    serve = ("-m", "sockchat.desk", "serve", "--broker", url, "--desk", ON_LOOPBACK)
    with Background(*serve, "--accounts", str(accounts), *rules) as desk:
        found = DESK.search(desk.out.until(DESK))
        assert found is not None
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(found.group(1).decode() + "login", timeout=10)
        refused.value.close()
        assert refused.value.code == 403
        said = desk.out.until(re.compile(rb"[^\n]*refused a connection[^\n]*\n"))
    line = said.decode().splitlines()[-1]
    assert line.startswith("sockchat.desk: refused a connection from 127.0.0.1")
