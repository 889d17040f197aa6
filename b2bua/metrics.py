"""Prometheus ``/metrics``: the statistics (:mod:`b2bua.stats`) read and encoded at scrape time.

No metric object is touched on the call path: the counters are plain numbers on the loop
thread. A scrape is one loop task (:func:`exposition_steps`): every group copies its numbers
(:meth:`b2bua.stats.StatsRegistry.collect_steps`; the dispatcher from one generation of its
destinations, so a scrape during a reload sees the list before it or after it, never a mix),
then the families are written in Prometheus' text format (0.0.4), :data:`ENCODE_STEP` samples
per slice between calls.

Why on the loop, in slices, and not in ``prometheus_client``'s ``generate_latest`` on the
listener's thread: encoding is Python computing (about 10 µs a sample through
``prometheus_client``; a destination has about 30 series), and a thread computing beside the
loop takes the GIL from it at every pjsua2 call (``docs/internals.md``, Threads), stalling
calls for the whole scrape. ``bench/stats.py`` measures both parts. ``prometheus_client``
provides the process and platform collectors (CPU seconds, resident memory, open files, start
time, Python), encoded by its own ``generate_latest`` (a few dozen samples). Names, labels and
example queries: ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from b2bua.control_routes import Access, HttpRequest, HttpResponse, Route, json_response
from b2bua.loop import Task
from b2bua.stats import Family, HistogramValue

#: seconds a scrape waits for the loop thread to copy and encode the statistics
SCRAPE_TIMEOUT = 10.0
#: samples encoded per loop slice (about 1 ms)
ENCODE_STEP = 250


class ScrapeFailed(Exception):
    """The loop did not hand over the statistics in time."""


def _number(value: float) -> str:
    """A sample value as the text format writes it (Go's ``+Inf``, ``-Inf``, ``NaN``)."""
    number = float(value)
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    return "NaN" if math.isnan(number) else repr(number)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    pairs = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def encode_family(family: Family) -> list[str]:
    """One family in the text format: its HELP and TYPE lines, then one line per sample."""
    name = family.name
    lines = [f"# HELP {name} {_escape_help(family.help)}\n", f"# TYPE {name} {family.kind}\n"]
    for values, value in family.samples:
        if isinstance(value, HistogramValue):
            for bound, count in (*value.buckets, (float("inf"), value.count)):
                le = f'le="{_number(bound)}"'
                lines.append(f"{name}_bucket{_labels(family.labels, values, le)} {_number(count)}\n")
            lines.append(f"{name}_count{_labels(family.labels, values)} {_number(value.count)}\n")
            lines.append(f"{name}_sum{_labels(family.labels, values)} {_number(value.sum)}\n")
        else:
            lines.append(f"{name}{_labels(family.labels, values)} {_number(value)}\n")
    return lines


def exposition_steps(families: Task[list[Family]], step: int = ENCODE_STEP) -> Task[bytes]:
    """The families ``families`` returns, in the text format, as a loop task."""
    collected = yield from families
    out: list[str] = []
    done = 0
    for family in collected:
        if len(family.samples) <= step:
            out.extend(encode_family(family))
            done += len(family.samples)
        else:  # a large family (per destination) is written a slice at a time
            out.extend(encode_family(Family(family.name, family.kind, family.help, family.labels, ())))
            for start in range(0, len(family.samples), step):
                part = Family(family.name, family.kind, family.help, family.labels,
                              family.samples[start:start + step])
                out.extend(encode_family(part)[2:])
                done += len(part.samples)
                yield None
        if done >= step:
            done = 0
            yield None
    return "".join(out).encode("utf-8")


def loop_scrape(run_on_loop: Callable[[Callable[[], Any], float], Any],
                start_task: Callable[[], Future[bytes]],
                timeout: float = SCRAPE_TIMEOUT) -> Callable[[], bytes]:
    """A ``scrape()`` that starts ``start_task()`` on the loop thread and waits for its result.

    :raises ScrapeFailed: the loop did not take the request, or finish it, within ``timeout``.
    """

    def scrape() -> bytes:
        try:
            future: Future[bytes] = run_on_loop(start_task, timeout)
            return future.result(timeout)
        except TimeoutError:
            raise ScrapeFailed(f"the loop thread did not hand over the statistics within {timeout:g}s") from None

    return scrape


def process_registry() -> CollectorRegistry:
    """prometheus_client's process and platform collectors (CPU seconds, resident memory, open
    files, start time, Python version), in a registry of their own."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def metrics_routes(scrape: Callable[[], bytes], process: CollectorRegistry | None = None) -> list[Route]:
    """``GET /metrics`` (access READ: ``[control] read_token`` or ``token`` when either is set)."""

    def metrics(request: HttpRequest) -> HttpResponse:
        try:
            body = scrape()
        except ScrapeFailed as exc:
            return json_response(503, {"error": str(exc)})
        if process is not None:
            body += generate_latest(process)
        return HttpResponse(200, body, CONTENT_TYPE_PLAIN_0_0_4, (("Cache-Control", "no-store"),))

    return [Route("/metrics", metrics, Access.READ, "Prometheus metrics, text format 0.0.4 (docs/metrics.md)")]
