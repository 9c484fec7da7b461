"""A run's resource timeline: Docker's stats stream thinned to one sample per
`docker.stats_seconds`, stored beside the output lines (surviving a restart, deleted with the
run), served at `/resources` as JSON and CSV, and its peak recorded with the attempt's end."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from precheck.config import Config
from precheck.domain.notify import payload, summary_lines
from precheck.domain.run_end import with_peak
from precheck.events.types import RunExited, RunResourcesPeaked, RunRetried
from precheck.projections.runs import ResourcePeak
from precheck.runner.engine import Engine, EngineUnreachable
from precheck.runner.resource_sampler import ResourceSampler
from precheck.runner.resource_stats import Thinning, sample_of
from precheck.storage.output_lines import OutputLineStore
from precheck.storage.resource_samples import MAX_SAMPLES, ResourceSample
from precheck.web import keys
from tests.docker_fixtures import Api, StartApp
from tests.factories import T0, given, run_exited, run_outputs_stored, run_queued, run_started
from tests.layouts import gds

READ = "2026-12-02T02:18:21.704677365Z"


def stats(
    *,
    read: str = READ,
    usage: int = 100 << 20,
    figures: dict[str, int] | None = None,
    limit: int = 256 << 20,
    cpu: tuple[int, int] = (3_000_000_000, 2_000_000_000),
    system: tuple[int, int] = (20_000_000_000, 10_000_000_000),
    online: int = 2,
) -> dict[str, Any]:
    """One message of Docker's stats stream, in the shape the Engine API sends."""
    return {
        "read": read,
        "memory_stats": {"usage": usage, "limit": limit, "stats": figures or {}},
        "cpu_stats": {
            "cpu_usage": {"total_usage": cpu[0]},
            "system_cpu_usage": system[0],
            "online_cpus": online,
        },
        "precpu_stats": {"cpu_usage": {"total_usage": cpu[1]}, "system_cpu_usage": system[1]},
    }


def test_memory_leaves_out_the_inactive_page_cache_on_both_cgroup_versions() -> None:
    v1 = sample_of(stats(figures={"total_inactive_file": 30 << 20, "cache": 50 << 20}))
    v2 = sample_of(stats(figures={"inactive_file": 40 << 20}))
    none = sample_of(stats(figures={}))
    assert v1 is not None and v2 is not None and none is not None
    assert (v1.memory_bytes, v2.memory_bytes, none.memory_bytes) == (70 << 20, 60 << 20, 100 << 20)
    assert v1.limit_bytes == 256 << 20
    assert v1.at == datetime.fromisoformat("2026-12-02T02:18:21.704677+00:00").timestamp()


def test_cpu_percent_is_from_the_deltas_times_the_cpus() -> None:
    s = sample_of(stats())  # 1 s of CPU over 10 s of the host's 2 CPUs: 20 % of one CPU
    assert s is not None and s.cpu_percent == 20.0
    first = sample_of(stats(system=(20_000_000_000, 0)))  # the stream's first: nothing before
    assert first is not None and first.cpu_percent == 0.0


def test_the_empty_messages_after_the_container_stopped_are_no_samples() -> None:
    stopped = {"read": "0001-01-01T00:00:00Z", "memory_stats": {}, "cpu_stats": {}}
    assert sample_of(stopped) is None
    assert sample_of({}) is None


def sample(at: float, memory: int = 1) -> ResourceSample:
    return ResourceSample(at, memory, 100, 0.0)


def test_thinning_keeps_the_first_then_one_per_interval_and_a_higher_last() -> None:
    t = Thinning(15)
    kept = [s.at for s in (sample(1000 + i, 10) for i in range(40)) if t.take(s)]
    assert kept == [1000, 1015, 1030]
    assert t.last() is None  # nothing held above what was kept
    t.take(sample(1031, 99))  # the climb before the kill, between two kept samples
    t.take(sample(1032, 50))
    last = t.last()
    assert last is not None and (last.at, last.memory_bytes) == (1031, 99)


def test_a_resumed_thinning_goes_on_from_the_last_kept_sample() -> None:
    t = Thinning(15, last_kept=1000)
    assert not t.take(sample(1014.9))
    assert t.take(sample(1015))


async def test_samples_are_stored_beside_the_lines_survive_a_reopen_and_go_with_the_run(
    tmp_path: Path,
) -> None:
    path = tmp_path / "precheck.db"
    store = await OutputLineStore.open(path)
    assert store.resources is not None
    for i in range(5):
        await store.resources.append("r1", ResourceSample(1000 + 15 * i, 10 * i, 100, 1.5 * i))
    await store.resources.append("r2", ResourceSample(1000, 7, 100, 0.0))
    await store.close()

    store = await OutputLineStore.open(path)
    assert store.resources is not None
    samples = await store.resources.samples("r1")
    assert [s.at for s in samples] == [1000, 1015, 1030, 1045, 1060]
    assert samples[2] == ResourceSample(1030, 20, 100, 3.0)
    peak = await store.resources.peak("r1")
    assert peak is not None
    assert (peak.memory_bytes, peak.limit_bytes, peak.cpu_percent) == (40, 100, 6.0)
    assert peak.samples == 5
    later = await store.resources.peak("r1", since=1040)  # a later attempt's samples only
    assert later is not None and later.samples == 2
    last = await store.resources.last("r1")
    assert last is not None and last.at == 1060
    await store.delete_run("r1")  # a deleted run's samples go with its lines
    assert await store.resources.samples("r1") == []
    assert await store.resources.peak("r1") is None
    assert len(await store.resources.samples("r2")) == 1
    await store.close()


async def test_a_runs_samples_are_bounded(tmp_path: Path) -> None:
    store = await OutputLineStore.open(tmp_path / "precheck.db")
    assert store.resources is not None
    store.resources._counts["r1"] = MAX_SAMPLES - 1  # as if the run had that many already
    assert await store.resources.append("r1", sample(1))
    assert not await store.resources.append("r1", sample(2))
    assert [s.at for s in await store.resources.samples("r1")] == [1]
    await store.close()


PEAK = ResourcePeak(3 << 30, 24 << 30, 180.5, 42)


def test_the_peak_goes_before_the_end_and_a_retry_keeps_it_in_the_ended_attempt() -> None:
    state = given(run_queued("r1"), run_started("r1"))
    run = state.runs.by_id["r1"]
    retried = RunRetried("r1", 2, "local", "out of memory", 137, T0, T0, 10, T0)
    events = with_peak(run, PEAK, [retried], T0)
    assert [type(e) for e in events] == [RunResourcesPeaked, RunRetried]
    assert with_peak(run, PEAK, [], T0) == []  # the end was recorded meanwhile: nothing
    assert with_peak(run, None, [retried], T0) == [retried]  # no samples: no peak event
    state = given(run_queued("r1"), run_started("r1"), *events)
    again = state.runs.by_id["r1"]
    assert again.peak is None and again.attempts[0].peak == PEAK  # what a bigger engine needs


def test_the_end_payloads_carry_the_peak() -> None:
    peaked = RunResourcesPeaked("r1", 1, PEAK.memory_bytes, PEAK.limit_bytes, 180.5, 42, T0)
    state = given(
        run_queued("r1"), run_started("r1"), peaked, run_exited("r1"), run_outputs_stored("r1")
    )
    body = payload(state.runs.by_id["r1"], "https://p.example.org")
    assert body["data"]["resources"] == {
        "peak_memory_bytes": 3 << 30,
        "memory_limit_bytes": 24 << 30,
        "peak_cpu_percent": 180.5,
    }
    assert "Peak memory: 3.00 of 24.00 GiB" in summary_lines(body)
    plain = given(run_queued("r2"), run_started("r2"), run_exited("r2"), run_outputs_stored("r2"))
    assert payload(plain.runs.by_id["r2"], "https://p.example.org")["data"]["resources"] is None


# With Docker ---------------------------------------------------------------------------------


async def resources(api: Api, run_id: str, **params: str) -> dict[str, Any]:
    r = await api.client.get(f"/api/v1/prechecks/{run_id}/resources", params=params)
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


def at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def assert_thinned(samples: list[dict[str, Any]], interval: float) -> None:
    """Oldest first, at most one per interval (the last may be the peak held back)."""
    times = [at(s["At"]) for s in samples]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= interval for g in gaps[:-1]), gaps
    assert all(g > 0 for g in gaps), gaps


@pytest.mark.docker
async def test_a_run_keeps_its_timeline_and_its_peak_is_in_the_document_and_the_log(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    api = await start_app(sim_config(stats_seconds=1))
    run = await api.run(gds("chip_top", "step_sleep=0.4"))  # about 7 s
    await api.wait_running(run)
    await asyncio.sleep(3)
    live = await resources(api, run)  # while it runs: the samples so far
    assert live["Interval"] == 1 and len(live["Samples"]) >= 1, live
    ended = await api.wait(run, 60)
    assert ended["Status"] == "completed", ended
    body = await resources(api, run)
    samples = body["Samples"]
    assert len(samples) >= 3, body
    assert live["Samples"] == samples[: len(live["Samples"])]
    assert_thinned(samples, 1)
    assert body["Limit"] == 256 << 20
    assert all(0 < s["MemoryBytes"] <= body["Limit"] for s in samples), samples
    assert all(s["MemoryLimitBytes"] == body["Limit"] for s in samples)
    assert all(s["CpuPercent"] >= 0 for s in samples)

    doc = await api.get(run)
    peak = doc["Resources"]
    assert peak == {
        "PeakMemoryBytes": max(s["MemoryBytes"] for s in samples),
        "MemoryLimitBytes": body["Limit"],
        "PeakCpuPercent": max(s["CpuPercent"] for s in samples),
        "Samples": len(samples),
    }
    assert doc["Attempts"][-1]["PeakMemoryBytes"] == peak["PeakMemoryBytes"]
    # One small event, in the same append as the exit, before it: not one per sample.
    peaked = await api.events("run.resources-peaked", run)
    exited = await api.events("run.exited", run)
    assert len(peaked) == 1 and len(exited) == 1
    assert peaked[0].position == exited[0].position - 1
    assert isinstance(peaked[0].event, RunResourcesPeaked)
    assert isinstance(exited[0].event, RunExited)
    assert peaked[0].event.memory_bytes == peak["PeakMemoryBytes"]

    csv = await api.client.get(f"/api/v1/prechecks/{run}/resources", params={"format": "csv"})
    assert csv.status == 200 and csv.content_type == "text/csv"
    rows = (await csv.text()).splitlines()
    assert rows[0] == "At,MemoryBytes,MemoryLimitBytes,CpuPercent"
    assert rows[1:] == [
        f"{s['At']},{s['MemoryBytes']},{s['MemoryLimitBytes']},{s['CpuPercent']}" for s in samples
    ]
    by_accept = await api.client.get(
        f"/api/v1/prechecks/{run}/resources", headers={"Accept": "text/csv"}
    )
    assert await by_accept.text() == await csv.text()


@pytest.mark.docker
async def test_bad_format_is_400_and_an_unknown_run_404(start_app: StartApp) -> None:
    api = await start_app()
    r = await api.client.get("/api/v1/prechecks/nope/resources")
    assert r.status == 404 and "message" in await r.json()
    run = await api.run(gds("chip_top"))
    r = await api.client.get(f"/api/v1/prechecks/{run}/resources", params={"format": "xml"})
    assert r.status == 400 and "format" in (await r.json())["message"]
    await api.wait(run, 60)


@pytest.mark.docker
async def test_a_resumed_run_continues_its_timeline_after_a_restart(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    config = sim_config(stats_seconds=1)
    first = await start_app(config)
    run = await first.run(gds("chip_top", "step_sleep=0.6"))  # about 10 s
    await first.wait_running(run)
    await first.wait_step(run, 5)  # about 3 s in: two samples or more kept
    before = (await resources(first, run))["Samples"]
    await first.client.close()  # the server stops; the container runs on

    second = await start_app(config)
    ended = await second.wait(run, 60)
    assert ended["Status"] == "completed", ended
    after = (await resources(second, run))["Samples"]
    assert len(before) >= 2, before
    assert after[: len(before)] == before  # what was kept before the restart is still there
    assert len(after) > len(before) + 1, (before, after)  # and the timeline went on
    assert_thinned(after, 1)
    assert second.app[keys.PROJECTIONS].runs.by_id[run].peak is not None


class BreakingStats(Engine):
    """A real engine whose stats stream breaks after `after` samples, the first `breaks` times
    it is opened (as a dropped connection to the engine would)."""

    def __init__(self, url: str = "", *, breaks: int = 2, after: int = 2) -> None:
        super().__init__(url)
        self.breaks, self.after, self.opened = breaks, after, 0

    async def stats_stream(self, container_id: str) -> AsyncIterator[dict[str, Any]]:
        self.opened += 1
        n = 0
        async for sample in super().stats_stream(container_id):
            yield sample
            n += 1
            if self.opened <= self.breaks and n >= self.after:
                raise EngineUnreachable("injected: the stats stream broke")


class HangingStats(Engine):
    """An engine of our own whose stats stream gives `messages` and then nothing, as Docker's
    does for up to a second after the container stopped (it never talks to an engine)."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        super().__init__("unix:///nonexistent.sock")
        self.messages = messages
        self.drained = asyncio.Event()  # every message read (and so handled by the reader)

    async def stats_stream(self, container_id: str) -> AsyncIterator[dict[str, Any]]:
        for m in self.messages:
            yield m
        self.drained.set()
        await asyncio.Event().wait()


async def test_a_sampler_stopped_at_the_runs_end_keeps_the_sample_it_held(tmp_path: Path) -> None:
    """The run's end does not wait for Docker's stream to say the container stopped: it stops
    the sampler, which stores the highest sample it held back (the climb before an OOM)."""
    store = await OutputLineStore.open(tmp_path / "precheck.db")
    assert store.resources is not None
    reads = ["2026-12-02T02:18:21Z", "2026-12-02T02:18:22Z", "2026-12-02T02:18:23Z"]
    messages = [stats(read=r, usage=u << 20) for r, u in zip(reads, (100, 300, 200), strict=True)]
    engine = HangingStats(messages)
    sampler = ResourceSampler(engine, store.resources, "r1", "c1", 15, lambda: True)
    task = asyncio.create_task(sampler.run())
    try:
        await asyncio.wait_for(engine.drained.wait(), 5)
        assert len(await store.resources.samples("r1")) == 1  # the later two thinned away
        task.cancel()
        await asyncio.wait((task,), timeout=2)
        assert task.done()
        kept = [s.memory_bytes >> 20 for s in await store.resources.samples("r1")]
        assert kept == [100, 300]  # the first, and the held peak: not the lower last one
    finally:
        task.cancel()
        await store.close()


async def test_a_resumed_timeline_skips_the_first_message_that_has_no_cpu_figure(
    tmp_path: Path,
) -> None:
    """A stream opened again (after a break, or a restart) starts with a message without the
    previous CPU reading: on a timeline already begun it is skipped, not kept as 0% CPU."""
    store = await OutputLineStore.open(tmp_path / "precheck.db")
    assert store.resources is not None
    await store.resources.append("r1", ResourceSample(1000.0, 1 << 20, 100, 50.0))
    first = stats(read="2026-12-02T02:18:21Z", usage=100 << 20)
    first["precpu_stats"] = {}  # as Docker sends it first on each stream
    later = stats(read="2026-12-02T02:18:22Z", usage=90 << 20)
    engine = HangingStats([first, later])
    sampler = ResourceSampler(engine, store.resources, "r1", "c1", 1, lambda: True)
    task = asyncio.create_task(sampler.run())
    try:
        await asyncio.wait_for(engine.drained.wait(), 5)
        task.cancel()
        await asyncio.wait((task,), timeout=2)
        kept = await store.resources.samples("r1")
        assert [s.memory_bytes >> 20 for s in kept] == [1, 90], kept
        assert kept[1].cpu_percent == 20.0  # (3e9 - 2e9) / (20e9 - 10e9) * 2 CPUs
    finally:
        task.cancel()
        await store.close()


@pytest.mark.docker
async def test_a_broken_stats_stream_is_opened_again_and_never_fails_the_run(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    engines: list[BreakingStats] = []

    def engine(url: str) -> Engine:
        engines.append(BreakingStats(url))
        return engines[-1]

    api = await start_app(sim_config(stats_seconds=1), engine=engine)
    run = await api.run(gds("chip_top", "step_sleep=0.5"))  # about 8 s
    ended = await api.wait(run, 60)
    assert ended["Status"] == "completed", ended
    assert sum(e.opened for e in engines) >= 3  # broken twice, opened again each time
    samples = (await resources(api, run))["Samples"]
    assert len(samples) >= 4, samples  # the timeline went on past the breaks
    assert_thinned(samples, 1)
    assert (await api.get(run))["Resources"]["Samples"] == len(samples)


@pytest.mark.docker
async def test_an_attempt_killed_for_memory_keeps_its_peak_for_the_retry(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """Both attempts run out of memory: each records its own peak, the first one's is in
    `Attempts[0]` (what a retry on a bigger engine reads), the last one's in `Resources`."""
    api = await start_app(sim_config(stats_seconds=1, max_attempts=2, memory_limit="64m"))
    run = await api.run(gds("chip_top", "step_sleep=0.3", "oom=200"))
    ended = await api.wait(run, 90)
    assert ended["Status"] == "failed", ended
    doc = await api.get(run)
    assert doc["State"]["OOMKilled"] is True, doc["State"]
    peaked = [r.event for r in await api.events("run.resources-peaked", run)]
    assert [e.attempt for e in peaked if isinstance(e, RunResourcesPeaked)] == [1, 2]
    first, last = (e for e in peaked if isinstance(e, RunResourcesPeaked))
    assert doc["Attempts"][0]["PeakMemoryBytes"] == first.memory_bytes > 0
    assert doc["Resources"]["PeakMemoryBytes"] == last.memory_bytes > 0
    assert doc["Resources"]["MemoryLimitBytes"] == 64 << 20
    samples = (await resources(api, run))["Samples"]
    assert first.samples + last.samples == len(samples)
