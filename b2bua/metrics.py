"""Prometheus ``/metrics``: the statistics (:mod:`b2bua.stats`) read at scrape time.

No metric object is touched on the call path: the counters are plain numbers on the loop
thread, and :class:`StatsCollector` (a ``prometheus_client`` custom collector) asks the loop
for a copy of every group's families when Prometheus scrapes, as one loop task
(:meth:`b2bua.stats.StatsRegistry.collect_steps`: a large destination list is copied a slice at
a time between calls). Each group copies what it reads from one consistent state (the
dispatcher: one generation of its destinations, so a scrape during a reload sees the list
before it or after it, never a mix). Then the families are converted and encoded here, on the
listener's thread. ``prometheus_client``'s process and platform collectors add CPU, memory,
open files and the Python version. Names, labels and example queries: ``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from b2bua.control_routes import Access, HttpRequest, HttpResponse, Route, json_response
from b2bua.stats import Family, HistogramValue

#: seconds a scrape waits for the loop thread to copy the statistics
SCRAPE_TIMEOUT = 10.0


class ScrapeFailed(Exception):
    """The loop did not hand over the statistics in time."""


def to_prometheus(family: Family) -> Metric:
    """One :class:`~b2bua.stats.Family` as a ``prometheus_client`` metric family."""
    labels = list(family.labels)
    metric: Metric
    if family.kind == "counter":
        metric = CounterMetricFamily(family.name, family.help, labels=labels)
        for values, value in family.samples:
            metric.add_metric(list(values), value)
    elif family.kind == "gauge":
        metric = GaugeMetricFamily(family.name, family.help, labels=labels)
        for values, value in family.samples:
            metric.add_metric(list(values), value)
    else:
        metric = HistogramMetricFamily(family.name, family.help, labels=labels)
        for values, hist in family.samples:
            assert isinstance(hist, HistogramValue)
            buckets: list[tuple[str, float]] = [(_bound(le), n) for le, n in hist.buckets]
            buckets.append(("+Inf", hist.count))
            metric.add_metric(list(values), buckets, hist.sum)
    return metric


def _bound(value: float) -> str:
    return repr(float(value))


class StatsCollector:
    """A ``prometheus_client`` collector over ``scrape()``, which returns the families."""

    def __init__(self, scrape: Callable[[], list[Family]]) -> None:
        self._scrape = scrape

    def describe(self) -> list[Metric]:
        return []  # nothing to collect at registration: the loop may not run yet

    def collect(self) -> Iterator[Metric]:
        for family in self._scrape():
            yield to_prometheus(family)


def loop_scrape(run_on_loop: Callable[[Callable[[], Any], float], Any],
                start_task: Callable[[], Future[list[Family]]],
                timeout: float = SCRAPE_TIMEOUT) -> Callable[[], list[Family]]:
    """A ``scrape()`` that starts ``start_task()`` on the loop thread and waits for its result.

    :raises ScrapeFailed: the loop did not take the request, or finish it, within ``timeout``.
    """

    def scrape() -> list[Family]:
        try:
            future: Future[list[Family]] = run_on_loop(start_task, timeout)
            return future.result(timeout)
        except TimeoutError:
            raise ScrapeFailed(f"the loop thread did not hand over the statistics within {timeout:g}s") from None

    return scrape


def make_registry(scrape: Callable[[], list[Family]], *, process: bool = True) -> CollectorRegistry:
    """A registry with the statistics and (``process``) prometheus_client's process and
    platform collectors (CPU seconds, resident memory, open files, start time, Python)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(scrape))
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The exposition of ``registry`` in the format ``accept`` asks for (Prometheus text 0.0.4,
    or OpenMetrics); its body and content type."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def metrics_routes(registry: CollectorRegistry) -> list[Route]:
    """``GET /metrics`` (access READ: ``[control] read_token`` or ``token`` when either is set)."""

    def metrics(request: HttpRequest) -> HttpResponse:
        try:
            body, content_type = render(registry, request.headers.get("accept"))
        except ScrapeFailed as exc:
            return json_response(503, {"error": str(exc)})
        return HttpResponse(200, body, content_type, (("Cache-Control", "no-store"),))

    return [Route("/metrics", metrics, Access.READ, "Prometheus metrics (docs/metrics.md)")]
