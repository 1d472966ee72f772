"""--metrics: what the server counts, /metrics and /healthz, in memory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

import sockchat
from sockchat import ChatServerFactory, EchoResponder
from sockchat._core.limits import Admission
from sockchat._core.stats import (
    MAX_LABEL_VALUES,
    Health,
    LatencyHistogram,
    ServerStats,
)
from sockchat._operations.prometheus import (
    EXTRA_MISSING,
    HealthResource,
    StatsCollector,
    extra_missing,
    metrics_site,
)
from sockchat._operations.services import MetricsService, PortChatService
from sockchat.tap import Options

from conftest import has_fired
from fakes import Later, ListeningEndpoint, open_conversation


def samples(stats: ServerStats, health: Health | None = None) -> dict:
    """``{(name, labels...): value}`` of one scrape."""
    registry = CollectorRegistry()
    registry.register(StatsCollector([stats], health or Health()))
    text = generate_latest(registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, *sorted(sample.labels.items()))
            found[key] = sample.value
    return found


def peer(port: int = 40000) -> IPv4Address:
    return IPv4Address("TCP", "127.0.0.1", port)


def connect(factory: ChatServerFactory, port: int = 40000):
    return open_conversation(factory, peer(port))


def test_histogram_counts_a_bound_in_its_own_bucket():
    histogram = LatencyHistogram((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(seconds)
    assert histogram.counts == [2, 2, 1]
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert histogram.total == pytest.approx(8.65)


def test_labels_past_the_cap_are_counted_as_other():
    stats = ServerStats()
    for n in range(MAX_LABEL_VALUES + 5):
        stats.refused_line(f"code-{n}")
    assert len(stats.refused_lines) == MAX_LABEL_VALUES + 1
    assert stats.refused_lines["other"] == 5
    assert stats.refused_lines["code-0"] == 1


def test_a_conversation_a_refused_line_and_a_refused_connection_are_counted():
    clock = Clock()
    factory = ChatServerFactory(
        EchoResponder(), clock=clock, admission=Admission(max_clients=1)
    )
    proto, transport = connect(factory)
    proto.dataReceived(b"hello\n")
    proto.dataReceived(b"\xff\n")  # not UTF-8
    connect(factory, 40001)  # refused: busy
    assert factory.stats.open == 1
    proto.dataReceived(b"q\n")
    proto.connectionLost()
    found = samples(factory.stats)
    assert found[("sockchat_conversations_started_total",)] == 1
    assert found[("sockchat_conversations_open",)] == 0
    assert found[("sockchat_conversations_ended_total", ("reason", "quit"))] == 1
    assert found[("sockchat_lines_answered_total",)] == 1
    assert found[("sockchat_lines_refused_total", ("code", "invalid-utf8"))] == 1
    assert found[("sockchat_connections_refused_total", ("reason", "busy"))] == 1
    assert found[("sockchat_received_bytes_total",)] == len(b"hello\n\xff\nq\n")
    assert found[("sockchat_sent_bytes_total",)] == len(transport.value())
    latency = ("responder", "EchoResponder")
    assert found[("sockchat_answer_latency_seconds_count", latency)] == 1
    assert found[("sockchat_answer_latency_seconds_bucket", ("le", "+Inf"), latency)]
    # No label carries a peer address or a conversation id.
    labels = {value for key in found for _, value in key[1:]}
    assert not any("127.0.0.1" in value or value == "1" for value in labels)


def test_answer_latency_is_the_time_the_responder_took():
    clock = Clock()
    responder = Later()
    factory = ChatServerFactory(responder, clock=clock)
    proto, _ = connect(factory)
    proto.dataReceived(b"slow one\n")
    clock.advance(0.3)
    responder.pending[0].callback("done")
    histogram = factory.stats.latency["Later"]
    assert histogram.counts[histogram.bounds.index(0.5)] == 1
    assert histogram.total == pytest.approx(0.3)


def test_out_of_turn_lines_are_refused_by_code():
    factory = ChatServerFactory(Later(), clock=Clock())
    proto, _ = connect(factory)
    proto.dataReceived(b"first\nsecond\n")
    assert factory.stats.refused_lines == {"out-of-turn": 1}


def test_output_held_is_what_the_engines_count_as_held():
    clock = Clock()
    factory = ChatServerFactory(EchoResponder(), clock=clock, max_output=100_000)
    proto, transport = connect(factory)
    transport.producer.pauseProducing()  # the client does not read
    proto.dataReceived(b"held\n" * 10)
    found = samples(factory.stats)
    assert found[("sockchat_output_held_bytes",)] == proto.runner.engine.held > 0
    transport.producer.resumeProducing()
    assert samples(factory.stats)[("sockchat_output_held_bytes",)] == 0


def test_healthz_says_ok_then_503_while_shutting_down():
    health = Health()
    resource = HealthResource(health)
    request = DummyRequest([b""])
    assert resource.render_GET(request) == b"ok\n"
    assert request.responseCode in (None, 200)
    health.shutting_down()
    request = DummyRequest([b""])
    assert resource.render_GET(request) == b"unavailable: shutting down\n"
    assert request.responseCode == 503
    assert samples(ServerStats(), health)[("sockchat_accepting",)] == 0


def test_the_metrics_site_serves_both_pages_and_logs_no_request():
    site = metrics_site([ServerStats()], Health())
    assert site.noisy is False
    resource = site.getResourceFor(DummyRequest([b"metrics"]))
    text = resource.render_GET(DummyRequest([b"metrics"])).decode()
    assert "sockchat_conversations_started_total 0.0" in text
    assert isinstance(site.getResourceFor(DummyRequest([b"healthz"])), HealthResource)
    assert site.log(DummyRequest([b"healthz"])) is None  # and writes nothing


def test_a_body_sent_to_the_metrics_site_is_refused_in_its_own_words():
    """413, as on the chat page's door, but about this site: there is no
    chat page here."""
    from twisted.internet.testing import StringTransport

    site = metrics_site([ServerStats()], Health(), Clock())
    channel = site.buildProtocol(peer())
    transport = StringTransport(peerAddress=peer())
    channel.makeConnection(transport)
    channel.dataReceived(
        b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello"
    )
    response = transport.value()
    assert response.startswith(b"HTTP/1.1 413 Content Too Large\r\n")
    assert b"chat page" not in response
    assert response.endswith(
        b"sockchat: this server takes no request bodies; /metrics and /healthz "
        b"need none.\n"
    )


def test_metrics_stay_up_503_until_the_chat_door_has_closed():
    clock = Clock()
    health = Health()
    factory = ChatServerFactory(Later(), clock=clock)
    door = PortChatService(ListeningEndpoint(), factory)
    endpoint = ListeningEndpoint()
    metrics = MetricsService(endpoint, "test", None, health, [door])  # type: ignore[arg-type]
    metrics.listen()
    proto, _ = connect(factory)
    proto.dataReceived(b"waiting\n")
    door.startService()
    metrics.startService()
    stopping = metrics.stopService()
    door_stopping = door.stopService()
    assert not health.accepting
    assert endpoint.port.listening, "still answering /healthz while the door drains"
    assert not has_fired(stopping)
    proto.connectionLost()  # the last client has gone
    assert has_fired(door_stopping)
    assert not endpoint.port.listening
    assert has_fired(stopping)


def test_metrics_option_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    options = Options()
    with pytest.raises(SystemExit) as raised:
        options.parseOptions(["--responder", "echo", "--metrics", "9100"])
    # This sockchat runs from its clone: PyPI's name would not do.
    root = Path(sockchat.__file__).resolve().parent.parent
    assert str(raised.value) == (
        "sockchat: --metrics needs prometheus-client, which is not installed; "
        f"this sockchat runs from its source folder {root}: install it there "
        "with: pip install -e '.[metrics]'"
    )


def test_installed_from_a_wheel_the_hint_names_the_package(tmp_path):
    (tmp_path / "sockchat").mkdir()  # site-packages: no setup.cfg beside it
    assert extra_missing(tmp_path / "sockchat") == EXTRA_MISSING
    assert EXTRA_MISSING.endswith("install it with: pip install 'sockchat[metrics]'")


def test_metrics_bare_port_listens_on_loopback_only():
    options = Options()
    options.parseOptions(["--responder", "echo", "--metrics", "9100"])
    assert options["metrics_endpoint"].startswith("tcp:9100:interface=127.0.0.1")
    options = Options()
    options.parseOptions(["--responder", "echo", "--metrics", "tcp:9100"])
    assert options["metrics_endpoint"] == "tcp:9100"


@pytest.mark.parametrize("value", ["", "  "])
def test_metrics_option_must_not_be_empty(value: str):
    with pytest.raises(SystemExit, match="--metrics needs a port number"):
        Options().parseOptions(["--responder", "echo", "--metrics", value])


def test_the_operators_queue_is_scraped_with_the_server():
    from sockchat._core.queuestats import QueueStats

    clock = Clock()
    clock.advance(100)
    queue = QueueStats()
    queue.waiting.update({1: 70.0, 2: 95.0})
    queue.online = 2
    queue.first_answer.observe(12)
    registry = CollectorRegistry()
    registry.register(StatsCollector([ServerStats()], Health(), [queue], clock))
    text = generate_latest(registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, *sorted(sample.labels.items()))] = sample.value
    assert found[("sockchat_operator_queue_lines",)] == 2
    assert found[("sockchat_operator_queue_oldest_seconds",)] == 30
    assert found[("sockchat_operators_online",)] == 2
    count = "sockchat_operator_first_answer_seconds_count"
    assert found[(count,)] == 1
    bucket = "sockchat_operator_first_answer_seconds_bucket"
    assert found[(bucket, ("le", "5.0"))] == 0
    assert found[(bucket, ("le", "15.0"))] == 1
    # Without the operators' queue, none of these.
    assert "sockchat_operator_queue_lines" not in str(samples(ServerStats()))
