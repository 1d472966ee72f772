"""``twistd sockchat``: options and service wiring (a thin shell)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from OpenSSL import SSL, crypto
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import (
    IStreamServerEndpoint,
)
from twisted.internet.ssl import Certificate, CertificateOptions
from twisted.logger import Logger
from twisted.python import usage

from ._codec import DEFAULT_MAX_LINE
from ._console import ConsoleResponder
from ._limits import AccessRules, Admission, parse_networks
from ._responder import EchoResponder, IResponder
from ._server import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_OUTPUT, ChatServerFactory
from ._services import ChatServerService, OperatorConsoleService, fatal

log = Logger(namespace="sockchat")

RESPONDERS = ("console", "echo")

#: Default caps on connections: generous for a chat line, but finite.
DEFAULT_MAX_CLIENTS = 1000
DEFAULT_MAX_PER_IP = 20


def endpoint_description(port: str) -> str:
    """A bare port number listens on 127.0.0.1 only; anything else is an
    endpoint description and is used as given."""
    if port.isdigit():
        number = int(port)
        if number > 65535:
            raise fatal(f"--port {port} is not a port number (0 to 65535)")
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
                raise fatal(
                    "no --responder given, and stdin is not a terminal, so no "
                    "operator can answer; choose one of: " + ", ".join(RESPONDERS)
                )
            self["responder"] = "console"
        elif responder not in RESPONDERS:
            raise fatal(
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
            raise fatal(
                f"--idle-timeout {self['idle-timeout']} is not a number of seconds"
            )
        self["idle_timeout"] = timeout or None
        try:
            self["rules"] = AccessRules(
                allow=parse_networks(self["allow"]), deny=parse_networks(self["deny"])
            )
        except ValueError as e:
            raise fatal(f"--allow/--deny: {e}") from None
        ca = self["tls-client-ca"]
        if ca is not None and not self["endpoint"].startswith("ssl:"):
            raise fatal("--tls-client-ca needs a TLS listener: --port ssl:...")


def _whole(options: Options, name: str, minimum: int) -> int:
    text = options[name]
    if not text.isdigit() or int(text) < minimum:
        raise fatal(f"--{name} {text} is not a whole number ({minimum} or more)")
    return int(text)


def _require_client_certificates(
    endpoint: IStreamServerEndpoint, ca_file: str
) -> IStreamServerEndpoint:
    """Make an ``ssl:`` listener require client certificates from *ca_file*.

    Twisted's ``ssl:`` description has no option for this, so the context
    that its parser built is rebuilt with the CA as the trust root.
    """
    if not isinstance(endpoint, SSL4ServerEndpoint):
        raise fatal("--tls-client-ca needs a TLS listener: --port ssl:...")
    try:
        ca = Certificate.loadPEM(Path(ca_file).read_bytes())
    except (OSError, ValueError, SSL.Error) as e:
        raise fatal(
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
        raise fatal(
            f"--port {options['port']!r} is neither a port number nor a server "
            f"endpoint description ({e})"
        ) from None
    except (OSError, SSL.Error, crypto.Error) as e:  # ssl: key or certificate files
        raise fatal(f"--port {options['port']!r}: {e}") from None

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
