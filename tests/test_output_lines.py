"""The output-line store keeps lines in blocks; readers see numbered lines, as from a list.

Every read is checked against a plain list of the same lines, from the in-memory window and
from the file (a store opened afresh), on a real SQLite file.
"""

from __future__ import annotations

import random
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from precheck.storage.output_lines import (
    BLOCK_LINES,
    LineBlock,
    OutputLine,
    OutputLineStore,
    Tail,
    blocks_of,
)

RUN = "run-1"


def stamp(tenths: int) -> str:
    """Docker's time text `tenths` tenths of a second after 12:00:00, trailing zeros trimmed."""
    seconds, tenth = divmod(tenths, 10)
    head = f"2026-11-26T12:{seconds // 60:02d}:{seconds % 60:02d}"
    return f"{head}.{tenth}00000001Z" if tenth % 2 else f"{head}.{tenth}Z" if tenth else f"{head}Z"


def model(count: int, seed: int = 7) -> list[OutputLine]:
    """`count` lines: streams in runs of random length, times rising by 0 or 1 tenth, texts of
    every shape (empty, spaces, no space, non-ASCII)."""
    rng = random.Random(seed)
    lines, stream, t = [], "stdout", 0
    for n in range(1, count + 1):
        if rng.random() < 0.05:
            stream = "stderr" if stream == "stdout" else "stdout"
        t += rng.random() < 0.3
        text = rng.choice(["", "x", " lead", "two words", "µm ✓", f"line {n}", "tail  "])
        lines.append(OutputLine(n, stamp(t), stream, text))
    return lines


async def store_at(path: Path) -> OutputLineStore:
    return await OutputLineStore.open(path)


async def test_reads_match_a_list_from_memory_and_from_the_file(tmp_path: Path) -> None:
    """`read` (after a line, after a time, the last N, with limits), `read_from` and `tail` give
    what slicing the list gives, whether the window or the file answers."""
    lines = model(3 * BLOCK_LINES + 123)
    store = await store_at(tmp_path / "p.db")
    blocks = blocks_of(lines)
    assert len(blocks) > 10  # many changes of stream
    for i in range(0, len(blocks), 7):  # appended a few blocks at a time, as a capture does
        await store.append(RUN, blocks[i : i + 7])
    fresh = await store_at(tmp_path / "p.db")
    try:
        for s in (store, fresh):
            for after in (0, 1, 999, 1000, 1001, 2500, len(lines) - 1, len(lines)):
                for limit in (1, 7, 1000, 5000):
                    got, more = await s.read(RUN, after_line=after, limit=limit)
                    assert got == lines[after : after + limit], (after, limit)
                    assert more == (after + limit < len(lines))
                assert await s.read_from(RUN, after, 300) == lines[after : after + 300]
            for tail in (0, 1, 5, 1001, len(lines) + 5):
                got, more = await s.read(RUN, tail=tail)
                assert got == (lines[-tail:] if tail else []) and not more, tail
            got, _ = await s.read(RUN, after_line=10, tail=3, limit=2)
            assert got == lines[-2:]
            for since_line in (1, 500, 1500, len(lines) - 2):
                since = lines[since_line].ts
                got, _ = await s.read(RUN, since=since, limit=100_000)
                assert got == [x for x in lines if x.ts > since]
            last = lines[-1]
            same = sum(1 for x in lines if x.time == last.time)
            assert await s.tail(RUN) == Tail(len(lines), last.time, same)
            assert await s.tail("no-such-run") == Tail(0, "", 0)
            blocks_read = [b async for b in s.read_blocks(RUN, 1500)]
            assert [x for b in blocks_read for x in b.lines()] == lines[1500:]
    finally:
        await fresh.close()
        await store.close()


async def test_tail_counts_lines_sharing_the_last_time_across_blocks(tmp_path: Path) -> None:
    """The lines at the last instant are counted even when they span several stored blocks."""
    store = await store_at(tmp_path / "p.db")
    try:
        t = stamp(3)
        lines = [OutputLine(1, stamp(1), "stdout", "a")] + [
            OutputLine(n, t, "stdout" if n % 2 else "stderr", "b") for n in range(2, 2502)
        ]
        await store.append(RUN, blocks_of(lines))
        assert await store.tail(RUN) == Tail(2501, t, 2500)
    finally:
        await store.close()


async def test_the_window_serves_ready_messages_and_restarts_on_a_gap(tmp_path: Path) -> None:
    """Followers get each line once as its encoded message; lines that do not follow on from
    the window (a resumed capture) start it again rather than mixing numbers."""

    def encode(line: OutputLine, timestamps: bool) -> bytes:
        return f"{line.line}:{line.time if timestamps else ''}:{line.text}|".encode()

    store = await OutputLineStore.open(tmp_path / "p.db", encoder=encode)
    try:
        lines = model(50)
        store.publish(RUN, blocks_of(lines[:30]))
        assert store.encoded_from(RUN, 0, False, limit=3) == (
            b"1::"
            + lines[0].text.encode()
            + b"|2::"
            + lines[1].text.encode()
            + b"|3::"
            + lines[2].text.encode()
            + b"|",
            3,
        )
        store.publish(RUN, blocks_of(lines[30:]))  # the encoded form grows with the window
        body, last = store.encoded_from(RUN, 45, True) or (b"", 0)
        assert last == 50
        assert body == b"".join(encode(x, True) for x in lines[45:])
        assert store.encoded_from(RUN, 50, True) == (b"", 50)  # caught up
        store.publish(RUN, [LineBlock(90, "stdout", f"{stamp(99)} resumed", 1)])
        assert store.encoded_from(RUN, 10, False) is None  # not held: read from the file
        assert store.last_line(RUN) == 90
    finally:
        await store.close()


async def test_lines_stored_one_row_each_are_moved_into_blocks(tmp_path: Path) -> None:
    """A database from before blocks (one row per line) is read the same after opening it."""
    path = tmp_path / "p.db"
    lines = model(2345)
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE log_lines (run_id TEXT NOT NULL, line INTEGER NOT NULL,"
            " time TEXT NOT NULL, ts REAL NOT NULL, stream TEXT NOT NULL, text TEXT NOT NULL,"
            " PRIMARY KEY (run_id, line)) WITHOUT ROWID"
        )
        db.executemany(
            "INSERT INTO log_lines VALUES (?,?,?,?,?,?)",
            [(r, x.line, x.time, x.ts, x.stream, x.text) for r in ("a", "b") for x in lines],
        )
    store = await store_at(path)
    try:
        for run in ("a", "b"):
            got, more = await store.read(run, limit=10_000)
            assert got == lines and not more
        assert await store.run_ids() == {"a", "b"}
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "log_lines" not in tables


async def test_a_block_is_stored_in_pieces_and_deleted_with_its_run(tmp_path: Path) -> None:
    """One block of many lines is stored as rows of at most BLOCK_LINES lines; deleting the run
    removes them, and other runs keep theirs."""
    path = tmp_path / "p.db"
    store = await store_at(path)
    try:
        many = [OutputLine(n, stamp(n), "stdout", f"n{n}") for n in range(1, 2 * BLOCK_LINES + 2)]
        await store.append(RUN, blocks_of(many))
        await store.append("other", blocks_of(many[:3]))
        with closing(sqlite3.connect(path)) as db:
            counts = [
                r[0]
                for r in db.execute(
                    "SELECT last - first + 1 FROM output_blocks WHERE run_id = ? ORDER BY first",
                    (RUN,),
                )
            ]
        assert counts == [BLOCK_LINES, BLOCK_LINES, 1]
        await store.delete_run(RUN)
        assert await store.run_ids() == {"other"}
        assert (await store.read(RUN))[0] == []
    finally:
        await store.close()


def test_a_text_with_a_newline_is_refused() -> None:
    """Lines were split on newlines: one holding a newline would become two when read."""
    with pytest.raises(ValueError, match="newline"):
        blocks_of([OutputLine(1, stamp(1), "stdout", "two\nlines")])


async def test_end_is_the_last_line_stored_or_shown(tmp_path: Path) -> None:
    """`end` answers from the index for a store opened afresh, and counts lines shown before
    their commit."""
    path = tmp_path / "p.db"
    store = await store_at(path)
    try:
        assert await store.end(RUN) == 0
        await store.append(RUN, blocks_of(model(1500)))
        store.publish(RUN, [LineBlock(1501, "stderr", f"{stamp(900)} shown, not stored", 1)])
        assert await store.end(RUN) == 1501
    finally:
        await store.close()
    fresh = await store_at(path)
    try:
        assert await fresh.end(RUN) == 1500
    finally:
        await fresh.close()
