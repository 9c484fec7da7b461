""" "Run it yourself": the `docker run` command line that runs a run's container as we ran it,
built from the same create body (`container_spec`), the image pinned. Pure."""

from __future__ import annotations

import shlex
from typing import Any

from precheck.config import DockerConfig, EngineConfig
from precheck.projections.runs import RunRecord
from precheck.runner.container_spec import OUTPUT_DIR, container_spec, input_path
from precheck.runner.image_ref import ImageRef

OUTPUT_FOLDER = "output"  # beside the layout, in the folder the command is run in


def run_argv(run: RunRecord, docker: DockerConfig, engine: EngineConfig | None) -> list[str]:
    """The options of `docker run` for the run's container (no image, no command): the create
    body's limits, its environment, and the layout and an output folder mounted from the
    current folder. Our labels are left out: they would make it one of this server's."""
    spec = container_spec(run, docker, "", engine)
    host: dict[str, Any] = spec["HostConfig"]
    argv = ["--rm", "--network", host["NetworkMode"]]
    argv += ["--memory", size(host["Memory"]), "--memory-swap", size(host["MemorySwap"])]
    argv += ["--pids-limit", str(host["PidsLimit"])]
    if "NanoCpus" in host:
        argv += ["--cpus", f"{host['NanoCpus'] / 1e9:g}"]
    argv += [f"--ulimit={u['Name']}={u['Soft']}:{u['Hard']}" for u in host["Ulimits"]]
    argv += [f"--cap-drop={c}" for c in host["CapDrop"]]
    argv += [f"--security-opt={o}" for o in host["SecurityOpt"]]
    for env in spec["Env"]:
        argv += ["-e", env]
    return argv


def size(n: int) -> str:
    """Bytes as Docker reads a size, in the largest unit that is exact: `24g`, `512m`."""
    for unit, shift in (("g", 30), ("m", 20), ("k", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n}b"


def layout_name(run: RunRecord) -> str:
    """The file the command mounts: the layout under its uploaded name, unless that name
    cannot be mounted (a colon splits Docker's volume syntax), then under the stored name."""
    name = run.input.name
    return run.input.filename if ":" in name or name in (".", "..") else name


def run_command(
    run: RunRecord, docker: DockerConfig, engine: EngineConfig | None, image: ImageRef
) -> str:
    """The shell command line: `docker run`, the options, the image pinned (digest, else id)
    and the same argv. It is run in the folder that holds the layout as `layout_name`; the
    outputs land in `./output`."""
    words = [shlex.quote(w) for w in ["docker", "run", *run_argv(run, docker, engine)]]
    # `$PWD` stays unquoted for the shell to expand: Docker wants absolute paths to mount.
    layout = shlex.quote(f"{layout_name(run)}:{input_path(run)}:ro")
    words += ["-v", f'"$PWD"/{layout}', "-v", f'"$PWD"/{OUTPUT_FOLDER}:{OUTPUT_DIR}']
    words.append(shlex.quote(image.pinned))
    spec = container_spec(run, docker, "", engine)
    words += [shlex.quote(w) for w in spec["Cmd"]]
    return " ".join(words)
