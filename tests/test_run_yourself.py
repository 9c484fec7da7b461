"""The image in every answer and "Run it yourself": which image each attempt ran, and the
`docker run` line built from the create body. Pure: no Docker."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime
from typing import Any

import attrs

from precheck.config import Config, DockerConfig, EngineConfig
from precheck.domain.notify import payload, summary_lines
from precheck.domain.status import RunStatus
from precheck.events.types import RunRetried
from precheck.projections.runs import RunRecord
from precheck.runner.container_spec import container_spec, precheck_argv
from precheck.runner.image_ref import ImageRef, repo_digest, repository
from precheck.runner.run_yourself import layout_name, run_argv, run_command, size
from precheck.web.render import run_document
from tests.factories import T0, given, run_queued, run_started, running_record, upload_received

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ID = "sha256:" + "1d" * 32
DIGEST = "ghcr.io/wafer-space/gf180mcu-precheck@sha256:" + "d1" * 32


def _run(**changes: Any) -> RunRecord:
    return running_record(NOW, **{"image_id": ID, "image_digest": DIGEST, **changes})


def _words(command: str) -> list[str]:
    """The command as the shell splits it, `$PWD` standing for the folder it is run in."""
    return shlex.split(command.replace('"$PWD"', "/here"))


def _option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def test_the_repo_digest_is_the_configured_names() -> None:
    """An image pulled under several names has a digest each: the configured name's is it."""
    other = "mirror.example/precheck@sha256:" + "00" * 32
    assert repo_digest("ghcr.io/wafer-space/gf180mcu-precheck:latest", [other, DIGEST]) == DIGEST
    assert repo_digest("elsewhere:1", [other, DIGEST]) == other
    assert repo_digest("sim:latest", []) == ""
    assert repository("localhost:5000/a/b:2") == "localhost:5000/a/b"
    assert repository("localhost:5000/a/b") == "localhost:5000/a/b"
    assert ImageRef(ID, DIGEST).pinned == DIGEST and ImageRef(ID).pinned == ID


def test_the_command_holds_the_create_bodys_argv_and_limits() -> None:
    """The same argv after the pinned image; the create body's network, memory without swap,
    pids, CPUs, open files, capabilities and environment as options; no labels."""
    run = _run()
    docker = DockerConfig(image="sim:1", memory_limit="2g", pids_limit=64, cpus=1.5)
    spec = container_spec(run, docker, "i" * 32)
    words = _words(run_command(run, docker, None, ImageRef(ID, DIGEST)))
    assert words[:3] == ["docker", "run", "--rm"]
    image_at = words.index(DIGEST)
    assert words[image_at + 1 :] == spec["Cmd"] == precheck_argv(run)
    host = spec["HostConfig"]
    assert _option(words, "--network") == host["NetworkMode"] == "none"
    assert _option(words, "--memory") == _option(words, "--memory-swap") == "2g"
    assert host["Memory"] == host["MemorySwap"] == 2 << 30
    assert _option(words, "--pids-limit") == str(host["PidsLimit"]) == "64"
    assert _option(words, "--cpus") == "1.5" and host["NanoCpus"] == 1_500_000_000
    assert "--ulimit=nofile=16384:16384" in words
    assert "--cap-drop=ALL" in words and "--security-opt=no-new-privileges" in words
    assert _option(words, "-e") == "COLUMNS=200" and spec["Env"] == ["COLUMNS=200"]
    assert "--label" not in words and "-l" not in words and "--name" not in words
    assert [w for i, w in enumerate(words) if words[i - 1] == "-v"] == [
        "/here/chip.gds:/input/input.gds:ro",  # where `--input` names it, read-only
        "/here/output:/output",
    ]
    assert spec["Cmd"][spec["Cmd"].index("--input") + 1] == "/input/input.gds"


def test_an_engines_own_limits_are_the_commands() -> None:
    """The engine the attempt ran on sets memory and CPUs, as for its container."""
    docker = DockerConfig(image="sim:1", memory_limit="2g")
    engine = EngineConfig("big", memory_limit="8g", cpus=6)
    argv = run_argv(_run(engine="big"), docker, engine)
    assert _option(argv, "--memory") == "8g" and _option(argv, "--cpus") == "6"
    assert "--cpus" not in run_argv(_run(), docker, None)  # no CPU limit unless configured
    assert (size(512 << 20), size(1536 << 10), size(1000)) == ("512m", "1536k", "1000b")


def test_a_local_build_is_pinned_by_id_and_odd_names_are_quoted() -> None:
    """No repo digest: the id pins it. A name the shell or Docker's syntax would split is
    quoted, or (a colon) mounted under the stored name."""
    docker = DockerConfig(image="sim:1")
    spaced = _run(input=attrs.evolve(_run().input, name="my chip's $top.gds"))
    words = _words(run_command(spaced, docker, None, ImageRef(ID)))
    assert ID in words and DIGEST not in words
    assert "/here/my chip's $top.gds:/input/input.gds:ro" in words
    colon = _run(input=attrs.evolve(_run().input, name="a:b.gds"))
    assert layout_name(colon) == "input.gds"
    assert "/here/input.gds:/input/input.gds:ro" in _words(
        run_command(colon, docker, None, ImageRef(ID))
    )


def test_each_attempt_keeps_the_image_it_ran(config: Config) -> None:
    """An attempt retried shows its own image; the one under way shows its; a row from before
    `image_id` holding an id decodes as the id with no digest."""
    retried = RunRetried("r1", 2, "local", "Docker: gone", -1, T0, T0, 7, T0)
    state = given(
        upload_received(),
        run_queued(),
        run_started(image_digest="sha256:" + "0a" * 32),  # an older row: the id, no digest
        retried,
        run_started(image_id=ID, image_digest=DIGEST),
    )
    run = state.runs.by_id["r1"]
    doc = run_document(run, state, config)
    assert [(a["Image"], a["ImageDigest"]) for a in doc["Attempts"]] == [
        ("sha256:" + "0a" * 32, None),
        (ID, DIGEST),
    ]
    assert (doc["Image"], doc["ImageDigest"]) == (ID, DIGEST)
    pinned = doc["RunItYourself"]
    assert pinned["Image"] == DIGEST and pinned["Layout"] == "chip.gds"
    assert pinned["Command"] == run_command(
        run, config.docker, config.engines[0], ImageRef(ID, DIGEST)
    )
    queued = given(upload_received(), run_queued()).runs.by_id["r1"]
    doc = run_document(queued, state, config)
    assert (doc["Image"], doc["ImageDigest"], doc["RunItYourself"]) == (None, None, None)


def test_the_end_notice_names_the_image() -> None:
    """The webhook's body has the id and the digest; the email's text the digest."""
    body = payload(_run(status=RunStatus.COMPLETED, finished_at=NOW), "https://p.example")
    assert (body["data"]["image_id"], body["data"]["image_digest"]) == (ID, DIGEST)
    assert f"Image: {DIGEST}" in summary_lines(body)
    local = payload(_run(image_digest=""), "https://p.example")
    assert f"Image: {ID}" in summary_lines(local)
