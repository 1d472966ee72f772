"""Both HTTP sites, the chat page's (``--web``) and ``--metrics``, are
guarded the same way (``ChatSite`` and its channel, sockchat._doors.web): a
deadline for each request's headers, no bodies, 414 and 431 for a request
line or headers over the bounds, and connection caps from the accept on
(issue 24, items 5 and 6)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from sockchat import ChatServerFactory, EchoResponder
from sockchat._core.limits import AccessRules, Admission, parse_networks
from sockchat._core.stats import Health
from sockchat._doors.web import HEADERS_DEADLINE, chat_site
from sockchat._operations.prometheus import metrics_site

HOST = "Host: 127.0.0.1:8080\r\n"


def chat(admission: Admission | None, clock: Clock):
    factory = ChatServerFactory(
        EchoResponder(), clock=clock, admission=admission or Admission()
    )
    return chat_site(factory), factory.admission


def metrics(admission: Admission | None, clock: Clock):
    admission = admission or Admission()
    factory = ChatServerFactory(EchoResponder(), clock=clock)
    return metrics_site([factory.stats], Health(), clock, admission=admission), (
        admission
    )


SITES = pytest.mark.parametrize("make", [chat, metrics], ids=["web", "metrics"])


class Connection:
    def __init__(self, site, host: str = "127.0.0.1") -> None:
        address = IPv4Address("TCP", host, 50000)
        self.channel = site.buildProtocol(address)
        self.transport = StringTransport(
            peerAddress=address, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080)
        )
        self.channel.makeConnection(self.transport)

    def send(self, text: str | bytes) -> bytes:
        self.channel.dataReceived(text if isinstance(text, bytes) else text.encode())
        return self.transport.value()

    def close(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))


def refused_for_good(connection: Connection, response: bytes) -> None:
    """The response was sent, the connection closes, and nothing more is read."""
    assert connection.transport.disconnecting
    assert connection.send(b"x" * 70000 + b"\r\n\r\n") == response


@SITES
def test_a_header_line_over_the_bound_gets_431(make):
    site, admission = make(None, Clock())
    connection = Connection(site)
    response = connection.send("GET / HTTP/1.1\r\nX-Big: " + "y" * 20000)
    assert response.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert response.endswith(b"send a smaller request.\n")
    refused_for_good(connection, response)
    connection.close()
    assert admission.total == 0


@SITES
def test_headers_over_the_bound_in_all_get_431(make):
    site, _ = make(None, Clock())
    connection = Connection(site)
    lines = "".join(f"X-Header-{n}: {'v' * 100}\r\n" for n in range(200))
    response = connection.send("GET / HTTP/1.1\r\n" + HOST + lines + "\r\n")
    assert response.startswith(b"HTTP/1.1 431 ")


@SITES
def test_too_many_headers_get_431_and_as_many_as_allowed_are_served(make):
    site, _ = make(None, Clock())
    many = "".join(f"X{n}: v\r\n" for n in range(600))
    response = Connection(site).send("GET / HTTP/1.1\r\n" + many + "\r\n")
    assert response.startswith(b"HTTP/1.1 431 ")
    enough = "".join(f"X{n}: v\r\n" for n in range(499))
    response = Connection(site).send("GET / HTTP/1.1\r\n" + HOST + enough + "\r\n")
    assert response.startswith(b"HTTP/1.1 200 "), response[:100]


@SITES
def test_a_request_line_over_the_bound_gets_414(make):
    site, _ = make(None, Clock())
    connection = Connection(site)
    response = connection.send("GET /" + "a" * 20000)
    assert response.startswith(b"HTTP/1.1 414 URI Too Long\r\n")
    refused_for_good(connection, response)


@given(
    head=st.sampled_from(
        [
            "GET / HTTP/1.1\r\nX-Big: " + "y" * 17000 + "\r\n\r\n",
            "GET /" + "a" * 17000 + " HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\n" + "X: v\r\n" * 600 + "\r\n",
        ]
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=18000), max_size=6),
)
def test_an_oversized_head_is_refused_once_however_it_is_split(head, cuts):
    site, _ = chat(None, Clock())
    connection = Connection(site)
    data = head.encode()
    at = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    for a, b in itertools.pairwise(at):
        connection.send(data[a:b])
    response = connection.transport.value()
    assert response.count(b"HTTP/1.1 ") == 1
    assert response.startswith((b"HTTP/1.1 414 ", b"HTTP/1.1 431 ")), response[:60]
    assert connection.transport.disconnecting


@SITES
def test_a_request_with_a_body_gets_413(make):
    site, _ = make(None, Clock())
    connection = Connection(site)
    response = connection.send(
        "POST /metrics HTTP/1.1\r\n" + HOST + "Content-Length: 9\r\n\r\n"
    )
    assert response.startswith(b"HTTP/1.1 413 Content Too Large\r\n")
    refused_for_good(connection, response)


@SITES
def test_a_trickling_request_is_closed_at_the_headers_deadline(make):
    clock = Clock()
    site, admission = make(None, clock)
    connection = Connection(site)
    assert admission.total == 1
    for byte in "GET / HTTP/1.1\r\nX-Slow: " + "y" * 100:
        if clock.seconds() >= HEADERS_DEADLINE:
            break
        clock.advance(0.5)
        connection.send(byte)
    clock.advance(0.5)
    assert connection.transport.disconnecting
    connection.close()
    assert admission.total == 0


@SITES
def test_connections_are_capped_from_their_accept(make):
    site, admission = make(Admission(max_clients=1), Clock())
    first = Connection(site)
    full = Connection(site)
    assert full.transport.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    first.close()
    assert admission.total == 0
    response = Connection(site).send("GET / HTTP/1.1\r\n" + HOST + "\r\n")
    assert response.startswith(b"HTTP/1.1 200 ")


@SITES
def test_a_denied_address_gets_403(make):
    rules = AccessRules(deny=parse_networks(["10.0.0.0/8"]))
    site, _ = make(Admission(rules=rules), Clock())
    denied = Connection(site, host="10.1.2.3")
    assert denied.transport.value().startswith(b"HTTP/1.1 403 Forbidden\r\n")


def test_the_metrics_caps_count_apart_from_the_chats():
    from sockchat.tap import Options, _admission

    options = Options()
    options.parseOptions(["--responder", "echo", "--max-clients", "1"])
    chat_admission, metrics_admission = _admission(options), _admission(options)
    assert chat_admission is not metrics_admission
    assert metrics_admission.max_clients == 1
    assert metrics_admission.consider("127.0.0.1") is None
    assert chat_admission.consider("127.0.0.1") is None  # still room for a client
