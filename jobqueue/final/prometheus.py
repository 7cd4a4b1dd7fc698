"""Prometheus export of a queue's :meth:`~jobqueue.final.JobQueue.metrics`.

Needs ``prometheus_client`` (``pip install 'prometheus_client>=0.17'``)::

    from prometheus_client import REGISTRY, start_http_server
    from jobqueue.final.prometheus import QueueCollector

    REGISTRY.register(QueueCollector(jq, queue="emails"))
    start_http_server(9100)

Each scrape takes one snapshot (``metrics()``, under the queue's lock) and exposes, all
labelled ``queue`` and counted since this process's queue started:

- ``jobqueue_jobs_finished_total{priority, outcome}`` counter: outcome ``completed``,
  ``failed`` or ``cancelled``;
- ``jobqueue_retries_total{priority}`` counter: attempts rescheduled for a retry;
- ``jobqueue_abandoned_jobs_total`` counter: jobs ``close()`` gave up on;
- ``jobqueue_jobs{priority, status}`` gauge: jobs ``queued``, ``scheduled``, ``processing``
  or ``retrying`` now;
- ``jobqueue_workers`` and ``jobqueue_busy_workers`` gauges;
- ``jobqueue_queue_latency_seconds`` histogram: enqueue (or retry due) to handler start.
  Its buckets come from the queue's finer one, so a count at ``le`` may miss latencies
  within an eighth of a power of two below the bound.

In PostgreSQL these are this process's; the whole queue's counts are ``jq.queue_stats()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.registry import Collector
except ImportError:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "jobqueue.final.prometheus needs prometheus_client: pip install "
        "'prometheus_client>=0.17' (from a jobqueue checkout: pip install '.[prometheus]')"
    ) from None

from jobqueue.final._queue import JobQueue

__all__ = ["LATENCY_BUCKETS", "QueueCollector"]

#: The latency histogram's bucket bounds, in seconds (``+Inf`` is added).
LATENCY_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]


class QueueCollector(Collector):
    """Collects one queue's metrics at each scrape; ``queue`` names it in the ``queue``
    label (default: its ``Config.queue_name``). Register it with a registry."""

    def __init__(self, jq: JobQueue, queue: str | None = None) -> None:
        if not isinstance(jq, JobQueue):
            raise TypeError(f"jq must be a jobqueue.final.JobQueue, not {type(jq).__name__}")
        if queue is not None and not isinstance(queue, str):
            raise TypeError(f"queue must be a str, not {type(queue).__name__}")
        self._queue = jq
        self._name = jq._config.queue_name if queue is None else queue

    def describe(self) -> list[Any]:
        return []  # no sample at registration: the queue may be closed by then

    def collect(self) -> Iterator[Any]:
        metrics, (counts, total, seconds) = self._queue._metrics_and_latency(LATENCY_BUCKETS)
        name = self._name
        finished = CounterMetricFamily(
            "jobqueue_jobs_finished", "Jobs finished, by priority and outcome.",
            labels=["queue", "priority", "outcome"])
        retries = CounterMetricFamily(
            "jobqueue_retries", "Attempts that failed and were rescheduled for a retry.",
            labels=["queue", "priority"])
        jobs = GaugeMetricFamily(
            "jobqueue_jobs", "Jobs held now, by priority and status.",
            labels=["queue", "priority", "status"])
        for priority, counted in metrics.per_priority.items():
            level = priority.name.lower()
            for outcome in ("completed", "failed", "cancelled"):
                finished.add_metric([name, level, outcome], getattr(counted, outcome))
            retries.add_metric([name, level], counted.retried)
            for status in ("queued", "scheduled", "processing", "retrying"):
                jobs.add_metric([name, level, status], getattr(counted, status))
        yield finished
        yield retries
        yield jobs
        abandoned = CounterMetricFamily("jobqueue_abandoned_jobs", "Jobs close() gave up on.",
                                        labels=["queue"])
        abandoned.add_metric([name], metrics.abandoned)
        yield abandoned
        workers = GaugeMetricFamily("jobqueue_workers", "Worker threads.", labels=["queue"])
        workers.add_metric([name], metrics.num_workers)
        yield workers
        busy = GaugeMetricFamily("jobqueue_busy_workers", "Workers running a handler now.",
                                 labels=["queue"])
        busy.add_metric([name], metrics.busy_workers)
        yield busy
        latency = HistogramMetricFamily(
            "jobqueue_queue_latency_seconds",
            "Seconds from a job being ready (enqueued, or its retry due) to its handler "
            "starting.", labels=["queue"])
        buckets = [(_le(bound), count) for bound, count in zip(LATENCY_BUCKETS, counts,
                                                                 strict=True)]
        buckets.append(("+Inf", total))
        latency.add_metric([name], buckets, sum_value=seconds)
        yield latency


def _le(bound: float) -> str:
    return repr(float(bound))
