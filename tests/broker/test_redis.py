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
    ReplicaWait,
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
        (
            "redis+sentinel://h1:26380,h2/mymaster",
            BrokerAddress(
                "redis+sentinel",
                sentinels=(("h1", 26380), ("h2", 26379)),
                master="mymaster",
            ),
            "redis+sentinel://h1:26380,h2:26379/mymaster/0",
        ),
        (
            "redis+sentinel://ann:pw@[::1]:1,10.0.0.2:2/my%20m/3?wait=1",
            BrokerAddress(
                "redis+sentinel",
                db=3,
                username="ann",
                password="pw",
                sentinels=(("::1", 1), ("10.0.0.2", 2)),
                master="my m",
                wait=ReplicaWait(1, 1.0),
            ),
            "redis+sentinel://ann@[::1]:1,10.0.0.2:2/my%20m/3",
        ),
        (
            "redis+sentinel://h:1/m?sentinel_password=sp&wait=2&wait_ms=250",
            BrokerAddress(
                "redis+sentinel",
                sentinels=(("h", 1),),
                master="m",
                sentinel_password="sp",
                wait=ReplicaWait(2, 0.25),
            ),
            "redis+sentinel://h:1/m/0",
        ),
        (
            "redis://h?wait=1",
            BrokerAddress("redis", "h", wait=ReplicaWait(1, 1.0)),
            "redis://h:6379/0",
        ),
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
        (
            "http://h",
            r"the scheme must be redis://, rediss://, unix://, redis\+sentinel://",
        ),
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
        ("redis+sentinel://h:1", "give the master's name"),
        ("redis+sentinel://h:1/", "give the master's name"),
        ("redis+sentinel:///m", "give the sentinels"),
        ("redis+sentinel://h:1,,h:2/m", "an empty sentinel address"),
        ("redis+sentinel://h:1/m/1/2", "after the master's name comes only the db"),
        ("redis+sentinel://h:1/m/x", "the db must be a number"),
        ("redis+sentinel://h:99999/m", "not a URL"),
        ("redis+sentinel://h:0/m", "the port must be from 1 to 65535"),
        ("redis+sentinel://h:1/m?ca=x.pem", r"use rediss\+sentinel://"),
        ("redis+sentinel://h:1/m?db=1", "unknown parameter db= "),
        ("redis://h?sentinel_password=x", "unknown parameter sentinel_password="),
        ("redis://h?wait=0", r"the wait= \(replicas\) must be a number from 1"),
        ("redis://h?wait=x", r"the wait= \(replicas\) must be a number from 1"),
        ("redis://h?wait_ms=5", "wait_ms= goes with wait=N"),
        ("redis://h?wait=1&wait_ms=0", "the wait_ms= must be a number"),
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
    with pytest.raises(
        ValueError, match=r"sentinel://:\*\*\*@h:1,h:2/m/x: the db"
    ) as e:
        parse_broker_url("redis+sentinel://:hunter2@h:1,h:2/m/x")
    assert "hunter2" not in str(e.value)
    with pytest.raises(ValueError, match=r"sentinel_password=\*\*\*&wait=x") as e:
        parse_broker_url("redis+sentinel://h:1/m?sentinel_password=hunter2&wait=x")
    assert "hunter2" not in str(e.value)


def test_every_broker_help_names_every_scheme() -> None:
    """``--help`` of twistd sockchat, the operator and the worker: a user of
    Sentinel learns there that ``redis+sentinel://`` exists."""
    from sockchat._broker.join import BROKER_HELP
    from sockchat.tap import Options

    examples = {
        "redis": "redis://h",
        "rediss": "rediss://h",
        "unix": "unix:///s",
        "redis+sentinel": "redis+sentinel://h:1/m",
        "rediss+sentinel": "rediss+sentinel://h:1/m",
    }
    for scheme, url in examples.items():  # the schemes a URL may have
        assert parse_broker_url(url).scheme == scheme
    schemes = list(examples)
    [twistd] = [o[3] for o in Options.optParameters if o[0] == "broker"]
    for help_text in (twistd, BROKER_HELP):
        for scheme in schemes:
            assert f"{scheme}://" in help_text, (scheme, help_text)


def test_a_rediss_sentinel_url_checks_its_files_and_reaches_everything_with_tls(
    tmp_path: Path,
) -> None:
    files = make_tls_files(tmp_path)
    address = parse_broker_url(
        f"rediss+sentinel://:pw@h:1/m/2?ca={files['ca']}&cert={files['client_cert']}"
        f"&key={files['client_key']}&sentinel_password=sp"
    )
    assert address.tls
    assert address.sentinel
    master = address.at("10.0.0.5", 6380)
    assert master == BrokerAddress(
        "rediss",
        "10.0.0.5",
        6380,
        db=2,
        password="pw",
        ca=str(files["ca"]),
        cert=str(files["client_cert"]),
        key=str(files["client_key"]),
    )
    sentinel = address.sentinel_at("h", 1)
    assert (sentinel.scheme, sentinel.password, sentinel.db) == ("rediss", "sp", 0)
    assert sentinel.ca == str(files["ca"])
    with pytest.raises(ValueError, match=r"\?ca=.*key.pem: .*No such file"):
        parse_broker_url(f"rediss+sentinel://h:1/m?ca={tmp_path}/key.pem")


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


def test_a_command_now_leaves_at_once_with_the_turns_before_it() -> None:
    """``command_now`` (a batch made at a turn's end): written at once,
    after this turn's commands so far and in one write with them, and no
    write is left for the turn's end."""
    client, endpoint, clock, _ = make_client()
    client.start()
    proto, transport = connect(client, endpoint)
    first = client.command("INCR", "k")
    now = client.command_now("GET", "k")
    assert transport.writes == [
        encode_command("INCR", "k") + encode_command("GET", "k")
    ]
    assert clock.getDelayedCalls() == [], "no pass of the reactor more for it"
    later = client.command("PING")
    clock.advance(0)
    assert transport.writes[1:] == [encode_command("PING")]
    proto.dataReceived(b":1\r\n$1\r\n1\r\n+PONG\r\n")
    assert result_of(first) == 1
    assert result_of(now) == b"1"
    assert result_of(later) == "PONG"


def test_a_command_now_without_a_connection_says_why() -> None:
    client, _, _, _ = make_client()
    with pytest.raises(BrokerUnavailable, match="is unavailable"):
        result_of(client.command_now("PING"))


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


# -- sentinels, in memory -------------------------------------------------------


class Network:
    """Endpoints for any address: each connection attempt waits for the
    test to accept or refuse it."""

    def __init__(self) -> None:
        self.attempts: list[tuple[BrokerAddress, IProtocolFactory, Deferred[Any]]] = []

    def endpoint_for(self, address: BrokerAddress, timeout: float) -> Any:
        network = self

        @implementer(IStreamClientEndpoint)
        class One:
            def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                network.attempts.append((address, factory, d))
                return d

        return One()

    def waiting(self) -> list[int]:
        """The ports of the attempts not answered yet."""
        return [a.port for a, _, d in self.attempts if not d.called]

    def _next(self, port: int) -> tuple[IProtocolFactory, Deferred[Any]]:
        (found,) = [
            (f, d) for a, f, d in self.attempts if a.port == port and not d.called
        ]
        return found

    def accept(self, port: int) -> tuple[_RedisProtocol, Transport]:
        factory, d = self._next(port)
        proto = factory.buildProtocol(None)
        assert isinstance(proto, _RedisProtocol)
        transport = Transport()
        transport.protocol = proto
        proto.makeConnection(transport)
        d.callback(proto)
        return proto, transport

    def refuse(self, port: int) -> None:
        self._next(port)[1].errback(ConnectionRefusedError())


SENTINELS = "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/m/0"


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test a process of its own: no master followed yet."""
    import sockchat._broker.redis

    monkeypatch.setattr(sockchat._broker.redis, "_MASTERS", {})


def sentinel_client(
    url: str = SENTINELS,
) -> tuple[RedisClient, Network, Clock, list[bool]]:
    clock, network, states = Clock(), Network(), []
    client = RedisClient(
        clock,
        parse_broker_url(url),
        on_state=states.append,
        endpoint_for=network.endpoint_for,
        rng=NoJitter(),  # type: ignore[arg-type]
    )
    return client, network, clock, states


def bulk(text: str) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(text), text.encode())


def master_at(port: int) -> bytes:
    return b"*2\r\n" + bulk("127.0.0.1") + bulk(str(port))


def answer(network: Network, clock: Clock, port: int, reply: bytes) -> Transport:
    """Accept the connection to *port* and give *reply* to what it asks."""
    proto, transport = network.accept(port)
    clock.advance(0)
    proto.dataReceived(reply)
    return transport


ROLE_MASTER = b"*3\r\n" + bulk("master") + b":0\r\n*0\r\n+PONG\r\n"


def test_the_sentinels_are_asked_in_turn_and_the_master_checked_with_role() -> None:
    client, network, clock, _ = sentinel_client()
    started = client.start()
    assert network.waiting() == [26379]
    network.refuse(26379)
    assert network.waiting() == [26380]
    proto, transport = network.accept(26380)
    clock.advance(0)
    assert transport.value() == encode_command(
        "SENTINEL", "get-master-addr-by-name", "m"
    )
    proto.dataReceived(master_at(6380))
    assert transport.closed  # asked, and let go
    proto, transport = network.accept(6380)
    clock.advance(0)
    assert transport.value() == encode_command("ROLE") + encode_command("PING")
    proto.dataReceived(ROLE_MASTER)
    assert result_of(started) is None
    assert client.connected
    # It listens on the sentinel that answered, asked first from now on.
    assert network.waiting() == [26380]


def test_a_sentinel_url_at_start_says_in_one_line_why_not() -> None:
    client, network, _, _ = sentinel_client()
    started = client.start()
    network.refuse(26379)
    network.refuse(26380)
    with pytest.raises(BrokerUnavailable) as e:
        result_of(started)
    assert str(e.value) == (
        f"cannot reach the broker at {SENTINELS}: no sentinel answered "
        "(127.0.0.1:26379: Connection refused; 127.0.0.1:26380: Connection refused)"
    )
    client, network, clock, _ = sentinel_client()
    started = client.start()
    answer(network, clock, 26379, b"*-1\r\n")
    answer(network, clock, 26380, b"*-1\r\n")
    with pytest.raises(
        BrokerUnavailable, match=r": the sentinels know no master named 'm'$"
    ):
        result_of(started)
    client, network, clock, _ = sentinel_client()
    started = client.start()
    answer(network, clock, 26379, master_at(6380))
    answer(network, clock, 6380, b"*2\r\n" + bulk("slave") + b"*0\r\n+PONG\r\n")
    with pytest.raises(
        BrokerUnavailable,
        match=r": 127\.0\.0\.1:6380 is not the master \(its ROLE is slave\) yet$",
    ):
        result_of(started)


def connected_through_sentinels(
    log_events: list[dict[str, Any]] | None = None,
) -> tuple[RedisClient, Network, Clock, list[bool], _RedisProtocol]:
    client, network, clock, states = sentinel_client()
    client.start()
    answer(network, clock, 26379, master_at(6380))
    answer(network, clock, 6380, ROLE_MASTER)
    assert client.connected
    watch = answer(
        network,
        clock,
        26379,
        b"*3\r\n" + bulk("subscribe") + bulk("+switch-master") + b":1\r\n",
    )
    assert watch.value() == encode_command("SUBSCRIBE", "+switch-master")
    return client, network, clock, states, watch.protocol


def switch(master: str, old: int, new: int) -> bytes:
    text = f"{master} 127.0.0.1 {old} 127.0.0.1 {new}"
    return b"*3\r\n" + bulk("message") + bulk("+switch-master") + bulk(text)


def test_switch_master_moves_the_client_to_the_new_master_and_says_so_once(
    log_events: list[dict[str, Any]],
) -> None:
    client, network, clock, states, watch = connected_through_sentinels()
    waiting = client.command("BLPOP", "q", 0)
    watch.dataReceived(switch("other", 6380, 7000))  # another master's: nothing
    assert client.connected
    watch.dataReceived(switch("m", 6380, 6381))
    with pytest.raises(
        BrokerUnavailable, match=r"the sentinels moved the master to 127\.0\.0\.1:6381"
    ):
        result_of(waiting)
    assert states == [False]
    clock.advance(0.2)
    answer(network, clock, 26379, master_at(6381))
    answer(network, clock, 6381, ROLE_MASTER)
    assert client.connected
    assert states == [False, True]
    said = [e for e in log_events if "failed over" in e.get("log_format", "")]
    assert len(said) == 1
    assert (said[0]["where"], said[0]["before"]) == ("127.0.0.1:6381", "127.0.0.1:6380")
    # stop() ends the listening too: nothing more is tried.
    assert result_of(client.stop()) is None
    assert watch.transport.closed  # type: ignore[attr-defined]
    clock.advance(60)
    assert network.waiting() == []


def test_a_readonly_answer_is_a_loss_and_the_client_looks_again() -> None:
    client, network, clock, states, _ = connected_through_sentinels()
    written = client.command("SET", "k", 1)
    after = client.command("GET", "k")
    clock.advance(0)
    client._proto.dataReceived(  # type: ignore[union-attr]
        b"-READONLY You can't write against a read only replica.\r\n"
    )
    for d in (written, after):
        with pytest.raises(
            BrokerUnavailable, match=r"127\.0\.0\.1:6380 is a replica now \(READONLY\)"
        ):
            result_of(d)
    assert states == [False]
    clock.advance(0.2)
    answer(network, clock, 26379, master_at(6381))
    answer(network, clock, 6381, ROLE_MASTER)
    assert states == [False, True]


def test_readonly_from_a_plain_url_is_the_servers_error() -> None:
    client, endpoint, clock, states = make_client()
    client.start()
    proto, _ = connect(client, endpoint)
    written = client.command("SET", "k", 1)
    clock.advance(0)
    proto.dataReceived(b"-READONLY You can't write against a read only replica.\r\n")
    with pytest.raises(RedisError, match=r"^READONLY"):
        result_of(written)
    assert client.connected
    assert states == []


def test_replicated_asks_wait_and_fails_as_unavailable_when_too_few_have_it() -> None:
    client, endpoint, clock, _ = make_client(
        parse_broker_url("redis://h?wait=1&wait_ms=250")
    )
    client.start()
    proto, transport = connect(client, endpoint, b"+PONG\r\n")
    client.command("XADD", "s", "*", "m", "x")
    safe = client.replicated()
    clock.advance(0)
    assert transport.writes == [
        encode_command("XADD", "s", "*", "m", "x") + encode_command("WAIT", 1, 250)
    ]
    proto.dataReceived(b"$3\r\n1-1\r\n:1\r\n")
    assert result_of(safe) is None
    unsafe = client.replicated()
    clock.advance(0)
    proto.dataReceived(b":0\r\n")
    with pytest.raises(BrokerUnavailable) as e:
        result_of(unsafe)
    assert str(e.value) == (
        "the broker at redis://h:6379/0 could not copy it to 1 replica(s) "
        "within 250 ms (0 did)"
    )
    plain, _, _, _ = make_client()
    assert result_of(plain.replicated()) is None  # no ?wait=: nothing to ask


def test_the_replicated_calls_of_one_turn_share_one_wait_sent_last() -> None:
    client, endpoint, clock, _ = make_client(parse_broker_url("redis://h?wait=1"))
    client.start()
    proto, transport = connect(client, endpoint, b"+PONG\r\n")
    first = client.replicated()
    client.command("XADD", "s", "*", "m", "a")
    second = client.replicated()
    client.command("XADD", "s", "*", "m", "b")
    clock.advance(0)
    assert transport.writes == [
        encode_command("XADD", "s", "*", "m", "a")
        + encode_command("XADD", "s", "*", "m", "b")
        + encode_command("WAIT", 1, 1000)
    ]
    proto.dataReceived(b"$3\r\n1-1\r\n$3\r\n1-2\r\n:1\r\n")
    assert result_of(first) is None
    assert result_of(second) is None
    # Lost before it was sent: each asker hears it.
    third = client.replicated()
    proto.transport.abortConnection()  # type: ignore[union-attr]
    with pytest.raises(BrokerUnavailable, match="lost the broker"):
        result_of(third)
    assert transport.writes[1:] == []


def test_which_parser_reads_the_replies_is_said_once_per_process(
    log_events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sockchat._broker.redis

    monkeypatch.setattr(sockchat._broker.redis, "_PARSER_SAID", [])
    for _ in range(2):
        client, endpoint, _, _ = make_client()
        client.start()
        connect(client, endpoint)
    said = [e["log_format"] for e in log_events if "parsed" in e.get("log_format", "")]
    assert said == ["the broker's replies are parsed by hiredis"]
