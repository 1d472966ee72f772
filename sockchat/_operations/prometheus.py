"""The ``--metrics`` door: ``/metrics`` for Prometheus and ``/healthz``.

Needs ``prometheus-client`` (``pip install 'sockchat[metrics]'``) for
``/metrics``; ``/healthz`` (``healthz_resource``) needs nothing more.

``ServerStats`` is read only when Prometheus scrapes, by
``StatsCollector``, which turns it into metric families; so is an
instance's ``QueueStats`` (the operators' queue: its depth, its oldest
wait, the time to a conversation's first answer, operators online).  The page is
rendered in the reactor's thread (not in a thread pool, as
``prometheus_client.twisted.MetricsResource`` would), so a scrape sees the
counters between two events, never in the middle of one.

Neither resource logs a request or starts a conversation: a health check
every second is no log line and no entry in the conversation counts.  The
site is a ``ChatSite``, as the chat page's and the desk's are: each request has the
headers deadline, none may have a body, and connections are capped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from sockchat._core.limits import Admission
from sockchat._core.queuestats import QueueStats
from sockchat._core.stats import Health, LatencyHistogram, ServerStats
from sockchat._doors.web import AdmissionGate, ChatSite
from sockchat._version import __version__

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = [
    "EXTRA_MISSING",
    "HealthResource",
    "StatsCollector",
    "extra_missing",
    "healthz_resource",
    "metrics_available",
    "metrics_site",
]

#: The one-line error for ``--metrics`` without ``prometheus-client``.
EXTRA_MISSING = (
    "--metrics needs prometheus-client, which is not installed; "
    "install it with: pip install 'sockchat[metrics]'"
)


def extra_missing(package: Path | None = None) -> str:
    """``EXTRA_MISSING``, or, when sockchat runs from a source tree (a
    clone, installed with ``pip install -e .`` or not), the command that
    works there: PyPI's name would install another sockchat beside it.
    *package* is the ``sockchat`` folder (default: this one's)."""
    root = (package or Path(__file__).resolve().parent.parent).parent
    if not ((root / "setup.cfg").is_file() and (root / "pyproject.toml").is_file()):
        return EXTRA_MISSING
    return (
        "--metrics needs prometheus-client, which is not installed; this "
        f"sockchat runs from its source folder {root}: install it there with: "
        "pip install -e '.[metrics]'"
    )


def metrics_available() -> bool:
    """Is ``prometheus-client`` importable?"""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class StatsCollector:
    """A Prometheus collector that reads each ``ServerStats`` when scraped.

    With more than one (say, two servers in one process), the samples are
    added together.
    """

    def __init__(
        self,
        stats: Sequence[ServerStats],
        health: Health,
        queues: Sequence[QueueStats] = (),
        clock: Any = None,
    ) -> None:
        self._stats = stats
        self._health = health
        self._queues = queues
        self._clock = clock

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        every = self._stats
        yield InfoMetricFamily(
            "sockchat_build", "The sockchat version", value={"version": __version__}
        )
        yield GaugeMetricFamily(
            "sockchat_accepting",
            "1 while the server accepts conversations, 0 while it shuts down",
            value=int(self._health.accepting),
        )
        yield GaugeMetricFamily(
            "sockchat_conversations_open",
            "Conversations open now",
            value=sum(s.open for s in every),
        )
        yield CounterMetricFamily(
            "sockchat_conversations_started",
            "Conversations started",
            value=sum(s.started for s in every),
        )
        yield _labelled(
            CounterMetricFamily(
                "sockchat_conversations_ended",
                "Conversations ended, by the code of their bye notice "
                "(connection-lost: the client left without one)",
                labels=["reason"],
            ),
            [s.ended_by for s in every],
        )
        yield CounterMetricFamily(
            "sockchat_lines_answered",
            "Lines the responder answered",
            value=sum(s.answered for s in every),
        )
        yield _labelled(
            CounterMetricFamily(
                "sockchat_lines_refused",
                "Lines refused with an error notice, by its code",
                labels=["code"],
            ),
            [s.refused_lines for s in every],
        )
        yield _labelled(
            CounterMetricFamily(
                "sockchat_connections_refused",
                "Connections refused before a conversation began, by the code "
                "of their bye notice",
                labels=["reason"],
            ),
            [s.refused_connections for s in every],
        )
        yield CounterMetricFamily(
            "sockchat_received_bytes",
            "Bytes read from clients",
            value=sum(s.bytes_in for s in every),
        )
        yield CounterMetricFamily(
            "sockchat_sent_bytes",
            "Bytes written to clients",
            value=sum(s.bytes_out for s in every),
        )
        yield GaugeMetricFamily(
            "sockchat_output_held_bytes",
            "Bytes of memory held for clients that do not read, as counted "
            "against --max-output",
            value=sum(s.output_held() for s in every),
        )
        latency = HistogramMetricFamily(
            "sockchat_answer_latency_seconds",
            "Seconds from a line's delivery to the responder to its answer",
            labels=["responder"],
        )
        kinds = sorted({kind for s in every for kind in s.latency})
        for kind in kinds:
            histograms = [s.latency[kind] for s in every if kind in s.latency]
            _add_histogram(latency, [kind], histograms)
        yield latency
        if self._queues:
            yield from self._collect_queues()

    def _collect_queues(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

        queues = self._queues
        now = self._clock.seconds() if self._clock is not None else 0.0
        yield GaugeMetricFamily(
            "sockchat_operator_queue_lines",
            "Lines of this instance's clients that wait for an operator (held "
            "or not); summed over the instances, the operators' queue's depth",
            value=sum(q.depth() for q in queues),
        )
        yield GaugeMetricFamily(
            "sockchat_operator_queue_oldest_seconds",
            "Seconds the oldest of those lines has waited (0 when none waits)",
            value=max((q.oldest(now) for q in queues), default=0.0),
        )
        online = [q.online for q in queues if q.online is not None]
        yield GaugeMetricFamily(
            "sockchat_operators_online",
            "Operators online (at a desk or python -m sockchat.operator), at "
            "this instance's last look",
            value=max(online, default=0),
        )
        first = HistogramMetricFamily(
            "sockchat_operator_first_answer_seconds",
            "Seconds from a conversation's first line for the operators to "
            "their first answer to it",
        )
        _add_histogram(first, [], [q.first_answer for q in queues])
        yield first


def _add_histogram(
    family: Any, labels: list[str], histograms: Sequence[LatencyHistogram]
) -> None:
    """Add *histograms*, summed, as one sample of *family*."""
    buckets = histograms[0].cumulative()
    for other in histograms[1:]:
        buckets = [
            (le, a + b)
            for (le, a), (_, b) in zip(buckets, other.cumulative(), strict=True)
        ]
    family.add_metric(
        labels,
        [(le, float(count)) for le, count in buckets],
        sum_value=sum(h.total for h in histograms),
    )


def _labelled(family: Any, counts: list[dict[str, int]]) -> Any:
    merged: dict[str, int] = {}
    for each in counts:
        for key, value in each.items():
            merged[key] = merged.get(key, 0) + value
    for key in sorted(merged):
        family.add_metric([key], merged[key])
    return family


class _MetricsPage(Resource):
    isLeaf = True

    def __init__(self, registry: Any) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Any) -> bytes:
        from prometheus_client.exposition import choose_encoder

        accept = request.getHeader("accept")
        encoder, content_type = choose_encoder(accept)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return bytes(encoder(self._registry))


class HealthResource(Resource):
    """``/healthz``: 200 ``ok`` while accepting, 503 while not.

    For a load balancer (HAProxy's ``option httpchk GET /healthz``) or a
    supervisor.  It answers GET and HEAD.
    """

    isLeaf = True

    def __init__(self, health: Health) -> None:
        super().__init__()
        self._health = health

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if self._health.accepting:
            return b"ok\n"
        request.setResponseCode(503)
        return f"unavailable: {self._health.why or 'not accepting'}\n".encode()

    render_HEAD = render_GET


def healthz_resource(health: Health) -> Resource:
    """The ``/healthz`` resource, to put on any site.

    For the chat page's site (``--web``)::

        root.putChild(b"healthz", healthz_resource(health))
    """
    return HealthResource(health)


class _Root(Resource):
    def getChild(self, path: bytes, request: Any) -> IResource:
        # "/" is this page; anything else is not found (Twisted's default
        # page for that is deprecated).
        return self if path == b"" else notFound()

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"sockchat: see /metrics and /healthz\n"


def metrics_site(
    stats: Sequence[ServerStats],
    health: Health,
    reactor: Any = None,
    *,
    admission: Admission | None = None,
    queues: Sequence[QueueStats] = (),
) -> Site:
    """``/metrics`` (the stats of *stats*) and ``/healthz`` (*health*).

    The registry holds only sockchat's collector: no process or platform
    metrics, whose names another exporter on the host may already use.
    Connections are admitted by *admission* (default: no caps), counted
    apart from the chat's, so that a full server can still be watched.
    Needs ``prometheus-client``.
    """
    from prometheus_client import CollectorRegistry

    if reactor is None:
        from twisted.internet import reactor
    registry = CollectorRegistry()
    registry.register(StatsCollector(stats, health, queues, reactor))
    root = _Root()
    root.putChild(b"metrics", _MetricsPage(registry))
    root.putChild(b"healthz", healthz_resource(health))
    return ChatSite(
        root,
        AdmissionGate(reactor, admission or Admission(), "metrics"),
        no_body_needed="/metrics and /healthz need none",
    )
