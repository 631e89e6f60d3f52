"""Prometheus metrics: process-wide counters the flows and HTTP layers increment, plus series read
from the store at scrape time (jobs by state, queue depth, error queue size, job durations).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

import sqlalchemy as sa
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    # Types only: adapters import this module for record_retry, so it imports nothing heavy.
    from d365ct.intake.inbox import InboxStats
    from d365ct.service.queries import StoreQueries

__all__ = [
    "CONTENT_TYPE",
    "FLOW_FAILURES",
    "FLOW_RECORDS",
    "HTTP_RETRIES",
    "JOB_DURATION_BUCKETS",
    "STEP_SECONDS",
    "InboxCollector",
    "StoreCollector",
    "build_registry",
    "observe_step",
    "record_failures",
    "record_records",
    "record_retry",
    "render",
    "retry_hook",
]

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# A DMF job costs tens of seconds at best and may run for an hour (SPEC C6's polling budget).
JOB_DURATION_BUCKETS: Final = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

# Process-wide, like every Prometheus client library's metrics: the flows and the HTTP adapters
# increment them through the functions below without holding a reference to the app. They live
# in no registry of their own; each app's registry (build_registry) exposes them.
FLOW_RECORDS: Final = Counter(
    "d365ct_flow_records",
    "Records a flow processed (written, skipped unchanged or failed).",
    ["flow"],
    registry=None,
)
FLOW_FAILURES: Final = Counter(
    "d365ct_flow_failures",
    "Records a flow failed and sent to the error queue.",
    ["flow"],
    registry=None,
)
STEP_SECONDS: Final = Histogram(
    "d365ct_step_duration_seconds",
    "Duration of one workflow step.",
    ["flow", "step"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0),
    registry=None,
)
HTTP_RETRIES: Final = Counter(
    "d365ct_http_retries",
    "HTTP requests retried, by target (d365, commercetools) and reason "
    '(429, 5xx status, timeout, connect); reason="429" counts throttling.',
    ["target", "reason"],
    registry=None,
)
_PROCESS_METRICS: Final[tuple[Collector, ...]] = (
    FLOW_RECORDS,
    FLOW_FAILURES,
    STEP_SECONDS,
    HTTP_RETRIES,
)


def record_retry(target: str, reason: str) -> None:
    """Count one retried request; the D365 and commercetools HTTP layers call this on 429/5xx."""
    HTTP_RETRIES.labels(target=target, reason=reason).inc()


def retry_hook(target: str) -> Callable[[str, int, float], None]:
    """An ``on_retry`` hook for D365Http / CommercetoolsClient: ``(reason, attempt, delay)``."""

    def hook(reason: str, attempt: int, delay: float) -> None:
        record_retry(target, reason)

    return hook


def record_records(flow: str, count: int = 1) -> None:
    FLOW_RECORDS.labels(flow=flow).inc(count)


def record_failures(flow: str, count: int = 1) -> None:
    FLOW_FAILURES.labels(flow=flow).inc(count)


def observe_step(flow: str, step: str, seconds: float) -> None:
    STEP_SECONDS.labels(flow=flow, step=step).observe(seconds)


class StoreCollector(Collector):
    """Series read from the store at each scrape, so every worker reports the same truth.

    A store that cannot be read yields ``d365ct_store_up 0`` instead of failing the scrape.
    """

    def __init__(self, queries: StoreQueries) -> None:
        self._queries = queries

    def describe(self) -> list[Metric]:
        return []  # no describe at registration: that would query the store

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("d365ct_store_up", "1 when the store answered this scrape.")
        try:
            by_state = self._queries.jobs_by_flow_state()
            open_jobs = self._queries.open_jobs()
            open_errors = self._queries.error_count_open()
            durations = self._queries.job_duration_buckets(JOB_DURATION_BUCKETS)
            pending = self._queries.intake_pending()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("metrics: store unreadable: %s", exc.__class__.__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily(
            "d365ct_d365_jobs",
            "D365 DMF jobs in the job store, by flow and state.",
            labels=["flow", "state"],
        )
        for (flow, state), count in sorted(by_state.items()):
            jobs.add_metric([flow, state], count)
        yield jobs
        depth = GaugeMetricFamily(
            "d365ct_queue_depth",
            "Open D365 jobs (not yet in a terminal state), by flow.",
            labels=["flow"],
        )
        for flow, count in sorted(open_jobs.items()):
            depth.add_metric([flow], count)
        yield depth
        errors = GaugeMetricFamily(
            "d365ct_error_queue_open", "Open entries in the error queue (failed records)."
        )
        errors.add_metric([], open_errors)
        yield errors
        inbox = GaugeMetricFamily(
            "d365ct_intake_pending", "commercetools messages accepted and not yet processed."
        )
        inbox.add_metric([], pending)
        yield inbox
        hist = HistogramMetricFamily(
            "d365ct_d365_job_duration_seconds",
            "Created-to-finished time of finished D365 jobs in the store, by flow and kind.",
            labels=["flow", "kind"],
        )
        for (flow, kind), (cumulative, total, seconds) in sorted(durations.items()):
            buckets = [
                (_bound(b), n) for b, n in zip(JOB_DURATION_BUCKETS, cumulative, strict=True)
            ]
            buckets.append(("+Inf", total))
            hist.add_metric([flow, kind], buckets, seconds)
        yield hist


def _bound(value: float) -> str:
    return str(int(value)) + ".0" if value == int(value) else str(value)


class InboxCollector(Collector):
    """This process's intake counters (InboxStats): accepted, duplicate, stale, ignored, …"""

    def __init__(self, stats: InboxStats) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "d365ct_intake_messages",
            "commercetools deliveries received by this process, by outcome.",
            labels=["outcome"],
        )
        for outcome in ("accepted", "duplicate", "stale", "ignored", "malformed"):
            family.add_metric([outcome], getattr(self._stats, outcome))
        yield family


def build_registry(
    queries: StoreQueries,
    *,
    inbox_stats: InboxStats | None = None,
    extra: Callable[[CollectorRegistry], None] | None = None,
) -> CollectorRegistry:
    """One app's registry: the process-wide metrics, the store's, the process's own."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in _PROCESS_METRICS:
        registry.register(collector)
    registry.register(StoreCollector(queries))
    if inbox_stats is not None:
        registry.register(InboxCollector(inbox_stats))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    if extra is not None:
        extra(registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
