"""Fetching a final run's files into a folder, each checked against the sha256 the server gave.

The folder gets the output layout under its own name, `reports/<path>` for every report (in
its step's folder), the render as `render.png` when there is one, the whole log as
`precheck.log` and the final run document as `run.json`. A file already there with the right
checksum is not fetched again; a file is written beside its place and renamed only once its
checksum matched.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from precheck.client.api import CHUNK, Api, ApiError, run_path, with_retries
from precheck.client.output import Output, size


class ChecksumMismatch(ApiError):
    """What arrived is not what the server stored: never retried, never kept."""

    @property
    def retryable(self) -> bool:
        return False


@dataclass(frozen=True)
class Saved:
    """One file written (or found already whole) in the folder."""

    kind: str  # output, report, render, log, document
    path: Path
    size: int
    sha256: str

    def document(self) -> dict[str, Any]:
        """As `--json` shows it."""
        return {"Kind": self.kind, "Path": str(self.path), "Size": self.size, "sha256": self.sha256}


def _inside(folder: Path, name: str) -> Path:
    """`folder/name`, refusing a name that would leave the folder."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts or name.startswith("/") or any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise ApiError(f"the server named a file {name!r}, which is not a plain relative path")
    return folder.joinpath(*parts)


def _sha256_of(path: Path) -> tuple[str, int] | None:
    """The file's sha256 and size, None when there is no such file."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest(), path.stat().st_size


class Downloader:
    """Fetches one run's files into `folder`."""

    def __init__(self, api: Api, out: Output, folder: Path, *, give_up_after: float) -> None:
        self.api, self.out, self.folder = api, out, folder
        self.give_up_after = give_up_after

    def _retrying(self, e: ApiError, delay: float) -> None:
        self.out.note(f"precheck: {e.message}; trying again in {delay:.1f} s", "yellow")

    async def fetch(
        self,
        kind: str,
        path: str,
        dest: Path,
        sha256: str | None,
        *,
        params: dict[str, str] | None = None,
        optional: bool = False,
    ) -> Saved | None:
        """GET `path` into `dest`, checked against `sha256` (else the ETag, when it is one)."""
        if sha256:
            found = await asyncio.to_thread(_sha256_of, dest)
            if found is not None and found[0] == sha256:
                self.out.note(f"{dest} is already there and whole")
                return Saved(kind, dest, found[1], sha256)

        async def attempt() -> Saved | None:
            return await self._fetch_once(kind, path, dest, sha256, params, optional)

        return await with_retries(
            attempt, give_up_after=self.give_up_after, on_retry=self._retrying
        )

    async def _fetch_once(
        self,
        kind: str,
        path: str,
        dest: Path,
        sha256: str | None,
        params: dict[str, str] | None,
        optional: bool,
    ) -> Saved | None:
        ok = (200, 404) if optional else (200,)
        async with self.api.request("GET", path, params=params, ok=ok) as response:
            if response.status == 404:
                return None
            expected = sha256 or _etag_sha256(response.headers.get("ETag"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(f".{dest.name}.part")
            digest = hashlib.sha256()
            written = 0
            bar = self.out.progress(response.content_length, dest.name)
            f = await asyncio.to_thread(part.open, "wb")
            try:
                async for chunk in response.content.iter_chunked(CHUNK):
                    digest.update(chunk)
                    await asyncio.to_thread(f.write, chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
            finally:
                f.close()
                bar.close()
            got = digest.hexdigest()
            if expected is not None and got != expected:
                part.unlink(missing_ok=True)
                raise ChecksumMismatch(
                    f"{dest.name}: sha256 {got} does not match the server's {expected}"
                )
            part.replace(dest)
        check = "sha256 checked" if expected else "no checksum to check"
        self.out.note(f"saved {dest} ({size(written)}, {check})")
        return Saved(kind, dest, written, got)

    async def all(self, doc: dict[str, Any]) -> list[Saved]:
        """Every file of the final run `doc`, then `run.json`."""
        run_id = str(doc["Id"])
        self.folder.mkdir(parents=True, exist_ok=True)
        saved: list[Saved | None] = []
        output = doc.get("Output") or {}
        if output.get("Available"):
            name = PurePosixPath(str(output.get("Filename") or "output.gds")).name
            sha = (output.get("Checksums") or {}).get("sha256")
            saved.append(
                await self.fetch(
                    "output", run_path(run_id, "output"), _inside(self.folder, name), sha
                )
            )
        reports = await with_retries(
            lambda: self.api.reports(run_id),
            give_up_after=self.give_up_after,
            on_retry=self._retrying,
        )
        for report in reports:
            # `Path` is unique within the run (`14-klayout-drc/drc.klayout.lyrdb`); a server
            # from before reports per step gives only `Name`.
            name = str(report.get("Path") or report["Name"])
            saved.append(
                await self.fetch(
                    "report",
                    run_path(run_id, "reports", *name.split("/")),
                    _inside(self.folder / "reports", name),
                    (report.get("Checksums") or {}).get("sha256"),
                )
            )
        saved.append(
            await self.fetch(
                "render",
                run_path(run_id, "render"),
                self.folder / "render.png",
                None,
                optional=True,
            )
        )
        saved.append(
            await self.fetch(
                "log",
                run_path(run_id, "logs"),
                self.folder / "precheck.log",
                None,
                params={"format": "text"},
            )
        )
        document = self.folder / "run.json"
        body = (json.dumps(doc, indent=2) + "\n").encode("utf-8")
        await asyncio.to_thread(document.write_bytes, body)
        saved.append(Saved("document", document, len(body), hashlib.sha256(body).hexdigest()))
        return [s for s in saved if s is not None]


def _etag_sha256(etag: str | None) -> str | None:
    """The sha256 an ETag carries (the server's downloads use it), if it is one."""
    if not etag:
        return None
    value = etag.strip().removeprefix("W/").strip('"').lower()
    return value if len(value) == 64 and all(c in "0123456789abcdef" for c in value) else None
