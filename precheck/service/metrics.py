"""What the server measures for Prometheus, read from the projections at scrape time (so it
survives restarts).

Only the append latency is measured as it happens; everything else is the log's own state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from precheck.domain.status import ENDED, STATUSES
from precheck.projections import Projections

# Up to the 20 h timeout: a full-chip run takes many hours.
DURATION_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 10800.0, 21600.0, 43200.0, 72000.0)


class _StateCollector(Collector):
    def __init__(
        self,
        state: Callable[[], Projections],
        events: Callable[[], int],
        streams: Callable[[], int],
        docker: Callable[[], list[dict[str, Any]] | None],
        free_bytes: Callable[[], int] | None = None,
    ) -> None:
        self.state, self.events, self.streams, self.docker = state, events, streams, docker
        self.free_bytes = free_bytes

    def collect(self) -> Iterator[Metric]:
        state = self.state()
        runs = GaugeMetricFamily("precheck_runs", "Runs by status.", labels=["status"])
        counts = dict.fromkeys(sorted(STATUSES), 0)
        durations: dict[str, list[float]] = {s: [] for s in sorted(ENDED)}
        for r in state.runs.by_id.values():
            counts[r.status] += 1
            if r.started_at is not None and r.finished_at is not None:
                durations[r.status].append((r.finished_at - r.started_at).total_seconds())
        for status, n in counts.items():
            runs.add_metric([status], n)
        yield runs
        yield GaugeMetricFamily(
            "precheck_queue_length", "Runs waiting to start.", value=state.queue.length
        )
        yield GaugeMetricFamily("precheck_uploads", "Uploads kept.", value=len(state.uploads.by_id))
        yield GaugeMetricFamily("precheck_events", "Events in the log.", value=self.events())
        yield GaugeMetricFamily("precheck_open_streams", "Open SSE streams.", value=self.streams())
        if self.free_bytes is not None:
            yield GaugeMetricFamily(
                "precheck_storage_free_bytes",
                "Free space on the storage folder's file system.",
                value=self.free_bytes(),
            )
        engines = self.docker()
        if engines is not None:
            reachable = GaugeMetricFamily(
                "precheck_docker_reachable", "1 when the Docker engine answers.", labels=["engine"]
            )
            running = GaugeMetricFamily(
                "precheck_engine_running", "Runs holding a slot on the engine.", labels=["engine"]
            )
            slots = GaugeMetricFamily(
                "precheck_engine_slots", "Runs the engine may run at once.", labels=["engine"]
            )
            for e in engines:
                reachable.add_metric([e["name"]], int(e["reachable"]))
                running.add_metric([e["name"]], e["running"])
                slots.add_metric([e["name"]], e["slots"])
            yield from (reachable, running, slots)
        hist = HistogramMetricFamily(
            "precheck_run_duration_seconds", "Container run time of ended runs.", labels=["status"]
        )
        for ended, values in durations.items():
            buckets = [(str(b), float(sum(1 for v in values if v <= b))) for b in DURATION_BUCKETS]
            buckets.append(("+Inf", float(len(values))))
            hist.add_metric([ended], buckets, sum_value=sum(values))
        yield hist


class Metrics:
    """One registry per app (tests run many apps in one process)."""

    def __init__(
        self,
        state: Callable[[], Projections],
        events: Callable[[], int],
        streams: Callable[[], int],
        docker: Callable[[], list[dict[str, Any]] | None],
        free_bytes: Callable[[], int] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.append_seconds = Histogram(
            "precheck_event_append_seconds",
            "Time from an append call to its durable commit.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.registry.register(_StateCollector(state, events, streams, docker, free_bytes))
