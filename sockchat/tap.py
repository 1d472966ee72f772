"""``twistd sockchat``: options and service wiring (a thin shell)."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from OpenSSL import SSL
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorCore,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import Certificate, CertificateOptions
from twisted.internet.stdio import StandardIO
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure

from ._codec import DEFAULT_MAX_LINE
from ._console import ConsoleResponder, OperatorInput
from ._limits import AccessRules, Admission, parse_networks
from ._responder import EchoResponder, IResponder
from ._server import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_OUTPUT,
    ChatServerFactory,
    describe_address,
)
from ._stdio import BlockingModes

log = Logger(namespace="sockchat")

RESPONDERS = ("console", "echo")

#: Seconds that clients get to take their bye notice at shutdown.
SHUTDOWN_GRACE = 3.0
#: Default caps on connections: generous for a chat line, but finite.
DEFAULT_MAX_CLIENTS = 1000
DEFAULT_MAX_PER_IP = 20


def _fatal(message: str) -> SystemExit:
    """A one-line error for twistd to print before it exits with status 1.

    twistd answers a ``UsageError`` with its whole usage text; these errors
    are about a value, so one line that names the fix is clearer.
    """
    return SystemExit(f"sockchat: {message}")


def endpoint_description(port: str) -> str:
    """A bare port number listens on 127.0.0.1 only; anything else is an
    endpoint description and is used as given."""
    if port.isdigit():
        number = int(port)
        if number > 65535:
            raise _fatal(f"--port {port} is not a port number (0 to 65535)")
        return f"tcp:{number}:interface=127.0.0.1"
    return port


class Options(usage.Options):
    synopsis = "[--port PORT|ENDPOINT] [--responder console|echo] [limits...]"
    longdesc = (
        "A turn-taking chat server: each client speaks one line, then waits "
        "for the answer. A bare port number listens on 127.0.0.1 only; to "
        "accept other hosts, give an endpoint such as tcp:9527 or "
        "tcp6:9527:interface=\\:\\:. Limits take 0 to mean none."
    )
    optParameters: list[list[Any]] = [  # noqa: RUF012 (twisted's API)
        [
            "port",
            "p",
            "9527",
            "Port number (on 127.0.0.1) or Twisted server endpoint description, "
            "e.g. unix:/tmp/chat.sock or ssl:9527:privateKey=key.pem:certKey=cert.pem.",
        ],
        [
            "responder",
            "r",
            None,
            "Who answers: console (you, at this terminal) or echo. "
            "Default: console when stdin is a terminal.",
        ],
        [
            "max-line",
            None,
            str(DEFAULT_MAX_LINE),
            "Longest line accepted from a client, in bytes; longer ones are "
            "refused with a notice.",
        ],
        [
            "idle-timeout",
            None,
            f"{DEFAULT_IDLE_TIMEOUT:g}",
            "Seconds a client may take over its turn before it is told goodbye "
            "and closed (0: never).",
        ],
        [
            "max-output",
            None,
            str(DEFAULT_MAX_OUTPUT),
            "Bytes of answers a client may leave unread before the server stops "
            "reading its lines.",
        ],
        [
            "max-clients",
            None,
            str(DEFAULT_MAX_CLIENTS),
            "Most clients at once (0: no limit); newcomers hear 'busy'.",
        ],
        [
            "max-per-ip",
            None,
            str(DEFAULT_MAX_PER_IP),
            "Most clients at once from one address (0: no limit).",
        ],
        [
            "tls-client-ca",
            None,
            None,
            "PEM file of the CA whose client certificates are required (mutual "
            "TLS); needs an ssl: --port.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["allow"] = []
        self["deny"] = []

    def opt_allow(self, cidr: str) -> None:
        """Admit only addresses in this range (repeatable), e.g. 10.0.0.0/8."""
        self["allow"].append(cidr)

    def opt_deny(self, cidr: str) -> None:
        """Refuse addresses in this range (repeatable), e.g. 2001:db8::/32."""
        self["deny"].append(cidr)

    def postOptions(self) -> None:
        self["endpoint"] = endpoint_description(self["port"])
        responder = self["responder"]
        if responder is None:
            if not sys.stdin.isatty():
                raise _fatal(
                    "no --responder given, and stdin is not a terminal, so no "
                    "operator can answer; choose one of: " + ", ".join(RESPONDERS)
                )
            self["responder"] = "console"
        elif responder not in RESPONDERS:
            raise _fatal(
                f"unknown --responder {responder!r}; choose one of: "
                + ", ".join(RESPONDERS)
            )
        self["max_line"] = _whole(self, "max-line", minimum=1)
        self["max_output"] = _whole(self, "max-output", minimum=1)
        self["max_clients"] = _whole(self, "max-clients", minimum=0) or None
        self["max_per_ip"] = _whole(self, "max-per-ip", minimum=0) or None
        try:
            timeout = float(self["idle-timeout"])
        except ValueError:
            timeout = -1.0
        if not timeout >= 0 or timeout == float("inf"):
            raise _fatal(
                f"--idle-timeout {self['idle-timeout']} is not a number of seconds"
            )
        self["idle_timeout"] = timeout or None
        try:
            self["rules"] = AccessRules(
                allow=parse_networks(self["allow"]), deny=parse_networks(self["deny"])
            )
        except ValueError as e:
            raise _fatal(f"--allow/--deny: {e}") from None
        ca = self["tls-client-ca"]
        if ca is not None and not self["endpoint"].startswith("ssl:"):
            raise _fatal("--tls-client-ca needs a TLS listener: --port ssl:...")


def _whole(options: Options, name: str, minimum: int) -> int:
    text = options[name]
    if not text.isdigit() or int(text) < minimum:
        raise _fatal(f"--{name} {text} is not a whole number ({minimum} or more)")
    return int(text)


class ChatServerService(Service):
    """Listen on an endpoint; at stop, say goodbye to every client."""

    def __init__(
        self,
        reactor: Any,
        endpoint: IStreamServerEndpoint,
        description: str,
        factory: ChatServerFactory,
        label: str = "",
    ) -> None:
        self._reactor = reactor
        self._label = label or type(factory.responder).__name__
        self._endpoint = endpoint
        self._description = description
        self.factory = factory
        self.port: IListeningPort | None = None

    def listen(self) -> None:
        """Bind the port now; a port that cannot be had ends the program.

        ``makeService`` calls this so that twistd reports a busy port in one
        line, before it starts logging or writes its pidfile.  Services used
        without twistd bind in ``privilegedStartService`` as usual.
        """
        if self.port is not None:
            return
        outcome: list[Any] = []
        self._endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome:
            raise _fatal(
                f"{self._description} did not start listening at once; use a "
                "tcp, tcp6, unix or ssl endpoint"
            )
        result = outcome[0]
        if isinstance(result, Failure):
            raise SystemExit(self._cannot_listen(result))
        self.port = result
        log.info(
            "sockchat listening on {address} ({responder} answers)",
            address=describe_address(result.getHost()),
            responder=self._label,
        )

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.listen()

    def _cannot_listen(self, failure: Failure) -> str:
        error = failure.value
        where = f"sockchat: cannot listen on {self._description}"
        if isinstance(error, CannotListenError):
            cause = error.socketError
            if getattr(cause, "errno", None) == errno.EADDRINUSE:
                return (
                    f"{where}: the address is already in use (is another "
                    "server running? choose another --port)"
                )
            if getattr(cause, "errno", None) == errno.EACCES:
                return (
                    f"{where}: permission denied (ports below 1024 need "
                    "privileges; choose one above 1024)"
                )
            return f"{where}: {cause}"
        return f"{where}: {failure.getErrorMessage()}"

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        stopping: Deferred[Any] = (
            maybeDeferred(port.stopListening) if port else succeed(None)
        )
        closing = self.factory.close_all()
        timer = self._reactor.callLater(SHUTDOWN_GRACE, self._abort_stragglers)
        closing.addBoth(lambda result: timer.cancel() if timer.active() else None)
        done: Deferred[list[Any]] = gatherResults([stopping, closing])
        return done.addCallback(lambda _: None)

    def _abort_stragglers(self) -> None:
        for proto in list(self.factory.conversations.values()):
            log.warn(
                "conversation {cid} did not close within {grace}s of "
                "shutdown; aborting it",
                cid=proto.conversation_id,
                grace=SHUTDOWN_GRACE,
            )
            proto.transport.abortConnection()


class OperatorConsoleService(Service):
    """Read the operator's answers from stdin; end of input stops the server."""

    def __init__(
        self,
        reactor: Any,
        console_factory: Callable[[Callable[[str], None]], ConsoleResponder],
    ) -> None:
        self._reactor = reactor
        self._modes = BlockingModes.save(0, 1)
        self._stdio: Any = None
        self.console = console_factory(self._write)

    def _write(self, text: str) -> None:
        if self._stdio is not None:
            self._stdio.write(text.encode("utf-8"))

    def startService(self) -> None:
        super().startService()
        proto = OperatorInput(self.console, self._input_closed)
        self._stdio = StandardIO(proto, reactor=self._reactor)
        globalLogPublisher.addObserver(cast(ILogObserver, self._log_printed))
        self._write(
            "sockchat operator console: client lines appear below. Type each "
            "answer at its prompt; q ends that conversation; end of input "
            "(Ctrl-D) stops the server.\n"
        )

    def _log_printed(self, event: LogEvent) -> None:
        level = event.get("log_level")
        if level is not None and level >= LogLevel.info:
            # twistd has printed a log line after the prompt; repeat it.
            self._reactor.callLater(0, self.console.interrupted)

    def _input_closed(self) -> None:
        if self.running:
            log.info("operator console closed (end of input); stopping the server")
            IReactorCore(self._reactor).stop()

    def stopService(self) -> None:
        super().stopService()
        self.console.close()
        globalLogPublisher.removeObserver(cast(ILogObserver, self._log_printed))
        self._modes.restore()


def _require_client_certificates(
    endpoint: IStreamServerEndpoint, ca_file: str
) -> IStreamServerEndpoint:
    """Make an ``ssl:`` listener require client certificates from *ca_file*.

    Twisted's ``ssl:`` description has no option for this, so the context
    that its parser built is rebuilt with the CA as the trust root.
    """
    if not isinstance(endpoint, SSL4ServerEndpoint):
        raise _fatal("--tls-client-ca needs a TLS listener: --port ssl:...")
    try:
        ca = Certificate.loadPEM(Path(ca_file).read_bytes())
    except (OSError, ValueError, SSL.Error) as e:
        raise _fatal(
            f"--tls-client-ca {ca_file}: cannot read a PEM certificate ({e})"
        ) from None
    built = endpoint._sslContextFactory  # what the ssl: parser made
    endpoint._sslContextFactory = CertificateOptions(
        privateKey=built.privateKey,
        certificate=built.certificate,
        extraCertChain=built.extraCertChain,
        trustRoot=ca,
    )
    return endpoint


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    description = options["endpoint"]
    try:
        endpoint = serverFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as e:
        raise _fatal(
            f"--port {options['port']!r} is neither a port number nor a server "
            f"endpoint description ({e})"
        ) from None

    top = MultiService()
    responder: IResponder
    if options["responder"] == "console":
        console_service = OperatorConsoleService(reactor, ConsoleResponder)
        console_service.setServiceParent(top)
        responder = console_service.console
    else:
        responder = EchoResponder()
    if options["tls-client-ca"] is not None:
        endpoint = _require_client_certificates(endpoint, options["tls-client-ca"])
    admission = Admission(
        max_clients=options["max_clients"],
        max_per_ip=options["max_per_ip"],
        rules=options["rules"],
    )
    factory = ChatServerFactory(
        responder,
        max_line=options["max_line"],
        idle_timeout=options["idle_timeout"],
        max_output=options["max_output"],
        admission=admission,
    )
    server = ChatServerService(
        reactor, endpoint, description, factory, options["responder"]
    )
    server.listen()
    server.setServiceParent(top)
    return top
