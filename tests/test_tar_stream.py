"""Tar streams written from disk and read back to disk: round trips and hostile archives."""

from __future__ import annotations

import asyncio
import hashlib
import io
import tarfile
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import pytest

from precheck.runner import tar_stream
from precheck.runner.copy_out import _safe_relative
from precheck.runner.tar_stream import (
    BLOCK,
    SMALL,
    SMALL_FILES,
    WRITE_BATCH,
    Entry,
    Extracted,
    Staged,
    extract_tar,
    tree_entries,
    write_tar,
)

Keep = Callable[[str, int], Path | None]
LONG_NAME = "n" * 255  # the longest file name most file systems allow


async def chunked(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    """`data` in chunks of `size` bytes."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


def keep_under(root: Path, seen: list[str] | None = None) -> Keep:
    """Keep every member under `root`, refusing names that climb out or are absolute."""

    def keep(name: str, size: int) -> Path | None:
        if seen is not None:
            seen.append(name)
        rel = _safe_relative(name)
        return None if rel is None else root / rel

    return keep


def tar_bytes(members: Iterable[tuple[tarfile.TarInfo, bytes | None]], fmt: int) -> bytes:
    """An archive made by the standard library in `fmt`, from (header, content) pairs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def reg(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, bytes]:
    """A folder `src/` of files: empty, block-sized, odd-sized, larger than the in-memory limit."""
    contents = {
        "empty.txt": b"",
        "block.bin": bytes(range(256)) * 2,
        "odd.txt": b"seven b",
        "deep/er/still/leaf.json": b'{"a": 1}\n',
        "deep/big.gds": bytes(i % 251 for i in range(SMALL + 12345)),
        f"deep/{LONG_NAME[:250]}": b"long name\n",
    }
    for name, data in contents.items():
        path = tmp_path / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (tmp_path / "src" / "empty-folder").mkdir()
    return contents


async def test_round_trip_of_files_and_folders(tmp_path: Path, tree: dict[str, bytes]) -> None:
    """Every file of a tree written by the writer comes back byte for byte, with its sha256."""
    archive = await collect(write_tar(tree_entries(tmp_path / "src", "top")))
    assert len(archive) % BLOCK == 0
    found = await extract_tar(chunked(archive, 1000), keep_under(tmp_path / "dst"))
    expected = {f"top/{name}": data for name, data in tree.items()}
    assert {x.name: x.size for x in found} == {n: len(d) for n, d in expected.items()}
    for x in found:
        assert x.path == tmp_path / "dst" / x.name
        assert x.sha256 == sha(expected[x.name])
    assert files_under(tmp_path / "dst") == expected
    # Folders are not members the reader lists, but the files' folders exist.
    assert (tmp_path / "dst/top/deep/er/still").is_dir()
    assert not list((tmp_path / "dst").rglob("*.part"))


async def test_writer_output_is_a_standard_archive(tmp_path: Path, tree: dict[str, bytes]) -> None:
    """The standard library reads the writer's archive: folders, files, modes and long names."""
    entries = [
        *tree_entries(tmp_path / "src", "top"),
        Entry("x/run.sh", tmp_path / "src/odd.txt", 0o755),
    ]
    archive = await collect(write_tar(entries))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert {n for n, m in members.items() if m.isdir()} == {
            "top",
            "top/deep",
            "top/deep/er",
            "top/deep/er/still",
            "top/empty-folder",
        }
        for name, data in tree.items():
            member = members[f"top/{name}"]
            assert member.isreg() and member.mode == 0o644
            f = tar.extractfile(member)
            assert f is not None and f.read() == data
        assert members["x/run.sh"].mode == 0o755
    assert members[f"top/deep/{LONG_NAME[:250]}"].size == len(b"long name\n")


async def test_writer_stream_of_a_shrinking_file_fails(tmp_path: Path) -> None:
    """A file cut short while it is archived makes the writer fail, not send a short member."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 5000)
    stream = write_tar([Entry("f.bin", path)])
    header = await anext(stream)
    assert tarfile.TarInfo.frombuf(header[-BLOCK:], "utf-8", "strict").size == 5000
    path.write_bytes(b"x" * 10)
    with pytest.raises(OSError, match="shrank"):
        await collect(stream)


async def test_names_that_climb_out_or_are_absolute_are_not_written(tmp_path: Path) -> None:
    """`..` and absolute member names reach `keep` as they are, are refused, and write nothing."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (reg("ok/a.txt"), b"a"),
        (reg("../escaped.txt"), b"evil"),
        (reg("ok/../../escaped2.txt"), b"evil"),
        (reg("/tmp/abs.txt"), b"evil"),
        (reg("ok/b.txt"), b"b"),
    ]
    archive = tar_bytes(members, tarfile.GNU_FORMAT)
    dst = tmp_path / "inner" / "dst"
    seen: list[str] = []
    found = await extract_tar(chunked(archive), keep_under(dst, seen))
    assert seen == [
        "ok/a.txt",
        "../escaped.txt",
        "ok/../../escaped2.txt",
        "/tmp/abs.txt",
        "ok/b.txt",
    ]
    assert found == [
        Extracted("ok/a.txt", 1, dst / "ok/a.txt", sha(b"a")),
        Extracted("../escaped.txt", 4, None, None),
        Extracted("ok/../../escaped2.txt", 4, None, None),
        Extracted("/tmp/abs.txt", 4, None, None),
        Extracted("ok/b.txt", 1, dst / "ok/b.txt", sha(b"b")),
    ]
    assert files_under(tmp_path) == {"inner/dst/ok/a.txt": b"a", "inner/dst/ok/b.txt": b"b"}


async def test_links_are_never_made_so_later_members_stay_inside(tmp_path: Path) -> None:
    """Symlinks and hard links are skipped: a member written `through` a link lands inside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (link("run/out", str(outside)), None),
        (link("run/hard", "/etc/passwd", tarfile.LNKTYPE), None),
        (reg("run/out/planted.txt"), b"planted"),
    ]
    archive = tar_bytes(members, tarfile.PAX_FORMAT)
    dst = tmp_path / "dst"
    found = await extract_tar(chunked(archive), keep_under(dst))
    assert [x.name for x in found] == ["run/out/planted.txt"]
    assert not (dst / "run/out").is_symlink() and (dst / "run/out").is_dir()
    assert not (dst / "run/hard").exists()
    assert (dst / "run/out/planted.txt").read_bytes() == b"planted"
    assert list(outside.iterdir()) == []


async def test_not_kept_members_are_listed_and_skipped(tmp_path: Path) -> None:
    """A member `keep` declines is listed without a path; the members after it still read."""
    big = b"z" * (SMALL * 2 + 1)
    archive = tar_bytes([(reg("skip.bin"), big), (reg("keep.txt"), b"k")], tarfile.PAX_FORMAT)
    dst = tmp_path / "dst"
    found = await extract_tar(
        chunked(archive, 7777), lambda name, size: dst / name if name == "keep.txt" else None
    )
    assert found == [
        Extracted("skip.bin", len(big), None, None),
        Extracted("keep.txt", 1, dst / "keep.txt", sha(b"k")),
    ]
    assert files_under(dst) == {"keep.txt": b"k"}


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
async def test_255_byte_paths_in_every_format(tmp_path: Path, fmt: int) -> None:
    """A 255-byte path (ustar's prefix and name fields, GNU long names, pax) is read whole."""
    names = ["p" * 150 + "/" + "q" * 100, "a" * 154 + "/" + "b" * 100]
    assert [len(n.encode()) for n in names] == [251, 255]
    if fmt != tarfile.USTAR_FORMAT:  # ustar cannot hold a name component over 100 bytes
        names += ["d/" + LONG_NAME[:250], "e" * 200 + "/" + "f" * 200]
    archive = tar_bytes([(reg(n), n.encode()[-7:]) for n in names], fmt)
    found = await extract_tar(chunked(archive, 100), keep_under(tmp_path / "dst"))
    assert [x.name for x in found] == names
    assert files_under(tmp_path / "dst") == {n: n.encode()[-7:] for n in names}


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
async def test_255_byte_file_name_is_read(fmt: int) -> None:
    """A member whose file name is 255 bytes long is listed under its whole name."""
    archive = tar_bytes([(reg("d/" + LONG_NAME), b"x"), (reg("after"), b"")], fmt)
    found = await extract_tar(chunked(archive, 100), lambda name, size: None)
    assert [(x.name, x.size) for x in found] == [("d/" + LONG_NAME, 1), ("after", 0)]


async def test_255_byte_file_name_is_extracted(tmp_path: Path) -> None:
    """A member whose file name is 255 bytes long is written under that name."""
    archive = tar_bytes([(reg(LONG_NAME), b"x")], tarfile.PAX_FORMAT)
    await extract_tar(chunked(archive), keep_under(tmp_path))
    assert (tmp_path / LONG_NAME).read_bytes() == b"x"


async def test_writer_long_names_read_by_reader(tmp_path: Path) -> None:
    """The writer's pax headers for a 255-byte name and a 600-byte path are read back whole."""
    src = tmp_path / LONG_NAME
    src.write_bytes(b"data")
    deep = "/".join(["f" * 99] * 6)
    archive = await collect(
        write_tar([Entry(LONG_NAME, src), Entry(deep), Entry(f"{deep}/{LONG_NAME}", src)])
    )
    found = await extract_tar(chunked(archive, 333), lambda name, size: None)
    assert [(x.name, x.size) for x in found] == [(LONG_NAME, 4), (f"{deep}/{LONG_NAME}", 4)]


async def test_pax_long_names_long_link_names_and_other_records(tmp_path: Path) -> None:
    """Pax headers with long paths, long link targets and other keys: each path goes to its own
    member, and a link's header does not rename the member after it."""
    long_dir = "dir-" + "é" * 120  # non-ASCII: 244 bytes in UTF-8
    file_info = reg(f"{long_dir}/{LONG_NAME[:250]}")
    file_info.pax_headers = {"comment": "x=y " * 100, "SCHILY.xattr.user.k": "v"}
    file_info.mtime = 1700000000.123456  # a fraction: a pax record
    sym = link(f"{long_dir}/link-{'l' * 200}", "t" * 300)
    hard = link("short-hard", "h" * 300, tarfile.LNKTYPE)
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (file_info, b"first"),
        (sym, None),
        (reg("after-link.txt"), b"second"),
        (hard, None),
        (reg("after-hard.txt"), b"third"),
    ]
    archive = tar_bytes(members, tarfile.PAX_FORMAT)
    with tarfile.open(fileobj=io.BytesIO(archive)) as check:  # the archive says what we think
        assert [m.name for m in check.getmembers()][1] == sym.name
        assert check.getmembers()[1].linkname == "t" * 300
    dst = tmp_path / "dst"
    found = await extract_tar(chunked(archive, 512), keep_under(dst))
    assert [(x.name, x.size) for x in found] == [
        (f"{long_dir}/{LONG_NAME[:250]}", 5),
        ("after-link.txt", 6),
        ("after-hard.txt", 5),
    ]
    assert files_under(dst) == {
        f"{long_dir}/{LONG_NAME[:250]}": b"first",
        "after-link.txt": b"second",
        "after-hard.txt": b"third",
    }


async def test_gnu_long_link_names_are_skipped_with_their_link() -> None:
    """GNU long-link records are skipped with their link; the names after them stay right."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (link("L" * 200, "T" * 300), None),
        (reg("plain.txt"), b"p"),
        (link("short", "U" * 300, tarfile.LNKTYPE), None),
        (reg("M" * 180), b"m"),
    ]
    archive = tar_bytes(members, tarfile.GNU_FORMAT)
    found = await extract_tar(chunked(archive, 64), lambda name, size: None)
    assert [(x.name, x.size) for x in found] == [("plain.txt", 1), ("M" * 180, 1)]


async def sample_archive(tmp_path: Path) -> tuple[bytes, dict[str, bytes]]:
    contents = {
        "t/a.txt": b"alpha" * 100,
        "t/big.bin": bytes(i % 253 for i in range(SMALL + 5000)),
        "t/z.txt": b"zulu",
    }
    entries = [Entry("t")]
    for name, data in contents.items():
        path = tmp_path / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entries.append(Entry(name, path))
    return await collect(write_tar(entries)), contents


@pytest.mark.timeout(10)
async def test_truncated_archives_raise_and_leave_no_partial_file(tmp_path: Path) -> None:
    """An archive cut anywhere before its end block raises `ReadError`; no half file is left."""
    archive, contents = await sample_archive(tmp_path)
    end = len(archive) - 2 * BLOCK  # where the end-of-archive zero blocks start
    big_at = archive.index(b"\x00\x01\x02\x03\x04\x05")  # big.bin's data
    cuts = [0, 1, 100, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK - 7, big_at, big_at + 70_000]
    cuts += [end - BLOCK - 1, end - 1, end, end + BLOCK - 1]
    for i, cut in enumerate(cuts):
        dst = tmp_path / f"dst{i}"
        with pytest.raises(tarfile.ReadError, match="ended early"):
            await extract_tar(chunked(archive[:cut], 4000), keep_under(dst))
        written = files_under(dst) if dst.exists() else {}
        assert not [n for n in written if n.endswith(".part")], cut
        for name, data in written.items():
            assert contents[name] == data, (cut, name)


@pytest.mark.timeout(10)
async def test_archive_ending_after_its_first_zero_block_is_complete(tmp_path: Path) -> None:
    """The first zero block ends the archive: a stream cut after it reads every member."""
    archive, contents = await sample_archive(tmp_path)
    end = len(archive) - 2 * BLOCK
    for cut in (end + BLOCK, end + BLOCK + 1, len(archive)):
        dst = tmp_path / f"dst{cut}"
        found = await extract_tar(chunked(archive[:cut], 4000), keep_under(dst))
        assert [x.name for x in found] == list(contents)
        assert files_under(dst) == contents


@pytest.mark.timeout(10)
async def test_garbage_header_raises(tmp_path: Path) -> None:
    """A block that is neither a header nor zeros raises a tar error."""
    with pytest.raises(tarfile.TarError):
        await extract_tar(chunked(b"\xff" * (4 * BLOCK)), keep_under(tmp_path))


async def test_the_stream_is_closed_when_the_archive_ends(tmp_path: Path) -> None:
    """The chunk stream is closed at the end block, without reading what follows it."""
    archive, _ = await sample_archive(tmp_path)
    state = {"closed": False, "read_past": False}

    async def stream() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunked(archive, BLOCK):
                yield chunk
            state["read_past"] = True
            yield b"trailing bytes never read"
        finally:
            state["closed"] = True

    await extract_tar(stream(), lambda name, size: None)
    assert state == {"closed": True, "read_past": False}


def pax_archive(records: bytes) -> bytes:
    """A pax header holding `records` as they are, then a file `f.txt`, then the end."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, len(records)
    data = header.tobuf(tarfile.USTAR_FORMAT) + records + b"\0" * (-len(records) % BLOCK)
    return data + tar_bytes([(reg("f.txt"), b"f")], tarfile.USTAR_FORMAT)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "records",
    [
        b"0 path=loop\n",
        b"0 \n",
        b"00 path=loop\n",
        b"-16 path=loop\n",
        b"abc path=loop\n",
        b"5path=nospace\n",
        b"no-space-at-all",
        b" path=leading-space\n",
        b"2 \n",
        b"99999 path=too-long\n",
        b"13 mtime=1.5\n0 path=late-zero\n",
    ],
)
async def test_malformed_pax_records_raise_not_loop(tmp_path: Path, records: bytes) -> None:
    """A pax record whose length is 0, negative, garbage, too short or too long raises."""
    with pytest.raises(tarfile.ReadError, match="pax"):
        await extract_tar(chunked(pax_archive(records)), keep_under(tmp_path))
    assert not (tmp_path / "f.txt").exists()


async def test_well_formed_pax_records_still_read(tmp_path: Path) -> None:
    """Hand-made pax records of the right lengths name the next member."""
    records = b"13 mtime=1.5\n18 path=renamed.x\n"
    found = await extract_tar(chunked(pax_archive(records)), keep_under(tmp_path))
    assert [x.name for x in found] == ["renamed.x"]
    assert (tmp_path / "renamed.x").read_bytes() == b"f"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME])
async def test_huge_name_header_is_refused_without_buffering_it(kind: bytes) -> None:
    """A pax or long-name header claiming a gigabyte is refused before it is read into memory."""
    header = tarfile.TarInfo("././@LongLink")
    header.type, header.size = kind, 1 << 30
    sent = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal sent
        yield header.tobuf(tarfile.GNU_FORMAT)
        for _ in range(64):  # 64 MiB of a header that never ends
            sent += 1 << 20
            yield b"1" * (1 << 20)

    with pytest.raises(tarfile.ReadError, match="header"):
        await extract_tar(stream(), lambda name, size: None)
    assert sent <= 2 << 20


async def test_a_member_that_cannot_be_stored_is_skipped_and_reported(tmp_path: Path) -> None:
    """A member whose name the file system refuses (256 bytes) is read past, reported with
    its error, and the members after it are still extracted, small and large alike."""
    big = b"y" * (SMALL + 10)
    members = [("a" * 256, b"small"), ("b" * 256, big), ("after-small", b"ok"), ("after-big", big)]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    found = await extract_tar(chunked(raw.getvalue()), lambda name, _: tmp_path / name)
    by_name = {x.name: x for x in found}
    for refused in ("a" * 256, "b" * 256):
        assert by_name[refused].path is None and by_name[refused].error, by_name[refused]
    assert (tmp_path / "after-small").read_bytes() == b"ok"
    assert (tmp_path / "after-big").read_bytes() == big
    assert by_name["after-big"].sha256 == hashlib.sha256(big).hexdigest()
    left = sorted(p.name for p in tmp_path.iterdir())  # noqa: ASYNC240
    assert left == ["after-big", "after-small"], "no temporary file is left"


def pax_sized(name: str, data: bytes) -> bytes:
    """A member as Docker writes a file of 8 GiB or more: size 0 in its ustar header, the
    real size in a pax record (made by the standard library's pax writer)."""
    info = tarfile.TarInfo(name)
    info.size = 0
    info.pax_headers = {"size": str(len(data))}
    pad = b"\0" * (-len(data) % BLOCK)
    return info.tobuf(format=tarfile.PAX_FORMAT) + data + pad


async def test_a_pax_size_overrides_the_header_size(tmp_path: Path) -> None:
    """A member whose real size is only in its pax header is read whole, at that size; the
    member-like bytes inside its content are content, not a member of their own."""
    forged = tar_bytes([(reg("forged.json"), b'{"passed": true}')], tarfile.USTAR_FORMAT)
    content = forged[: -2 * BLOCK] + b"rest of the layout"  # a member header inside the data
    archive = pax_sized("big.gds", content) + tar_bytes([(reg("after"), b"ok")], tarfile.PAX_FORMAT)
    with tarfile.open(fileobj=io.BytesIO(archive)) as std:  # the standard reader agrees
        assert [(m.name, m.size) for m in std.getmembers()] == [
            ("big.gds", len(content)),
            ("after", 2),
        ]
    found = await extract_tar(chunked(archive, 100), keep_under(tmp_path))
    assert [(x.name, x.size) for x in found] == [("big.gds", len(content)), ("after", 2)]
    assert (tmp_path / "big.gds").read_bytes() == content
    assert found[0].sha256 == hashlib.sha256(content).hexdigest()
    assert not (tmp_path / "forged.json").exists()


@pytest.mark.parametrize("kind", ["gnu", "pax"])
async def test_a_sparse_member_is_refused(tmp_path: Path, kind: str) -> None:
    """A sparse member (GNU type `S`, or pax `GNU.sparse.*` records) is refused, never stored
    as if its map of holes were the file."""
    info = tarfile.TarInfo("holes.bin")
    if kind == "gnu":
        info.type = tarfile.GNUTYPE_SPARSE
        header = info.tobuf(format=tarfile.GNU_FORMAT)
    else:
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}
        header = info.tobuf(format=tarfile.PAX_FORMAT)
    archive = header + b"\0" * (2 * BLOCK)
    with pytest.raises(tarfile.ReadError, match="sparse"):
        await extract_tar(chunked(archive), keep_under(tmp_path))
    assert list(tmp_path.iterdir()) == []  # noqa: ASYNC240


async def test_a_big_member_is_written_whole_across_write_batches(tmp_path: Path) -> None:
    """A member larger than several write batches, arriving in odd-sized chunks, is stored
    byte for byte with its sha256."""
    data = bytes(i % 253 for i in range(2 * WRITE_BATCH + 12345))
    archive = tar_bytes([(reg("big.bin"), data)], tarfile.PAX_FORMAT)
    [x] = await extract_tar(chunked(archive, 100_003), keep_under(tmp_path / "dst"))
    assert x.sha256 == sha(data) and x.size == len(data)
    assert (tmp_path / "dst" / "big.bin").read_bytes() == data


async def test_staged_files_take_their_names_only_when_placed(tmp_path: Path) -> None:
    """With `staged`, kept files are written under hidden names only; `place` gives them their
    names, with nothing hidden left over."""
    big = bytes(i % 251 for i in range(SMALL + 1))
    archive = tar_bytes([(reg("a.txt"), b"small"), (reg("b.bin"), big)], tarfile.PAX_FORMAT)
    staged = Staged()
    found = await extract_tar(chunked(archive), keep_under(tmp_path), staged)
    assert [x.sha256 for x in found] == [sha(b"small"), sha(big)]
    hidden = sorted(p.name for p in tmp_path.iterdir())  # noqa: ASYNC240
    assert len(hidden) == 2 and all(n.startswith(".") and n.endswith(".part") for n in hidden)
    assert await staged.place() == {}
    assert files_under(tmp_path) == {"a.txt": b"small", "b.bin": big}


async def test_discarded_staged_files_leave_nothing(tmp_path: Path) -> None:
    archive = tar_bytes([(reg("a.txt"), b"small")], tarfile.PAX_FORMAT)
    staged = Staged()
    await extract_tar(chunked(archive), keep_under(tmp_path), staged)
    staged.discard()
    assert list(tmp_path.iterdir()) == []  # noqa: ASYNC240


async def test_stop_ends_the_reading_at_a_member_not_kept(tmp_path: Path) -> None:
    """A member not kept that `stop` picks ends the reading there, marked `cut_here`; what
    came before is stored, what follows is not read, and the stream is closed."""
    members = [(reg("a.txt"), b"a"), (reg("huge.bin"), b"h" * 5000), (reg("z.txt"), b"z")]
    archive = tar_bytes(members, tarfile.PAX_FORMAT)
    closed = []

    async def stream() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunked(archive, 512):
                yield chunk
        finally:
            closed.append(True)

    def keep(name: str, size: int) -> Path | None:
        return None if name == "huge.bin" else tmp_path / name

    found = await extract_tar(stream(), keep, stop=lambda name, size: size > 4096)
    assert [(x.name, x.cut_here) for x in found] == [("a.txt", False), ("huge.bin", True)]
    assert files_under(tmp_path) == {"a.txt": b"a"}
    assert closed == [True]


def run_folder(files: int) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """Small files in a few folders, like a run folder: several batches of small files."""
    return [
        (reg(f"step{i % 7}/report{i}.txt"), f"report {i}\n".encode() * (i + 1))
        for i in range(files)
    ]


def files_in(root: Path) -> list[Path]:
    """Every file under `root`, hidden ones too (none when it does not exist)."""
    return sorted(p for p in root.rglob("*") if p.is_file())


async def test_a_hundred_small_files_are_written_in_batches_and_placed_whole(
    tmp_path: Path,
) -> None:
    """More small files than a batch holds, several batches under way at once: each is stored
    with its sha256, in the archive's order, under its name only once placed."""
    members = run_folder(10 * SMALL_FILES + 3)
    archive = tar_bytes(members, tarfile.PAX_FORMAT)
    staged = Staged()
    found = await extract_tar(chunked(archive, 700), keep_under(tmp_path), staged)
    assert [x.name for x in found] == [info.name for info, _ in members]
    assert [x.sha256 for x in found] == [sha(data or b"") for _, data in members]
    assert all(p.name.endswith(".part") for p in files_in(tmp_path))
    assert await staged.place() == {}
    assert files_under(tmp_path) == {info.name: data for info, data in members}


async def test_an_archive_cut_among_small_files_leaves_no_hidden_file(tmp_path: Path) -> None:
    """Cut after several batches of small files went to their threads: the batches under way
    are waited for and what they wrote is removed with the rest."""
    archive = tar_bytes(run_folder(10 * SMALL_FILES), tarfile.PAX_FORMAT)
    last = archive.index(f"report {10 * SMALL_FILES - 1}\n".encode())  # the last file's data
    for cut in (len(archive) // 3, last + 5):
        dst = tmp_path / str(cut)
        with pytest.raises(tarfile.ReadError, match="ended early"):
            await extract_tar(chunked(archive[:cut], 700), keep_under(dst))
        assert files_in(dst) == [], cut


async def test_a_cancelled_read_among_small_files_leaves_only_staged_files(
    tmp_path: Path,
) -> None:
    """Cancelled while batches are under way: every file they wrote is staged, so discarding
    the staged files leaves nothing."""
    archive = tar_bytes(run_folder(10 * SMALL_FILES), tarfile.PAX_FORMAT)
    half = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield archive[: len(archive) // 2]
        half.set()
        await asyncio.sleep(60)  # the rest never comes
        yield archive[len(archive) // 2 :]

    staged = Staged()
    reading = asyncio.ensure_future(extract_tar(stalls(), keep_under(tmp_path), staged))
    await half.wait()
    await asyncio.sleep(0.05)  # the batches of the first half are in their threads, or done
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    written = files_in(tmp_path)
    assert written and all(p.name.endswith(".part") for p in written)
    assert written == sorted(part for part, _ in staged.parts)
    staged.discard()
    assert files_in(tmp_path) == []


async def test_placing_is_one_flush_for_the_files_and_what_is_made_from_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files take their names, `then` writes its file, and one flush covers them all."""
    flushes: list[set[Path]] = []  # the files each flush of the folders was given
    syncs: list[Path] = []  # each flush of the file system
    real_folders, real_syncfs = tar_stream._sync_folders, tar_stream._syncfs

    def counted(folders: set[Path], files: list[Path] | None = None) -> None:
        flushes.append(set(files or []))
        real_folders(folders, files)

    def counted_syncfs(path: Path) -> bool:
        syncs.append(path)
        return real_syncfs(path)

    monkeypatch.setattr(tar_stream, "_sync_folders", counted)
    monkeypatch.setattr(tar_stream, "_syncfs", counted_syncfs)
    archive = tar_bytes(run_folder(2 * SMALL_FILES), tarfile.PAX_FORMAT)
    staged = Staged()
    await extract_tar(chunked(archive), keep_under(tmp_path), staged)

    def then() -> list[Path]:
        assert (tmp_path / "step0" / "report0.txt").read_bytes() == b"report 0\n"  # named
        made = tmp_path / "made.json"
        made.write_text("{}")
        return [made]

    assert await staged.place(then) == {}
    assert len(flushes) == 1 and len(syncs) == 1
    assert flushes[0] == {tmp_path / name for name in files_under(tmp_path)}


async def test_a_flush_that_fails_leaves_none_of_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk refuses the flush: every file is reported with why, and none is left, named
    or hidden."""

    def refused(folders: set[Path], files: list[Path] | None = None) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(tar_stream, "_sync_folders", refused)
    members = run_folder(SMALL_FILES + 1)
    staged = Staged()
    await extract_tar(chunked(tar_bytes(members, tarfile.PAX_FORMAT)), keep_under(tmp_path), staged)
    failed = await staged.place()
    assert failed == {tmp_path / info.name: "Input/output error" for info, _ in members}
    assert files_in(tmp_path) == []
