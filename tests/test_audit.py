"""Auditing the log: `verify` catches every kind of tampering; `replay --until` shows the past."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from precheck.app import create_app
from precheck.config import Config, load_config
from precheck.events.store import SCHEMA, chain_hash
from tests.layouts import gds
from tests.simulator_config import write_simulator_config

TRIGGERS = ("events_are_never_updated", "events_are_never_deleted")


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m precheck ARGS`, a real process."""
    return subprocess.run(
        [sys.executable, "-m", "precheck", *args],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout,
    )  # fmt: skip


def _config_file(
    path: Path, storage: Path, image: str = "precheck-simulator:none", port: int = 8000
) -> Path:
    return write_simulator_config(path, storage, image, server={"port": port})


async def _fill(config: Config) -> None:
    """Uploads, queued and cancelled runs and a deleted upload, through the API."""
    async with TestClient(TestServer(create_app(config, run_containers=False))) as client:
        uploads = []
        for i in range(3):
            form = aiohttp.FormData()
            form.add_field("file", gds(f"cell_{i}"), filename=f"chip{i}.gds")
            uploads.append((await (await client.post("/api/v1/uploads", data=form)).json())["Id"])
        runs = []
        for i in range(3):
            body = {"upload_id": uploads[0], "top_cell": f"cell_{i}", "die_id": f"ABCD000{i}"}
            r = await client.post("/api/v1/prechecks", json=body)
            assert r.status == 200, await r.text()
            runs.append((await r.json())["Id"])
        assert (await client.delete(f"/api/v1/prechecks/{runs[1]}")).status == 200
        assert (await client.delete(f"/api/v1/uploads/{uploads[2]}")).status == 200


@pytest.fixture(scope="module")
def good_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage folder with a dozen events and no server on it."""
    root = tmp_path_factory.mktemp("audit")
    config = _config_file(root / "config.toml", root / "data")
    asyncio.run(_fill(load_config(config)))
    return root / "data"


@pytest.fixture
def copy(tmp_path: Path, good_log: Path) -> tuple[Path, Path]:
    """A copy of the good storage folder and a config file for it: (config, database)."""
    data = tmp_path / "data"
    shutil.copytree(good_log, data)
    return _config_file(tmp_path / "config.toml", data), data / "precheck.db"


def _rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT * FROM events ORDER BY position").fetchall()


def _tamper(
    db: Path, *sql: str, params: tuple[Any, ...] = (), restore_triggers: bool = True
) -> None:
    """Drop the append-only triggers, run `sql`, and (by default) put the triggers back."""
    conn = sqlite3.connect(db)
    try:
        for t in TRIGGERS:
            conn.execute(f"DROP TRIGGER {t}")
        for statement in sql:
            conn.execute(statement, params if "?" in statement else ())
        if restore_triggers:
            conn.executescript(SCHEMA)  # CREATE ... IF NOT EXISTS: only the triggers come back
        conn.commit()
    finally:
        conn.close()


def _verify_fails(
    config: Path, position: int | None, words: str, again: Callable[[], None] = lambda: None
) -> dict[str, Any]:
    """`verify` exits 1 with one stderr line naming `position`; its --json says the same
    (after `again` redid the tampering, when the first run undid it)."""
    r = run_cli("verify", "--config", str(config))
    assert r.returncode == 1, (r.stdout, r.stderr)
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("precheck-server: verify failed: ") and words in line, line
    if position is not None:
        assert f"first bad position {position})" in line, line
    assert r.stdout.strip().splitlines()[-1].startswith("FAILED: ")
    again()
    report = json.loads(run_cli("verify", "--json", "--config", str(config)).stdout)
    assert report["ok"] is False and report["first_bad_position"] == position
    return dict(report)


def test_verify_passes_on_a_good_log_and_says_what_it_checked(copy: tuple[Path, Path]) -> None:
    """Exit 0, and a line for the chain, the triggers and the replay."""
    config, db = copy
    n = len(_rows(db))
    r = run_cli("verify", "--config", str(config))
    assert r.returncode == 0 and not r.stderr, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"hash chain: {n} events, positions 1..{n} with no gap, every hash matches"
    assert lines[1] == "append-only triggers: present"
    assert lines[2] == (  # the server that wrote it left a snapshot at its stop
        f"snapshot: position {n} equals a full replay of the log up to there (2 uploads, 3 runs)"
    )
    assert lines[3] == f"replay: {n} events decode and apply: 2 uploads, 3 runs"
    assert "no server running" in lines[4]
    report = json.loads(run_cli("verify", "--json", "--config", str(config)).stdout)
    assert report == {"ok": True, "checked": lines, "problem": None, "first_bad_position": None}


def test_verify_fails_on_an_edited_row(copy: tuple[Path, Path]) -> None:
    """A row's data changed (triggers dropped to allow it, then restored): its position is named."""
    config, db = copy
    position = next(r[0] for r in _rows(db) if r[3] == "run.queued")
    _tamper(
        db,
        "UPDATE events SET data = replace(data, 'ABCD0000', 'EVIL0000') WHERE position = ?",
        params=(position,),
    )
    assert "EVIL0000" in next(r[5] for r in _rows(db) if r[0] == position)
    _verify_fails(config, position, f"hash of position {position} does not match")


def test_verify_fails_on_an_edited_metadata_or_time(copy: tuple[Path, Path]) -> None:
    """Changing who did it or when is caught as surely as changing what was done."""
    config, db = copy
    _tamper(db, "UPDATE events SET recorded = '2020-01-01T00:00:00.000000Z' WHERE position = 4")
    _verify_fails(config, 4, "hash of position 4 does not match")


def test_verify_fails_on_a_deleted_row(copy: tuple[Path, Path]) -> None:
    """A row removed from the middle: the gap's position is named."""
    config, db = copy
    _tamper(db, "DELETE FROM events WHERE position = 5")
    _verify_fails(config, 5, "position 5 is missing")


def test_verify_fails_on_a_row_inserted_in_the_middle(copy: tuple[Path, Path]) -> None:
    """A forged row slipped in at position 4 (the later rows shifted up), even one whose own
    hash is chained correctly: the first row after it no longer fits."""
    config, db = copy
    rows = _rows(db)
    prev_hash = rows[2][8]  # the hash of position 3
    stream, version, type_, schema = "upload-forged", 1, rows[1][3], rows[1][4]
    data, metadata, recorded = (
        rows[1][5].replace(rows[1][1].removeprefix("upload-"), "forged"),
        rows[1][6],
        rows[2][7],
    )
    forged = chain_hash(prev_hash, 4, stream, version, type_, schema, data, metadata, recorded)
    _tamper(
        db,
        "UPDATE events SET position = -position WHERE position >= 4",
        "UPDATE events SET position = 1 - position WHERE position < 0",
        "INSERT INTO events VALUES (4, ?, ?, ?, ?, ?, ?, ?, ?)",
        params=(stream, version, type_, schema, data, metadata, recorded, forged),
    )
    assert len(_rows(db)) == len(rows) + 1 and _rows(db)[4][1:] == rows[3][1:]
    _verify_fails(config, 5, "hash of position 5 does not match")


def test_verify_fails_on_a_row_inserted_without_a_valid_hash(copy: tuple[Path, Path]) -> None:
    """A row inserted with a made-up hash is named itself."""
    config, db = copy
    rows = _rows(db)
    _tamper(
        db,
        "UPDATE events SET position = -position WHERE position >= 6",
        "UPDATE events SET position = 1 - position WHERE position < 0",
        "INSERT INTO events VALUES (6, 'server', 99, ?, ?, ?, ?, ?, ?)",
        params=(rows[0][3], rows[0][4], rows[0][5], rows[0][6], rows[0][7], "0" * 64),
    )
    _verify_fails(config, 6, "hash of position 6 does not match")


def test_verify_fails_when_the_triggers_are_dropped(copy: tuple[Path, Path]) -> None:
    """Dropped append-only triggers alone (every row intact) fail verification too."""
    config, db = copy

    def drop() -> None:
        with sqlite3.connect(db) as conn:
            for t in TRIGGERS:
                conn.execute(f"DROP TRIGGER IF EXISTS {t}")

    drop()
    missing = "append-only triggers missing: events_are_never_updated, events_are_never_deleted"
    report = _verify_fails(config, None, missing, again=drop)  # opening the log put them back
    assert report["checked"][0].startswith("hash chain: ")


def test_the_triggers_refuse_edits_and_deletes(copy: tuple[Path, Path]) -> None:
    """Without dropping the triggers, SQLite itself refuses to change or remove a row."""
    _, db = copy
    with sqlite3.connect(db) as conn:
        for sql in (
            "UPDATE events SET data = '{}' WHERE position = 2",
            "DELETE FROM events WHERE position = 2",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(sql)


# With a running server ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path, simulator_image: str) -> Iterator[tuple[Path, str]]:
    """A `serve` process on a fresh storage folder: (config file, url)."""
    if type(simulator_image) is not str:
        pytest.fail(str(simulator_image))  # CI without Docker: fail, do not skip
    port = _free_port()
    config = _config_file(tmp_path / "config.toml", tmp_path / "data", simulator_image, port)
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "precheck", "serve", "--config", str(config)], stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "server.log"
            ).read_text()
            try:
                urllib.request.urlopen(url + "/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield config, url
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
        _remove_containers(tmp_path / "data" / "precheck.db")


def _remove_containers(db: Path) -> None:
    """Remove every container the server of this log labelled (a run may outlive the server)."""
    sql = "SELECT data FROM events WHERE type = 'server.instance-created'"
    with sqlite3.connect(db) as conn:
        row = conn.execute(sql).fetchone()
    label = f"label=precheck.instance={json.loads(row[0])['instance_id']}"
    ps = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True)
    if ps.stdout.split():
        subprocess.run(["docker", "rm", "-f", *ps.stdout.split()], capture_output=True)


def _post(url: str, body: bytes, kind: str) -> Any:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": kind})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


@pytest.mark.docker
def test_verify_with_a_running_server_compares_its_state(server: tuple[Path, str]) -> None:
    """With a server running, verify also finds the server's documents equal to a replay."""
    config, url = server
    upload = _post(
        url + "/api/v1/uploads?name=chip.gds", gds("chip_top"), "application/octet-stream"
    )
    run = _post(
        url + "/api/v1/prechecks",
        json.dumps({"upload_id": upload["Id"], "top_cell": "chip_top"}).encode(),
        "application/json",
    )
    assert (
        _post(url + f"/api/v1/prechecks/{run['Id']}/wait?timeout=60", b"", "application/json")[
            "Status"
        ]
        == "completed"
    )
    queued = _post(
        url + "/api/v1/prechecks",
        json.dumps({"upload_id": upload["Id"], "top_cell": "chip_top"}).encode(),
        "application/json",
    )
    r = run_cli("verify", "--config", str(config))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        r.stdout.splitlines()[-1]
        == f"running server at {url}: its runs and uploads equal a replay of the log"
    )
    report = json.loads(run_cli("verify", "--json", "--config", str(config)).stdout)
    assert report["ok"] is True and report["checked"][-1].startswith("running server at ")
    assert queued["Id"]


# Replay ------------------------------------------------------------------------------------


async def _snapshot(api: Any) -> tuple[int, dict[str, dict[str, Any]]]:
    """The API's run and upload documents and the log position they show, read consistently."""
    for _ in range(50):
        head = api.store.head
        runs = await (await api.client.get("/api/v1/prechecks")).json()
        uploads = await (await api.client.get("/api/v1/uploads")).json()
        if api.store.head == head:
            return head, {
                "runs": {d["Id"]: d for d in runs},
                "uploads": {d["Id"]: _no_state(d) for d in uploads},
            }
        await asyncio.sleep(0.01)  # the supervisor appended meanwhile: read again
    raise AssertionError("the log never stood still")


def _no_state(upload: dict[str, Any]) -> dict[str, Any]:
    """An upload document without `State`, which depends on the clock of whoever renders it."""
    return {k: v for k, v in upload.items() if k != "State"}


async def _replay(config: Path, until: int) -> dict[str, Any]:
    r = await asyncio.to_thread(
        run_cli, "replay", "--until", str(until), "--json", "--config", str(config)
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["position"] == until
    return {
        "runs": {d["Id"]: d for d in doc["runs"]},
        "uploads": {d["Id"]: _no_state(d) for d in doc["uploads"]},
    }


@pytest.mark.docker
async def test_replay_until_a_position_equals_the_state_seen_then(
    start_app: Callable[..., Any],
    sim_config: Callable[..., Config],
    simulator_image: str,
    tmp_path: Path,
) -> None:
    """Documents recorded right after a queue, a cancel, a completion and an upload equal
    `replay --until` that position, run later from the log file."""
    config = sim_config(max_concurrent=1)
    api = await start_app(config)
    config_file = _config_file(tmp_path / "cli.toml", config.server.storage_path, simulator_image)
    seen: list[tuple[str, int, dict[str, Any]]] = []

    async def note(what: str) -> None:
        seen.append((what, *await _snapshot(api)))

    upload = await api.upload(gds("chip_top", "sleep=1.5"))
    first = (await api.create(upload))["Id"]
    await note("first run queued")
    second = (await api.create(upload, top_cell="other_top"))["Id"]
    await note("second run queued behind it")
    await api.wait_running(first)
    await note("first run running")
    status, _ = await api.cancel(second)
    assert status == 200
    await note("second run cancelled")
    assert (await api.wait(first))["Status"] == "completed"
    await api.wait_event("run.outputs-stored", first)
    await note("first run completed with its outputs")
    await api.upload(gds("late_top"))
    await note("a later upload")

    states = {what: state for what, _, state in seen}
    assert states["second run queued behind it"]["runs"][second]["Queue"]["Position"] is not None
    assert states["second run cancelled"]["runs"][second]["State"]["Status"] == "cancelled"
    assert (
        states["first run completed with its outputs"]["runs"][first]["Output"]["Available"] is True
    )
    assert len({head for _, head, _ in seen}) == len(seen), "each moment is a different position"
    for what, head, state in seen:
        assert await _replay(config_file, head) == state, f"replay --until {head} ({what})"

    empty = await _replay(config_file, 0)
    assert empty == {"runs": {}, "uploads": {}}
    past = await asyncio.to_thread(
        run_cli, "replay", "--until", str(api.store.head + 100), "--config", str(config_file)
    )
    assert past.returncode == 1 and "past the end of the log" in past.stderr
    text = await asyncio.to_thread(
        run_cli, "replay", "--until", str(seen[1][1]), "--config", str(config_file)
    )
    assert text.returncode == 0 and first in text.stdout and second in text.stdout
    assert text.stdout.startswith(f"State after event {seen[1][1]} of ")


def test_verify_with_an_anchor_notices_a_cut_tail(copy: tuple[Path, Path]) -> None:
    """The chain alone cannot tell a log whose last rows were cut; an anchor kept elsewhere
    (position and hash of the head) can: verify passes with it, then fails once it is cut."""
    config, db = copy
    last = _rows(db)[-1]
    anchor = f"{last[0]}:{last[8]}"
    good = run_cli("verify", "--config", str(config), "--anchor", anchor)
    assert good.returncode == 0, good.stderr
    assert f"anchor: position {last[0]} holds hash {last[8]}" in good.stdout
    _tamper(db, f"DELETE FROM events WHERE position >= {last[0] - 1}")
    assert run_cli("verify", "--config", str(config)).returncode == 0  # a valid, shorter chain
    cut = run_cli("verify", "--config", str(config), "--anchor", anchor)
    assert cut.returncode == 1
    assert "was cut or rewritten" in cut.stderr
    wrong = run_cli("verify", "--config", str(config), "--anchor", "3:" + "0" * 64)
    assert wrong.returncode == 1 and "not in the log" in wrong.stderr
    usage = run_cli("verify", "--config", str(config), "--anchor", "three")
    assert usage.returncode == 2 and "POS:HASH" in usage.stderr
