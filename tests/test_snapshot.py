"""Projection snapshots: a snapshot equals a replay, a restart folds only what follows it, and
one that does not fit (other code, another log, damaged) is ignored for a full replay."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from precheck.config import Config, load_config
from precheck.events.store import ConcurrencyError, EventStore
from precheck.events.types import Metadata, RunProgressed
from precheck.ops.writes import open_log
from precheck.projections import Projections
from precheck.projections import snapshot as snap
from precheck.service.command_handler import CommandHandler
from precheck.storage.files import Storage
from precheck.web import keys
from tests.factories import SUPERVISOR, T0
from tests.test_audit import _config_file, _fill, run_cli
from tests.test_replay import assert_same_state, write_history
from tests.test_restart import api_app, build_state

CLIENT = Metadata("ci-key", "10.0.0.7", "req-1")


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[tuple[EventStore, Projections, Path]]:
    """A log with every kind of run and upload, its live read models, and its snapshot path."""
    storage = Storage(tmp_path / "data")
    storage.prepare()
    store = await EventStore.open(storage.db_path)
    live = Projections()
    live.attach(store)
    try:
        await write_history(CommandHandler(store, live, storage))
        yield store, live, snap.snapshot_path(storage.db_path)
    finally:
        await store.close()


async def more_events(store: EventStore) -> None:
    for step in (1, 2, 3):
        await store.append([RunProgressed("r5", step, 16, f"Step{step}", T0)], SUPERVISOR)


async def test_a_snapshot_equals_a_replay_and_a_restore_folds_what_follows(
    log: tuple[EventStore, Projections, Path],
) -> None:
    store, live, path = log
    info = snap.write(path, live)
    assert info.position == store.head > 20
    assert path.read_bytes().startswith(b'{"format": 1, ')

    loaded = await snap.load(path, store)
    replayed = await Projections.replay(store)
    assert snap.differences(loaded, replayed) == ""
    assert_same_state(loaded, live)
    assert loaded.runs.by_id == live.runs.by_id and loaded.keys.by_name == live.keys.by_name
    assert loaded.notifications.by_run == live.notifications.by_run

    await more_events(store)
    restored, since = await snap.restore(store, path)
    assert since == info.position and restored.position == store.head == info.position + 3
    assert snap.differences(restored, await Projections.replay(store)) == ""
    assert_same_state(restored, live)
    progress = restored.runs.by_id["r5"].progress
    assert progress is not None and progress.step == 3


async def test_after_a_restore_appends_are_numbered_and_checked_against_the_log(
    log: tuple[EventStore, Projections, Path],
) -> None:
    """A store opened beside a snapshot reads no stream's version up front: the first append
    to a stream the snapshot knows still gets the next version, and a stale one is refused."""
    store, live, path = log
    snap.write(path, live)
    await store.close()
    reopened = await EventStore.open(store.path)
    try:
        restored, since = await snap.restore(reopened, path)
        assert since == restored.position == reopened.head
        restored.attach(reopened)
        version = restored.runs.by_id["r5"].version
        assert version > 1
        stale = {"run-r5": version - 1}
        with pytest.raises(ConcurrencyError, match=f"at version {version}, expected"):
            await reopened.append([RunProgressed("r5", 1, 16, "Step1", T0)], SUPERVISOR, stale)
        [r] = await reopened.append([RunProgressed("r5", 1, 16, "Step1", T0)], SUPERVISOR)
        assert r.version == version + 1 == restored.runs.by_id["r5"].version
        [r] = await reopened.append(
            [RunProgressed("r5", 2, 16, "Step2", T0)], SUPERVISOR, {"run-r5": version + 1}
        )
        assert r.version == version + 2 and await reopened.version_of("run-r5") == version + 2
    finally:
        await reopened.close()


async def test_differences_names_what_differs(log: tuple[EventStore, Projections, Path]) -> None:
    store, live, _ = log
    replayed = await Projections.replay(store)
    del replayed.runs.by_id["r1"]
    assert snap.differences(live, replayed) == "projections.runs.by_id['r1']: in one only"
    replayed = await Projections.replay(store)
    replayed.queue.running.add("r9")
    assert snap.differences(live, replayed) == "projections.queue.running differs"


async def test_the_supervisor_state_and_config_limit_are_not_in_a_snapshot(
    log: tuple[EventStore, Projections, Path],
) -> None:
    store, live, path = log
    live.queue.waiting["r6"] = "no engine has room"
    live.queue.max_running_per_owner = 2
    snap.write(path, live)
    loaded = await snap.load(path, store)
    assert loaded.queue.waiting == {} and loaded.queue.max_running_per_owner == 0
    assert loaded.queue.queued() == live.queue.queued() == ["r6"]


async def test_a_changed_projection_version_forces_a_replay(
    log: tuple[EventStore, Projections, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, live, path = log
    snap.write(path, live)
    monkeypatch.setattr(snap, "projection_version", lambda: "f" * 32)
    with caplog.at_level(logging.WARNING):
        restored, since = await snap.restore(store, path)
    assert since == 0
    assert_same_state(restored, live)
    assert "ignored (of projection version" in caplog.text


def test_the_projection_version_changes_with_the_projection_source(tmp_path: Path) -> None:
    """No one needs to remember a bump: editing a projection module changes the version."""
    package = tmp_path / "precheck"
    shutil.copytree(Path(snap.__file__).parents[1], package)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        " from precheck.projections.snapshot import projection_version as v; print(v())"
    )

    def version() -> str:
        run = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    first = version()
    assert first == version() == snap.projection_version()
    runs = package / "projections" / "runs.py"
    runs.write_text(runs.read_text() + "\n# a new field\n")
    second = version()
    assert second != first
    types = package / "events" / "types.py"
    types.write_text(types.read_text() + "\n# a new event\n")
    assert version() not in (first, second)


@pytest.mark.parametrize(
    ("spoil", "said"),
    [
        (lambda raw: raw[:-10], "damaged (its size or sha256"),
        (lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), "damaged (its size or sha256"),
        (lambda raw: b"not json\n" + raw, "its header is damaged"),
        (lambda raw: b"", "its header is damaged"),
    ],
)
async def test_a_damaged_snapshot_is_ignored_with_a_log_line(
    log: tuple[EventStore, Projections, Path],
    caplog: pytest.LogCaptureFixture,
    spoil: object,
    said: str,
) -> None:
    store, live, path = log
    snap.write(path, live)
    path.write_bytes(spoil(path.read_bytes()))  # type: ignore[operator]
    with caplog.at_level(logging.WARNING):
        restored, since = await snap.restore(store, path)
    assert since == 0
    assert_same_state(restored, live)
    assert said in caplog.text


async def test_a_snapshot_of_another_log_is_ignored(
    log: tuple[EventStore, Projections, Path], caplog: pytest.LogCaptureFixture
) -> None:
    store, live, path = log
    snap.write(path, live)
    header, _, data = path.read_bytes().partition(b"\n")
    fields = json.loads(header)
    fields["hash"] = "0" * 64
    path.write_bytes(json.dumps(fields).encode() + b"\n" + data)
    with caplog.at_level(logging.WARNING):
        restored, since = await snap.restore(store, path)
    assert since == 0 and restored.position == store.head
    assert f"the log's hash at position {live.position} is not its own" in caplog.text

    fields["hash"], fields["position"] = live.last_hash, store.head + 5
    path.write_bytes(json.dumps(fields).encode() + b"\n" + data)
    with pytest.raises(snap.SnapshotUnusable, match="past the log's end"):
        await snap.load(path, store)


async def test_a_restarted_server_starts_from_the_snapshot_of_its_clean_stop(
    aiohttp_client: AiohttpClient, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    first = await aiohttp_client(api_app(config))
    _, ids = await build_state(first)
    head = first.app[keys.STORE].head
    path = snap.snapshot_path(Storage(config.server.storage_path).db_path)
    assert not path.exists()
    await first.close()
    info, _ = snap.read_header(path)
    assert info.position == head  # written at the clean stop

    with caplog.at_level(logging.INFO):
        second = await aiohttp_client(api_app(config))
    assert f"snapshot precheck.db.snapshot at position {head} loaded" in caplog.text
    served = second.app[keys.PROJECTIONS]
    async with open_log(config) as store:
        assert snap.differences(served, await Projections.replay(store)) == ""
    order = (await (await second.get("/api/v1/queue")).json())["order"]
    assert order == [ids["r2"], ids["r4"]]


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, Path]:
    """A storage folder a server stopped on (so with a snapshot), and its config file."""
    config = _config_file(tmp_path / "config.toml", tmp_path / "data")
    asyncio.run(_fill(load_config(config)))
    return config, snap.snapshot_path(tmp_path / "data" / "precheck.db")


def test_verify_reports_a_snapshot_equal_to_a_replay(folder: tuple[Path, Path]) -> None:
    config, path = folder
    position = snap.read_header(path)[0].position
    r = run_cli("verify", "--config", str(config))
    assert r.returncode == 0, r.stderr
    assert f"snapshot: position {position} equals a full replay" in r.stdout


def test_verify_fails_on_a_snapshot_that_differs_from_a_replay(folder: tuple[Path, Path]) -> None:
    config, path = folder

    async def spoil() -> str:
        async with open_log(load_config(config)) as store:
            state = await snap.load(path, store)
        gone = next(iter(state.runs.by_id))
        del state.runs.by_id[gone]
        snap.write(path, state)  # a well-formed snapshot, at the right hash, of a wrong state
        return gone

    gone = asyncio.run(spoil())
    r = run_cli("verify", "--config", str(config))
    assert r.returncode == 1, r.stdout
    assert "differs from a replay: projections.runs.by_id" in r.stderr and gone in r.stderr


def test_verify_reports_a_snapshot_a_start_ignores(folder: tuple[Path, Path]) -> None:
    config, path = folder
    path.write_bytes(path.read_bytes()[:-1])
    r = run_cli("verify", "--config", str(config))
    assert r.returncode == 0, r.stderr
    assert "snapshot: ignored at start (damaged (its size or sha256" in r.stdout
