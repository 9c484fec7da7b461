"""Real layouts for pre-flight: dies made with the layout library, and big files written fast.

`die("1x1")` is a slot-sized die at the origin, as GDS (`fmt="gds"`), gzip-compressed GDS
(`"gds.gz"`) or OASIS (`"oas"`); its keywords break one rule at a time. `write_big_gds` and
`write_big_oasis` stream many rectangles straight into a file, for readings that take seconds.
"""

from __future__ import annotations

import gzip
import struct
import tempfile
from pathlib import Path
from typing import BinaryIO

import klayout.db as kdb

from precheck.domain.preflight import SLOT_SIZES


def die(
    slot: str = "1x1",
    *,
    top: str = "chip_top",
    fmt: str = "gds",
    dbu: float = 0.001,
    grow: tuple[float, float] = (0, 0),
    origin: tuple[float, float] = (0, 0),
    other_tops: tuple[str, ...] = (),
) -> bytes:
    """A layout whose top cell `top` holds one box the size of `slot` (plus `grow` µm) with
    its lower left corner at `origin` (µm), on layer 1/0, a seal-ring-like frame on 2/0,
    and a placed sub-cell; `other_tops` adds more top cells."""
    layout = kdb.Layout()
    layout.dbu = dbu
    cell = layout.create_cell(top)
    width, height = SLOT_SIZES[slot]
    x, y = origin
    box = kdb.DBox(x, y, x + width + grow[0], y + height + grow[1])
    cell.shapes(layout.layer(1, 0)).insert(box)
    cell.shapes(layout.layer(2, 0)).insert(box.enlarged(-10, -10))
    sub = layout.create_cell("logo")
    sub.shapes(layout.layer(3, 5)).insert(kdb.DBox(0, 0, 50, 50))
    cell.insert(kdb.DCellInstArray(sub.cell_index(), kdb.DTrans(kdb.DVector(x + 100, y + 100))))
    for name in other_tops:
        layout.create_cell(name).shapes(layout.layer(1, 0)).insert(kdb.DBox(0, 0, 10, 10))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("layout.oas" if fmt == "oas" else "layout.gds")
        layout.write(str(path))
        data = path.read_bytes()
    return gzip.compress(data, mtime=0) if fmt == "gds.gz" else data


# GDSII records, written by hand: a big file in seconds, with no layout held in memory.


def _record(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack(">HH", 4 + len(payload), kind) + payload


def _gds_real(value: float) -> bytes:
    """GDSII's 8-byte excess-64 base-16 real, for the two unit values used here."""
    exponent, mantissa = 64, value
    while mantissa < 1 / 16:
        mantissa *= 16
        exponent -= 1
    while mantissa >= 1:
        mantissa /= 16
        exponent += 1
    return bytes([exponent]) + round(mantissa * 2**56).to_bytes(7, "big")


def write_big_gds(path: Path, size: int, top: str = "chip_top") -> int:
    """A GDS file of about `size` bytes: one top cell of many small squares. Returns shapes."""
    name = top.encode() + (b"\0" if len(top) % 2 else b"")
    stamp = struct.pack(">12h", 2026, 1, 1, 0, 0, 0, 2026, 1, 1, 0, 0, 0)
    head = b"".join(
        [
            _record(0x0002, struct.pack(">h", 600)),
            _record(0x0102, stamp),
            _record(0x0206, b"LIB\0"),
            _record(0x0305, _gds_real(0.001) + _gds_real(1e-9)),
            _record(0x0502, stamp),
            _record(0x0606, name),
        ]
    )
    tail = _record(0x0700) + _record(0x0400)
    shapes = 0
    with path.open("wb") as f:
        f.write(head)
        written = len(head) + len(tail)
        endel = _record(0x1100)
        row = 0
        while written < size:
            # One row of 2000 squares of 1 µm, 2 µm apart, on one of 8 layers.
            start = b"".join(
                [
                    _record(0x0800),  # BOUNDARY
                    _record(0x0D02, struct.pack(">h", 1 + row % 8)),  # LAYER
                    _record(0x0E02, struct.pack(">h", 0)),  # DATATYPE
                ]
            )
            y = row * 2000
            block = b"".join(
                start
                + _record(
                    0x1003,
                    struct.pack(">10i", x, y, x + 1000, y, x + 1000, y + 1000, x, y + 1000, x, y),
                )
                + endel
                for x in range(0, 2000 * 2000, 2000)
            )
            f.write(block)
            written += len(block)
            shapes += 2000
            row += 1
        f.write(tail)
    return shapes


# OASIS, written by hand likewise: unsigned integers are 7 bits a byte, low bits first.


def _uint(v: int) -> bytes:
    out = bytearray()
    while True:
        byte, v = v & 0x7F, v >> 7
        out.append(byte | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _sint(v: int) -> bytes:
    return _uint((abs(v) << 1) | (1 if v < 0 else 0))


def _astring(text: str) -> bytes:
    data = text.encode("ascii")
    return _uint(len(data)) + data


def write_big_oasis(path: Path, size: int, top: str = "chip_top") -> int:
    """An OASIS file of about `size` bytes: one top cell of many small squares. Returns shapes."""
    start = (
        b"%SEMI-OASIS\r\n"
        + _uint(1)  # START
        + _astring("1.0")
        + _uint(0)
        + _uint(1000)  # unit: a positive whole real, 1000 grid steps per µm
        + _uint(0)  # offset flag 0: the table offsets follow here, all zero
        + bytes(12)
    )
    names = _uint(3) + _astring(top) + _uint(13) + _uint(0)  # CELLNAME, then CELL 0
    shapes = 0
    with path.open("wb") as f:
        f.write(start + names)
        written = len(start) + len(names) + 256
        xs = [_sint(i * 2000) for i in range(2000)]
        row = 0
        while written < size:
            # RECTANGLE with every field given: layer, datatype, width, height, x, y.
            start = bytes([20, 0x7B]) + _uint(1 + row % 8) + _uint(0) + _uint(1000) + _uint(1000)
            y = _sint(row * 2000)
            block = b"".join(start + x + y for x in xs)
            f.write(block)
            written += len(block)
            shapes += 2000
            row += 1
        _end(f)
    return shapes


def _end(f: BinaryIO) -> None:
    """END: padding so the record is 256 bytes, then validation scheme 0 (none)."""
    body = _uint(2)
    padding = 256 - len(body) - 1 - 2  # the padding string's length byte(s), scheme
    f.write(body + _uint(padding) + bytes(padding) + _uint(0))
