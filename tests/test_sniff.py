"""Layout sniffing by first bytes, alone and while an upload is received; hostile inputs."""

from __future__ import annotations

import gzip
import hashlib
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from precheck.errors import NotALayout, TooLarge
from precheck.storage.files import Storage, sniff
from tests.layouts import gds, gds_gz, oasis

MIB = 1 << 20
NOT_A_LAYOUT = "the file is not a layout: expected GDSII, gzip-compressed GDSII or OASIS"


def gzip_named(data: bytes, name: str) -> bytes:
    """`data` gzip-compressed with the original file name in the gzip header."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buf, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (gds(), "gds"),
        (gds()[:4], "gds"),
        (gds("x" * 100, *["d"] * 50), "gds"),
        (gds_gz(), "gds.gz"),
        (gzip.compress(gds(), compresslevel=0), "gds.gz"),
        (gzip.compress(gds("x" * 100, *["d"] * 50), compresslevel=9), "gds.gz"),
        (gzip_named(gds(), "n" * 255 + ".gds"), "gds.gz"),
        (oasis(), "oas"),
        (b"%SEMI-OASIS\r\n", "oas"),
    ],
)
def test_layouts_are_known_by_their_first_bytes(data: bytes, fmt: str) -> None:
    """GDSII, gzip-compressed GDSII and OASIS are told apart by their first bytes."""
    assert sniff(data) == fmt
    assert sniff(data[:512]) == fmt


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00", id="one-byte"),
        pytest.param(b"\x1f", id="one-byte-gzip"),
        pytest.param(b"\x00\x06\x00", id="gds-magic-cut"),
        pytest.param(b"\x00\x06\x00\x03" + gds()[4:], id="gds-wrong-data-type"),
        pytest.param(b" " + gds(), id="gds-after-a-blank"),
        pytest.param(b"%SEMI-OASIS\n" + oasis()[13:], id="oasis-without-cr"),
        pytest.param(b"%SEMI-OASI", id="oasis-magic-cut"),
        pytest.param(b"\x1f\x8b", id="gzip-magic-only"),
        pytest.param(b"\x1f\x8b" + b"\xff" * 100, id="gzip-magic-then-garbage"),
        pytest.param(gds_gz()[:10], id="gzip-header-only"),
        pytest.param(gzip.compress(b"HEADER 600\nBGNLIB\n" * 50), id="gzip-of-text"),
        pytest.param(gzip.compress(oasis()), id="gzip-of-oasis"),
        pytest.param(gzip.compress(gds_gz()), id="gzip-of-gzip-of-gds"),
        pytest.param(gzip.compress(b""), id="gzip-of-nothing"),
        pytest.param(b"HEADER 600;\nBGNLIB;\nLIBNAME LIB;\n", id="text-gds-dump"),
        pytest.param(b"\xef\xbb\xbf%SEMI-OASIS\r\n", id="oasis-after-bom"),
        pytest.param(b"PK\x03\x04" + gds(), id="zip"),
    ],
)
def test_other_bytes_are_not_layouts(data: bytes) -> None:
    """Empty, cut, garbage, text and wrongly compressed files are not layouts."""
    assert sniff(data) is None


def test_gzip_bomb_head_is_sniffed_without_inflating_it() -> None:
    """The head of a gzip stream that inflates hugely is sniffed from a few inflated bytes."""
    bomb = gzip.compress(bytes(64 * MIB), compresslevel=9)
    assert len(bomb) < MIB
    assert sniff(bomb[:512]) is None
    assert sniff(bomb) is None


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    """A prepared storage folder."""
    s = Storage(tmp_path / "data")
    s.prepare()
    return s


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (gds("top", *["x"] * 40), "gds"),
        (gds_gz("top", *["x"] * 400), "gds.gz"),
        (oasis("top"), "oas"),
    ],
)
@pytest.mark.parametrize("chunk", [1, 3, 511, 512, 513, MIB])
async def test_receive_sniffs_whatever_the_chunking(
    storage: Storage, data: bytes, fmt: str, chunk: int
) -> None:
    """A layout arriving in chunks of any size is stored whole, with its hash and format."""
    received = await storage.receive(chunks_of(data, chunk), max_bytes=MIB)
    assert received.format == fmt
    assert received.size == len(data)
    assert received.sha256 == hashlib.sha256(data).hexdigest()
    assert received.path.parent == storage.tmp
    assert received.path.read_bytes() == data


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00", id="one-byte"),
        pytest.param(b"\x1f\x8b", id="gzip-magic-only"),
        pytest.param(gzip.compress(b"not a layout\n" * 100), id="gzip-of-text"),
        pytest.param(b"HEADER 600;\n" * 100, id="text-named-gds"),
    ],
)
async def test_receive_refuses_what_is_not_a_layout(storage: Storage, data: bytes) -> None:
    """A non-layout is refused with `NotALayout` and nothing is left in `tmp/`."""
    with pytest.raises(NotALayout) as e:
        await storage.receive(chunks_of(data, 7), max_bytes=MIB)
    assert str(e.value) == NOT_A_LAYOUT
    assert list(storage.tmp.iterdir()) == []


async def test_a_big_non_layout_is_refused_after_its_head(storage: Storage) -> None:
    """A large non-layout is refused once its first bytes are seen, not read to its end."""
    sent = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(100):
            sent += 1
            yield b"<html>" + b" " * (64 * 1024)

    with pytest.raises(NotALayout):
        await storage.receive(stream(), max_bytes=1 << 30)
    assert sent == 1
    assert list(storage.tmp.iterdir()) == []


async def test_too_large_is_refused_and_leaves_nothing(storage: Storage) -> None:
    """A layout over the limit is refused with `TooLarge`; its partial file is removed."""
    data = gds("top", *["x"] * 2000)
    assert len(data) > 64 * 1024
    with pytest.raises(TooLarge):
        await storage.receive(chunks_of(data, 1000), max_bytes=64 * 1024)
    assert list(storage.tmp.iterdir()) == []
    ok = await storage.receive(chunks_of(data, 1000), max_bytes=len(data))
    assert ok.size == len(data)
