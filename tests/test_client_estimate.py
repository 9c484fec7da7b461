"""The client says a run's estimate in the page's words: `precheck status` and a followed run.

A real client process against a real server on loopback (no supervisor: the test records the
runs' events as it would), in the zone UTC so the clock times it prints are known.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.client.estimate import estimate_words
from precheck.clock import utcnow
from precheck.config import Config
from precheck.events.types import RunProgressed
from tests.factories import run_started
from tests.test_client import _env, client
from tests.test_estimate_api import STEPS, a_minute_a_step, queue, record

MIN = timedelta(minutes=1)
NOW = datetime.fromisoformat("2026-03-04T12:00:00+00:00")


def test_the_words_of_an_estimate() -> None:
    """Queued: when it starts (in minutes, or hours past an hour) and ends; running: its end."""

    def doc(status: str, start: timedelta, end: timedelta) -> dict[str, Any]:
        times = {"StartAt": (NOW + start).isoformat(), "EndAt": (NOW + end).isoformat()}
        return {"State": {"Status": status}, "Estimate": times}

    def words(status: str, start: timedelta, end: timedelta) -> str:
        return str(estimate_words(doc(status, start, end), NOW))

    local = (NOW + 70 * MIN).astimezone().strftime("%H:%M")  # in this machine's zone
    assert words("queued", 40 * MIN, 70 * MIN) == f"starts in about 40 min, ends about {local}"
    assert words("queued", 130 * MIN, 140 * MIN).startswith("starts in about 2 h 10 min, ")
    assert words("queued", 120 * MIN, 140 * MIN).startswith("starts in about 2 h, ")
    assert words("queued", -MIN, MIN).startswith("starts about now, ")
    assert words("running", -MIN, 70 * MIN) == f"ends about {local}"
    assert estimate_words(doc("running", -MIN, MIN), NOW) is not None
    assert estimate_words(doc("finishing", -MIN, MIN), NOW) is None
    assert estimate_words({"State": {"Status": "queued"}, "Estimate": None}, NOW) is None


async def test_status_and_a_followed_run_say_the_estimate(
    aiohttp_client: AiohttpClient, config: Config, tmp_path: Path
) -> None:
    """One slot, one past run of 17 one-minute phases, a run that just started ahead: the
    queued run starts in about 17 min; once the run ahead is at step 10, in about 7 min."""
    app = await aiohttp_client(create_app(config, run_containers=False))
    url = str(app.make_url("/")).rstrip("/")
    now = utcnow()
    first = await queue(app)
    await record(app, *a_minute_a_step(first, now - 60 * MIN))
    ahead, waiting = await queue(app), await queue(app)
    await record(app, run_started(ahead, at=now))
    env = _env(TZ="UTC")

    async def ends(run_id: str) -> str:
        doc = await (await app.get(f"/api/v1/prechecks/{run_id}")).json()
        return datetime.fromisoformat(doc["Estimate"]["EndAt"]).strftime("%H:%M")

    shown = await client("status", waiting, "--server", url, cwd=tmp_path, env=env)
    assert shown.rc == 0, shown.err
    words = f"starts in about 17 min, ends about {await ends(waiting)}"
    assert f"estimate {words}" in shown.lines

    # `precheck wait` follows it: each line is read as it comes, so the run ahead moves on
    # only once the first estimate was said.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "precheck.client",
        "wait",
        waiting,
        "--server",
        url,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env=env,
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(60):
            said = [(await proc.stderr.readline()).decode().rstrip("\n") for _ in range(2)]
            assert said == ["queued: position 1 of 1", words]
            await record(app, RunProgressed(ahead, 10, 16, STEPS[9], utcnow()))
            later = f"starts in about 7 min, ends about {await ends(waiting)}"
            assert (await proc.stderr.readline()).decode().rstrip("\n") == later
            assert (await app.delete(f"/api/v1/prechecks/{waiting}")).status == 200
            assert await proc.wait() == 3  # cancelled
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
