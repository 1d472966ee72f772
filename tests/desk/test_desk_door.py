"""The desk's door in memory: real HTTP and WebSocket bytes, a fake clock.

The site is ``desk_site`` over ``StringTransport``s; the WebSocket client
is wsproto's own state machine; clients of the chat are the TCP door's
real protocol.  Password checks run at once (``run``) and at a low scrypt
cost, so that nothing here needs a thread or a second.
"""

from __future__ import annotations

import json
import re

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    RejectData,
    Request,
    TextMessage,
)
from zope.interface import directlyProvides

from sockchat import ChatServerFactory
from sockchat._broker.instance import BrokerInstance, QueueResponder
from sockchat._broker.memory import MemoryHub
from sockchat._broker.wire import OPERATORS
from sockchat._desk import door as door_module
from sockchat._desk.accounts import (
    Account,
    AccountsFile,
    Cost,
    hash_password,
    write_account,
)
from sockchat._desk.brokered import BrokerQueue
from sockchat._desk.door import (
    SESSION_ENDED,
    SWEEP,
    DeskDoor,
    DeskSettings,
    desk_site,
)
from sockchat._desk.sessions import SessionPolicy
from sockchat._doors.web import CONTENT_SECURITY_POLICY, HEADERS_DEADLINE

from fakes import open_conversation, said

FAST = Cost(ln=10, r=8, p=1)
HOST = "127.0.0.1:8081"
ORIGIN = "http://127.0.0.1:8081"
ALICE_PASSWORD = "alice's long password"
BOB_PASSWORD = "bob's long password"


def write_accounts(path, **passwords):
    lines = [
        Account(name, hash_password(password, FAST), name.title()).line()
        for name, password in passwords.items()
    ]
    path.write_text("\n".join(lines) + "\n")


class Desk:
    """A server with the desk, as ``twistd sockchat --desk`` runs it with no
    ``--broker``: an instance and the desk meeting at the memory broker; its
    clock, queue, chat factory and door."""

    def __init__(self, tmp_path, *, announce=True, **settings) -> None:
        self.accounts_path = tmp_path / "accounts"
        write_accounts(self.accounts_path, alice=ALICE_PASSWORD, bob=BOB_PASSWORD)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.hub = MemoryHub(self.clock)
        self.broker = self.hub.broker()
        self.hub.register_instance()
        self.instance = BrokerInstance(self.broker, self.clock, "i1")
        self.people = QueueResponder(self.instance, OPERATORS)
        self.instance.start()
        self.queue = BrokerQueue(self.broker, self.clock, announce=announce)
        self.factory = ChatServerFactory(self.people, clock=self.clock)
        self.checks: list[Deferred] = []
        self.door = DeskDoor(
            self.queue,
            AccountsFile(self.accounts_path),
            self.clock,
            settings=DeskSettings(**settings),
            run=self.run,
        )
        self.door.accounts.load()
        self.door.start()
        self.site = desk_site(self.door)
        self.ports = iter(range(40000, 60000))
        self.hold_checks = False

    def run(self, work):
        if self.hold_checks:
            d: Deferred = Deferred()
            self.checks.append(d)
            return d
        return succeed(work())

    def connect(self, host="127.0.0.1", secure=False):
        addr = IPv4Address("TCP", host, next(self.ports))
        channel = self.site.buildProtocol(addr)
        transport = StringTransport(
            peerAddress=addr, hostAddress=IPv4Address("TCP", "127.0.0.1", 8081)
        )
        if secure:  # ISSLTransport is an ITCPTransport too
            directlyProvides(transport, ISSLTransport)
            transport.setTcpNoDelay = lambda on: None
        channel.makeConnection(transport)
        return channel, transport

    def client(self, cid_text="hello"):
        """A chat client (the TCP door) that has said a line."""
        proto, transport = open_conversation(self.factory)
        said(transport)  # the welcome
        proto.dataReceived(cid_text.encode() + b"\n")
        return proto, transport


class Response:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers.setdefault(name.lower(), []).append(value.strip())

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[-1] if values else None

    @property
    def json(self):
        return json.loads(self.body)


class Browser:
    """A browser of the desk: it keeps cookies, and sends its Origin."""

    def __init__(self, desk: Desk, origin: str | None = ORIGIN, secure=False) -> None:
        self.desk = desk
        self.origin = origin
        self.secure = secure
        self.cookies: dict[str, str] = {}

    def _headers(self, extra=()) -> list[tuple[str, str]]:
        headers = [("Host", HOST)]
        if self.cookies:
            jar = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            headers.append(("Cookie", jar))
        return headers + list(extra)

    def request(self, method, path, body=b"", headers=(), origin=True) -> Response:
        extra = list(headers)
        if origin and self.origin is not None:
            extra.append(("Origin", self.origin))
        if body:
            extra += [
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Content-Length", str(len(body))),
            ]
        lines = [f"{method} {path} HTTP/1.0"]
        lines += [f"{k}: {v}" for k, v in self._headers(extra)]
        channel, transport = self.desk.connect(secure=self.secure)
        channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        response = Response(transport.value())
        for cookie in response.headers.get("set-cookie", []):
            name, _, rest = cookie.partition("=")
            value = rest.split(";")[0]
            if "Max-Age=0" in cookie:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        channel.connectionLost(Failure(ConnectionDone()))
        return response

    def get(self, path, **kw) -> Response:
        return self.request("GET", path, origin=False, **kw)

    def login(self, name="alice", password=ALICE_PASSWORD, **kw) -> Response:
        body = f"name={name}&password={password}".replace(" ", "+").encode()
        return self.request("POST", "/login", body, **kw)

    def socket(self, origin: str | None = "same") -> Socket:
        return Socket(self, self.origin if origin == "same" else origin)


class Socket:
    """The desk page's WebSocket, in memory."""

    def __init__(self, browser: Browser, origin: str | None) -> None:
        self.channel, self.transport = browser.desk.connect(secure=browser.secure)
        self.ws = WSConnection(ConnectionType.CLIENT)
        headers = [(k.lower().encode(), v.encode()) for k, v in browser._headers()]
        headers = [(k, v) for k, v in headers if k != b"host"]
        if origin is not None:
            headers.append((b"origin", origin.encode()))
        self.channel.dataReceived(
            self.ws.send(Request(host=HOST, target="/socket", extra_headers=headers))
        )
        self.raw = self.transport.value()
        self.accepted = False
        self.rejected = b""
        self.close: CloseConnection | None = None
        self.messages: list[dict] = []
        #: What it was told as it opened (hello, the desk, its conversations).
        self.greeting = self.pump()

    def pump(self) -> list[dict]:
        data = self.transport.value()
        self.transport.clear()
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.accepted = True
            elif isinstance(event, RejectData):
                self.rejected += event.data
            elif isinstance(event, TextMessage):
                self.messages.append(json.loads(event.data))
            elif isinstance(event, CloseConnection):
                self.close = event
        messages, self.messages = self.messages, []
        return messages

    def send(self, **fields) -> list[dict]:
        self.channel.dataReceived(self.ws.send(TextMessage(json.dumps(fields))))
        return self.pump()

    def lost(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))


def of(messages, kind):
    return [m for m in messages if m["type"] == kind]


@pytest.fixture
def desk(tmp_path):
    return Desk(tmp_path)


@pytest.fixture
def logged(desk):
    """Log events' text while the test runs."""
    seen: list[str] = []

    def observe(event):
        seen.append(formatEvent(event) + " " + repr(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


# Without a session, nothing but the login page.


def test_without_a_session_the_desk_page_api_and_socket_refuse(desk):
    browser = Browser(desk)
    page = browser.get("/")
    assert page.status == 303
    assert page.header("location") == "/login"
    for path in ("/api/me", "/api/desk"):
        api = browser.get(path)
        assert api.status == 401
        assert api.json == {"error": "log in first"}
    socket = browser.socket()
    assert not socket.accepted
    assert socket.raw.startswith(b"HTTP/1.1 401 ")
    assert b"101" not in socket.raw.split(b"\r\n", 1)[0]
    assert desk.door.desk.pages("alice") == []
    # The login page and the pages' files are anyone's.
    login = browser.get("/login")
    assert login.status == 200
    assert b'<form id="login"' in login.body
    assert browser.get("/desk.js").status == 200


def test_a_made_up_or_stolen_looking_cookie_is_no_session(desk):
    browser = Browser(desk)
    browser.cookies["sockchat-desk"] = "A" * 43
    assert browser.get("/api/me").status == 401
    browser.cookies["sockchat-desk"] = "../" * 50
    assert browser.get("/api/me").status == 401


# Logging in.


def test_login_opens_a_session_in_an_httponly_strict_cookie(desk):
    browser = Browser(desk)
    response = browser.login()
    assert response.status == 200
    assert response.json == {"name": "alice", "display": "Alice"}
    (session, device) = response.headers["set-cookie"]
    assert re.fullmatch(
        r"sockchat-desk=[A-Za-z0-9_-]{43}; Path=/; HttpOnly; SameSite=strict", session
    )
    assert "Secure" not in session  # plain HTTP: a Secure cookie would be lost
    assert device.startswith("sockchat-desk-device=")
    assert "HttpOnly; SameSite=strict" in device
    assert "Max-Age=2592000" in device
    assert response.header("cache-control") == "no-store"
    # The cookie is the session: the page, the API.
    page = browser.get("/")
    assert page.status == 200
    assert b'<script src="/desk.js"' in page.body
    assert browser.get("/api/me").json == {"name": "alice", "display": "Alice"}
    # Logged in already, the login page sends to the desk.
    assert browser.get("/login").header("location") == "/"


def test_over_tls_the_cookie_is_secure_and_host_only(desk):
    browser = Browser(desk, origin="https://127.0.0.1:8081", secure=True)
    response = browser.login()
    assert response.status == 200
    session = response.headers["set-cookie"][0]
    assert re.fullmatch(
        r"__Host-sockchat-desk=[A-Za-z0-9_-]{43}; Path=/; Secure; HttpOnly; "
        r"SameSite=strict",
        session,
    )
    assert browser.get("/api/me").status == 200


def test_a_wrong_password_is_refused_and_logged_without_it(desk, logged):
    browser = Browser(desk)
    response = browser.login(password="not alices password at all")
    assert response.status == 401
    assert response.json == {"error": "wrong name or password"}
    assert "set-cookie" not in response.headers
    response = browser.login(name="mallory", password="a guess at mallory")
    assert response.status == 401
    assert browser.get("/api/me").status == 401
    text = "\n".join(logged)
    assert "failed login as alice from 127.0.0.1:" in text
    assert "failed login as mallory" in text
    for secret in (
        "not alices password",
        "a guess at mallory",
        "password=",
        ALICE_PASSWORD,
    ):
        assert secret not in text
    browser.login()
    assert ALICE_PASSWORD not in "\n".join(logged)
    assert "alice logged in from 127.0.0.1:" in "\n".join(logged)


def test_twenty_wrong_passwords_are_slowed_and_the_right_one_works_after(desk):
    browser = Browser(desk)
    codes = []
    for n in range(20):
        codes.append(browser.login(password=f"wrong guess number {n}").status)
        desk.clock.advance(0.1)
    assert codes[:5] == [401] * 5
    assert codes.count(429) >= 13  # refused at once: no password was checked
    refused = browser.login()
    assert refused.status == 429
    wait = int(refused.header("retry-after"))
    assert 1 <= wait <= 4
    assert refused.json["error"] == f"too many failed logins; try again in {wait} s"
    desk.clock.advance(wait)
    assert browser.login().status == 200


def test_login_must_come_from_the_desks_own_page(desk):
    for origin in ("http://evil.example", "http://127.0.0.1:9999", "null", None):
        browser = Browser(desk, origin=origin)
        response = browser.login()
        assert response.status == 403, origin
        assert "set-cookie" not in response.headers
    assert len(desk.door.sessions) == 0


def test_a_login_body_is_small_and_told_so(desk):
    browser = Browser(desk)
    big = b"name=alice&password=" + b"x" * 5000
    response = browser.request("POST", "/login", big)
    assert response.status == 413
    assert b"at most 4096 bytes" in response.body
    # A body with no Content-Length (chunked) is refused before it is read.
    channel, transport = desk.connect()
    channel.dataReceived(
        b"POST /login HTTP/1.1\r\nHost: 127.0.0.1:8081\r\nOrigin: "
        + ORIGIN.encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 413 ")


def test_a_login_whose_body_trickles_in_meets_the_headers_deadline(desk):
    channel, transport = desk.connect()
    channel.dataReceived(
        b"POST /login HTTP/1.1\r\nHost: 127.0.0.1:8081\r\nOrigin: "
        + ORIGIN.encode()
        + b"\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 40\r\n\r\nname=al"
    )
    desk.clock.advance(HEADERS_DEADLINE - 1)
    assert not transport.disconnecting
    desk.clock.advance(1)
    assert transport.disconnecting or transport.disconnected


def test_password_checks_are_capped_and_a_flood_is_told_to_wait(desk):
    desk.hold_checks = True
    statuses = []
    for n in range(12):
        response_raw = []
        channel, transport = desk.connect()
        body = f"name=alice&password=guess+{n}+of+many".encode()
        channel.dataReceived(
            b"POST /login HTTP/1.0\r\nHost: 127.0.0.1:8081\r\nOrigin: "
            + ORIGIN.encode()
            + b"\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        response_raw.append(transport.value())
        statuses.append(response_raw[0][:12])
    # Two checks run at once, eight wait; the next are told to come back.
    assert len(desk.checks) == 2
    assert statuses[:10] == [b""] * 10
    assert statuses[10:] == [b"HTTP/1.0 503"] * 2


def test_a_check_that_fails_tells_the_browser_what_to_do(desk, logged_failures):
    """A bug, or a thread that died: the log has the traceback; the login
    page gets one line that says what happened and what to do."""

    def broken(work):
        return fail(MemoryError("scrypt could not have its memory"))

    desk.door._run = broken
    response = Browser(desk).login()
    assert response.status == 500
    assert response.json == {
        "error": "the server could not check the password; try again, and "
        "if it goes on, tell whoever runs the desk (its log says why)"
    }
    assert "set-cookie" not in response.headers
    assert [e["log_failure"].type for e in logged_failures] == [MemoryError]


def test_the_password_check_runs_in_a_thread_by_default(monkeypatch):
    ran = []

    def defer_to_thread(work):
        ran.append(work)
        return succeed(None)

    monkeypatch.setattr("twisted.internet.threads.deferToThread", defer_to_thread)
    door_module._threads(lambda: None)
    assert len(ran) == 1


# Sessions end.


def test_logout_ends_the_session_on_the_server_and_closes_its_pages(desk):
    browser = Browser(desk)
    browser.login()
    stolen = dict(browser.cookies)
    socket = browser.socket()
    assert socket.accepted
    response = browser.request("POST", "/logout")
    assert response.status == 200
    assert any("Max-Age=0" in c for c in response.headers["set-cookie"])
    socket.pump()
    assert socket.close is not None
    assert (socket.close.code, socket.close.reason) == (SESSION_ENDED, "you logged out")
    # The old cookie, replayed, is no session any more.
    replay = Browser(desk)
    replay.cookies = stolen
    assert replay.get("/api/me").status == 401
    assert replay.get("/").status == 303


def test_logout_must_come_from_the_desks_own_page(desk):
    browser = Browser(desk)
    browser.login()
    browser.origin = "http://evil.example"
    assert browser.request("POST", "/logout").status == 403
    assert browser.get("/api/me").status == 200


def test_an_idle_session_expires_but_an_open_desk_page_keeps_it(desk):
    idle = Browser(desk)
    idle.login()
    busy = Browser(desk)
    busy.login(name="bob", password=BOB_PASSWORD)
    socket = busy.socket()
    policy = SessionPolicy()
    for _ in range(int(policy.idle // SWEEP) + 2):
        desk.clock.advance(SWEEP)
    assert idle.get("/api/me").status == 401
    assert busy.get("/api/me").status == 200
    socket.pump()
    assert socket.close is None
    # However busy, a session ends at its absolute time, and its page closes.
    while desk.clock.seconds() < 1_000_000 + policy.absolute + SWEEP:
        desk.clock.advance(SWEEP)
    socket.pump()
    assert socket.close.code == SESSION_ENDED
    assert "expired" in socket.close.reason
    assert busy.get("/api/me").status == 401


def test_a_new_password_ends_the_accounts_sessions(desk, tmp_path):
    browser = Browser(desk)
    browser.login()
    other = Browser(desk)
    other.login(name="bob", password=BOB_PASSWORD)
    # Alice's line changes, as python -m sockchat.desk passwd does it; Bob's
    # stays.
    alice = Account("alice", hash_password("alice's new password", FAST), "Alice")
    write_account(desk.accounts_path, alice)
    assert browser.get("/api/me").status == 401
    assert other.get("/api/me").status == 200
    assert browser.login(password="alice's new password").status == 200


# The desk's WebSocket.


def test_the_desk_socket_refuses_other_origins_even_with_a_session(desk, logged):
    browser = Browser(desk)
    browser.login()
    for origin in ("http://evil.example", "https://127.0.0.1:8081", None):
        socket = browser.socket(origin=origin)
        assert not socket.accepted, origin
        assert socket.raw.startswith(b"HTTP/1.1 403 ")
    assert "refused a cross-origin desk WebSocket" in "\n".join(logged)
    assert desk.door.desk.pages("alice") == []
    # The one without an Origin is logged as such, not as "origin , host".
    [no_origin] = [t for t in logged if "no Origin header" in t]
    assert ": origin (none), host 127.0.0.1:8081: " in no_origin


def test_a_rebound_host_name_is_refused_everywhere(desk):
    browser = Browser(desk)
    for path in ("/", "/login", "/desk.js", "/api/me"):
        channel, transport = desk.connect()
        channel.dataReceived(
            f"GET {path} HTTP/1.0\r\nHost: evil.example:8081\r\n\r\n".encode()
        )
        assert transport.value().startswith(b"HTTP/1.0 403 "), path
    del browser


def test_every_page_has_the_strict_policy_and_loads_nothing_from_elsewhere(desk):
    browser = Browser(desk)
    for path in ("/login", "/desk.js", "/login.js", "/desk.css", "/favicon.svg"):
        response = browser.get(path)
        assert response.status == 200, path
        assert response.header("content-security-policy") == CONTENT_SECURITY_POLICY
        assert response.header("x-content-type-options") == "nosniff"
        assert response.header("x-frame-options") == "DENY"
        body = response.body
        assert b"http:" not in body.replace(b"http://www.w3.org/2000/svg", b"")
        assert b"https:" not in body.replace(b'"https:"', b"")
        assert not re.search(rb"""(src|href|action)=["']?//""", body)
    assert "innerHTML" not in browser.get("/desk.js").body.decode()
    assert "innerHTML" not in browser.get("/login.js").body.decode()


def test_an_operator_takes_a_line_and_answers_it_once(desk):
    proto, client = desk.client("where is my parcel?")
    assert said(client) == [
        "!info queued: no operator is online yet; your line waits for the first one"
    ]
    browser = Browser(desk)
    browser.login()
    socket = browser.socket()
    hello, view = socket.greeting[:2]
    assert hello["type"] == "hello"
    assert hello["me"] == {"name": "alice", "display": "Alice"}
    assert hello["hold"] == 3
    (line,) = view["lines"]
    assert line["excerpt"] == "where is my parcel?"
    assert line["holder"] is None
    messages = socket.send(type="take", entry=line["entry"])
    (conversation,) = of(messages, "conversation")
    assert conversation["entry"] == line["entry"]
    assert [(s["who"], s["text"]) for s in conversation["history"]] == [
        ("client", "where is my parcel?"),
        ("notice", "Alice took it"),
    ]
    # The client is told, once, who answers it.
    assert said(client) == ["!info operator: Alice is answering you now."]
    messages = socket.send(type="answer", entry=line["entry"], text="It left today.")
    assert of(messages, "turn") == [
        {
            "type": "turn",
            "conversation": "i1/1",
            "entry": None,
            "text": "",
            "why": "",
        }
    ]
    assert said(client) == ["It left today."]
    # The turn rule: a second answer to that line is refused, and never sent.
    messages = socket.send(type="answer", entry=line["entry"], text="Again!")
    assert of(messages, "problem") == [
        {
            "type": "problem",
            "why": "that line has its answer already: one answer per line",
        }
    ]
    assert said(client) == []
    # The client's next line is Alice's at once, and the client is not
    # told again who answers it.
    proto.dataReceived(b"thanks!\n")
    messages = socket.pump()
    (turn,) = of(messages, "turn")
    assert turn["text"] == "thanks!"
    assert [s["said"]["text"] for s in of(messages, "said")] == ["thanks!"]
    socket.send(type="answer", entry=turn["entry"], text="You are welcome.")
    assert said(client) == ["You are welcome."]
    socket.send(type="end", conversation="i1/1")
    assert said(client) == ["!bye kicked: the operator ended this conversation."]


def test_two_operators_see_each_others_held_lines_as_held(desk):
    alice, bob = Browser(desk), Browser(desk)
    alice.login()
    bob.login(name="bob", password=BOB_PASSWORD)
    at_alice, at_bob = alice.socket(), bob.socket()
    desk.client("a question")
    (view,) = of(at_bob.pump(), "desk")[-1:]
    entry = view["lines"][0]["entry"]
    at_alice.pump()
    at_alice.send(type="take", entry=entry)
    (view,) = of(at_bob.pump(), "desk")[-1:]
    assert view["lines"][0]["holder"] == {"name": "alice", "display": "Alice"}
    assert view["held"] == [
        {
            "conversation": "i1/1",
            "label": view["lines"][0]["label"],
            "holder": {"name": "alice", "display": "Alice"},
        }
    ]
    assert [o["name"] for o in view["operators"]] == ["alice", "bob"]
    assert of(at_bob.send(type="take", entry=entry), "problem") == [
        {"type": "problem", "why": "Alice holds that conversation"}
    ]
    assert of(at_bob.send(type="answer", entry=entry, text="mine"), "problem") == [
        {"type": "problem", "why": "take the conversation before answering it"}
    ]


def test_a_reload_keeps_what_the_operator_holds(desk):
    browser = Browser(desk)
    browser.login()
    socket = browser.socket()
    desk.client("hello?")
    entry = of(socket.pump(), "desk")[-1]["lines"][0]["entry"]
    socket.send(type="take", entry=entry)
    socket.lost()
    desk.clock.advance(5)
    again = browser.socket()
    (conversation,) = of(again.greeting, "conversation")
    assert conversation["entry"] == entry
    # Gone for longer than the grace, it goes back to the queue.
    again.lost()
    for _ in range(31):  # time passes: the instance beats meanwhile
        desk.clock.advance(1)
    other = Browser(desk)
    other.login(name="bob", password=BOB_PASSWORD)
    view = of(other.socket().greeting, "desk")[-1]
    assert view["lines"][0]["holder"] is None


def test_bad_desk_messages_are_refused_not_obeyed(desk):
    browser = Browser(desk)
    browser.login()
    socket = browser.socket()
    socket.pump()
    for fields, why in [
        ({"type": "take"}, "take needs the line's entry"),
        ({"type": "answer", "entry": "1"}, "answer needs its text"),
        ({"type": "shutdown"}, "not a desk command"),
        ({"type": "take", "entry": "x" * 500}, "take needs the line's entry"),
    ]:
        (problem,) = of(socket.send(**fields), "problem")
        assert problem["why"].startswith(why)
    socket.channel.dataReceived(socket.ws.send(TextMessage("not json")))
    (problem,) = of(socket.pump(), "problem")
    assert problem["why"] == "a desk message is a JSON object"
    assert socket.close is None
    # Binary, and too long, close the socket.
    socket.channel.dataReceived(socket.ws.send(BytesMessage(b"\x00")))
    socket.pump()
    assert socket.close.code == 1003
    other = browser.socket()
    other.pump()
    other.channel.dataReceived(other.ws.send(TextMessage("x" * 70_000)))
    other.pump()
    assert other.close.code == 1009


def test_desk_connections_have_caps_of_their_own(tmp_path):
    desk = Desk(tmp_path, max_per_ip=2)
    held = [desk.connect(host="192.0.2.9") for _ in range(2)]
    channel, transport = desk.connect(host="192.0.2.9")
    assert transport.value().startswith(b"HTTP/1.1 503 ")
    # The clients' own caps are not used up by the desk.
    assert desk.factory.admission.total == 0
    assert desk.door.gate.admission.total == 2
    for channel, _ in held:
        channel.connectionLost(Failure(ConnectionDone()))
    assert desk.door.gate.admission.total == 0


def test_a_socket_counts_against_the_desks_caps_until_it_closes(desk):
    browser = Browser(desk)
    browser.login()
    socket = browser.socket()
    assert desk.door.gate.admission.total == 1
    socket.lost()
    assert desk.door.gate.admission.total == 0


def test_a_refused_upgrade_is_said_and_does_not_open_a_page(desk):
    browser = Browser(desk)
    browser.login()
    channel, transport = desk.connect()
    jar = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    channel.dataReceived(
        f"GET /socket HTTP/1.1\r\nHost: {HOST}\r\nOrigin: {ORIGIN}\r\n"
        f"Cookie: {jar}\r\n\r\n".encode()
    )
    assert transport.value().startswith(b"HTTP/1.1 426 ")
    assert desk.door.desk.pages("alice") == []


def test_an_accounts_file_that_breaks_is_said_once_and_the_old_accounts_stay(
    desk, logged
):
    browser = Browser(desk)
    browser.login()
    desk.accounts_path.write_text("alice:plaintext:Alice\n")
    assert browser.get("/api/me").status == 200
    assert browser.get("/api/me").status == 200
    said = [line for line in logged if "cannot be used" in line]
    assert len(said) == 1
    assert "line 1: the hash is not $scrypt$" in said[0]


def test_hand_back_and_the_hold_limit_over_the_socket(tmp_path):
    desk = Desk(tmp_path, hold=1)
    browser = Browser(desk)
    browser.login()
    socket = browser.socket()
    desk.client("first client")
    desk.client("second client")
    lines = of(socket.pump(), "desk")[-1]["lines"]
    first, second = (line["entry"] for line in lines)
    socket.send(type="take", entry=first)
    (problem,) = of(socket.send(type="take", entry=second), "problem")
    assert problem["why"] == (
        "you hold 1 conversation, the most you may; hand one back or end one first"
    )
    assert problem["while_holding"] == 1
    messages = socket.send(type="handback", conversation="i1/1")
    assert of(messages, "released") == [
        {"type": "released", "conversation": "i1/1", "why": "handed back to the queue"}
    ]
    view = of(messages, "desk")[-1]
    assert [line["holder"] for line in view["lines"]] == [None, None]
    # The hold is free again: the second client's line may be taken.
    (conversation,) = of(socket.send(type="take", entry=second), "conversation")
    assert conversation["history"][0]["text"] == "second client"
