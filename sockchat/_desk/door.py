"""The desk's web door: its pages, its API and its WebSocket, over the desk.

It is thin over the rest of the package: the accounts file checks
passwords, the session store says who is logged in, the throttle how fast
one may try, and ``control.Desk`` runs the desk.  The web mechanisms are
the chat page door's (``sockchat._doors.web``): its site, whose every
connection is admitted by caps and whose requests have a deadline for
their headers (and here, their small body); its Origin and Host checks;
its security headers.

Paths (all same origin, nothing loaded from elsewhere):

- ``GET /login``, ``POST /login``: the login page, and a login (a form
  body: ``name``, ``password``), answered in JSON;
- ``GET /``: the desk page; ``POST /logout``;
- ``GET /api/me``, ``GET /api/desk``: who is logged in, and the desk as
  the page sees it, in JSON;
- ``GET /socket``: the desk's WebSocket (``sockchat._desk.wire``);
- the pages' script, style sheet and icon.

Every path but the login page and the files of the pages refuses a
request without a session: ``/`` sends the browser to ``/login``, the API
and the WebSocket answer 401.  ``POST`` requests and the WebSocket must
come from a page of this server (their ``Origin``), and every request must
name this server in ``Host`` when it listens on a loopback address.  The
session cookie is ``HttpOnly`` and ``SameSite=Strict``, and, over TLS,
``Secure`` with the ``__Host-`` prefix.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs

from attrs import field, frozen
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.websocket import WebSocketResource, WebSocketTransport
from wsproto.utilities import LocalProtocolError

from sockchat._core.limits import Admission
from sockchat._core.render import safe_text
from sockchat._desk.accounts import MAX_PASSWORD, Account, Accounts, AccountsFile
from sockchat._desk.canned import Canned
from sockchat._desk.control import Desk, PageMessage, Problem
from sockchat._desk.queue import IDeskQueue, Operator
from sockchat._desk.sessions import Session, SessionPolicy, SessionStore
from sockchat._desk.throttle import DeviceCookies, LoginThrottle, ThrottlePolicy
from sockchat._desk.wire import decode, encode
from sockchat._doors.quiet import LogLimiter
from sockchat._doors.tcp import describe_address
from sockchat._doors.web import (
    SECURITY_HEADERS,
    AdmissionGate,
    ChatChannel,
    ChatSite,
    StaticFile,
    handshake_problem,
    header_text,
    log_cross_origin,
    names_this_host,
    not_a_handshake,
    origin_problem,
    read_asset,
    stream_messages,
)

__all__ = [
    "DeskDoor",
    "DeskGate",
    "DeskSettings",
    "DeskSocket",
    "desk_site",
]

log = Logger(namespace="sockchat.desk")

_T = TypeVar("_T")

#: Bytes a login's body may have: a name and a password, form-encoded.
MAX_LOGIN_BODY = 4096
#: Seconds between looks at the sessions (expiry, changed accounts).
SWEEP = 30.0
#: The WebSocket close code when the session ends (logout, expiry): in the
#: range RFC 6455 leaves to applications.
SESSION_ENDED = 4001
#: Days a device cookie lasts (see ``throttle``).
DEVICE_DAYS = 30
#: What a login is told when its password check failed (a bug, or the
#: server out of memory): the log has the traceback.
CHECK_FAILED = (
    "the server could not check the password; try again, and if it goes on, "
    "tell whoever runs the desk (its log says why)"
)

#: The pages' files, shipped in ``sockchat/web/desk`` (the icon is the chat
#: page's).
ASSETS = {
    b"desk.js": (("desk", "desk.js"), "text/javascript; charset=utf-8"),
    b"login.js": (("desk", "login.js"), "text/javascript; charset=utf-8"),
    b"desk.css": (("desk", "desk.css"), "text/css; charset=utf-8"),
    b"favicon.svg": (("favicon.svg",), "image/svg+xml"),
}


@frozen
class DeskSettings:
    """How the desk behaves: the choices docs/desk.md explains."""

    #: Conversations an operator may hold at once.
    hold: int = 3
    #: The longest answer, in bytes (the server's ``--max-line``).
    max_answer: int = 65536
    sessions: SessionPolicy = field(factory=SessionPolicy)
    throttle: ThrottlePolicy = field(factory=ThrottlePolicy)
    #: Password checks that may run at once, and that may wait for one.
    kdf_running: int = 2
    kdf_waiting: int = 8
    #: Connections to the desk at once, in all and from one address
    #: (loopback ones are not counted per address unless *cap_loopback*).
    max_connections: int = 200
    max_per_ip: int = 20
    cap_loopback: bool = False


class DeskGate(AdmissionGate):
    """Who may connect to the desk: its own caps, the server's address rules."""

    def __init__(self, clock: IReactorTime, admission: Admission) -> None:
        super().__init__(
            clock,
            admission,
            "desk",
            logger=log,
            words=lambda why: why.replace("--max-", "the desk's max-"),
        )


def _threads(work: Callable[[], _T]) -> Deferred[_T]:
    from twisted.internet.threads import deferToThread

    return deferToThread(work)


class DeskDoor:
    """The desk's state behind its site: accounts, sessions, sockets, desk.

    *run* runs a slow function (a password check) off the reactor thread
    and gives its result (default: ``deferToThread``; tests run it at
    once).
    """

    def __init__(
        self,
        queue: IDeskQueue,
        accounts: AccountsFile,
        clock: IReactorTime,
        *,
        settings: DeskSettings | None = None,
        canned: tuple[Canned, ...] = (),
        admission: Admission | None = None,
        run: Callable[[Callable[[], Any]], Deferred[Any]] | None = None,
    ) -> None:
        self.settings = settings = settings or DeskSettings()
        self.accounts = accounts
        self.clock = clock
        self.desk = Desk(
            queue,
            clock,
            hold=settings.hold,
            max_answer=settings.max_answer,
            canned=canned,
        )
        self.sessions = SessionStore(settings.sessions)
        self.throttle = LoginThrottle(settings.throttle)
        self.devices = DeviceCookies()
        self.gate = DeskGate(
            clock,
            admission
            or Admission(
                max_clients=settings.max_connections,
                max_per_ip=settings.max_per_ip,
                cap_loopback=settings.cap_loopback,
            ),
        )
        self._run = run or _threads
        self._checks = DeferredSemaphore(settings.kdf_running)
        self._quiet = LogLimiter(clock)
        #: Open desk sockets, by session key.
        self.sockets: dict[str, list[DeskSocket]] = {}
        self._sweep: IDelayedCall | None = None
        self._problem: str | None = None

    def start(self) -> Deferred[None]:
        self._sweep = self.clock.callLater(SWEEP, self.sweep)
        return self.desk.start()

    def stop(self) -> Deferred[None]:
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        for sockets in list(self.sockets.values()):
            for socket in list(sockets):
                socket.close(1001, "the server is shutting down")
        return self.desk.stop()

    def _accounts(self) -> Accounts:
        """The accounts now; a file that became broken is said once."""
        accounts = self.accounts.current()
        problem = self.accounts.problem
        if problem != self._problem:
            self._problem = problem
            if problem is not None:
                log.warn(
                    "desk: the accounts file changed but cannot be used ({why}); "
                    "the accounts read before it stay",
                    why=problem,
                )
        return accounts

    # Sessions.

    def session(self, request: Request) -> Session | None:
        """The live session *request* comes with, or None."""
        token = request.getCookie(_cookie_name(request).encode())
        text = token.decode("ascii", "replace") if token else None
        session = self.sessions.find(text, self.clock.seconds())
        if session is None:
            return None
        account = self._accounts().get(session.account)
        if account is None or account.stamp != session.stamp:
            self._ended(session, "your account changed; log in again")
            return None
        return session

    def _ended(self, session: Session, why: str) -> None:
        """*session* is over: close its pages; if it was its operator's
        last, what they hold goes back to the queue at once."""
        self.sessions.end(session.key)
        last = not self.sessions.of(session.account)
        operator = Operator(session.account, session.display)
        sockets = self.sockets.pop(session.key, [])
        for socket in sockets:
            socket.at_once = last
            socket.close(SESSION_ENDED, why)
        if last and not sockets:
            self.desk.gone(operator)

    def sweep(self) -> None:
        """End sessions past their time or of changed accounts; a session
        with a desk page open is in use."""
        now = self.clock.seconds()
        for key in self.sockets:
            self.sessions.touch(key, now)
        for session in self.sessions.expire(now):
            self._ended(session, "your session expired; log in again")
        accounts = self._accounts()

        def stamp(name: str) -> str | None:
            account = accounts.get(name)
            return account.stamp if account is not None else None

        for session in self.sessions.stale(stamp):
            self._ended(session, "your account changed; log in again")
        self._sweep = self.clock.callLater(SWEEP, self.sweep)

    # Logging in and out.

    def login(self, request: Request) -> bytes | int:
        peer = request.getClientAddress()
        host = getattr(peer, "host", None)
        fields = _form(request)
        name = fields.get("name", "")
        password = fields.get("password", "")
        if not name or not password or len(password) > MAX_PASSWORD:
            return _json(request, 400, error="give a name and a password")
        accounts = self._accounts()
        known = name if accounts.get(name) is not None else None
        device_cookie = request.getCookie(_device_name(request).encode())
        device = (
            self.devices.device(device_cookie.decode("ascii", "replace"), name)
            if device_cookie and known
            else None
        )
        now = self.clock.seconds()
        wait = self.throttle.wait(host, known, device, now)
        if wait > 0:
            seconds = int(wait) + (wait > int(wait))
            if self._quiet.admit("throttled") is not None:
                log.info(
                    "desk: login attempts from {peer} are waiting out failures "
                    "(one line a minute)",
                    peer=describe_address(peer),
                )
            request.setHeader(b"retry-after", str(seconds).encode())
            return _json(
                request,
                429,
                error=f"too many failed logins; try again in {seconds} s",
                retry=seconds,
            )
        if len(self._checks.waiting) >= self.settings.kdf_waiting:
            return _json(
                request, 503, error="the desk is busy checking logins; try again soon"
            )
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        checked: Deferred[Account | None] = self._checks.run(
            self._run, lambda: accounts.check(name, password)
        )

        def judged(account: Account | None) -> None:
            if account is None:
                self.throttle.failed(host, known, device, self.clock.seconds())
                log.info(
                    "desk: failed login as {name} from {peer}",
                    name=safe_text(name[:64]),
                    peer=describe_address(peer),
                )
                if not gone:
                    request.write(_json(request, 401, error="wrong name or password"))
                    request.finish()
                return
            self.throttle.succeeded(host, known, device)
            self._logged_in(request, account, gone)

        def failed(failure: Failure) -> None:
            log.failure("desk: checking a password failed", failure)
            if not gone:
                request.write(_json(request, 500, error=CHECK_FAILED))
                request.finish()

        checked.addCallbacks(judged, failed)
        return NOT_DONE_YET

    def _logged_in(self, request: Request, account: Account, gone: list[bool]) -> None:
        token, _, pushed = self.sessions.open(
            account.name, account.display, account.stamp, self.clock.seconds()
        )
        for old in pushed:
            self._ended(old, "you logged in elsewhere too often; log in again")
        log.info(
            "desk: {name} logged in from {peer}",
            name=account.name,
            peer=describe_address(request.getClientAddress()),
        )
        if gone:
            return
        secure = request.isSecure()
        request.addCookie(
            _cookie_name(request),
            token,
            path="/",
            secure=secure,
            httpOnly=True,
            sameSite="strict",
        )
        request.addCookie(
            _device_name(request),
            self.devices.issue(account.name),
            path="/",
            max_age=str(DEVICE_DAYS * 86400),
            secure=secure,
            httpOnly=True,
            sameSite="strict",
        )
        request.write(_json(request, 200, name=account.name, display=account.display))
        request.finish()

    def logout(self, request: Request) -> bytes:
        session = self.session(request)
        if session is None:
            return _json(request, 401, error="not logged in")
        log.info("desk: {name} logged out", name=session.account)
        self._ended(session, "you logged out")
        request.addCookie(
            _cookie_name(request),
            "",
            path="/",
            max_age="0",
            secure=request.isSecure(),
            httpOnly=True,
            sameSite="strict",
        )
        return _json(request, 200, done=True)

    # The desk's sockets.

    def opened(self, socket: DeskSocket) -> None:
        self.sockets.setdefault(socket.session.key, []).append(socket)
        self.desk.arrive(socket.operator, socket)

    def closed(self, socket: DeskSocket) -> None:
        sockets = self.sockets.get(socket.session.key, [])
        if socket in sockets:
            sockets.remove(socket)
            if not sockets:
                del self.sockets[socket.session.key]
        self.desk.leave(socket.operator, socket, at_once=socket.at_once)

    def said(self, socket: DeskSocket, text: str) -> None:
        """A message from a desk page."""
        if self.sessions.touch(socket.session.key, self.clock.seconds()) is None:
            socket.close(SESSION_ENDED, "your session is over; log in again")
            return
        command = decode(text)
        if isinstance(command, str):
            socket.send(Problem(command))
            return
        self.desk.command(socket.operator, socket, command)


def _cookie_name(request: Request) -> str:
    return "__Host-sockchat-desk" if request.isSecure() else "sockchat-desk"


def _device_name(request: Request) -> str:
    return (
        "__Host-sockchat-desk-device" if request.isSecure() else "sockchat-desk-device"
    )


def _form(request: Request) -> dict[str, str]:
    """A form body's fields (the last of each), or none if it is not one."""
    kind = (header_text(request, b"content-type") or "").split(";")[0].strip()
    if kind.lower() != "application/x-www-form-urlencoded" or request.content is None:
        return {}
    body = request.content.read(MAX_LOGIN_BODY + 1)
    try:
        parsed = parse_qs(body.decode("utf-8"), max_num_fields=8, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return {}
    return {key: values[-1] for key, values in parsed.items() if values}


def _json(request: Request, code: int, **fields: Any) -> bytes:
    """A JSON response's body, its code and headers set."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(fields, ensure_ascii=False).encode("utf-8")


class DeskSocket:
    """One open desk page: the ``WebSocketProtocol`` of ``/socket``.

    It is a page of ``control.Desk``: what it is sent goes out as one JSON
    text message.  A message from the page may be at most *limit*
    characters; a longer one closes the socket (1009), a binary one too
    (1003), and what it had sent is not kept.
    """

    def __init__(self, door: DeskDoor, request: Request, session: Session) -> None:
        self.door = door
        self.session = session
        self.operator = Operator(session.account, session.display)
        self._request = request
        self._channel = cast(ChatChannel, request.channel)
        self._tcp = cast(ITCPTransport, request.channel.transport)
        self._socket: WebSocketTransport | None = None
        self._pieces: list[str] = []
        self._size = 0
        self._limit = door.settings.max_answer + 1024
        self._open = False
        #: Set when its session ended and was its operator's last.
        self.at_once = False

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self._socket = transport
        stream_messages(transport, self._piece, self._binary)

    def negotiationFinished(self) -> None:
        self._open = True
        self.door.opened(self)

    def _piece(self, text: str) -> None:
        if self._size < 0:
            return  # closing: too long already
        self._size += len(text)
        if self._size > self._limit:
            self._size = -1
            self._pieces.clear()
            self.close(1009, "a desk message that long is not read")
            return
        self._pieces.append(text)

    def textMessageReceived(self, message: str) -> None:
        self._piece(message)
        if self._size < 0:
            return
        text = "".join(self._pieces)
        self._pieces.clear()
        self._size = 0
        self.door.said(self, text)

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        self._binary(bytes(data))

    def _binary(self, data: bytes) -> None:
        self.close(1003, "the desk speaks JSON text")

    def pongReceived(self, payload: bytes) -> None:
        pass

    def send(self, message: PageMessage) -> None:
        if self._socket is not None:
            with suppress(LocalProtocolError):  # closing
                self._socket.sendTextMessage(encode(message))

    def close(self, code: int, why: str) -> None:
        socket = self._socket
        if socket is None:
            return
        try:
            socket.loseConnection(code, why)  # type: ignore[call-arg]  # it takes a reason
        except LocalProtocolError:  # closing already
            self._tcp.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self._channel.release()
        self._socket = None
        if self._open:
            self._open = False
            self.door.closed(self)


class _Sockets:
    """Make each ``/socket`` connection's ``DeskSocket``, for its session."""

    def __init__(self, door: DeskDoor) -> None:
        self.door = door

    def buildProtocol(self, request: Request) -> DeskSocket:
        session = self.door.session(request)
        assert session is not None  # render_GET has just found it
        return DeskSocket(self.door, request, session)


class _SocketResource(WebSocketResource):
    """``/socket``: a page of this server, with a session, may upgrade."""

    def __init__(self, door: DeskDoor) -> None:
        super().__init__(cast(Any, _Sockets(door)))
        self.door = door

    def render_GET(self, request: Request) -> bytes | int:
        why = origin_problem(request, required=True)
        if why is not None:
            log_cross_origin(log, request, why, "desk WebSocket")
            return _json(request, 403, error="open the desk from its own page")
        if self.door.session(request) is None:
            return _json(request, 401, error="log in first")
        problem = handshake_problem(request)
        if problem is not None:
            return not_a_handshake(
                request, problem, b"/socket is the desk's WebSocket; open / instead."
            )
        return super().render_GET(request)


class _Login(Resource):
    isLeaf = True

    def __init__(self, door: DeskDoor) -> None:
        super().__init__()
        self.door = door
        self._page = StaticFile(read_asset("desk", "login.html"), HTML)

    def render_GET(self, request: Request) -> bytes:
        if self.door.session(request) is not None:
            return _see_other(request, b"/")
        return self._page.render_GET(request)

    def render_POST(self, request: Request) -> bytes | int:
        why = origin_problem(request, required=True)
        if why is not None:
            log_cross_origin(log, request, why, "desk login")
            return _json(request, 403, error="log in from the desk's own page")
        return self.door.login(request)


class _Logout(Resource):
    isLeaf = True

    def __init__(self, door: DeskDoor) -> None:
        super().__init__()
        self.door = door

    def render_POST(self, request: Request) -> bytes:
        why = origin_problem(request, required=True)
        if why is not None:
            log_cross_origin(log, request, why, "desk logout")
            return _json(request, 403, error="log out from the desk's own page")
        return self.door.logout(request)


class _DeskPage(Resource):
    """``/``: the desk, for a session; the login page's address otherwise."""

    isLeaf = True

    def __init__(self, door: DeskDoor) -> None:
        super().__init__()
        self.door = door
        self._page = StaticFile(read_asset("desk", "desk.html"), HTML)

    def render_GET(self, request: Request) -> bytes:
        if self.door.session(request) is None:
            return _see_other(request, b"/login")
        return self._page.render_GET(request)


class _Api(Resource):
    """``/api/me`` and ``/api/desk``: JSON, for a session only."""

    isLeaf = True

    def __init__(self, door: DeskDoor) -> None:
        super().__init__()
        self.door = door

    def render_GET(self, request: Request) -> bytes:
        session = self.door.session(request)
        if session is None:
            return _json(request, 401, error="log in first")
        what = request.postpath[0] if request.postpath else b""
        me = {"name": session.account, "display": session.display}
        if what == b"me":
            return _json(request, 200, **me)
        if what == b"desk":
            view = json.loads(
                encode(self.door.desk.model.desk(self.door.clock.seconds()))
            )
            return _json(request, 200, me=me, hold=self.door.desk.hold, **view)
        return _json(request, 404, error="no such API: /api/me or /api/desk")


class _Forbidden(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(403)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"sockchat: this server is not known by that name.\n"


class _Root(Resource):
    """Checks every request's ``Host`` and sets the security headers; the
    rest is its children's."""

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        local = getattr(request.getHost(), "host", "")
        host = header_text(request, b"host")
        if not names_this_host(host, local):
            log.info(
                "desk: refused a request for host {host} (DNS rebinding?)",
                host=safe_text(host or ""),
            )
            return _Forbidden()
        return cast(IResource, super().getChildWithDefault(path, request))

    def getChild(self, path: bytes, request: Request) -> IResource:
        from twisted.web.pages import notFound

        return notFound()


HTML = "text/html; charset=utf-8"


def _see_other(request: Request, where: bytes) -> bytes:
    request.setResponseCode(303)
    request.setHeader(b"location", where)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b"sockchat: see " + where + b"\n"


def desk_site(door: DeskDoor) -> ChatSite:
    """The desk's site, admitted by its gate, with bodies for the login."""
    root = _Root()
    root.putChild(b"", _DeskPage(door))
    root.putChild(b"login", _Login(door))
    root.putChild(b"logout", _Logout(door))
    root.putChild(b"api", _Api(door))
    root.putChild(b"socket", _SocketResource(door))
    for path, (where, content_type) in ASSETS.items():
        root.putChild(path, StaticFile(read_asset(*where), content_type))
    return ChatSite(root, door.gate, max_body=MAX_LOGIN_BODY)
