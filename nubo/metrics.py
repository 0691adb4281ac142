"""Every Prometheus metric of nubo, defined once (docs/metrics.md lists them with their meaning).

The composition root builds one :class:`Metrics` per process and hands it to the few places that count: the
HTTP middleware, the realtime hub, the tiered store, the cache governor, the rate limiter and the event bus.
Names follow ``nubo_<area>_<what>_<unit>``.

Each :class:`Metrics` has its own registry (tests build several roots in one process). With several worker
processes (`nubo serve --workers N`), prometheus-client's multiprocess mode keeps every value in a file of
``PROMETHEUS_MULTIPROC_DIR`` (set by `nubo serve` before the workers start), and a scrape of any worker
merges the files of all of them: :func:`render` does that. Values read from the stores at scrape time (the
outbox, Redis memory) are not counted here but passed to :func:`render` as ready metric families.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Request latencies: 1 ms .. 10 s. Realtime latencies start lower (an ack is well under a millisecond's work).
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REALTIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


def multiprocess_dir() -> str | None:
    """The directory of the multiprocess mode, when this process runs in it."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The instruments of one process. Build it once (the composition root does); never at import time."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        # HTTP (nubo.server.context): the route is the template (`/posts/{post_id:uuid}`), never the raw path.
        self.http_requests = Counter(
            "nubo_http_requests_total",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "nubo_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route template and method.",
            ["route", "method"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        # WebSocket (nubo.realtime.hub, nubo.server.realtime).
        self.ws_connections = Gauge(
            "nubo_ws_connections",
            "WebSocket connections open now.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.ws_frames = Counter(
            "nubo_ws_frames_total", "WebSocket frames, by direction (in, out).", ["direction"], registry=registry
        )
        self.ws_send_ack = Histogram(
            "nubo_ws_send_ack_seconds",
            "From a message.send frame's arrival to its ack being queued (the PostgreSQL commit included).",
            buckets=REALTIME_BUCKETS,
            registry=registry,
        )
        self.ws_fanout = Histogram(
            "nubo_ws_fanout_seconds",
            "From an event's arrival from Redis pub/sub to its frame written on a local socket.",
            buckets=REALTIME_BUCKETS,
            registry=registry,
        )
        self.ws_resyncs = Counter(
            "nubo_ws_resyncs_total",
            "resync frames sent, by reason (history_gap, position_ahead_of_server, epoch_changed).",
            ["reason"],
            registry=registry,
        )
        self.ws_closes = Counter(
            "nubo_ws_closes_total",
            "Sockets the server closed, by reason (queue_full, session_revoked, service_restart).",
            ["reason"],
            registry=registry,
        )
        # Events (nubo.stores.events): every publish of a committed event, by its writer or the outbox relay.
        self.events_relay_lag = Histogram(
            "nubo_events_relay_lag_seconds",
            "From a committed event's publish starting (writer or relay) to Redis confirming it.",
            buckets=REALTIME_BUCKETS,
            registry=registry,
        )
        # Stores.
        self.tier_reads = Counter(
            "nubo_tier_reads_total",
            "Row reads of the tiered store, by entity, tier (redis, mongo, postgres) and result (hit, miss).",
            ["entity", "tier", "result"],
            registry=registry,
        )
        self.cache_evictions = Counter(
            "nubo_cache_evictions_total",
            "Cache elements the governor evicted to stay under the Redis memory budget.",
            registry=registry,
        )
        self.pg_pool_connections = Gauge(
            "nubo_pg_pool_connections",
            "PostgreSQL pool connections by state (in_use, idle), sampled every few seconds.",
            ["state"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.pg_pool_waiting = Gauge(
            "nubo_pg_pool_waiting_requests",
            "Requests waiting for a PostgreSQL pool connection, sampled every few seconds.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.ratelimit_refusals = Counter(
            "nubo_ratelimit_refusals_total", "Hits refused by a rate limit, by limit name.", ["limit"],
            registry=registry,
        )  # fmt: skip
        self._declare_known_labels()
        # (route, method, status) -> its counter and histogram: one dict lookup per request instead of two
        # `labels()` calls (each validates, joins and locks). Bounded: routes x methods x statuses.
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered HTTP request and its latency."""
        children = self._http_children.get((route, method, status))
        if children is None:
            children = (self.http_requests.labels(route, method, str(status)), self.http_duration.labels(route, method))
            self._http_children[(route, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def _declare_known_labels(self) -> None:
        """Series of known label values exist from the start at 0, so that a query (or an alert's rate())
        sees the first event instead of a series appearing out of nothing."""
        for direction in ("in", "out"):
            self.ws_frames.labels(direction)
        for reason in ("history_gap", "position_ahead_of_server", "epoch_changed"):
            self.ws_resyncs.labels(reason)
        for reason in ("queue_full", "session_revoked", "service_restart"):
            self.ws_closes.labels(reason)
        for state in ("in_use", "idle"):
            self.pg_pool_connections.labels(state)


class _Families(Collector):
    """Ready metric families (read from the stores at scrape time) as a collector."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def render(metrics: Metrics, scraped: Iterable[Metric] = ()) -> bytes:
    """The text exposition of every instrument (merged over all workers in multiprocess mode) and `scraped`.
    Reads files in multiprocess mode: call it from a thread."""
    registry = CollectorRegistry(auto_describe=False)
    directory = multiprocess_dir()
    if directory is not None:
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        registry.register(metrics.registry)  # a registry is itself a collector
    registry.register(_Families(scraped))
    return generate_latest(registry)


def process_exited(pid: int) -> None:
    """Drop a finished worker's live gauges (multiprocess mode only; its counters stay summed)."""
    directory = multiprocess_dir()
    if directory is not None:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def clear_multiprocess_dir(directory: str) -> None:
    """Remove a previous run's value files (before the workers start)."""
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.remove(os.path.join(directory, name))
