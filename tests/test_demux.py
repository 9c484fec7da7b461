"""Docker's multiplexed log stream (8-byte frame headers, stream 1/2, timestamps) split into lines.

Driven through `_demux_lines`, the seam `Engine.logs` reads the HTTP body with: a real aiohttp
`StreamReader` is fed the bytes in chunks, as a response body would be.
"""

from __future__ import annotations

import asyncio
import struct
import time

import aiohttp
import pytest
from aiohttp.base_protocol import BaseProtocol

from precheck.runner.engine import MAX_LINE, _demux_lines, _LineSplitter
from precheck.storage.output_lines import LineBlock

T1 = "2026-01-02T03:04:05.123456789Z"
T2 = "2026-01-02T03:04:05.5Z"
T3 = "2026-01-02T03:04:06Z"


class OpenConnection(BaseProtocol):
    """aiohttp's protocol for a connection that stays open until the body is fed its end."""

    @property
    def connected(self) -> bool:
        return True


def frame(kind: int, payload: bytes) -> bytes:
    """One frame: stream byte, three zero bytes, big-endian payload size, then the payload."""
    return struct.pack(">BxxxL", kind, len(payload)) + payload


def stamped(stamp: str, text: str) -> bytes:
    return f"{stamp} {text}".encode()


async def demux(chunks: list[bytes]) -> list[LineBlock]:
    """The lines `_demux_lines` reads from a body arriving as `chunks`, one loop turn apart."""
    return await demux_capped(chunks, MAX_LINE)


async def demux_capped(chunks: list[bytes], max_line: int) -> list[LineBlock]:
    """The same, with lines cut at `max_line` bytes."""
    loop = asyncio.get_running_loop()
    body = aiohttp.StreamReader(OpenConnection(loop), 1 << 16, loop=loop)

    async def send() -> None:
        for chunk in chunks:
            body.feed_data(chunk)
            await asyncio.sleep(0)
        body.feed_eof()

    sender = asyncio.create_task(send())
    try:
        return [line async for line in _demux_lines(body, max_line)]
    finally:
        await sender


def triples(batches: list[LineBlock]) -> list[tuple[str, str, str]]:
    """Each line of the batches: its stream, Docker's time text, its text."""
    out = []
    for batch in batches:
        lines = batch.raw.split("\n")
        assert len(lines) == batch.count
        out += [(batch.stream, *line.partition(" ")[::2]) for line in lines]
    return out


SAMPLE = b"".join(
    [
        frame(1, stamped(T1, "PDK_ROOT = /workspace/gf180mcu\n")),
        frame(2, stamped(T1, "warning: µm rounding\n")),
        frame(1, stamped(T2, "two\n") + stamped(T2, "lines in one frame\n")),
        frame(1, b""),
        frame(2, stamped(T3, "Error: ünïcode ✓ split")),
        frame(2, b" across frames\r\n"),
        frame(1, stamped(T3, "Precheck successfully completed.\n")),
    ]
)
SAMPLE_LINES = [
    ("stdout", T1, "PDK_ROOT = /workspace/gf180mcu"),
    ("stderr", T1, "warning: µm rounding"),
    ("stdout", T2, "two"),
    ("stdout", T2, "lines in one frame"),
    ("stderr", T3, "Error: ünïcode ✓ split across frames"),
    ("stdout", T3, "Precheck successfully completed."),
]


async def test_frames_become_timestamped_lines() -> None:
    """Each newline-ended line becomes one line with its stream, Docker's time text and text."""
    lines = await demux([SAMPLE])
    assert triples(lines) == SAMPLE_LINES
    assert [t for batch in lines for t in batch.times()] == [t for _, t, _ in SAMPLE_LINES]


async def test_lines_of_one_stream_read_together_come_as_one_batch() -> None:
    """Many frames of one stream in one read are split together: one batch, not one per line;
    a change of stream starts the next batch."""
    body = b"".join(frame(1, stamped(T1, f"line {i}\n")) for i in range(500))
    body += frame(2, stamped(T2, "on stderr\n")) + frame(1, stamped(T3, "back\n"))
    batches = await demux([body])
    assert [(b.stream, b.count) for b in batches] == [("stdout", 500), ("stderr", 1), ("stdout", 1)]
    assert triples(batches)[499] == ("stdout", T1, "line 499")


async def test_split_into_two_chunks_at_every_offset() -> None:
    """The same lines come out wherever the body is cut in two, headers and UTF-8 included."""
    for cut in range(1, len(SAMPLE)):
        assert triples(await demux([SAMPLE[:cut], SAMPLE[cut:]])) == SAMPLE_LINES, cut


async def test_one_byte_chunks() -> None:
    """The same lines come out when the body arrives one byte at a time."""
    lines = await demux([SAMPLE[i : i + 1] for i in range(len(SAMPLE))])
    assert triples(lines) == SAMPLE_LINES


async def test_a_line_spread_over_many_frames() -> None:
    """A line sent in many frames (a multibyte character cut between two) is one line."""
    text = ("é" * 3000 + "x") * 10
    payload = stamped(T1, text) + b"\n"
    step = 997  # odd: cuts through the two-byte characters
    frames = [frame(1, payload[i : i + step]) for i in range(0, len(payload), step)]
    assert len(frames) > 60
    lines = await demux([b"".join(frames)])
    assert triples(lines) == [("stdout", T1, text)]


async def test_stdout_and_stderr_interleaved_keep_their_own_partial_lines() -> None:
    """Half a stdout line, then stderr lines, then the rest of stdout: no mixing of streams."""
    body = b"".join(
        [
            frame(1, stamped(T1, "out: beginning")),
            frame(2, stamped(T1, "err: one\n") + stamped(T2, "err: two")),
            frame(1, b" and end\n" + stamped(T2, "out: next\n")),
            frame(2, b" ends\n"),
        ]
    )
    assert triples(await demux([body])) == [
        ("stderr", T1, "err: one"),
        ("stdout", T1, "out: beginning and end"),
        ("stdout", T2, "out: next"),
        ("stderr", T2, "err: two ends"),
    ]


async def test_final_lines_without_newline_are_kept() -> None:
    """Last lines without a newline on both streams still come out, stdout's first."""
    body = frame(2, stamped(T2, "err tail")) + frame(1, stamped(T1, "done\n") + stamped(T3, "tail"))
    assert triples(await demux([body])) == [
        ("stdout", T1, "done"),
        ("stdout", T3, "tail"),
        ("stderr", T2, "err tail"),
    ]


async def test_empty_frames_change_nothing() -> None:
    """Empty frames, between lines or inside a half line, add no line and lose nothing."""
    body = b"".join(
        [
            frame(1, b""),
            frame(1, stamped(T1, "half")),
            frame(1, b""),
            frame(2, b""),
            frame(1, b" line\n"),
            frame(1, b""),
        ]
    )
    assert triples(await demux([body])) == [("stdout", T1, "half line")]
    assert await demux([frame(1, b"") * 5]) == []
    assert await demux([]) == []


async def test_empty_lines_and_carriage_returns() -> None:
    """An empty line keeps its timestamp and empty text; a trailing carriage return is dropped."""
    body = frame(1, stamped(T1, "\n") + stamped(T2, "crlf\r\n") + stamped(T3, "a\rb\n"))
    assert triples(await demux([body])) == [
        ("stdout", T1, ""),
        ("stdout", T2, "crlf"),
        ("stdout", T3, "a\rb"),
    ]


async def test_body_cut_inside_a_header_ends_with_what_was_complete() -> None:
    """A body that ends part way through a frame header ends the lines; partial ones are kept."""
    body = frame(1, stamped(T1, "whole\n") + stamped(T2, "partial")) + frame(2, b"xyz")[:5]
    assert triples(await demux([body])) == [("stdout", T1, "whole"), ("stdout", T2, "partial")]


async def test_body_cut_inside_a_payload_raises() -> None:
    """A body that ends part way through a frame's payload raises an end-of-file error."""
    body = frame(1, stamped(T1, "whole\n")) + frame(1, stamped(T2, "never finished\n"))[:-4]
    seen: list[LineBlock] = []
    loop = asyncio.get_running_loop()
    reader = aiohttp.StreamReader(OpenConnection(loop), 1 << 16, loop=loop)
    reader.feed_data(body)
    reader.feed_eof()
    with pytest.raises(EOFError):
        async for line in _demux_lines(reader):
            seen.append(line)
    assert triples(seen) == [("stdout", T1, "whole")]


async def test_unknown_stream_number_complete_lines_count_as_stdout() -> None:
    """Complete lines on a stream number other than 1 or 2 are reported as stdout."""
    body = frame(0, stamped(T1, "stdin?\n")) + frame(3, stamped(T2, "system?\n"))
    assert triples(await demux([body])) == [("stdout", T1, "stdin?"), ("stdout", T2, "system?")]


async def test_unknown_stream_number_with_final_partial_line() -> None:
    """A last line without newline on an unknown stream number comes out as stdout."""
    body = frame(1, stamped(T1, "ok\n")) + frame(3, stamped(T2, "no newline"))
    assert triples(await demux([body])) == [("stdout", T1, "ok"), ("stdout", T2, "no newline")]


async def test_a_long_line_is_cut_at_the_cap_with_a_marker() -> None:
    """A line longer than the cap keeps its first bytes and says how many more were cut; the
    lines around it are whole."""
    long = "x" * 10_000
    body = frame(1, stamped(T1, "before\n")) + b"".join(
        frame(1, piece) for piece in _pieces(stamped(T2, long + "\n"), 997)
    )
    body += frame(1, stamped(T3, "after\n"))
    lines = triples(await demux_capped([body], 1024))
    assert [text for _, _, text in (lines[0], lines[2])] == ["before", "after"]
    _, time_text, text = lines[1]
    kept = 1024 - len(T2) - 1  # the timestamp and its space are part of the line's bytes
    assert text == "x" * kept + f" [line cut at 1 KiB: {len(long) - kept} more bytes not kept]"
    assert time_text == T2


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_a_long_run_of_carriage_returns_is_folded_in_one_pass() -> None:
    """256 KiB of carriage returns before a newline, with lines after it in the same read, are
    dropped in one linear pass (one per pass took minutes); those inside a line are kept."""
    crs = b"\r" * (256 << 10)
    splitter = _LineSplitter("stdout", 1 << 20)
    began = time.monotonic()
    got = splitter.feed(b"a" + crs + b"\nb" + crs + b"c" + crs + b"\r\nd\n")
    assert time.monotonic() - began < 2.0, "a quadratic fold takes far longer"
    assert got is not None and got.count == 3
    assert got.raw == "a\nb" + "\r" * (256 << 10) + "c\nd"
