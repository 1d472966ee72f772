"""The broker's Redis client in memory: its URLs, replies, losses, returns.

A fake endpoint hands the client in-memory connections; the test plays
the server's part, byte by byte, and a Clock is the time.  The same client
against a real redis-server is in tests/broker/test_redis_real.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from sockchat._broker.redis import (
    BrokerAddress,
    BrokerUnavailable,
    IRedis,
    RedisClient,
    RedisError,
    _RedisProtocol,
    parse_broker_url,
)
from sockchat._broker.resp import encode_command

from certs import make_tls_files
from conftest import result_of

# -- URLs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected", "display"),
    [
        (
            "redis://127.0.0.1:6390/0",
            BrokerAddress("redis", "127.0.0.1", 6390),
            "redis://127.0.0.1:6390/0",
        ),
        ("redis://broker", BrokerAddress("redis", "broker"), "redis://broker:6379/0"),
        (
            "redis://:s%40cret@h/3",
            BrokerAddress("redis", "h", db=3, password="s@cret"),
            "redis://h:6379/3",
        ),
        (
            "redis://ann:pw@h:1/",
            BrokerAddress("redis", "h", 1, username="ann", password="pw"),
            "redis://ann@h:1/0",
        ),
        (
            "redis://[::1]:7000",
            BrokerAddress("redis", "::1", 7000),
            "redis://[::1]:7000/0",
        ),
        (
            "unix:///run/redis.sock?db=2&password=pw",
            BrokerAddress("unix", path="/run/redis.sock", db=2, password="pw"),
            "unix:///run/redis.sock?db=2",
        ),
        ("REDIS://h", BrokerAddress("redis", "h"), "redis://h:6379/0"),
    ],
)
def test_broker_urls(url: str, expected: BrokerAddress, display: str) -> None:
    address = parse_broker_url(url)
    assert address == expected
    assert address.display == display


def test_a_rediss_url_checks_its_files_and_names_them(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    address = parse_broker_url(
        f"rediss://h:6380/1?ca={files['ca']}&cert={files['client_cert']}"
        f"&key={files['client_key']}"
    )
    assert address.tls
    assert address.ca == str(files["ca"])
    assert address.display == "rediss://h:6380/1"
    with pytest.raises(ValueError, match=r"\?ca=.*key.pem: .*No such file") as e:
        parse_broker_url(f"rediss://h?ca={tmp_path}/key.pem")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="holds a private key, not a certificate"):
        parse_broker_url(f"rediss://h?ca={files['key']}")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h", r"the scheme must be redis://, rediss://, unix://, redis\+sentinel://"),
        ("h:6379", "the scheme must be"),
        ("redis://", "give the host"),
        ("redis://h:99999", "not a URL"),
        ("redis://h:0", "the port must be from 1 to 65535"),
        ("redis://h/x", "the db must be a number"),
        ("redis://h/1/2", "the db must be a number"),
        ("redis://h?ca=x.pem", r"\?ca= is for TLS: use rediss://"),
        ("redis://h?db=1", "unknown parameter db= "),
        ("rediss://h?cert=c.pem", r"\?cert= and \?key= go together"),
        ("redis://h#x", "no #fragment"),
        ("unix://host/sock", "a unix:// URL has no host"),
        ("unix://", "give the socket's path"),
        ("unix:///s?db=x", "the db must be a number"),
        ("redis://h?a=1&a=2", "a= is given twice"),
    ],
)
def test_bad_broker_urls_are_one_line(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as e:
        parse_broker_url(url)
    assert "\n" not in str(e.value)


def test_a_bad_url_does_not_show_its_password() -> None:
    with pytest.raises(ValueError, match=r"--broker http://ann:\*\*\*@h") as e:
        parse_broker_url("http://ann:hunter2@h")
    assert "hunter2" not in str(e.value)
    with pytest.raises(ValueError, match=r"password=\*\*\*&db=x: the db") as e:
        parse_broker_url("unix:///s?password=hunter2&db=x")
    assert "hunter2" not in str(e.value)


# -- the client in memory ---------------------------------------------------------


class Transport(StringTransport):
    """A StringTransport whose closing tells the protocol, once, and that
    counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def _close(self, why: Exception) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.connectionLost(Failure(why))

    def loseConnection(self) -> None:
        self._close(ConnectionLost("closed"))

    def abortConnection(self) -> None:
        self._close(ConnectionLost("aborted"))


@implementer(IStreamClientEndpoint)
class Endpoint:
    """Records each connection attempt; the test accepts or refuses it."""

    def __init__(self) -> None:
        self.attempts: list[tuple[IProtocolFactory, Deferred[Any]]] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.attempts.append((factory, d))
        return d

    def accept(self) -> tuple[_RedisProtocol, Transport]:
        factory, d = self.attempts[-1]
        proto = factory.buildProtocol(None)
        assert isinstance(proto, _RedisProtocol)
        transport = Transport()
        transport.protocol = proto
        proto.makeConnection(transport)
        d.callback(proto)
        return proto, transport

    def refuse(self) -> None:
        self.attempts[-1][1].errback(ConnectionRefusedError())


def fired(d: Deferred[Any]) -> bool:
    """Whether *d* has its result (not merely waiting on another Deferred)."""
    box: list[object] = []

    def keep(result: object) -> object:
        box.append(result)
        return result

    d.addBoth(keep)
    return bool(box)


class NoJitter:
    def uniform(self, low: float, high: float) -> float:
        return 1.0


ADDRESS = parse_broker_url("redis://:pw@127.0.0.1:6390/0")


def make_client(
    address: BrokerAddress = ADDRESS,
) -> tuple[RedisClient, Endpoint, Clock, list[bool]]:
    clock, endpoint, states = Clock(), Endpoint(), []
    client = RedisClient(
        clock,
        address,
        on_state=states.append,
        endpoint=endpoint,
        rng=NoJitter(),  # type: ignore[arg-type]
    )
    return client, endpoint, clock, states


def connect(
    client: RedisClient, endpoint: Endpoint, hello: bytes = b"+OK\r\n+PONG\r\n"
) -> tuple[_RedisProtocol, Transport]:
    """Accept the latest attempt and answer its AUTH and PING."""
    proto, transport = endpoint.accept()
    client._reactor.advance(0)  # the turn ends: the hello is written
    transport.clear()
    transport.writes.clear()
    proto.dataReceived(hello)
    return proto, transport


@pytest.fixture
def log_events():
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_the_client_is_an_iredis_and_says_hello_with_auth_and_select() -> None:
    client, endpoint, _, _ = make_client(parse_broker_url("redis://ann:pw@h/4"))
    redis: IRedis = client
    started = client.start()
    proto, transport = endpoint.accept()
    client._reactor.advance(0)
    assert transport.writes == [
        encode_command("AUTH", "ann", "pw")
        + encode_command("SELECT", 4)
        + encode_command("PING")
    ]
    assert not fired(started)
    assert not redis.connected
    proto.dataReceived(b"+OK\r\n+OK\r\n+PO")
    assert not fired(started)
    proto.dataReceived(b"NG\r\n")
    assert result_of(started) is None
    assert redis.connected


def test_commands_of_one_turn_leave_in_one_write_and_replies_come_back_in_order() -> (
    None
):
    client, endpoint, clock, _ = make_client()
    client.start()
    proto, transport = connect(client, endpoint)
    first = client.command("SET", "k", 1)
    second = client.command("GET", "nope")
    third = client.command("INCR", "k")
    fourth = client.command("LRANGE", "l", 0, -1)
    assert transport.writes == []  # not before the turn is over
    clock.advance(0)
    assert transport.writes == [
        encode_command("SET", "k", 1)
        + encode_command("GET", "nope")
        + encode_command("INCR", "k")
        + encode_command("LRANGE", "l", 0, -1)
    ]
    proto.dataReceived(
        b"+OK\r\n$-1\r\n-ERR value is not an integer\r\n*1\r\n$1\r\na\r\n"
    )
    assert result_of(first) == "OK"
    assert result_of(second) is None
    with pytest.raises(RedisError, match=r"^ERR value is not an integer$"):
        result_of(third)
    assert result_of(fourth) == [b"a"]


def test_each_turn_is_one_write_and_commands_sent_from_replies_share_one() -> None:
    client, endpoint, clock, _ = make_client()
    client.start()
    proto, transport = connect(client, endpoint)
    client.command("PING")
    clock.advance(0)
    client.command("PING")
    clock.advance(0)
    clock.advance(0)  # a turn that sent nothing writes nothing
    assert transport.writes == [encode_command("PING")] * 2
    # Commands that the replies' callbacks send, in one read, go together.
    for _ in range(2):
        proto_reply = client.command("GET", "k")
        proto_reply.addCallback(lambda v: client.command("SET", "k2", v))
    clock.advance(0)
    transport.writes.clear()
    proto.dataReceived(b"+PONG\r\n+PONG\r\n$1\r\na\r\n$1\r\nb\r\n")
    clock.advance(0)
    assert transport.writes == [
        encode_command("SET", "k2", b"a") + encode_command("SET", "k2", b"b")
    ]


def test_commands_not_written_when_the_client_stops_are_never_written() -> None:
    client, endpoint, clock, _ = make_client()
    client.start()
    _, transport = connect(client, endpoint)
    waiting = client.command("SET", "k", 1)
    client.stop()
    clock.advance(0)
    assert transport.writes == []
    with pytest.raises(BrokerUnavailable, match="was stopped"):
        result_of(waiting)
    assert clock.getDelayedCalls() == []


def test_a_cancelled_command_drops_its_reply_and_the_next_gets_its_own() -> None:
    client, endpoint, _, _ = make_client()
    client.start()
    proto, _ = connect(client, endpoint)
    blocked = client.command("BLPOP", "q", 0)
    after = client.command("PING")
    blocked.cancel()
    proto.dataReceived(b"*-1\r\n+PONG\r\n")
    assert result_of(after) == "PONG"


def test_start_fails_with_one_line_when_nothing_listens() -> None:
    client, endpoint, clock, _ = make_client()
    started = client.start()
    endpoint.refuse()
    with pytest.raises(BrokerUnavailable) as e:
        result_of(started)
    assert str(e.value) == (
        "cannot reach the broker at redis://127.0.0.1:6390/0: Connection refused"
    )
    clock.advance(60)
    assert len(endpoint.attempts) == 1  # no retry after a failed start


def test_start_fails_with_the_servers_word_on_a_bad_password() -> None:
    client, endpoint, _, _ = make_client()
    started = client.start()
    _, transport = connect(
        client, endpoint, b"-WRONGPASS invalid username-password pair\r\n-NOAUTH x\r\n"
    )
    with pytest.raises(
        BrokerUnavailable, match=r": WRONGPASS invalid username-password pair$"
    ):
        result_of(started)
    assert transport.closed


def test_a_connection_that_never_answers_times_out() -> None:
    client, endpoint, clock, _ = make_client()
    started = client.start()
    _, transport = endpoint.accept()
    clock.advance(4.9)
    assert not fired(started)
    clock.advance(0.1)
    with pytest.raises(BrokerUnavailable, match=r": no answer within 5 s$"):
        result_of(started)
    assert transport.closed


def test_a_connect_that_hangs_times_out() -> None:
    client, endpoint, clock, _ = make_client()
    started = client.start()
    clock.advance(5)
    with pytest.raises(BrokerUnavailable, match=r": no answer within 5 s$"):
        result_of(started)
    assert endpoint.attempts[0][1].called  # the attempt was cancelled


def test_a_loss_fails_what_is_in_flight_and_the_client_comes_back_with_backoff(
    log_events: list[dict[str, Any]],
) -> None:
    client, endpoint, clock, states = make_client()
    client.start()
    _, transport = connect(client, endpoint)
    in_flight = client.command("BLPOP", "q", 0)
    transport.abortConnection()
    with pytest.raises(BrokerUnavailable) as e:
        result_of(in_flight)
    assert (
        str(e.value)
        == "lost the broker at redis://127.0.0.1:6390/0: the connection was lost"
    )
    assert states == [False]
    assert not client.connected
    # New commands fail at once, and name the broker without its password.
    for _ in range(3):
        with pytest.raises(
            BrokerUnavailable, match=r"redis://127\.0\.0\.1:6390/0 is unavailable"
        ):
            result_of(client.command("PING"))
    # Attempts come after 0.2, 0.4, 0.8, 1.6, 3.2, 5, 5 s.
    delays = []
    for n in range(7):
        retry = client._retry
        assert retry is not None
        delays.append(round(retry.getTime() - clock.seconds(), 6))
        clock.advance(delays[-1] - 0.001)
        assert len(endpoint.attempts) == n + 1
        clock.advance(0.002)
        assert len(endpoint.attempts) == n + 2
        endpoint.refuse()
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert states == [False]
    clock.advance(5)
    connect(client, endpoint)
    assert states == [False, True]
    assert client.connected
    # Said once each, whatever the number of attempts and commands.
    said = [
        (e["log_level"], e["log_format"])
        for e in log_events
        if e.get("log_namespace") == "sockchat.redis"
        and e["log_level"] >= LogLevel.info
    ]
    assert said == [
        (LogLevel.info, "connected to the broker at {broker}"),
        (LogLevel.warn, "lost the broker at {broker}: {why}; reconnecting"),
        (LogLevel.info, "the broker at {broker} is back after {down:.1f} s"),
    ]
    assert all("pw" not in str(e.get("broker")) for e in log_events)
    # The backoff starts again after a return.
    proto2 = client._proto
    assert proto2 is not None
    proto2.transport.abortConnection()  # type: ignore[union-attr]
    clock.advance(0.2)
    assert len(endpoint.attempts) == 10


def test_jitter_spreads_the_delays() -> None:
    import random

    clock, endpoint = Clock(), Endpoint()
    client = RedisClient(clock, ADDRESS, endpoint=endpoint, rng=random.Random(1))
    client.start()
    _, transport = connect(client, endpoint)
    transport.abortConnection()
    pending = clock.getDelayedCalls()
    assert len(pending) == 1
    assert 0.16 <= pending[0].getTime() <= 0.24
    assert pending[0].getTime() != 0.2


def test_a_protocol_error_drops_the_connection_as_a_loss() -> None:
    client, endpoint, _, states = make_client()
    client.start()
    proto, transport = connect(client, endpoint)
    d = client.command("GET", "k")
    proto.dataReceived(b"!garbage\r\n")
    assert transport.closed
    with pytest.raises(BrokerUnavailable, match="does not speak Redis's protocol"):
        result_of(d)
    assert states == [False]


def test_stop_fails_what_is_in_flight_and_ends_the_reconnecting() -> None:
    client, endpoint, clock, states = make_client()
    client.start()
    _, transport = connect(client, endpoint)
    blocked = client.command(
        "XREADGROUP", "GROUP", "g", "c", "BLOCK", 0, "STREAMS", "s", ">"
    )
    stopped = client.stop()
    assert result_of(stopped) is None
    with pytest.raises(BrokerUnavailable, match="was stopped"):
        result_of(blocked)
    assert transport.closed
    assert not client.connected
    clock.advance(60)
    assert len(endpoint.attempts) == 1
    assert states == []


def test_stop_while_waiting_to_reconnect_cancels_the_retry() -> None:
    client, endpoint, clock, states = make_client()
    client.start()
    _, transport = connect(client, endpoint)
    transport.abortConnection()
    clock.advance(0.2)
    assert len(endpoint.attempts) == 2
    stopped = client.stop()
    assert result_of(stopped) is None
    assert endpoint.attempts[1][1].called  # cancelled
    clock.advance(60)
    assert len(endpoint.attempts) == 2
    assert states == [False]


def test_an_on_state_that_raises_is_logged_and_the_client_goes_on(
    logged_failures: list[dict[str, Any]],
) -> None:
    clock, endpoint = Clock(), Endpoint()

    def broken(state: bool) -> None:
        raise ValueError("oops")

    client = RedisClient(
        clock, ADDRESS, on_state=broken, endpoint=endpoint, rng=NoJitter()
    )  # type: ignore[arg-type]
    client.start()
    _, transport = connect(client, endpoint)
    transport.abortConnection()
    assert len(logged_failures) == 1
    clock.advance(0.2)
    assert len(endpoint.attempts) == 2


def test_an_owner_that_logs_for_itself_silences_the_clients_lines(
    log_events: list[dict[str, Any]],
) -> None:
    clock, endpoint = Clock(), Endpoint()
    client = RedisClient(
        clock,
        ADDRESS,
        endpoint=endpoint,
        rng=NoJitter(),  # type: ignore[arg-type]
        logged=False,
    )
    client.start()
    _, transport = connect(client, endpoint)
    transport.abortConnection()
    assert client.why == "the connection was lost"
    clock.advance(0.2)
    connect(client, endpoint)
    assert client.connected
    levels = [
        e["log_level"] for e in log_events if e.get("log_namespace") == "sockchat.redis"
    ]
    assert levels == []
