"""The `precheck` client, run as a real process against a real server on the simulator image."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from precheck.config import Config
from precheck.events.types import RunStarted
from tests.docker_fixtures import REPO, Api, StartApp
from tests.layouts import gds
from tests.simulator_config import simulator_docker

pytestmark = pytest.mark.docker

KEY = "ws_key_client_test_0123456789"
CONTROL = [chr(c) for c in range(32) if chr(c) not in "\n\t"] + ["\x7f"]


@attrs.frozen
class Result:
    """What a client process did."""

    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PRECHECK_") and k.lower() not in ("http_proxy", "https_proxy")
    }
    env["PYTHONPATH"] = str(REPO)
    env.pop("NO_COLOR", None)
    return env | extra


async def client(
    *args: str, cwd: Path, env: dict[str, str] | None = None, within: float = 120
) -> Result:
    """Run `python -m precheck.client ARGS` to its end, stdout and stderr being pipes."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "precheck.client",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=env or _env(),
    )
    try:
        async with asyncio.timeout(within):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"client did not end: {out.decode()}\n{err.decode()}") from None
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def server_url(api: Api) -> str:
    """The URL the app under test answers at."""
    return str(api.client.make_url("/")).rstrip("/")


def layout(tmp_path: Path, *directives: str, name: str = "chip_top.gds") -> Path:
    """A simulator layout written to a file."""
    path = tmp_path / name
    path.write_bytes(gds("chip_top", *directives))
    return path


def assert_plain(result: Result) -> None:
    """Nothing a CI log would show badly: no carriage return, escape or other control byte."""
    for stream in (result.out, result.err):
        bad = sorted({c for c in stream if c in CONTROL})
        assert bad == [], f"control characters {bad!r} in {stream[-2000:]!r}"


def out_folders(folder: Path) -> list[Path]:
    """The default out folders (`precheck-<run id>`) written in `folder`."""
    return sorted(folder.glob("precheck-*"))


def names(folder: Path) -> list[str]:
    """What `folder` holds."""
    return sorted(p.name for p in folder.iterdir())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def server_log(api: Api, run_id: str) -> list[str]:
    """Every line the server captured of the run."""
    lines: list[str] = (await api.logs(run_id, limit=10000))["lines"]
    return lines


def sim_with(
    make_config: Callable[..., Config], sim_config: Callable[..., Config], **tables: Any
) -> Config:
    """The simulator config with other tables set too."""
    docker = sim_config().docker  # fails the test here when there is no Docker engine
    return make_config(docker=simulator_docker(docker.image), **tables)


def auth_config(make_config: Callable[..., Config], sim_config: Callable[..., Config]) -> Config:
    """The simulator config with API keys required (one key: `KEY`)."""
    return sim_with(
        make_config, sim_config, auth={"required": True, "api_keys": [{"name": "ci", "key": KEY}]}
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class CuttingProxy:
    """A TCP proxy on loopback in front of the server.

    Each stream request (`follow=1`) takes the next number of `cuts`: once that many log
    messages went through on its connection, the connection is cut in the middle of the next
    one. `shutdown()` takes the server away for good.
    """

    def __init__(self, upstream: int, cuts: list[int] | None = None) -> None:
        self.upstream = upstream
        self.cuts = list(cuts or [])
        self.done_cuts: list[bytes] = []  # the last bytes sent before each cut
        self.streams: list[bytes] = []  # the head of every stream request
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def shutdown(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self.writers |= {writer, up_writer}
        limit: list[int | None] = [None]  # log messages this connection may carry

        async def upward() -> None:
            while data := await reader.read(65536):
                if b"follow=1" in data:
                    self.streams.append(data.split(b"\r\n\r\n")[0])
                    limit[0] = self.cuts.pop(0) if self.cuts else None
                up_writer.write(data)
                await up_writer.drain()

        async def downward() -> None:
            seen = 0
            while data := await up_reader.read(65536):
                if limit[0] is not None:
                    start = 0
                    while (at := data.find(b"event: log", start)) >= 0:
                        if seen == limit[0]:
                            cut = at + 14  # inside this message: its id is half sent
                            writer.write(data[:cut])
                            await writer.drain()
                            self.done_cuts.append(data[max(0, cut - 300) : cut])
                            writer.transport.abort()
                            up_writer.transport.abort()
                            return
                        seen += 1
                        start = at + 1
                writer.write(data)
                await writer.drain()

        try:
            tasks = [asyncio.ensure_future(upward()), asyncio.ensure_future(downward())]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for w in (writer, up_writer):
                self.writers.discard(w)
                w.transport.abort()


# Exit codes --------------------------------------------------------------------------------


async def test_a_pass_exits_0_and_downloads_what_the_server_stored(
    start_app: StartApp,
    make_config: Callable[..., Config],
    sim_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    """A passing run: exit 0, every file under --out with the server's sha256, plain output."""
    api = await start_app(auth_config(make_config, sim_config))
    out_dir = tmp_path / "results"
    result = await client(
        "submit",
        str(layout(tmp_path)),
        "--top",
        "chip_top",
        "--id",
        "AB12CD34",
        "--out",
        str(out_dir),
        "--server",
        server_url(api),
        cwd=tmp_path,
        env=_env(PRECHECK_API_KEY=KEY),
    )
    assert result.rc == 0, result.err
    assert_plain(result)
    assert "step 16 of 16: KLayout.WriteLayout" in result.err
    assert "completed: passed" in result.err

    run_doc = json.loads((out_dir / "run.json").read_text())
    run_id = run_doc["Id"]
    api.client.session.headers["Authorization"] = f"Bearer {KEY}"  # the test's own requests
    doc = await api.get(run_id)
    assert doc["State"]["Status"] == "completed"
    assert doc["Config"]["Labels"]["die_id"] == "AB12CD34"
    output = out_dir / doc["Output"]["Filename"]
    assert sha256(output) == doc["Output"]["Checksums"]["sha256"]

    r = await api.client.get(f"/api/v1/prechecks/{run_id}/reports")
    reports = await r.json()
    assert reports, "the simulator writes reports"
    for report in reports:
        path = out_dir / "reports" / report["Path"]
        assert sha256(path) == report["Checksums"]["sha256"], report["Name"]
    r = await api.client.get(f"/api/v1/prechecks/{run_id}/render")
    assert r.status == 200
    assert (out_dir / "render.png").read_bytes() == await r.read()
    # Only the out folder was written, nothing beside it, and no partial file was left.
    assert names(tmp_path) == ["chip_top.gds", "data", "results"]
    assert not [p for p in out_dir.rglob("*.part")]
    # stdout is the log, each line once, in order.
    assert result.lines == await server_log(api, run_id)


@pytest.mark.parametrize(
    ("directive", "failed_step", "has_output"),
    [("fail=KLayout.CheckSize", "KLayout.CheckSize", False), ("deferred=3", None, True)],
)
async def test_a_design_failure_exits_1(
    start_app: StartApp, tmp_path: Path, directive: str, failed_step: str | None, has_output: bool
) -> None:
    """A layout that fails a check: exit 1, the verdict said, what exists downloaded."""
    api = await start_app()
    result = await client(
        "submit",
        str(layout(tmp_path, directive)),
        "--top",
        "chip_top",
        "--server",
        server_url(api),
        cwd=tmp_path,
    )
    assert result.rc == 1, result.err
    assert_plain(result)
    assert "failed: design failure" in result.err
    if failed_step:
        assert f"at {failed_step}" in result.err
    (folder,) = out_folders(tmp_path)  # the default out folder
    doc = json.loads((folder / "run.json").read_text())
    assert folder.name == f"precheck-{doc['Id']}"
    assert doc["Result"]["Classification"] == "design"
    assert (folder / "chip_top.gds").exists() == has_output
    assert (folder / "precheck.log").read_text().splitlines() == await server_log(api, doc["Id"])


async def test_a_system_failure_exits_3_and_json_is_json_lines(
    start_app: StartApp, tmp_path: Path
) -> None:
    """The precheck exits 3 before any step: exit 3; with --json every stdout line is JSON."""
    api = await start_app()
    result = await client(
        "submit",
        str(layout(tmp_path, "exit=3")),
        "--top",
        "chip_top",
        "--json",
        "--out",
        str(tmp_path / "o"),
        "--server",
        server_url(api),
        cwd=tmp_path,
    )
    assert result.rc == 3, result.err
    docs = [json.loads(line) for line in result.lines]
    assert [d["type"] for d in docs[:2]] == ["upload", "created"]
    assert docs[-2]["type"] == "end"
    last = docs[-1]
    assert last["type"] == "result"
    assert last["exit_code"] == 3
    assert last["run"]["State"]["Status"] == "failed"
    assert last["run"]["Result"]["Classification"] == "system"
    assert {f["Kind"] for f in last["files"]} >= {"log", "document"}


async def test_a_cancelled_run_exits_3(start_app: StartApp, tmp_path: Path) -> None:
    """`precheck cancel` on a run another `precheck submit` follows: cancel 0, submit 3."""
    api = await start_app()
    url = server_url(api)
    submit = asyncio.ensure_future(
        client(
            "submit",
            str(layout(tmp_path, "hang")),
            "--top",
            "chip_top",
            "--server",
            url,
            cwd=tmp_path,
        )
    )
    started = await api.wait_event("run.started", within=60)
    assert isinstance(started.event, RunStarted)
    run_id = started.event.run_id
    cancelled = await client("cancel", run_id, "--server", url, cwd=tmp_path)
    assert cancelled.rc == 0, cancelled.err
    assert cancelled.out.startswith(run_id)
    result = await submit
    assert result.rc == 3, result.err
    assert f"run {run_id} cancelled" in result.err
    assert (await api.get(run_id))["State"]["Status"] == "cancelled"


async def test_the_other_commands_on_one_run(start_app: StartApp, tmp_path: Path) -> None:
    """--no-follow prints the id; wait, status, logs, list and download each do their part."""
    api = await start_app()
    url = server_url(api)
    queued = await client(
        "submit",
        str(layout(tmp_path, "deferred=3")),
        "--top",
        "chip_top",
        "--slot",
        "0p5x1",
        "--cob",
        "--no-follow",
        "--server",
        url,
        cwd=tmp_path,
    )
    assert queued.rc == 0, queued.err
    (run_id,) = queued.lines
    waited = await client("wait", run_id, "--server", url, cwd=tmp_path)
    assert waited.rc == 1, waited.err
    assert "failed: design failure" in waited.err
    doc = await api.get(run_id)
    assert doc["Config"]["Labels"]["slot"] == "0p5x1"
    assert doc["Config"]["Labels"]["cob"] == "true"

    status = await client("status", run_id, "--json", "--server", url, cwd=tmp_path)
    assert status.rc == 0
    assert json.loads(status.out)["State"]["Status"] == "failed"

    lines = await server_log(api, run_id)
    tail = await client("logs", run_id, "--tail", "3", "--server", url, cwd=tmp_path)
    assert tail.lines == lines[-3:]
    whole = await client("logs", run_id, "--server", url, cwd=tmp_path)
    assert whole.lines == lines
    followed = await client("logs", run_id, "-f", "--server", url, cwd=tmp_path)
    assert followed.rc == 0
    assert followed.lines == lines

    failed = await client("list", "--status", "failed", "--json", "--server", url, cwd=tmp_path)
    assert [d["Id"] for d in json.loads(failed.out)] == [run_id]
    done = await client("list", "--status", "completed", "--json", "--server", url, cwd=tmp_path)
    assert json.loads(done.out) == []

    out_dir = tmp_path / "dl"
    fetched = await client("download", run_id, "--out", str(out_dir), "--server", url, cwd=tmp_path)
    assert fetched.rc == 1, fetched.err  # the run's verdict
    assert sha256(out_dir / "chip_top.gds") == doc["Output"]["Checksums"]["sha256"]
    again = await client("download", run_id, "--out", str(out_dir), "--server", url, cwd=tmp_path)
    assert again.rc == 1
    assert "already there and whole" in again.err


async def test_download_refuses_a_run_that_is_not_final(
    start_app: StartApp, tmp_path: Path
) -> None:
    """A running run has no final files: `download` says so and exits 4, writing nothing."""
    api = await start_app()
    run_id = await api.run(gds("chip_top", "hang"))
    await api.wait_running(run_id)
    result = await client(
        "download", run_id, "--out", str(tmp_path / "o"), "--server", server_url(api), cwd=tmp_path
    )
    assert result.rc == 4
    assert "is running" in result.err
    assert not (tmp_path / "o").exists()


# Connections -------------------------------------------------------------------------------


async def test_a_dropped_stream_resumes_with_every_line_once(
    start_app: StartApp, tmp_path: Path
) -> None:
    """A proxy cuts the stream twice in the middle of a log message: no line lost or repeated."""
    api = await start_app()
    proxy = CuttingProxy(api.client.port or 0, cuts=[40, 150])
    port = await proxy.start()
    try:
        result = await client(
            "submit",
            str(layout(tmp_path, "lines=500", "step_sleep=0.05")),
            "--top",
            "chip_top",
            "--server",
            f"http://127.0.0.1:{port}",
            cwd=tmp_path,
        )
    finally:
        await proxy.shutdown()
    assert result.rc == 0, result.err
    assert len(proxy.done_cuts) == 2
    assert all(b"event: log" in tail for tail in proxy.done_cuts)
    assert len(proxy.streams) == 3
    # The first stream starts at the beginning; each resumed one where the last one stopped.
    assert b"last-event-id" not in proxy.streams[0].lower()
    assert all(b"last-event-id: " in head.lower() for head in proxy.streams[1:])
    assert result.err.count("trying again") >= 2
    assert_plain(result)
    (folder,) = out_folders(tmp_path)
    run_id = json.loads((folder / "run.json").read_text())["Id"]
    lines = await server_log(api, run_id)
    assert len(lines) > 500
    assert result.lines == lines


async def test_a_server_gone_for_good_gives_up_with_4(start_app: StartApp, tmp_path: Path) -> None:
    """The server goes away mid-run: the client retries, then gives up after --give-up-after."""
    api = await start_app()
    proxy = CuttingProxy(api.client.port or 0)
    port = await proxy.start()
    submit = asyncio.ensure_future(
        client(
            "submit",
            str(layout(tmp_path, "hang")),
            "--top",
            "chip_top",
            "--server",
            f"http://127.0.0.1:{port}",
            "--give-up-after",
            "2",
            cwd=tmp_path,
        )
    )
    await api.wait_event("run.started", within=60)
    await asyncio.sleep(0.5)  # the client follows the stream
    await proxy.shutdown()
    began = time.monotonic()
    result = await submit
    assert result.rc == 4, result.err
    assert time.monotonic() - began < 30
    assert "trying again" in result.err
    assert "precheck: gave up after" in result.err
    assert not out_folders(tmp_path)  # nothing downloaded from an unfinished run


async def test_no_server_exits_4(tmp_path: Path) -> None:
    """Nothing listens at the URL: exit 4 and one clear line on stderr."""
    url = f"http://127.0.0.1:{free_port()}"
    result = await client("status", "abc", "--server", url, cwd=tmp_path)
    assert result.rc == 4
    assert result.err.startswith(f"precheck: cannot reach {url}")
    assert result.out == ""
    from_env = await client("list", cwd=tmp_path, env=_env(PRECHECK_URL=url))
    assert from_env.rc == 4
    assert url in from_env.err


async def test_a_missing_or_wrong_key_exits_4_before_any_upload(
    start_app: StartApp,
    make_config: Callable[..., Config],
    sim_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    """With keys required, no key or a wrong one: exit 4, the server's message, no upload."""
    api = await start_app(auth_config(make_config, sim_config))
    url = server_url(api)
    none = await client("list", "--server", url, cwd=tmp_path)
    assert none.rc == 4
    assert "precheck: Unauthorized: API key required" in none.err
    wrong = await client(
        "submit",
        str(layout(tmp_path)),
        "--top",
        "chip_top",
        "--server",
        url,
        "--key",
        "ws_key_wrong",
        cwd=tmp_path,
    )
    assert wrong.rc == 4
    assert "precheck: Unauthorized: Invalid API key" in wrong.err
    assert "PRECHECK_API_KEY" in wrong.err
    assert await api.events("upload.received") == []
    right = await client("list", "--server", url, "--key", KEY, "--json", cwd=tmp_path)
    assert right.rc == 0, right.err
    assert json.loads(right.out) == []


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "chip_top.gds"],  # no --top
        ["submit", "missing.gds", "--top", "chip_top"],
        ["submit", "chip_top.gds", "--top", "chip_top", "--id", "TOOLONG123"],
        ["submit", "chip_top.gds", "--top", "chip_top", "--slot", "2x2"],
        ["list", "--status", "sleeping"],
        ["frobnicate"],
        [],
    ],
)
async def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    """A command line that cannot be carried out: exit 2, no request made."""
    layout(tmp_path)
    result = await client(*args, "--server", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert result.rc == 2, result.err
    assert "cannot reach" not in result.err
    assert result.out == ""


# Terminals -----------------------------------------------------------------------------------


async def test_a_terminal_gets_bars_and_colour_a_pipe_does_not(
    start_app: StartApp, tmp_path: Path
) -> None:
    """On a terminal the client draws (carriage returns, colour); the same run piped is plain."""
    api = await start_app()
    args = [
        "-m",
        "precheck.client",
        "submit",
        str(layout(tmp_path)),
        "--top",
        "chip_top",
        "--server",
        server_url(api),
    ]
    master, slave = os.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        cwd=tmp_path,
        env=_env(TERM="xterm"),
    )
    os.close(slave)

    def drain() -> bytes:
        chunks = []
        with contextlib.suppress(OSError):  # EIO once the child closed its side
            while chunk := os.read(master, 65536):
                chunks.append(chunk)
        return b"".join(chunks)

    try:
        async with asyncio.timeout(120):
            screen, rc = await asyncio.gather(asyncio.to_thread(drain), proc.wait())
    finally:
        os.close(master)
    assert rc == 0, screen.decode(errors="replace")
    assert b"\r" in screen.replace(b"\r\n", b"")  # a progress bar redrawn in place
    assert b"\x1b[" in screen  # colour
    (tmp_path / "piped").mkdir()
    piped = await client(*args[2:], cwd=tmp_path / "piped")
    assert piped.rc == 0
    assert_plain(piped)


async def test_submit_asks_for_notifications(
    start_app: StartApp,
    make_config: Callable[..., Config],
    sim_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    """`--notify-webhook` and `--notify-email` become the run's `notify`, in that order; a
    target the server does not allow fails the submit with the server's message."""
    smtp = {"host": "127.0.0.1"}
    notify = {"allowed_hosts": ["127.0.0.1"], "webhook_secret": "s", "smtp": smtp}
    api = await start_app(sim_with(make_config, sim_config, notify=notify))
    args = ["submit", str(layout(tmp_path)), "--top", "chip_top", "--server", server_url(api)]
    hook = "http://127.0.0.1:9/hook"
    extra = ["--notify-webhook", hook, "--notify-email", "dev@example.org", "--no-follow"]
    result = await client(*args, *extra, cwd=tmp_path)
    assert result.rc == 0, result.err
    run_id = result.out.strip()
    doc = await api.get(run_id)
    assert doc["Notify"] == [
        {"Kind": "webhook", "Target": hook},
        {"Kind": "email", "Target": "dev@example.org"},
    ]
    refused = await client(
        *args, "--notify-webhook", "https://elsewhere.example.org/h", "--no-follow", cwd=tmp_path
    )
    assert refused.rc != 0
    assert "not in notify.allowed_hosts" in refused.err


async def test_submit_is_answered_from_the_cache_unless_told_not_to(
    start_app: StartApp,
    make_config: Callable[..., Config],
    sim_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    """`--output-format oas` asks for OASIS, downloaded as such; the same submit again is
    answered from that run (exit 0, the same files, no log); `--no-cache` runs it."""
    api = await start_app(sim_with(make_config, sim_config, cache={"enabled": True}))
    args = ["submit", str(layout(tmp_path)), "--top", "chip_top", "--server", server_url(api)]
    first = await client(*args, "--output-format", "oas", "--out", "one", cwd=tmp_path)
    assert first.rc == 0, first.err
    one = json.loads((tmp_path / "one" / "run.json").read_text())
    assert one["Output"]["Filename"] == "chip_top.oas"
    assert (tmp_path / "one" / "chip_top.oas").read_bytes().startswith(b"%SEMI-OASIS\r\n")

    again = await client(*args, "--output-format", "oas", "--out", "two", cwd=tmp_path)
    assert again.rc == 0, again.err
    two = json.loads((tmp_path / "two" / "run.json").read_text())
    assert f"answered from run {one['Id']}" in again.err
    assert two["Result"]["ReusedFrom"] == one["Id"] and again.lines == []
    assert sha256(tmp_path / "two" / "chip_top.oas") == sha256(tmp_path / "one" / "chip_top.oas")

    fresh = await client(*args, "--output-format", "oas", "--no-cache", "--no-follow", cwd=tmp_path)
    assert fresh.rc == 0, fresh.err
    doc = await api.get(fresh.out.strip())
    assert doc["State"]["Status"] in ("queued", "running") and doc["Result"] is None
