"""``twistd sockchat``: options and service wiring (a thin shell)."""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Callable, Sequence
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto
from twisted.application.service import IService, MultiService
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import SSL4ServerEndpoint, _parse, serverFromString
from twisted.internet.interfaces import (
    IStreamServerEndpoint,
)
from twisted.internet.ssl import Certificate, CertificateOptions
from twisted.logger import Logger
from twisted.python import usage

from sockchat._console.responder import ConsoleResponder
from sockchat._core.defaults import (
    DEFAULT_ANSWER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_OUTPUT,
    DEFAULT_MAX_PER_IP,
    AnswerTimeout,
)
from sockchat._core.framing import FRAMINGS, framing_named
from sockchat._core.limits import Admission, access_rules
from sockchat._core.stats import Health
from sockchat._desk.accounts import AccountsError, AccountsFile
from sockchat._desk.canned import CannedError, load_canned
from sockchat._desk.model import DEFAULT_HOLD
from sockchat._doors.systemd import systemd_endpoint
from sockchat._doors.tcp import ChatServerFactory
from sockchat._doors.tlsfiles import TLSFileError, check_certificate, check_pair
from sockchat._operations.loading import ResponderNotLoaded, load_responder
from sockchat._operations.prometheus import extra_missing, metrics_available
from sockchat._operations.services import (
    ChatService,
    DeskService,
    MetricsService,
    OperatorConsoleService,
    PortChatService,
    TranscriptService,
    WebChatService,
    fatal,
)
from sockchat._operations.signals import StopSignals
from sockchat._operations.transcript_file import TranscriptFile
from sockchat._responders.contract import EchoResponder, IResponder
from sockchat._responders.pair import PairResponder
from sockchat._version import __version__

log = Logger(namespace="sockchat")

RESPONDERS = ("console", "echo", "pair", "operators", "workers")
#: The responders that need --broker (or, for operators, --desk).
BROKER_ONLY = ("operators", "workers")
#: Connections the kernel may hold before the server accepts them, for a
#: bare port number.  Twisted's default of 50 is easily overrun by a burst
#: of clients; as the server speaks first, a client whose handshake was
#: dropped would wait for a welcome that never comes.
LISTEN_BACKLOG = 1024


#: The mode of a UNIX socket whose description gives none: its owner only.
UNIX_SOCKET_MODE = "600"


def endpoint_description(port: str, option: str = "--port") -> str:
    """A bare port number listens on 127.0.0.1 only; anything else is an
    endpoint description and is used as given, except that a ``unix:``
    socket gets ``mode=600`` unless it says otherwise (Twisted's default is
    0666: anyone on the machine could connect)."""
    if port.isdigit():
        number = int(port)
        if number > 65535:
            raise fatal(f"{option} {port} is not a port number (0 to 65535)")
        return f"tcp:{number}:interface=127.0.0.1:backlog={LISTEN_BACKLOG}"
    return _private_unix_socket(port)


def _private_unix_socket(description: str) -> str:
    inner = description.removeprefix("haproxy:")
    if not inner.startswith("unix:"):
        return description
    # Parameters are split at colons that are not escaped with a backslash.
    parameters = re.split(r"(?<!\\):", inner)[1:]
    if any(p.startswith("mode=") for p in parameters):
        return description
    return f"{description}:mode={UNIX_SOCKET_MODE}"


class Options(usage.Options):
    synopsis = (
        "[--port PORT|ENDPOINT] [--web PORT|ENDPOINT] [--metrics PORT|ENDPOINT] "
        "[--desk PORT|ENDPOINT --accounts FILE] "
        "[--responder console|echo|pair|operators|workers|MODULE:NAME] "
        "[--broker URL] [--framing line|raw] [--transcript FILE] [limits...]"
    )
    longdesc = (
        "A turn-taking chat server: each client speaks one line, then waits "
        "for the answer. A bare port number listens on 127.0.0.1 only; to "
        "accept other hosts, give an endpoint such as tcp:9527 or "
        "tcp6:9527:interface=\\:\\:. --idle-timeout, --answer-timeout, "
        "--max-clients and --max-per-ip take 0 to mean none; --max-line and "
        "--max-output need 1 or more. A unix: socket is made 0600 (its owner "
        "only) unless its description gives a mode=."
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
            "Who answers: console (you, at this terminal), echo, pair (clients "
            "talk to each other, two by two), operators or workers (through "
            "--broker: python -m sockchat.operator / sockchat.worker, on any "
            "machine; operators also at the --desk), or your own responder as "
            "package.module:name (with --desk or --broker, it may hand a "
            "conversation to the operators). Default: operators with --desk, "
            "else console when stdin is a terminal (the console needs twistd -n).",
        ],
        [
            "broker",
            None,
            None,
            "Redis URL of the broker that several instances share: "
            "redis://[:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS, verified; "
            "?ca=FILE for a private CA), unix:///PATH, or, for Redis Sentinel, "
            "redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER[/DB] (and "
            "rediss+sentinel://...). Needed by --responder operators and "
            "workers; with pair, pairs span every instance; with your own "
            "responder, it may hand conversations to the operators.",
        ],
        [
            "transcript",
            None,
            None,
            "Append every line, answer and notice to FILE, one JSON object per "
            "line (see docs/transcripts.md).",
        ],
        [
            "capture-file",
            None,
            None,
            "With --trace packets: also write every captured packet to FILE, a "
            "pcap file that tcpdump -r and Wireshark read (created readable by "
            "its owner only; at most 16 MiB). Implies --trace packets.",
        ],
        [
            "answer-timeout",
            None,
            None,
            "Seconds the responder may take over an answer before the client is "
            f"told it failed (0: never). Default: {DEFAULT_ANSWER_TIMEOUT:g}, or "
            "never for console, pair and operators, where people answer.",
        ],
        [
            "max-line",
            None,
            str(DEFAULT_MAX_LINE),
            "Longest line accepted from a client, in bytes (1 or more); longer "
            "ones are refused with a notice.",
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
            "Bytes of memory one client may make the server hold (lines held "
            "back, output it has not read) before it is no longer read (1 or "
            "more).",
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
            "framing",
            None,
            "line",
            "How messages are cut: line (UTF-8 lines, the default) or raw (each "
            "chunk of up to 1024 bytes is one message, sent with no newline, "
            "as in the socket tutorial).",
        ],
        [
            "web",
            None,
            None,
            "Also serve the chat page and its WebSocket here: a port number (on "
            "127.0.0.1) or a server endpoint description, e.g. tcp:8080.",
        ],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics at /metrics, and /healthz for load "
            "balancers, here: a port number (on 127.0.0.1) or a server endpoint "
            "description. Needs: pip install 'sockchat[metrics]' (from a clone: "
            "pip install -e '.[metrics]').",
        ],
        [
            "desk",
            None,
            None,
            "Serve the operators' desk here: a web page where operators log in "
            "and answer clients (a port number, on 127.0.0.1, or a server "
            "endpoint description such as ssl:8443:privateKey=key.pem:"
            "certKey=cert.pem). Needs --accounts. The operators answer (the "
            "default responder with --desk), or take what a bot (workers, or "
            "your own responder) hands over; with --broker, every instance's.",
        ],
        [
            "accounts",
            None,
            None,
            "The desk's accounts file, made with: python -m sockchat.desk "
            "passwd FILE NAME.",
        ],
        [
            "canned",
            None,
            None,
            "The desk's canned answers: a file of KEYWORD TEXT lines, chosen "
            "at the desk with /KEYWORD (see docs/desk.md).",
        ],
        [
            "hold",
            None,
            None,
            "Conversations each desk operator may hold at once "
            f"(default {DEFAULT_HOLD}).",
        ],
        [
            "tls-client-ca",
            None,
            None,
            "PEM file of the CA whose client certificates are required (mutual "
            "TLS); needs an ssl: --port.",
        ],
    ]

    optFlags: list[list[Any]] = [  # noqa: RUF012 (twisted's API)
        [
            "trace",
            None,
            "Teaching mode: log what TCP does on each connection, in plain words "
            "([tcp] lines: ports, the handshake, each read, TCP_INFO, the close "
            "and TIME_WAIT, the turn); with --web, the page can show its own. "
            "--trace packets (or --capture) adds the real packets, read with a "
            "packet socket (needs CAP_NET_RAW: root, or setcap). See "
            "docs/lessons.md.",
        ],
        [
            "capture",
            None,
            "With --trace: also read this server's packets (SYN, ACK, FIN, RST, "
            "with their numbers) and draw each conversation's ladder; the same "
            "as --trace packets. See docs/trace.md.",
        ],
        [
            "cap-loopback",
            None,
            "Count loopback clients (127.0.0.0/8, ::1) against --max-per-ip too; "
            "by default they are the operator's own machine and are not capped "
            "per address.",
        ],
        [
            "anonymous",
            None,
            "At the desk: do not tell a client who answers it (by default it "
            "is told the operator's display name once, when one takes its "
            "conversation).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["allow"] = []
        self["deny"] = []
        #: Every --allow and --deny range, in the order written.
        self._ranges: list[tuple[str, str]] = []

    def opt_version(self) -> None:
        """Print sockchat's version and exit."""
        print(f"sockchat {__version__}")
        raise SystemExit(0)

    def opt_allow(self, cidr: str) -> None:
        """Admit only addresses in this range (repeatable), e.g. 10.0.0.0/8."""
        self["allow"].append(cidr)
        self._ranges.append(("allow", cidr))

    def opt_deny(self, cidr: str) -> None:
        """Refuse addresses in this range (repeatable), e.g. 2001:db8::/32."""
        self["deny"].append(cidr)
        self._ranges.append(("deny", cidr))

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        # Kept so that errors are reported in the order the options were
        # written (postOptions).
        self._written = list(sys.argv[1:] if options is None else options)
        super().parseOptions(_trace_packets(self._written))

    def _first_written(self, names: Sequence[str]) -> float:
        """Where the first of the options *names* was written (infinity: it
        was not): ``--name``, ``--name=VALUE``, an abbreviation, or ``-x``."""
        shorts = {p[0]: p[1] for p in self.optParameters if p[1]}
        for at, word in enumerate(getattr(self, "_written", [])):
            if word == "--":
                break
            given = word[2:].split("=", 1)[0] if word.startswith("--") else ""
            for name in names:
                short = shorts.get(name)
                if (given and name.startswith(given)) or (
                    short and not given and word.startswith(f"-{short}")
                ):
                    return at
        return float("inf")

    def postOptions(self) -> None:
        # Each option's own value first, in the order they were written (a
        # bad --port before a --max-line typed after it, and both before
        # what no option said, such as a missing --responder); then what
        # depends on several options.
        checks: list[tuple[tuple[str, ...], Callable[[], None]]] = [
            (("port",), self._check_port),
            (("web",), self._check_web),
            (("metrics",), self._check_metrics),
            (("desk",), self._check_desk_option),
            (("responder",), self._check_responder_name),
            (("broker",), self._check_broker_url),
            (("answer-timeout",), self._check_answer_timeout),
            (("framing",), self._check_framing),
            (("max-line",), lambda: self._check_whole("max-line", 1)),
            (("max-output",), lambda: self._check_whole("max-output", 1)),
            (("max-clients",), lambda: self._check_whole("max-clients", 0)),
            (("max-per-ip",), lambda: self._check_whole("max-per-ip", 0)),
            (("idle-timeout",), self._check_idle_timeout),
            (("allow", "deny"), self._check_rules),
            (("tls-client-ca",), self._check_client_ca),
        ]
        for _, check in sorted(checks, key=lambda c: self._first_written(c[0])):
            check()
        self._check_together()

    def _check_port(self) -> None:
        self["endpoint"] = endpoint_description(self["port"])
        # What to call it in messages: no need to show the backlog added.
        self["where"] = _as_given(self["endpoint"])
        _check_endpoint(self["endpoint"], "--port", self["port"])

    def _check_web(self) -> None:
        web = self["web"]
        if web is not None and not web.strip():
            raise fatal("--web needs a port number or an endpoint; it was empty")
        self["web_endpoint"] = endpoint_description(web, "--web") if web else None
        if self["web_endpoint"] is not None:
            _check_endpoint(self["web_endpoint"], "--web", web)

    def _check_metrics(self) -> None:
        metrics = self["metrics"]
        if metrics is not None and not metrics.strip():
            raise fatal("--metrics needs a port number or an endpoint; it was empty")
        if metrics is not None and not metrics_available():
            raise fatal(extra_missing())
        self["metrics_endpoint"] = (
            endpoint_description(metrics, "--metrics") if metrics else None
        )
        if self["metrics_endpoint"] is not None:
            _check_endpoint(self["metrics_endpoint"], "--metrics", metrics)

    def _check_desk_option(self) -> None:
        desk = self["desk"]
        if desk is not None and not desk.strip():
            raise fatal("--desk needs a port number or an endpoint; it was empty")
        self["desk_endpoint"] = endpoint_description(desk, "--desk") if desk else None
        if self["desk_endpoint"] is not None:
            _check_endpoint(self["desk_endpoint"], "--desk", desk)

    def _check_responder_name(self) -> None:
        responder = self["responder"]
        if (
            responder is not None
            and responder not in RESPONDERS
            and ":" not in responder
        ):
            raise fatal(
                f"unknown --responder {responder!r}; choose one of: "
                + ", ".join(RESPONDERS)
                + ", or give your own as package.module:name"
            )

    def _check_broker_url(self) -> None:
        url = self["broker"]
        self["broker_address"] = None
        if url is None:
            return
        from sockchat._broker.redis import parse_broker_url

        try:
            self["broker_address"] = parse_broker_url(url)
        except ValueError as e:
            raise fatal(str(e).removeprefix("sockchat: ")) from None

    def _check_answer_timeout(self) -> None:
        text = self["answer-timeout"]
        self["answer_timeout"] = (
            None if text is None else _seconds(text, "answer-timeout") or None
        )

    def _check_framing(self) -> None:
        try:
            self["framing_value"] = framing_named(self["framing"])
        except ValueError:
            raise fatal(
                f"unknown --framing {self['framing']!r}; choose one of: "
                + ", ".join(FRAMINGS)
            ) from None

    def _check_whole(self, name: str, minimum: int) -> None:
        value = _whole(self, name, minimum)
        self[name.replace("-", "_")] = value if minimum else value or None

    def _check_idle_timeout(self) -> None:
        self["idle_timeout"] = _seconds(self["idle-timeout"], "idle-timeout") or None

    def _check_rules(self) -> None:
        try:
            self["rules"] = access_rules(self._ranges)
        except ValueError as e:
            raise fatal(f"--allow/--deny: {e}") from None

    def _check_client_ca(self) -> None:
        ca = self["tls-client-ca"]
        if ca is not None:
            if not endpoint_description(self["port"]).startswith("ssl:"):
                raise fatal("--tls-client-ca needs a TLS listener: --port ssl:...")
            try:
                check_certificate(f"--tls-client-ca {ca}", ca)
            except TLSFileError as e:
                raise fatal(str(e)) from None

    def _check_together(self) -> None:
        """What depends on several options, or on none (the defaults)."""
        if self["desk"] is not None and self["responder"] is None:
            self["responder"] = "operators"  # the desk's operators answer
        responder = self["responder"]
        if responder is None:
            if not sys.stdin.isatty():
                raise fatal(
                    "no --responder given, and stdin is not a terminal, so no "
                    "operator can answer; choose echo, pair, or your own as "
                    "package.module:name"
                )
            self["responder"] = "console"
        if self["responder"] == "console" and self["desk"] is None:
            # (with --desk, _check_desk refuses the console in its own words)
            _check_console(self, chosen=responder is not None)
        _check_broker(self)
        _check_desk(self)
        if self["answer-timeout"] is None:
            self["answer_timeout"] = AnswerTimeout.DEFAULT  # the factory's
        if self["capture-file"] is not None:
            self["capture"] = True
        if self["capture"]:
            self["trace"] = True
        if self["web"] and self["framing_value"].name != "line":
            raise fatal(
                "--web needs --framing line: the page sends and shows lines; "
                "serve raw framing and the page from two servers"
            )


def _trace_packets(words: Sequence[str]) -> list[str]:
    """``--trace packets`` (and ``--trace=packets``) as ``--trace --capture``:
    getopt's flags take no value, and this one reads as it is said."""
    out: list[str] = []
    for at, word in enumerate(words):
        if word == "--":
            return [*out, *words[at:]]
        if word == "--trace=packets":
            out += ["--trace", "--capture"]
        elif word == "packets" and out[-1:] == ["--trace"]:
            out.append("--capture")
        else:
            out.append(word)
    return out


def _daemonizing(options: usage.Options) -> bool:
    """Will twistd run us in the background (no ``-n``)?

    twistd parses its own options first, then hands the rest to ours, whose
    ``parent`` is twistd's options: ``nodaemon`` is ``-n``, and ``--debug``
    implies it.  Without a parent (not run by twistd), or a twistd that
    cannot daemonize (no ``nodaemon`` option), nothing goes to the
    background.
    """
    parent = options.parent
    if parent is None or "nodaemon" not in parent:
        return False
    return not (parent["nodaemon"] or parent.get("debug"))


def _stdin_gives_nothing() -> bool:
    """stdin is closed, or a device that is not a terminal (``/dev/null``).

    A pipe or a file may carry an operator's scripted answers, and is
    allowed; from these, the console would read end of input at once.
    """
    stdin = sys.stdin
    if stdin is None:
        return True
    if stdin.isatty():
        return False
    try:
        status = os.fstat(stdin.fileno())
        null = os.stat(os.devnull)
    except (OSError, ValueError):  # closed
        return True
    # Some containers make /dev/null something other than a device.
    is_null = (status.st_dev, status.st_ino) == (null.st_dev, null.st_ino)
    return is_null or stat.S_ISCHR(status.st_mode)


def _check_console(options: Options, *, chosen: bool) -> None:
    """The console needs a foreground terminal: refuse in one line without it."""
    how = "--responder console" if chosen else "the console (the default here)"
    if _daemonizing(options):
        raise fatal(
            f"{how} needs this terminal, but without -n twistd runs in the "
            "background and lets go of it; add -n (twistd -n sockchat ...), or "
            "choose a --responder: echo, pair, or package.module:name"
        )
    if _stdin_gives_nothing():
        raise fatal(
            f"{how} reads the operator's answers from stdin, but stdin is not "
            "a terminal (it is closed, or /dev/null); run it from a terminal, "
            "pipe the answers in, or choose a --responder: echo, pair, or "
            "package.module:name"
        )


def check_tls_files(description: str, option: str) -> None:
    """Check the key and certificate files of an ``ssl:`` description, so
    that a mistake is one line (``TLSFileError``), not OpenSSL's tuple or a
    traceback.  Other descriptions are left to Twisted."""
    inner = description.removeprefix("haproxy:")
    if not inner.startswith("ssl:"):
        return
    try:
        args, kwargs = _parse(inner)
    except Exception:  # Twisted's own parser reports it, in one line
        return
    positional = [str(a) for a in args[2:]]  # after ssl and the port
    key = kwargs.get("privateKey") or (positional[0] if positional else "server.pem")
    cert = kwargs.get("certKey") or (positional[1] if len(positional) > 1 else None)
    # Without certKey, Twisted reads the certificate from the key's file.
    cert_what = (
        f"{option} certKey={cert}"
        if cert is not None
        else f"{option} privateKey={key} (no certKey= given, so the certificate "
        "must be in the key's file)"
    )
    check_pair(cert_what, cert or key, f"{option} privateKey={key}", key)


def _seconds(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):  # nan, inf
        raise fatal(f"--{name} {text} is not a number of seconds")
    if value < 0:
        raise fatal(f"--{name} must be 0 (never) or more seconds, not {text}")
    return value


def _check_broker(options: Options) -> None:
    """``--broker`` and the responder: one that needs it, or uses it."""
    url, responder = options["broker"], options["responder"]
    if url is None:
        if responder == "operators" and options["desk"] is not None:
            return  # the desk's operators, in this process
        if responder in BROKER_ONLY:
            raise fatal(
                f"--responder {responder} needs --broker URL (the Redis that the "
                f"{responder} share), e.g. --broker redis://127.0.0.1:6379/0"
            )
        return
    if responder in ("console", "echo"):
        raise fatal(
            "--broker is used by --responder operators, workers, pair, or your "
            "own (which may hand conversations to the operators); with "
            f"{responder} it would do nothing"
        )


#: How to make the accounts the desk needs.
MAKE_ACCOUNTS = "python -m sockchat.desk passwd FILE NAME"


def _check_desk(options: Options) -> None:
    """``--desk``: an endpoint, accounts that can be read, and a responder
    that goes with the operators' queue."""
    desk = options["desk"]
    options["desk_endpoint"] = None
    if desk is None:
        for name in ("accounts", "canned", "hold"):
            if options[name] is not None:
                raise fatal(f"--{name} is for the operators' desk: add --desk PORT")
        if options["anonymous"]:
            raise fatal("--anonymous is for the operators' desk: add --desk PORT")
        return
    responder = options["responder"]
    if responder in ("console", "echo", "pair"):
        raise fatal(
            "--desk is where operators answer clients: it goes with --responder "
            "operators (the default with --desk), workers, or your own, not "
            f"{responder}"
        )
    if options["accounts"] is None:
        raise fatal(
            f"--desk needs --accounts FILE, the operators' accounts; make one with: "
            f"{MAKE_ACCOUNTS}"
        )
    accounts = AccountsFile(options["accounts"])
    try:
        accounts.load()
    except AccountsError as e:
        raise fatal(f"{e}; make accounts with: {MAKE_ACCOUNTS}") from None
    options["accounts_file"] = accounts
    options["canned_answers"] = ()
    if options["canned"] is not None:
        try:
            options["canned_answers"] = load_canned(options["canned"])
        except CannedError as e:
            raise fatal(str(e)) from None
    hold = options["hold"]
    if hold is None:
        options["hold_count"] = DEFAULT_HOLD
    elif not hold.isdigit() or int(hold) < 1:
        raise fatal(f"--hold {hold} is not a whole number (1 or more)")
    else:
        options["hold_count"] = int(hold)
    options["desk_endpoint"] = endpoint_description(desk, "--desk")


def _whole(options: Options, name: str, minimum: int) -> int:
    text = options[name]
    if not text.isdigit():
        raise fatal(f"--{name} {text} is not a whole number ({minimum} or more)")
    if int(text) < minimum:
        raise fatal(f"--{name} must be {minimum} or more, not {text}")
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
        checked = check_certificate(f"--tls-client-ca {ca_file}", ca_file)
    except TLSFileError as e:
        raise fatal(str(e)) from None
    ca = Certificate.loadPEM(checked.public_bytes(Encoding.PEM))
    built = endpoint._sslContextFactory  # what the ssl: parser made
    endpoint._sslContextFactory = CertificateOptions(
        privateKey=built.privateKey,
        certificate=built.certificate,
        extraCertChain=built.extraCertChain,
        trustRoot=ca,
    )
    return endpoint


def _as_given(description: str) -> str:
    """The endpoint as the user would say it: without the backlog or the
    socket mode we add."""
    return description.replace(f":backlog={LISTEN_BACKLOG}", "").removesuffix(
        f":mode={UNIX_SOCKET_MODE}"
    )


def _check_endpoint(description: str, option: str, given: str) -> None:
    """A description that cannot be parsed ends in one line now, in the
    order of the options, rather than when the server is made.  Its key
    and certificate files are checked first (``check_tls_files``).  A
    ``systemd:`` socket is looked for only when the server is made."""
    try:
        check_tls_files(description, option)
    except TLSFileError as e:
        raise fatal(str(e)) from None
    if description.removeprefix("haproxy:").startswith("systemd:"):
        return
    from twisted.internet import reactor

    _server_endpoint(reactor, description, option, given)


def _server_endpoint(
    reactor: Any, description: str, option: str, given: str
) -> IStreamServerEndpoint:
    """Parse *description* (made from *given*); a bad one ends in one line."""
    if description.startswith("haproxy:"):
        # Not Twisted's wrapper: the client is admitted and named by the
        # address in the PROXY header, not the load balancer's (_doors/proxied.py).
        from sockchat._doors.proxied import ProxiedEndpoint

        inner = description.removeprefix("haproxy:")
        return ProxiedEndpoint(_server_endpoint(reactor, inner, option, given), reactor)
    if description.startswith("systemd:"):
        # Not Twisted's parser: from twistd it finds no socket (_doors/systemd.py).
        try:
            return systemd_endpoint(reactor, description)
        except ValueError as e:
            raise fatal(f"{option} {given!r}: {e}") from None
    try:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as e:
        raise fatal(
            f"{option} {given!r} is neither a port number nor a server "
            f"endpoint description ({e})"
        ) from None
    except (OSError, SSL.Error, crypto.Error) as e:  # ssl: key or certificate files
        raise fatal(f"{option} {given!r}: {e}") from None
    return endpoint


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    if not reactor.running:
        # twistd: from here on, Ctrl-C stops the server cleanly, even
        # before the reactor runs (sockchat._operations.signals).
        StopSignals(reactor).install()
    endpoint = _server_endpoint(reactor, options["endpoint"], "--port", options["port"])

    top = MultiService()
    responder: IResponder
    name = options["responder"]
    desk = options["desk_endpoint"] is not None
    brokered: Any = None  # the broker this instance meets the others at
    if options["broker_address"] is not None:
        brokered = _broker_service(options, follow=desk)
    elif desk:  # the desk and this instance meet in this process's memory
        from sockchat._broker.instance import instance_about
        from sockchat._broker.service import LocalBrokerService

        brokered = LocalBrokerService(reactor, instance_about(options["where"]))
    if brokered is not None:
        brokered.setServiceParent(top)
    bot: IResponder | None = None
    people: Any = None  # the operators' queue at the broker, if there is one
    if name == "console":
        console_service = OperatorConsoleService(reactor, ConsoleResponder)
        console_service.setServiceParent(top)
        responder = console_service.console
    elif name == "echo":
        responder = EchoResponder()
    elif name == "pair" and brokered is not None:
        from sockchat._broker.pairs import BrokerPairResponder

        responder = BrokerPairResponder(brokered.instance)
    elif name == "pair":
        responder = PairResponder()
    elif name in ("operators", "workers"):
        responder, people = _queues(reactor, options, brokered.instance, name)
    else:
        try:
            bot = load_responder(name)
        except ResponderNotLoaded as e:
            raise fatal(f"--responder {e}") from None
        responder = bot
        if brokered is not None:  # it may hand conversations to the operators
            responder, people = _queues(reactor, options, brokered.instance, bot)
    transcript = None
    if options["transcript"] is not None:
        try:
            transcript = TranscriptFile(options["transcript"])
        except OSError as e:
            raise fatal(
                f"--transcript {options['transcript']}: cannot open it for "
                f"appending ({e.strerror or e})"
            ) from None
        TranscriptService(transcript).setServiceParent(top)
    if options["tls-client-ca"] is not None:
        endpoint = _require_client_certificates(endpoint, options["tls-client-ca"])
    admission = _admission(options)
    factory = ChatServerFactory(
        responder,
        max_line=options["max_line"],
        idle_timeout=options["idle_timeout"],
        max_output=options["max_output"],
        admission=admission,
        answer_timeout=options["answer_timeout"],
        transcript=transcript,
        framing=options["framing_value"],
    )
    ladders = capture = capturing = None
    if options["trace"]:
        from sockchat._teaching.tracing import trace_conversations

        if options["capture"]:
            capturing = _capture(reactor, options, top)
            capture = capturing.capture
        ladders = trace_conversations(
            factory,
            packets=capture,
            no_packets="the capture is off" if capture is None else capture.why_not,
        )
    health = Health()
    server = PortChatService(
        endpoint, factory, description=options["where"], label=options["responder"]
    )
    server.listen()
    server.setServiceParent(top)
    doors: list[ChatService] = [server]
    if options["web_endpoint"] is not None:
        web = _web_service(reactor, options, factory, health, ladders)
        web.setServiceParent(top)
        doors.append(web)
    if capturing is not None:  # before the reactor runs: no accept() yet
        for door in doors:
            _capture_door(capture, door)
            capturing.doors.append(door.stopped)
    if desk:
        _desk_service(reactor, options, brokered.broker).setServiceParent(top)
    if options["metrics_endpoint"] is not None:
        queues = [people.stats] if people is not None else []
        metrics = _metrics_service(reactor, options, factory, health, doors, queues)
        metrics.setServiceParent(top)
    return top


def _queues(
    reactor: Any, options: Options, instance: Any, first: str | IResponder
) -> tuple[IResponder, Any]:
    """The operators' queue at the broker, and what answers before it: the
    workers' queue, or a bot of this process (*first*); either may hand a
    conversation over to the operators."""
    from sockchat._broker.handoff import HandoffResponder
    from sockchat._broker.instance import QueueResponder
    from sockchat._broker.wire import OPERATORS, WORKERS

    people = QueueResponder(instance, OPERATORS)
    if first == OPERATORS:
        return people, people
    # The bot's answers have the answer timeout; people's none.
    timeout = options["answer_timeout"]
    if timeout is AnswerTimeout.DEFAULT:
        timeout = DEFAULT_ANSWER_TIMEOUT
    if first == WORKERS:  # the workers' queue times its lines itself
        workers = QueueResponder(instance, WORKERS, lifecycle=True, timeout=timeout)
        return HandoffResponder(workers, people, reactor), people
    assert not isinstance(first, str)
    return HandoffResponder(first, people, reactor, bot_timeout=timeout), people


def _desk_service(reactor: Any, options: Options, broker: Any) -> IService:
    """``--desk``: the operators' desk, an operator of the broker's queue
    (Redis with ``--broker``, this process's memory without).

    Its connections have caps of their own (``DeskSettings``), so that a
    server full of clients still lets its operators in; ``--allow`` and
    ``--deny`` apply to them as to clients.
    """
    from sockchat._desk.brokered import BrokerQueue
    from sockchat._desk.door import DeskDoor, DeskSettings

    description = options["desk_endpoint"]
    endpoint = _server_endpoint(reactor, description, "--desk", options["desk"])
    settings = DeskSettings(
        hold=options["hold_count"],
        max_answer=options["max_line"],
        cap_loopback=bool(options["cap-loopback"]),
    )
    admission = Admission(
        max_clients=settings.max_connections,
        max_per_ip=settings.max_per_ip,
        rules=options["rules"],
        cap_loopback=settings.cap_loopback,
    )
    door = DeskDoor(
        BrokerQueue(broker, reactor, announce=not options["anonymous"]),
        options["accounts_file"],
        reactor,
        settings=settings,
        canned=options["canned_answers"],
        admission=admission,
    )
    service = DeskService(
        endpoint, _as_given(description), door, secure=description.startswith("ssl:")
    )
    service.listen()
    return service


def _admission(options: Options) -> Admission:
    """The caps and address rules that the options give, counting nothing yet."""
    return Admission(
        max_clients=options["max_clients"],
        max_per_ip=options["max_per_ip"],
        rules=options["rules"],
        cap_loopback=bool(options["cap-loopback"]),
    )


def _broker_service(options: Options, *, follow: bool = False) -> Any:
    """``--broker``: register this instance (one line and exit 1 if the broker
    cannot be used), then keep its connections (*follow*: one more, for a
    desk that follows the operators' queue)."""
    from twisted.internet import reactor

    from sockchat._broker.instance import instance_about
    from sockchat._broker.redisbroker import register_blocking
    from sockchat._broker.service import BrokerService

    address = options["broker_address"]
    about = instance_about(options["where"])
    name = register_blocking(address, about)
    log.info(
        "this instance is {name} at the broker {broker}",
        name=name,
        broker=address.display,
    )
    return BrokerService(reactor, address, name, about, follow=follow)


def _metrics_service(
    reactor: Any,
    options: Options,
    factory: ChatServerFactory,
    health: Health,
    doors: list[ChatService],
    queues: list[Any],
) -> IService:
    """``--metrics``: ``/metrics`` and ``/healthz``, until the doors have closed;
    with *queues*, what this instance counts of the operators' queue."""
    from sockchat._operations.prometheus import metrics_site

    description = options["metrics_endpoint"]
    endpoint = _server_endpoint(reactor, description, "--metrics", options["metrics"])
    # The same caps and rules as the chat's, counted apart: a full server
    # can still be scraped and health-checked.
    admission = _admission(options)
    service = MetricsService(
        endpoint,
        _as_given(description),
        metrics_site(
            [factory.stats], health, reactor, admission=admission, queues=queues
        ),
        health,
        doors,
    )
    service.listen()
    return service


def _capture(reactor: Any, options: Options, top: MultiService) -> Any:
    """``--trace packets``: the captures (opened on each door's port once it
    listens, ``.capture``), and the service that stops them with the server;
    ``--capture-file``'s file."""
    from sockchat._teaching.packet_trace import CaptureService, PacketCapture

    capture = PacketCapture(
        reactor, reactor, lambda line: log.warn("{line}", line=line)
    )
    path = options["capture-file"]
    if path is not None:
        try:
            capture.write_to(path)
        except OSError as e:
            raise fatal(
                f"--capture-file {path}: cannot write it ({e.strerror or e}); "
                "choose a file in a folder you may write to"
            ) from None
    service = CaptureService(capture, reactor)
    service.setServiceParent(top)
    return service


def _capture_door(capture: Any, door: ChatService) -> None:
    """Capture the port *door* listens on, if it is TCP."""
    port = door.port
    where: object = None if port is None else port.getHost()
    if isinstance(where, (IPv4Address, IPv6Address)):
        capture.open(where.host, where.port)
    else:
        log.warn(
            "packet capture: {where} is not a TCP port, so its packets are not "
            "read; the trace goes on from the socket",
            where=str(where),
        )


def _web_service(
    reactor: Any,
    options: Options,
    factory: ChatServerFactory,
    health: Health,
    ladders: Any = None,
) -> ChatService:
    """The web door (``--web``): its conversations share the TCP door's
    factory; with ``--trace``, it draws their ladders too (``/trace/``)."""
    description = options["web_endpoint"]
    endpoint = _server_endpoint(reactor, description, "--web", options["web"])
    children = {}
    if ladders is not None:
        from sockchat._teaching.tracing import LadderResource

        children[b"trace"] = LadderResource(ladders, reactor)
    web = WebChatService(
        endpoint,
        _as_given(description),
        factory,
        options["responder"],
        secure=description.startswith("ssl:"),
        health=health,
        children=children,
    )
    web.listen()
    return web
