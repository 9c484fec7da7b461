"""The config that points a server at the simulator image, for the tests and the benches.

The simulator's layouts are no slot-sized dies: pre-flight would refuse their runs, so a server
on the simulator runs with pre-flight off.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

PREFLIGHT_OFF: Mapping[str, object] = {"enabled": False}
# Tests and benches run one layout many times and look at each run's container: the result
# cache is off unless they turn it on.
CACHE_OFF: Mapping[str, object] = {"enabled": False}


def simulator_docker(image: str, /, **settings: object) -> dict[str, Any]:
    """The `[docker]` table that runs `image` (the simulator), never pulled, with 256 MB a
    container; `settings` add to it or change it (`max_attempts=1`, `memory_limit="1g"`)."""
    return {"image": image, "pull": "never", "memory_limit": "256m", **settings}


def simulator_tables(
    storage: Path,
    image: str,
    *,
    server: Mapping[str, object] | None = None,
    docker: Mapping[str, object] | None = None,
    cache: bool = False,
) -> dict[str, dict[str, Any]]:
    """The tables of a server config on `storage` running `image`, pre-flight off (and the
    result cache, unless `cache`); `server` and `docker` settings add to their tables."""
    return {
        "server": {"storage_path": str(storage), **(server or {})},
        "docker": simulator_docker(image, **(docker or {})),
        "preflight": dict(PREFLIGHT_OFF),
        "cache": {"enabled": True} if cache else dict(CACHE_OFF),
    }


def write_simulator_config(
    path: Path,
    storage: Path,
    image: str,
    *,
    server: Mapping[str, object] | None = None,
    docker: Mapping[str, object] | None = None,
) -> Path:
    """Write the config file of a server on 127.0.0.1 (see `simulator_tables`) at `path`."""
    tables = simulator_tables(
        storage, image, server={"host": "127.0.0.1", **(server or {})}, docker=docker
    )
    path.write_text(toml_text(tables), encoding="utf-8")
    return path


def toml_text(tables: Mapping[str, Mapping[str, object]]) -> str:
    """`tables` as a TOML file: a `[name]` table each; a list of tables in one, such as the
    `engines` of `[docker]`, as `[[docker.engines]]` tables after it."""
    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        nested = {k: v for k, v in table.items() if _is_tables(v)}
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if k not in nested]
        for key, entries in nested.items():
            for entry in entries:
                lines.append(f"[[{name}.{key}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


def _is_tables(value: object) -> TypeGuard[Sequence[Mapping[str, object]]]:
    return isinstance(value, list | tuple) and bool(value) and isinstance(value[0], Mapping)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)
