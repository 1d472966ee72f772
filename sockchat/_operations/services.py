"""Services that run sockchat in a Twisted application (used by twistd).

``ChatService`` (public: ``sockchat.ChatService``) listens and says
goodbye to every client at stop; ``PortChatService`` and ``WebChatService``
are ``twistd sockchat``'s doors (``--port``, ``--web``); ``DeskService``
serves the operators' desk (``--desk``); ``MetricsService``
serves ``/metrics`` and ``/healthz`` (``--metrics``) until they have all
stopped;
``OperatorConsoleService`` puts the operator's terminal behind a
``ConsoleResponder``.
"""

from __future__ import annotations

import atexit
import errno
import os
import re
import select
import signal
import sys
from collections.abc import Callable, Mapping
from types import FrameType, MappingProxyType
from typing import Any, Protocol, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.stdio import StandardIO
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Site

from sockchat._console.responder import ConsoleResponder, OperatorInput
from sockchat._console.stdio import PASTE_OFF, PASTE_ON, BlockingModes, TerminalMode
from sockchat._core.stats import Health
from sockchat._desk.door import DeskDoor, desk_site
from sockchat._doors.tcp import ChatServerFactory, describe_address
from sockchat._doors.web import chat_site
from sockchat._operations.prometheus import healthz_resource
from sockchat._operations.transcript_file import TranscriptFile

__all__ = [
    "ChatService",
    "DeskService",
    "MetricsService",
    "OperatorConsoleService",
    "PortChatService",
    "TranscriptService",
    "WebChatService",
    "fatal",
]

log = Logger(namespace="sockchat")


def fatal(message: str) -> SystemExit:
    """A one-line error for twistd to print before it exits with status 1.

    twistd answers a ``UsageError`` with its whole usage text; these errors
    are about a value, so one line that names the fix is clearer.
    """
    return SystemExit(f"sockchat: {message}")


class _Listener:
    """One endpoint, listened on at once when asked, with what to say if
    the port cannot be had.

    *description* is the endpoint as a person would write it, and *option*
    the command-line option that chose it, for that message.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        description: str | None,
        option: str | None,
    ) -> None:
        self._endpoint = endpoint
        self._where = description or "the endpoint"
        self._option = option
        self.port: IListeningPort | None = None

    def listen(self, door: IProtocolFactory) -> str | None:
        """Bind now, and say where (``host:port``); ``None`` if bound
        already.  A port that cannot be had raises ``SystemExit`` with one
        line that says why."""
        if self.port is not None:
            return None
        outcome: list[Any] = []
        self._endpoint.listen(door).addBoth(outcome.append)
        if not outcome:
            raise fatal(
                f"{self._where} did not start listening at once; use a tcp, "
                "tcp6, unix or ssl endpoint"
            )
        result = outcome[0]
        if isinstance(result, Failure):
            raise SystemExit(self._cannot_listen(result))
        self.port = port = cast(IListeningPort, result)
        return describe_address(port.getHost())

    def stop(self) -> Deferred[Any]:
        port, self.port = self.port, None
        return maybeDeferred(port.stopListening) if port else succeed(None)

    def _cannot_listen(self, failure: Failure) -> str:
        error = failure.value
        where = f"sockchat: cannot listen on {self._where}"
        path = unix_socket_path(self._where)
        if path is not None and error is not None:
            why = _unix_socket_problem(path, error)
            if why is not None:
                return f"{where}: {why}"
        if isinstance(error, CannotListenError):
            cause = error.socketError
            if getattr(cause, "errno", None) == errno.EADDRINUSE:
                return (
                    f"{where}: the address is already in use (is another "
                    f"server running? choose another {self._option or 'port'})"
                )
            if getattr(cause, "errno", None) == errno.EACCES:
                return (
                    f"{where}: permission denied (ports below 1024 need "
                    "privileges; choose one above 1024)"
                )
            return f"{where}: {cause}"
        return f"{where}: {failure.getErrorMessage()}"


def unix_socket_path(description: str) -> str | None:
    """The path of a ``unix:`` description (``haproxy:`` around it or not),
    or None for any other kind."""
    inner = description.removeprefix("haproxy:")
    if not inner.startswith("unix:"):
        return None
    # Parameters are split at colons that are not escaped with a backslash.
    for parameter in re.split(r"(?<!\\):", inner)[1:]:
        name, equals, value = parameter.partition("=")
        if not equals:
            return parameter.replace("\\:", ":")
        if name == "address":
            return value.replace("\\:", ":")
    return None


def _unix_socket_problem(path: str, error: BaseException) -> str | None:
    """What went wrong making the socket *path*, in words, with what to do;
    None if the error is not about its folder or its lock.

    Twisted makes ``PATH.lock`` first (a symbolic link to its pid), so a
    missing folder shows as a failed ``symlink('PID', 'PATH.lock')``.
    """
    if isinstance(error, CannotListenError):
        cause = error.socketError
        if cause == "Cannot acquire lock":
            return (
                f"another process holds its lock ({path}.lock): is another "
                "server running? choose another path"
            )
        error = cause if isinstance(cause, OSError) else error
    if not isinstance(error, OSError):
        return None
    folder = os.path.dirname(os.path.abspath(path))
    if error.errno in (errno.ENOENT, errno.ENOTDIR) and not os.path.isdir(folder):
        return f"the folder {folder} does not exist; create it, or choose another path"
    if error.errno in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied to make a socket in {folder}; choose a folder "
            "you may write to"
        )
    if error.errno == errno.EROFS:
        return f"{folder} is on a read-only file system; choose another path"
    if error.errno == errno.ENAMETOOLONG or "too long" in str(error):
        return "the path is too long for a UNIX socket; choose a shorter one"
    return (
        f"cannot make the socket or its lock ({path}.lock) in {folder}: "
        f"{error.strerror or error}; choose another path"
    )


class ChatService(Service):
    """Serve *factory*'s conversations on *endpoint*, in a Twisted
    application; at stop, say goodbye to every client.

    Starting listens; a port that cannot be had raises ``SystemExit`` with
    one line that says why, which twistd prints before it exits 1.
    Stopping stops listening, sends every conversation ``!bye shutdown``,
    and fires once each has closed: a client that does not take its
    goodbye is cut off after a grace of 3 s.

    - *description*: the endpoint as a person would write it, for messages
      (``tcp:9527``).
    - *label*: who answers, for the log line that says where it listens
      (default: the responder's class name).
    """

    #: The command-line option that chose the endpoint, for messages.
    _option: str | None = None
    #: Whether stopping says goodbye to the factory's conversations.
    _says_goodbye = True

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: ChatServerFactory,
        *,
        description: str | None = None,
        label: str | None = None,
    ) -> None:
        self._listener = _Listener(endpoint, description, self._option)
        self._label = label or type(factory.responder).__name__
        #: The factory whose conversations this serves.
        self.factory = factory
        #: Fires once the service has stopped and every conversation closed.
        self.stopped: Deferred[None] = Deferred()

    @property
    def port(self) -> IListeningPort | None:
        """The listening port, from the start (or ``listen``) to the stop."""
        return self._listener.port

    def listen(self) -> None:
        """Bind the port now, if it is not bound yet.

        Starting the service does this; ``twistd sockchat`` calls it while
        it builds the service, to report a port that cannot be had before
        it starts logging or writes its pidfile.
        """
        address = self._listener.listen(self.factory)
        if address is not None:
            log.info(
                "sockchat listening on {address} (answered by {responder})",
                address=address,
                responder=self._label,
            )

    def privilegedStartService(self) -> None:
        """Listen: twistd starts this before it gives up root, so a port
        below 1024 works."""
        super().privilegedStartService()
        self.listen()

    def stopService(self) -> Deferred[None]:
        """Stop listening and say goodbye to every conversation; fire once
        each has closed."""
        super().stopService()
        stopping = self._listener.stop()
        # Each conversation gets its bye, and is aborted if it cannot take
        # it within the factory's close grace.
        closing = self.factory.close_all() if self._says_goodbye else succeed(None)
        done: Deferred[list[Any]] = gatherResults([stopping, closing])

        def tell(result: object) -> None:
            if not self.stopped.called:
                self.stopped.callback(None)
            if isinstance(result, Failure):
                result.raiseException()

        return done.addBoth(tell)


class PortChatService(ChatService):
    """``twistd sockchat``'s TCP door: a ``ChatService`` for ``--port``."""

    _option = "--port"


class WebChatService(ChatService):
    """Serve the chat page and its WebSocket (``--web``).

    Browser conversations come from *factory*, which the TCP door shares:
    one responder, one set of limits and caps, one count of conversations.
    At stop, the TCP door's service says goodbye to all of them, once.
    *health*, when given, is served at ``/healthz`` beside the page, and
    says "not accepting" (503) from the moment the service stops; each of
    *children* is served at its name (``--trace``'s ``/trace``).
    """

    _option = "--web"
    _says_goodbye = False

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        description: str,
        factory: ChatServerFactory,
        label: str | None = None,
        *,
        secure: bool = False,
        health: Health | None = None,
        children: Mapping[bytes, IResource] = MappingProxyType({}),
    ) -> None:
        super().__init__(endpoint, factory, description=description, label=label)
        self._site = chat_site(factory)
        self._health = health
        if health is not None:
            # /healthz beside the page, for a load balancer in front of it.
            self._site.resource.putChild(b"healthz", healthz_resource(health))
        for name, child in children.items():  # teaching mode's /trace
            self._site.resource.putChild(name, child)
        self._scheme = "https" if secure else "http"

    def listen(self) -> None:
        address = self._listener.listen(self._site)
        if address is not None:
            url = f"{self._scheme}://{address}/"
            log.info(
                "sockchat web page at {url} (answered by {responder})",
                url=url,
                responder=self._label,
            )

    def stopService(self) -> Deferred[None]:
        if self._health is not None:
            self._health.shutting_down()
        return super().stopService()


class DeskService(Service):
    """Serve the operators' desk (``--desk``): its pages and its socket.

    At start the desk loads what the queue holds; at stop every desk page
    is told the server is going away (1001), and the port closes.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        description: str,
        door: DeskDoor,
        *,
        secure: bool = False,
    ) -> None:
        self._listener = _Listener(endpoint, description, "--desk")
        self.door = door
        self._site = desk_site(door)
        self._scheme = "https" if secure else "http"

    def listen(self) -> None:
        """Bind the port now, if it is not bound yet."""
        address = self._listener.listen(self._site)
        if address is not None:
            log.info(
                "sockchat desk at {url} ({hold} conversations at once per operator)",
                url=f"{self._scheme}://{address}/",
                hold=self.door.desk.hold,
            )

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.listen()

    def startService(self) -> None:
        super().startService()
        self.door.start()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        let_go = self.door.stop()
        return let_go.addBoth(lambda _: self._listener.stop())


class MetricsService(Service):
    """Serve ``/metrics`` and ``/healthz`` (``--metrics``).

    At stop it says "not accepting" at once, and goes on answering (503)
    until every service in *draining* has stopped, so that a load balancer
    sees the server leave before its port closes.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        description: str,
        site: Site,
        health: Health,
        draining: list[ChatService],
    ) -> None:
        self._listener = _Listener(endpoint, description, "--metrics")
        self._site = site
        self._health = health
        self._draining = draining

    def listen(self) -> None:
        """Bind the port now, if it is not bound yet."""
        address = self._listener.listen(self._site)
        if address is not None:
            log.info("sockchat metrics at {url}", url=f"http://{address}/metrics")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.listen()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._health.shutting_down()
        drained: Deferred[list[None]] = gatherResults(
            [service.stopped for service in self._draining]
        )
        done = drained.addBoth(lambda _: self._listener.stop())
        return done.addCallback(lambda _: None)


class ConsoleFactory(Protocol):
    """What makes the console: ``ConsoleResponder`` itself, or the like."""

    def __call__(
        self,
        write: Callable[[str], None],
        clock: IReactorTime,
        *,
        editing: bool = ...,
        columns: Callable[[], int] | None = ...,
    ) -> ConsoleResponder: ...


#: What the console of ``--responder console`` says first.
SERVER_BANNER = (
    "sockchat operator console: client lines appear below. Type each answer at "
    "its prompt; q ends that conversation; /help lists the commands; end of "
    "input (Ctrl-D) stops the server.\n"
)


class OperatorConsoleService(Service):
    """Read the operator's answers from stdin; end of input stops the server.

    When stdin and stdout are a terminal, the console reads it key by key
    and edits the line itself (``TerminalMode.keys``, and bracketed paste
    asked for), so that it can draw the prompt again with what the operator
    had typed; the terminal's settings come back at stop, at exit (also
    after a crash) and while the server is stopped by Ctrl-Z.  Otherwise (a
    pipe) it reads lines, as they come.

    The console writes to the terminal at once, not through a buffer, so
    that its lines and twistd's log lines (also written at once) keep their
    order on the screen.  A log line starts on a line of its own, and the
    prompt it pushed up is shown again once after it: the service watches
    the log both before twistd prints an event (it is made before twistd
    starts logging, so its first observer comes first) and after.  Once the
    reactor begins to shut down, the console shows no more prompts.

    *banner* is what it says first; *closing* what it logs at end of input,
    before it stops the reactor (an operator across instances quits).
    """

    def __init__(
        self,
        reactor: Any,
        console_factory: ConsoleFactory,
        *,
        banner: str = SERVER_BANNER,
        closing: str = "operator console closed (end of input); stopping the server",
    ) -> None:
        self._reactor = reactor
        self._banner = banner
        self._closing = closing
        self._modes = BlockingModes.save(0, 1)
        self._stdio: Any = None
        self._out = sys.__stdout__.fileno() if sys.__stdout__ else 1
        self._terminal = TerminalMode.save(0) if os.isatty(self._out) else None
        self._keys = False  # the terminal is in TerminalMode.keys
        self._tstp: Any = None  # SIGTSTP's handler before ours
        self.console = console_factory(
            self._write,
            reactor,
            editing=self._terminal is not None,
            columns=self._columns,
        )
        globalLogPublisher.addObserver(cast(ILogObserver, self._log_coming))
        self._shutdown_trigger: Any = None

    def _write(self, text: str) -> None:
        _write_all(self._out, text.encode("utf-8"))

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self._out).columns
        except OSError:
            return 80

    def _enter_keys(self) -> None:
        if self._terminal is not None and not self._keys:
            self._keys = True
            self._terminal.keys()
            self._write(PASTE_ON)

    def _leave_keys(self, *, flush: bool = True) -> None:
        if self._terminal is not None and self._keys:
            self._keys = False
            self._write(PASTE_OFF)
            self._terminal.restore(flush=flush)

    def _suspend(self, signum: int, frame: FrameType | None) -> None:
        """Ctrl-Z: give the terminal back as it was, stop; on ``fg``, take
        it again and draw the prompt."""
        self.console.interrupting()
        self._leave_keys(flush=False)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # stopped here until SIGCONT
        signal.signal(signal.SIGTSTP, self._suspend)
        self._enter_keys()
        self._reactor.callFromThread(self.console.interrupted)

    def startService(self) -> None:
        super().startService()
        if self._terminal is not None:
            atexit.register(self._leave_keys)
            self._enter_keys()
            if signal.getsignal(signal.SIGTSTP) == signal.SIG_DFL:
                self._tstp = signal.signal(signal.SIGTSTP, self._suspend)
        proto = OperatorInput(self.console, self._input_closed)
        # StandardIO reads stdin; its writer gets /dev/null, so that it does
        # not make the terminal's output non-blocking on its own account.
        self._devnull = os.open(os.devnull, os.O_WRONLY)
        self._stdio = StandardIO(  # type: ignore[call-arg]  # POSIX's takes stdout
            proto, stdout=self._devnull, reactor=self._reactor
        )
        globalLogPublisher.addObserver(cast(ILogObserver, self._log_printed))
        self._shutdown_trigger = IReactorCore(self._reactor).addSystemEventTrigger(
            "before", "shutdown", self.console.close
        )
        self._write(self._banner)

    @staticmethod
    def _printed(event: LogEvent) -> bool:
        level = event.get("log_level")
        return level is not None and level >= LogLevel.info

    def _log_coming(self, event: LogEvent) -> None:
        if self.running and self._printed(event):
            self.console.interrupting()  # twistd prints this line next

    def _log_printed(self, event: LogEvent) -> None:
        if self._printed(event):
            self.console.interrupted()  # twistd has just printed it

    def _input_closed(self) -> None:
        if self.running:
            log.info("{closing}", closing=self._closing)
            IReactorCore(self._reactor).stop()

    def stopService(self) -> None:
        super().stopService()
        self.console.close()
        if self._shutdown_trigger is not None:
            IReactorCore(self._reactor).removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        for observer in (self._log_coming, self._log_printed):
            globalLogPublisher.removeObserver(cast(ILogObserver, observer))
        if self._tstp is not None:
            signal.signal(signal.SIGTSTP, self._tstp)
            self._tstp = None
        self._leave_keys()
        atexit.unregister(self._leave_keys)
        self._modes.restore()


class TranscriptService(Service):
    """Close the transcript file when the application stops."""

    def __init__(self, transcript: TranscriptFile) -> None:
        self.transcript = transcript

    def startService(self) -> None:
        super().startService()
        log.info("transcript: appending to {path}", path=self.transcript.path)

    def stopService(self) -> None:
        super().stopService()
        self.transcript.close()


def _write_all(fd: int, data: bytes) -> None:
    """Write all of *data*, waiting (briefly) if the terminal is busy.

    On a terminal, stdin and stdout share one open file, and Twisted makes
    stdin non-blocking, so writes to stdout can say EAGAIN.
    """
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
        except OSError:
            return  # the terminal is gone: nothing to show it on
