"""Shared fixtures: configs on a fresh storage folder, real apps on real sockets, a browser."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from precheck.config import Config, parse_config


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """Build a `Config` on `tmp_path/data`; keyword tables override the TOML defaults.

    Layouts are not read for pre-flight unless a test passes a `preflight` table: the readings'
    events would come at times of their own into logs other tests count event by event. Nor
    are runs answered from the result cache unless a test passes a `cache` table: many tests
    run one layout twice and look at the second run's container.
    """

    def make(**tables: dict[str, Any]) -> Config:
        raw: dict[str, Any] = {
            "server": {"storage_path": str(tmp_path / "data")},
            "preflight": {"enabled": False},
            "cache": {"enabled": False},
        }
        for table, values in tables.items():
            raw[table] = ({} if table == "preflight" else raw.get(table, {})) | values
        return parse_config(raw, "test-config")

    return make


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    """The default config on a fresh storage folder."""
    return make_config()


pytest_plugins = ["tests.docker_fixtures", "tests.browser"]
