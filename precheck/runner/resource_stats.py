"""Docker's stats samples read as this service keeps them: memory as `docker stats` shows it
(the page cache left out), the limit, and CPU from the deltas Docker sends with each sample."""

from __future__ import annotations

from typing import Any

import attrs

from precheck.storage.docker_time import docker_datetime
from precheck.storage.resource_samples import ResourceSample


def sample_of(stats: dict[str, Any]) -> ResourceSample | None:
    """The sample in one of Docker's stats messages; None for the empty ones Docker sends once
    the container stopped (its stream goes on sending them)."""
    memory = stats.get("memory_stats") or {}
    read = str(stats.get("read") or "")
    if not memory or not read or read.startswith("0001-"):
        return None
    usage = int(memory.get("usage") or 0)
    figures = memory.get("stats") or {}
    # cgroup v1 names it `total_inactive_file`, v2 `inactive_file`: the cache the kernel drops
    # before it kills the container for memory.
    inactive = figures.get("total_inactive_file", figures.get("inactive_file", 0)) or 0
    in_use = usage - int(inactive) if int(inactive) < usage else usage
    return ResourceSample(
        at=docker_datetime(read).timestamp(),
        memory_bytes=in_use,
        limit_bytes=int(memory.get("limit") or 0),
        cpu_percent=round(_cpu_percent(stats), 2),
    )


def has_cpu_figure(stats: dict[str, Any]) -> bool:
    """Does the message carry the previous CPU reading its CPU figure is the delta from? The
    first message of each stream does not (its CPU would read as 0%)."""
    pre = stats.get("precpu_stats") or {}
    return bool(pre.get("system_cpu_usage"))


def _cpu_percent(stats: dict[str, Any]) -> float:
    """Percent of one CPU since the previous sample (as `docker stats`: 200 is two CPUs)."""
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    used = int((cpu.get("cpu_usage") or {}).get("total_usage") or 0)
    used_before = int((pre.get("cpu_usage") or {}).get("total_usage") or 0)
    system = int(cpu.get("system_cpu_usage") or 0)
    system_before = int(pre.get("system_cpu_usage") or 0)
    if not system_before or system <= system_before or used <= used_before:
        return 0.0  # the stream's first sample has nothing before it
    cpus = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or ())
    return (used - used_before) / (system - system_before) * (cpus or 1) * 100.0


@attrs.define
class Thinning:
    """Which of the stream's samples (one a second) are kept: the first, then at most one per
    `interval` seconds; `last_kept` is where a resumed timeline goes on from. The highest memory
    seen since the last kept sample is held, to keep at the stream's end when it is above what
    was kept (the climb before the container was killed for memory)."""

    interval: float
    last_kept: float | None = None
    peak_kept: int = 0
    held: ResourceSample | None = None

    def take(self, sample: ResourceSample) -> bool:
        """Is `sample` to be kept?"""
        if self.last_kept is None or sample.at >= self.last_kept + self.interval:
            self.last_kept = sample.at
            self.peak_kept = max(self.peak_kept, sample.memory_bytes)
            self.held = None
            return True
        if self.held is None or sample.memory_bytes > self.held.memory_bytes:
            self.held = sample
        return False

    def last(self) -> ResourceSample | None:
        """At the stream's end: the sample held back, when it is above every kept one."""
        held, self.held = self.held, None
        if held is not None and held.memory_bytes > self.peak_kept:
            self.last_kept = held.at
            self.peak_kept = held.memory_bytes
            return held
        return None
