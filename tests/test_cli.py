"""`precheck-server` as a real process on a real storage folder, with and without a server."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import hashlib
import json
import os
import queue
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from precheck.app import create_app
from precheck.cli import _parser
from precheck.config import Config, load_config
from tests.layouts import gds
from tests.simulator_config import write_simulator_config

LABEL_INSTANCE = "precheck.instance"


# Running the CLI -------------------------------------------------------------------------------


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m precheck ARGS` with no terminal on stdin."""
    return subprocess.run(
        [sys.executable, "-m", "precheck", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


def run_many(commands: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    """Several CLI processes at once (each is a Python start-up; in turn they would be slow)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "precheck", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=cwd,
        )
        for args in commands
    ]
    done = []
    for args, p in zip(commands, procs, strict=True):
        out, err = p.communicate(timeout=60)
        done.append(subprocess.CompletedProcess(args, p.returncode, out, err))
    return done


def one_line(stderr: str) -> str:
    """The error message, asserting it is exactly one line."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    return lines[0]


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """Asserts exit 1 with one line on stderr; returns it."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    return one_line(result.stderr)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """Asserts exit 0; returns stdout."""
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


# A server process and a storage folder with runs in every state -------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_config(path: Path, storage: Path, image: str, port: int) -> None:
    write_simulator_config(path, storage, image, server={"port": port, "max_concurrent": 1})


class ServerProcess:
    """`python -m precheck serve` on a config file, as a real process."""

    def __init__(self, config: Path, port: int, log: Path, *extra: str) -> None:
        self.config, self.port, self.log, self.extra = config, port, log, extra
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "precheck",
                    "serve",
                    "--config",
                    str(self.config),
                    *self.extra,
                ],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited:\n{self.log.read_text()}"
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"server did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> Any:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        kind = "application/octet-stream" if raw is not None else "application/json"
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": kind}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    def upload(self, layout: bytes) -> str:
        return str(self.request("POST", "/api/v1/uploads?name=chip.gds", raw=layout)["Id"])

    def queue(self, upload_id: str) -> str:
        return str(
            self.request(
                "POST", "/api/v1/prechecks", {"upload_id": upload_id, "top_cell": "chip_top"}
            )["Id"]
        )

    def wait(self, run_id: str) -> str:
        return str(self.request("POST", f"/api/v1/prechecks/{run_id}/wait?timeout=60")["Status"])

    def until_status(self, run_id: str, status: str, within: float = 20) -> None:
        deadline = time.monotonic() + within
        while self.request("GET", f"/api/v1/prechecks/{run_id}")["State"]["Status"] != status:
            assert time.monotonic() < deadline, f"run {run_id} never became {status}"
            time.sleep(0.05)  # another process: nothing to await


async def _queue_without_server(config: Config, layout: bytes) -> tuple[str, str]:
    """Queue a run with an in-process app that runs no containers (it stays queued)."""
    async with TestClient(TestServer(create_app(config, run_containers=False))) as client:
        form = aiohttp.FormData()
        form.add_field("file", layout, filename="hang.gds")
        upload = await (await client.post("/api/v1/uploads", data=form)).json()
        r = await client.post(
            "/api/v1/prechecks", json={"upload_id": upload["Id"], "top_cell": "chip_top"}
        )
        assert r.status == 200, await r.text()
        return str(upload["Id"]), str((await r.json())["Id"])


def _instance(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT data FROM events WHERE type = 'server.instance-created'"
        ).fetchone()
    return str(json.loads(row[0])["instance_id"])


def _remove_containers(instance: str) -> None:
    ps = ["docker", "ps", "-aq", "--filter", f"label={LABEL_INSTANCE}={instance}"]
    ids = subprocess.run(ps, capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, simulator_image: str) -> dict[str, Any]:
    """A storage folder with a completed, a failed and a cancelled run (with files and log
    lines), an upload no run uses, and a queued run whose layout hangs; no server on it."""
    if type(simulator_image) is not str:
        pytest.fail(str(simulator_image))  # CI without Docker: fail, do not skip
    root = tmp_path_factory.mktemp("cli-template")
    config = root / "config.toml"
    port = _free_port()
    _write_config(config, root / "data", simulator_image, port)
    server = ServerProcess(config, port, root / "server.log").start()
    try:
        upload = server.upload(gds("chip_top"))
        done = server.queue(upload)
        assert server.wait(done) == "completed"
        failing = server.queue(server.upload(gds("chip_top", "fail=KLayout.CheckSize")))
        assert server.wait(failing) == "failed"
        cancelled = server.queue(server.upload(gds("chip_top", "hang")))
        server.until_status(cancelled, "running")
        server.request("DELETE", f"/api/v1/prechecks/{cancelled}")
        assert server.wait(cancelled) == "cancelled"
        unused = server.upload(gds("chip_top"))
    finally:
        server.stop()
    db = root / "data" / "precheck.db"
    _remove_containers(_instance(db))
    hang_upload, active = asyncio.run(
        _queue_without_server(load_config(config), gds("chip_top", "hang"))
    )
    return {
        "root": root,
        "image": simulator_image,
        "instance": _instance(db),
        "done": done,
        "failed": failing,
        "cancelled": cancelled,
        "active": active,
        "uploads": [upload, unused, hang_upload],
    }


class Site:
    """A copy of the template storage, its config file, and (in `server` mode) a server on it."""

    def __init__(self, tmp_path: Path, template: dict[str, Any], mode: str) -> None:
        self.tmp = tmp_path
        self.mode = mode
        self.ids = template
        self.data = tmp_path / "data"
        shutil.copytree(template["root"] / "data", self.data)
        self.config = tmp_path / "config.toml"
        self.port = _free_port()
        _write_config(self.config, self.data, template["image"], self.port)
        self.db = self.data / "precheck.db"
        self.server: ServerProcess | None = None
        if mode == "server":
            self.server = ServerProcess(self.config, self.port, tmp_path / "server.log").start()
            # The server starts the queued run at once; wait for it, so that documents read
            # by the CLI and by the server see the same queue.
            self.server.until_status(template["active"], "running")

    def cli(
        self, *args: str, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--config", str(self.config), cwd=self.tmp, timeout=timeout, env=env)

    def json(self, *args: str) -> Any:
        return json.loads(ok(self.cli(*args, "--json")))

    def events(self, *where: str) -> list[dict[str, Any]]:
        """Rows of the events table, straight from the file."""
        sql = "SELECT position, stream, type, data, metadata FROM events"
        with sqlite3.connect(self.db) as conn:
            rows = conn.execute(
                sql + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY position"
            )
            return [
                {
                    "position": p,
                    "stream": s,
                    "type": t,
                    "data": json.loads(d),
                    "metadata": json.loads(m),
                }
                for p, s, t, d, m in rows
            ]

    def head(self) -> int:
        with sqlite3.connect(self.db) as conn:
            return int(conn.execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()[0])

    def log_lines(self, run_id: str) -> int:
        with sqlite3.connect(self.db) as conn:
            return int(
                conn.execute(
                    "SELECT COALESCE(SUM(last - first + 1), 0) FROM output_blocks WHERE run_id = ?",
                    (run_id,),
                ).fetchone()[0]
            )

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        _remove_containers(self.ids["instance"])


@pytest.fixture(params=["local", "server"])
def site(
    request: pytest.FixtureRequest, tmp_path: Path, template: dict[str, Any]
) -> Iterator[Site]:
    """The template storage with no server (`local`) or with a server process on it (`server`)."""
    s = Site(tmp_path, template, request.param)
    yield s
    s.stop()


@pytest.fixture
def served(tmp_path: Path, template: dict[str, Any]) -> Iterator[Site]:
    """The template storage with a server process on it."""
    s = Site(tmp_path, template, "server")
    yield s
    s.stop()


@pytest.fixture
def local(tmp_path: Path, template: dict[str, Any]) -> Iterator[Site]:
    """The template storage with no server."""
    s = Site(tmp_path, template, "local")
    yield s
    s.stop()


# Help and usage -------------------------------------------------------------------------------


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    found = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*prefix, name))
    return found


EXPECTED_COMMANDS = {
    (), ("serve",), ("status",), ("cleanup",), ("runs",), ("runs", "list"), ("runs", "inspect"),
    ("runs", "delete"), ("runs", "prune"), ("uploads",), ("uploads", "list"), ("apikey",),
    ("apikey", "generate"), ("events",), ("verify",), ("replay",), ("backup",), ("prune",),
    ("recheck",),
}  # fmt: skip


def test_help_on_every_command_and_subcommand(tmp_path: Path) -> None:
    """`--help` on the program and on every command and subcommand prints usage and exits 0."""
    commands = _commands(_parser())
    assert set(commands) == EXPECTED_COMMANDS
    results = run_many([[*c, "--help"] for c in commands], tmp_path)
    for command, r in zip(commands, results, strict=True):
        assert r.returncode == 0, (command, r.stderr)
        assert r.stdout.startswith("usage: precheck-server"), (command, r.stdout)
        assert not r.stderr
        if command and command[-1] in (
            "list",
            "status",
            "prune",
            "events",
            "verify",
            "replay",
            "inspect",
        ):
            assert "--config" in r.stdout, command
    assert ok(run_cli("--version", cwd=tmp_path)).startswith("precheck-server ")


USAGE_ERRORS = [
    [],
    ["bogus"],
    ["runs"],
    ["runs", "bogus"],
    ["runs", "inspect"],
    ["runs", "delete"],
    ["runs", "list", "--status"],
    ["runs", "list", "--status", "sleeping"],
    ["runs", "prune", "--status", "running"],
    ["runs", "prune", "--older-than", "soon"],
    ["runs", "prune", "--older-than", "-1"],
    ["runs", "prune", "--older-than", "nan"],
    ["runs", "prune", "--older-than", "inf"],
    ["uploads"],
    ["apikey"],
    ["events", "--after", "x"],
    ["replay"],
    ["replay", "--until", "one"],
    ["serve", "--port", "http"],
    ["serve", "--log-format", "xml"],
    ["status", "--frobnicate"],
    ["prune"],
    ["prune", "--dry-run"],
]


def test_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    """A missing or unknown command, option or value: exit 2 and one line on stderr."""
    for args, r in zip(USAGE_ERRORS, run_many(USAGE_ERRORS, tmp_path), strict=True):
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert one_line(r.stderr).startswith("precheck-server"), (args, r.stderr)
        assert "(see --help)" in r.stderr
        assert not r.stdout, args


def test_a_missing_config_or_log_fails_with_one_line(tmp_path: Path) -> None:
    """No config file, or a storage folder with no log: exit 1 with one clear line."""
    empty = tmp_path / "empty.toml"
    empty.write_text(f'[server]\nstorage_path = "{tmp_path / "nothing"}"\n')
    results = run_many(
        [
            ["status", "--config", str(tmp_path / "absent.toml")],
            ["runs", "list", "--config", str(empty)],
            ["events", "--config", str(empty)],
            ["verify", "--config", str(empty)],
        ],
        tmp_path,
    )
    assert "absent.toml" in failed(results[0])
    for r in results[1:]:
        assert "no event log here" in failed(r)


async def test_apikey_generate_prints_a_key_whose_config_lines_authenticate_it(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    """The key_sha256 printed is the key's sha256, and a config with those lines lets it in."""
    result = await asyncio.to_thread(
        run_cli, "apikey", "generate", "--name", "ci-box", cwd=tmp_path
    )
    out = ok(result)
    key = re.search(r"^\s+(ws_key_\S+)$", out, re.M)
    digest = re.search(r'key_sha256 = "([0-9a-f]{64})"', out)
    assert key and digest, out
    assert hashlib.sha256(key[1].encode()).hexdigest() == digest[1]
    block = out[out.index("[[auth.api_keys]]") : out.index("\n\n", out.index("[[auth.api_keys]]"))]
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        f'[server]\nstorage_path = "{tmp_path / "data"}"\n\n[auth]\nrequired = true\n\n'
        + "\n".join(line.strip() for line in block.splitlines())
        + "\n"
    )
    assert tomllib.loads(config_file.read_text())["auth"]["api_keys"][0]["name"] == "ci-box"
    client = await aiohttp_client(create_app(load_config(config_file), run_containers=False))
    assert (await client.get("/api/v1/queue")).status == 401
    assert (await client.get("/api/v1/queue", headers={"X-API-Key": key[1] + "x"})).status == 401
    assert (
        await client.get("/api/v1/queue", headers={"Authorization": f"Bearer {key[1]}"})
    ).status == 200
    form = aiohttp.FormData()
    form.add_field("file", gds("chip_top"), filename="chip.gds")
    r = await client.post("/api/v1/uploads", data=form, headers={"X-API-Key": key[1]})
    assert r.status == 200
    events = await (
        await client.get("/api/v1/events?type=upload.received", headers={"X-API-Key": key[1]})
    ).json()
    assert events["events"][0]["metadata"]["actor"] == "ci-box"
    again = ok(await asyncio.to_thread(run_cli, "apikey", "generate", cwd=tmp_path))
    assert key[1] not in again, "every key is new"


# Reading commands ------------------------------------------------------------------------------


@pytest.mark.docker
def test_status_text_and_json(site: Site) -> None:
    """`status` tells whether a server runs, the log, the runs by status, the queue and Docker."""
    report = site.json("status")
    assert report["server"]["running"] is (site.mode == "server")
    if site.server is not None:
        assert report["server"]["url"] == site.server.url
        assert report["server"]["pid"] == site.server.proc.pid  # type: ignore[union-attr]
    assert report["storage_path"] == str(site.data)
    assert report["events"] == site.head() or site.mode == "server"
    assert report["uploads"] == 5
    runs = report["runs"]
    assert (runs["completed"], runs["failed"], runs["cancelled"]) == (1, 1, 1)
    assert runs["queued"] + runs["running"] == 1
    assert report["queue"]["max_concurrent"] == 1
    assert report["docker"]["reachable"] is True

    text = ok(site.cli("status"))
    assert re.search(
        r"^Server:\s+"
        + ("running at " + re.escape(site.server.url) if site.server else "not running"),
        text,
        re.M,
    )
    assert re.search(r"^Runs:\s+.*1 cancelled, 1 completed, 1 failed", text, re.M), text
    assert re.search(r"^Docker:\s+reachable", text, re.M), text
    assert re.search(r"^  local:\s+reachable, \d+ container\(s\), 1 slot\(s\)$", text, re.M), text


@pytest.mark.docker
def test_runs_list_table_json_and_status_filter(site: Site) -> None:
    """`runs list` shows every run newest first; `--status` (repeatable) filters; `--json` docs."""
    ids = site.ids
    table = ok(site.cli("runs", "list")).splitlines()
    assert table[0].split()[:3] == ["ID", "STATUS", "QUEUE"]
    listed = [line.split()[0] for line in table[1:]]
    assert listed == [ids["active"], ids["cancelled"], ids["failed"], ids["done"]]
    assert table[0].rstrip().endswith("WHY IT FAILED")
    why = {line.split()[0]: line[table[0].index("WHY IT FAILED") :] for line in table[1:]}
    assert why[ids["failed"]].startswith("design: the precheck failed"), why
    assert why[ids["done"]] == why[ids["cancelled"]] == ""

    docs = site.json("runs", "list")
    assert [d["Id"] for d in docs] == listed
    only = site.json("runs", "list", "--status", "completed", "--status", "failed")
    assert [(d["Id"], d["State"]["Status"]) for d in only] == [
        (ids["failed"], "failed"),
        (ids["done"], "completed"),
    ]
    assert site.json("runs", "list", "--status", "cancelled")[0]["State"]["Error"] == "cancelled"
    if site.server is not None:
        served = site.server.request("GET", "/api/v1/prechecks?status=completed&status=failed")
        assert only == served, "the CLI renders the documents the API serves"


@pytest.mark.docker
def test_runs_inspect_and_an_unknown_id(site: Site) -> None:
    """`runs inspect ID` prints the run's document; an unknown id exits 1 with one line."""
    doc = json.loads(ok(site.cli("runs", "inspect", site.ids["done"])))
    assert doc["Id"] == site.ids["done"] and doc["State"]["Status"] == "completed"
    assert doc["Output"]["Available"] is True and doc["Result"]["Passed"] is True
    if site.server is not None:
        assert doc == site.server.request("GET", f"/api/v1/prechecks/{site.ids['done']}")
    assert (
        failed(site.cli("runs", "inspect", "nosuchrun"))
        == "precheck-server: No such precheck: nosuchrun"
    )


@pytest.mark.docker
def test_uploads_list_table_and_json(site: Site) -> None:
    """`uploads list` shows every upload newest first, with the runs that use each."""
    uploads = site.ids["uploads"]
    table = ok(site.cli("uploads", "list")).splitlines()
    assert table[0].split()[:4] == ["ID", "NAME", "SIZE", "FORMAT"]
    assert {line.split()[0] for line in table[1:]} >= set(uploads)
    docs = {d["Id"]: d for d in site.json("uploads", "list")}
    assert len(docs) == 5
    assert docs[uploads[0]]["Runs"] == [site.ids["done"]]
    assert docs[uploads[1]]["Runs"] == []
    if site.server is not None:
        served = {d["Id"]: d for d in site.server.request("GET", "/api/v1/uploads")}

        def strip(d: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in d.items() if k != "State"}

        assert {k: strip(v) for k, v in docs.items()} == {k: strip(v) for k, v in served.items()}


@pytest.mark.docker
def test_events_print_the_log_with_filters(local: Site) -> None:
    """`events` prints the log; --json as JSON lines; --after, --stream, --type, --run filter it."""
    site, ids = local, local.ids
    head = site.head()
    lines = ok(site.cli("events", "--json")).splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["position"] for e in events] == list(range(1, head + 1))
    assert events[0]["type"] == "server.instance-created"
    assert {"position", "stream", "version", "type", "time", "data", "metadata"} <= set(events[0])

    text = ok(site.cli("events")).splitlines()
    assert len(text) == head and text[0].split()[0] == "1"

    after = [
        json.loads(x)
        for x in ok(site.cli("events", "--json", "--after", str(head - 3))).splitlines()
    ]
    assert [e["position"] for e in after] == [head - 2, head - 1, head]

    stream = [
        json.loads(x)
        for x in ok(site.cli("events", "--json", "--stream", f"run-{ids['done']}")).splitlines()
    ]
    assert stream and {e["stream"] for e in stream} == {f"run-{ids['done']}"}
    assert stream[0]["type"] == "run.queued" and stream[1]["type"] == "run.started"
    by_run = [
        json.loads(x) for x in ok(site.cli("events", "--json", "--run", ids["done"])).splitlines()
    ]
    assert by_run == stream

    kinds = [
        json.loads(x)["type"]
        for x in ok(site.cli("events", "--json", "--type", "upload.")).splitlines()
    ]
    assert kinds == ["upload.received"] * 5
    cancels = [
        json.loads(x)
        for x in ok(
            site.cli("events", "--json", "--type", "run.cancelled", "--type", "run.queued")
        ).splitlines()
    ]
    assert [e["type"] for e in cancels].count("run.queued") == 4
    assert [e["data"]["run_id"] for e in cancels if e["type"] == "run.cancelled"] == [
        ids["cancelled"]
    ]

    assert "unknown event type" in failed(site.cli("events", "--type", "run.exploded"))


@pytest.mark.docker
def test_events_follow_prints_new_events_as_they_happen(served: Site) -> None:
    """`events --follow` keeps printing: an upload made afterwards appears within seconds."""
    assert served.server is not None
    head = served.head()
    proc = subprocess.Popen(
        [sys.executable, "-m", "precheck", "events", "--follow", "--json", "--after", str(head),
         "--config", str(served.config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout

    def read_lines() -> None:
        for x in stdout:
            lines.put(x)

    reader = threading.Thread(target=read_lines, daemon=True)
    reader.start()
    try:
        time.sleep(
            0.5
        )  # let it connect (an upload before would be printed too: it resumes by position)
        upload_id = served.server.upload(gds("chip_top"))
        deadline = time.monotonic() + 15
        seen: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and proc.poll() is None, f"no upload.received line; saw {seen}"
            try:
                event = json.loads(lines.get(timeout=remaining))
            except queue.Empty:
                continue
            seen.append(event["type"])
            assert event["position"] > head
            if event["type"] == "upload.received":
                assert event["data"]["upload_id"] == upload_id
                assert event["metadata"]["actor"] == "anonymous"
                break
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.docker
def test_events_follow_without_a_server_prints_the_log_and_says_so(local: Site) -> None:
    """With no server `--follow` prints what there is, says nothing more will come, exits 0."""
    r = local.cli("events", "--follow", "--type", "run.queued")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 4
    assert "no server is running" in one_line(r.stderr)


# Changing commands ------------------------------------------------------------------------------


@pytest.mark.docker
def test_runs_delete(site: Site) -> None:
    """`runs delete`: refused for an active run or without --force; else an event, then files go."""
    ids = site.ids
    done, run_dir = ids["done"], site.data / "runs" / ids["done"]
    assert run_dir.is_dir() and any(run_dir.rglob("*.gds")) and site.log_lines(done) > 0

    refused = failed(site.cli("runs", "delete", ids["active"], "--force"))
    assert ids["active"] in refused and "cancel it" in refused
    assert "pass --force" in failed(site.cli("runs", "delete", done))
    assert "No such precheck" in failed(site.cli("runs", "delete", "nosuchrun", "--force"))
    assert run_dir.is_dir() and not site.events("type = 'run.deleted'")

    out = ok(site.cli("runs", "delete", done, "--force", "--reason", "customer asked"))
    assert out.strip() == f"Deleted run {done}"
    if site.server is not None:
        assert site.server.status(f"/api/v1/prechecks/{done}") == 404, "the server saw it at once"
    assert not run_dir.exists()
    assert site.log_lines(done) == 0
    assert site.log_lines(ids["failed"]) > 0, "other runs keep their log"
    [deleted] = site.events("type = 'run.deleted'")
    assert deleted["data"]["run_id"] == done and deleted["data"]["reason"] == "customer asked"
    assert deleted["metadata"]["actor"] == "cli"
    assert deleted["metadata"]["client"] == ("127.0.0.1" if site.server else "local")
    assert "No such precheck" in failed(site.cli("runs", "inspect", done))
    assert ok(site.cli("verify")), "the log is intact after the change"


@pytest.mark.docker
def test_runs_prune(site: Site) -> None:
    """`runs prune`: --dry-run only lists; --older-than and --status narrow; active runs stay."""
    ids = site.ids
    ended = {ids["done"], ids["failed"], ids["cancelled"]}

    def kept() -> bool:
        return all((site.data / "runs" / r).exists() for r in (ids["done"], ids["failed"]))

    assert set(site.json("runs", "prune", "--dry-run")) == ended
    assert "Would delete:" in ok(site.cli("runs", "prune", "--dry-run"))
    assert not site.events("type = 'run.deleted'") and kept()
    assert "pass --force" in failed(site.cli("runs", "prune"))

    assert site.json("runs", "prune", "--older-than", "1", "--force") == []
    assert site.json("runs", "prune", "--older-than", "1e300", "--force") == []
    assert (
        ok(site.cli("runs", "prune", "--older-than", "1", "--force")).strip() == "No runs to prune"
    )
    assert not site.events("type = 'run.deleted'") and kept()

    assert site.json("runs", "prune", "--status", "failed", "--force") == [ids["failed"]]
    assert not (site.data / "runs" / ids["failed"]).exists() and site.log_lines(ids["failed"]) == 0
    assert (site.data / "runs" / ids["done"]).exists()

    assert (
        ok(
            site.cli("runs", "prune", "--older-than", "0", "--force", "--reason", "spring clean")
        ).strip()
        == "Deleted 2 run(s)"
    )
    deleted = site.events("type = 'run.deleted'")
    assert {e["data"]["run_id"] for e in deleted} == ended
    assert [e["data"]["reason"] for e in deleted].count("spring clean") == 2
    assert {e["metadata"]["actor"] for e in deleted} == {"cli"}
    assert [d["Id"] for d in site.json("runs", "list")] == [ids["active"]]
    if site.server is not None:
        assert [d["Id"] for d in site.server.request("GET", "/api/v1/prechecks")] == [ids["active"]]


@pytest.mark.docker
def test_cleanup_lists_and_removes_a_stray_labelled_container(site: Site) -> None:
    """`cleanup --dry-run` lists a labelled container no run owns; `cleanup` removes only it."""
    if site.server is not None:
        site.server.until_status(site.ids["active"], "running")
    stray = subprocess.run(
        ["docker", "create", "--label", f"{LABEL_INSTANCE}={site.ids['instance']}",
         "--label", "precheck.run=gone", site.ids["image"]],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        listing = ok(site.cli("cleanup", "--dry-run"))
        assert "Found 1 stray container(s)" in listing and stray[:12] in listing
        assert "run gone" in listing and "Dry run: nothing removed" in listing
        assert subprocess.run(["docker", "inspect", stray], capture_output=True).returncode == 0

        assert "Removed 1 container(s)" in ok(site.cli("cleanup"))
        assert subprocess.run(["docker", "inspect", stray], capture_output=True).returncode != 0
        assert ok(site.cli("cleanup", "--dry-run")).strip() == "No stray containers found"
        if site.server is not None:  # the running run's container was not touched
            doc = site.server.request("GET", f"/api/v1/prechecks/{site.ids['active']}")
            assert doc["State"]["Status"] == "running"
    finally:
        subprocess.run(["docker", "rm", "-f", stray], capture_output=True)


def _labelled_container(site: Site, run_id: str) -> str:
    """A container labelled as this storage's, for run `run_id`, as the supervisor labels them."""
    return subprocess.run(
        ["docker", "create", "--label", f"{LABEL_INSTANCE}={site.ids['instance']}",
         "--label", f"precheck.run={run_id}", site.ids["image"]],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def _exists(container_id: str) -> bool:
    return subprocess.run(["docker", "inspect", container_id], capture_output=True).returncode == 0


@pytest.mark.docker
def test_cleanup_with_a_server_removes_through_it_and_records_each_container(
    served: Site,
) -> None:
    """With a server on the folder, `cleanup` asks it: the server removes the stray and appends
    `server.stray-container-removed` (actor `cli`, from 127.0.0.1); its running run's container
    stays. The route answers only the CLI's admin token."""
    assert served.server is not None
    served.server.until_status(served.ids["active"], "running")
    stray = _labelled_container(served, "gone")
    settled = _labelled_container(served, served.ids["done"])  # a run that has ended for good
    try:
        req = urllib.request.Request(served.server.url + "/api/v1/cleanup", data=b"{}")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 403 and _exists(stray)

        out = ok(served.cli("cleanup"))
        assert "Found 2 stray container(s)" in out and "Removed 2 container(s)" in out, out
        assert not _exists(stray) and not _exists(settled)
        removed = served.events("type = 'server.stray-container-removed'")
        assert {e["data"]["container_id"] for e in removed} == {stray, settled}
        assert {(e["metadata"]["actor"], e["metadata"]["client"]) for e in removed} == {
            ("cli", "127.0.0.1")
        }, "appended by the server for the CLI, not by the CLI itself"
        doc = served.server.request("GET", f"/api/v1/prechecks/{served.ids['active']}")
        assert doc["State"]["Status"] == "running", "the live run's container was left alone"
        assert ok(served.cli("cleanup")).strip() == "No stray containers found"
        assert len(served.events("type = 'server.stray-container-removed'")) == 2
        assert ok(served.cli("verify"))
    finally:
        subprocess.run(["docker", "rm", "-f", stray, settled], capture_output=True)


@pytest.mark.docker
def test_cleanup_without_a_server_appends_each_removal_under_the_lock(local: Site) -> None:
    """With no server, `cleanup` removes the strays and appends one event per container itself
    (actor `cli`, client `local`); `--dry-run` appends nothing."""
    head = local.head()
    strays = {
        _labelled_container(local, "gone"),
        _labelled_container(local, local.ids["done"]),
        # Nothing starts a queued run while no server runs: its container is a leftover.
        _labelled_container(local, local.ids["active"]),
    }
    try:
        assert "Found 3 stray container(s)" in ok(local.cli("cleanup", "--dry-run"))
        assert local.head() == head and all(_exists(c) for c in strays)

        assert "Removed 3 container(s)" in ok(local.cli("cleanup"))
        assert not any(_exists(c) for c in strays)
        removed = local.events("type = 'server.stray-container-removed'")
        assert {e["data"]["container_id"] for e in removed} == strays
        assert [e["position"] for e in removed] == [head + 1, head + 2, head + 3]
        assert {(e["metadata"]["actor"], e["metadata"]["client"]) for e in removed} == {
            ("cli", "local")
        }
        assert all(e["data"]["name"] for e in removed)
        assert ok(local.cli("verify"))
    finally:
        subprocess.run(["docker", "rm", "-f", *strays], capture_output=True)


@pytest.mark.docker
def test_proxy_variables_do_not_reach_the_cli_calls_to_the_local_server(served: Site) -> None:
    """A proxy named in the environment (here one that nothing answers) is not used for the
    CLI's calls to the server on this machine: changes, verify and cleanup still work."""
    assert served.server is not None
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        env[name] = env[name.upper()] = dead
    done = served.ids["done"]
    assert ok(served.cli("runs", "delete", done, "--force", env=env)).strip() == (
        f"Deleted run {done}"
    )
    assert served.server.status(f"/api/v1/prechecks/{done}") == 404
    pruned = json.loads(ok(served.cli("runs", "prune", "--dry-run", "--json", env=env)))
    assert set(pruned) == {served.ids["failed"], served.ids["cancelled"]}
    assert "running server at" in ok(served.cli("verify", env=env))
    assert ok(served.cli("cleanup", "--dry-run", env=env)).strip() == "No stray containers found"


@pytest.mark.docker
def test_every_command_family_fails_with_one_prefixed_line(tmp_path: Path, local: Site) -> None:
    """Each kind of failure, in every command family, exits non-zero with one stderr line that
    starts `precheck-server: `: a bad config, no log, a locked folder, Docker unreachable, a
    position past the log, a run the log does not have, a refused filter."""
    empty = tmp_path / "empty.toml"
    empty.write_text(f'[server]\nstorage_path = "{tmp_path / "nothing"}"\n')
    no_docker = tmp_path / "no-docker.toml"
    no_docker.write_text(
        f'[server]\nstorage_path = "{local.data}"\n\n'
        f'[docker]\nurl = "unix://{tmp_path / "no-docker.sock"}"\n'
    )
    locked = tmp_path / "locked"
    locked.mkdir()
    locked_config = tmp_path / "locked.toml"
    locked_config.write_text(f'[server]\nstorage_path = "{locked}"\n')
    cases: list[tuple[list[str], str]] = [
        (["serve", "--config", str(tmp_path / "absent.toml")], "absent.toml"),
        (["status", "--config", str(locked_config)], "server info cannot be read"),
        (["runs", "list", "--config", str(empty)], "no event log here"),
        (["runs", "inspect", "nosuchrun", "--config", str(local.config)], "No such precheck"),
        (["runs", "delete", "x", "--force", "--config", str(empty)], "no event log here"),
        (["runs", "prune", "--force", "--config", str(locked_config)], "server info cannot"),
        (["uploads", "list", "--config", str(empty)], "no event log here"),
        (["events", "--type", "run.exploded", "--config", str(local.config)], "unknown event"),
        (["verify", "--config", str(empty)], "no event log here"),
        (["replay", "--until", "100000", "--config", str(local.config)], "past the end"),
        (["cleanup", "--config", str(no_docker)], "Docker"),
    ]
    fd = os.open(locked / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, with no server.json beside it
        results = run_many([args for args, _ in cases], tmp_path)
    finally:
        os.close(fd)
    for (args, words), r in zip(cases, results, strict=True):
        line = failed(r)
        assert line.startswith("precheck-server: ") and words in line, (args, line)
        assert "Traceback" not in r.stderr


# Serving ----------------------------------------------------------------------------------------


@pytest.mark.docker
def test_a_second_server_on_the_same_storage_fails(served: Site) -> None:
    """While a server runs, `serve` on the same storage exits 1 with one line; the first goes on."""
    config = served.tmp / "second.toml"
    _write_config(config, served.data, served.ids["image"], _free_port())
    r = run_cli("serve", "--config", str(config), cwd=served.tmp, timeout=40)
    line = failed(r)
    assert "in use by another precheck process" in line and "another server running" in line
    assert served.server is not None and served.server.status("/health") == 200


@pytest.mark.docker
def test_serve_log_format_json_writes_json_lines(local: Site) -> None:
    """`serve --log-format json`: every line the server logs is one JSON object."""
    log = local.tmp / "json.log"
    server = ServerProcess(local.config, local.port, log, "--log-format", "json").start()
    try:
        server.status("/api/v1/queue")
    finally:
        server.stop()
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert any(e["message"].startswith("replayed ") for e in entries)
    assert any(e["message"].startswith(f"listening on {server.url} ") for e in entries), lines
    assert any('"GET /api/v1/queue" 200' in e["message"] for e in entries), lines


async def test_reading_commands_need_no_server_secrets(tmp_path: Path) -> None:
    """A `${ENV}` key whose variable is unset stops `serve`, not the commands that only read."""
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        f'[server]\nstorage_path = "{tmp_path / "data"}"\n'
        "[auth]\nrequired = false\n"
        '[[auth.api_keys]]\nname = "ci"\nkey = "${PRECHECK_TEST_UNSET_VARIABLE}"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "PRECHECK_TEST_UNSET_VARIABLE"}
    await _queue_without_server(load_config(config_file, expand_secrets=False), gds())
    cfg = ["--config", str(config_file)]
    for command in (["status"], ["runs", "list"], ["uploads", "list"], ["verify"]):
        result = await asyncio.to_thread(run_cli, *command, *cfg, cwd=tmp_path, env=env)
        assert result.returncode == 0, (command, result.stderr)
    generated = await asyncio.to_thread(run_cli, "apikey", "generate", *cfg, env=env)
    assert generated.returncode == 0 and "ws_key_" in generated.stdout, generated.stderr
    served = await asyncio.to_thread(run_cli, "serve", *cfg, "--port", "0", env=env, timeout=20)
    assert served.returncode == 1
    assert "PRECHECK_TEST_UNSET_VARIABLE is not set" in one_line(served.stderr)


@pytest.mark.docker
def test_serve_keeps_the_storage_folder_to_its_owner(served: Site) -> None:
    """The storage folder is 0700, `server.json` 0600, a new upload 0600; a link planted at
    the temporary name of `server.json` is not followed."""
    assert served.server is not None
    upload = served.server.upload(gds())
    assert served.data.stat().st_mode & 0o777 == 0o700
    assert (served.data / "server.json").stat().st_mode & 0o777 == 0o600
    [stored] = (served.data / "uploads" / upload).iterdir()
    assert stored.stat().st_mode & 0o777 == 0o600


def test_the_server_info_is_never_written_through_a_link(tmp_path: Path) -> None:
    """A symlink at the temporary name is replaced, not followed: its target stays untouched."""
    from precheck.ops.lock import INFO, StorageLock

    victim = tmp_path / "victim"
    victim.write_text("keep me")
    root = tmp_path / "data"
    root.mkdir()
    with StorageLock(root) as lock:
        (root / f"{INFO}.{os.getpid()}.tmp").symlink_to(victim)
        info = lock.announce("http://127.0.0.1:1")
    assert victim.read_text() == "keep me"
    assert json.loads((root / INFO).read_text())["token"] == info.token
