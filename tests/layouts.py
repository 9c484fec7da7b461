"""Tiny layout files for driving the precheck simulator.

Each directive is stored as a text string ``PRECHECK_SIM <directive>`` that the
simulator greps out of the layout, e.g. ``gds("chip_top", "deferred=3")``.
"""

from __future__ import annotations

import gzip
import math
import struct

# GDSII record types (high byte) and data types (low byte).
_HEADER = 0x0002
_BGNLIB = 0x0102
_LIBNAME = 0x0206
_UNITS = 0x0305
_ENDLIB = 0x0400
_BGNSTR = 0x0502
_STRNAME = 0x0606
_ENDSTR = 0x0700
_BOUNDARY = 0x0800
_TEXT = 0x0C00
_DATATYPE = 0x0E02
_LAYER = 0x0D02
_XY = 0x1003
_ENDEL = 0x1100
_TEXTTYPE = 0x1602
_STRING = 0x1906

_TEXT_LAYER = 63
_TIMESTAMP = (2025, 1, 1, 0, 0, 0) * 2  # modification and access time

OASIS_MAGIC = b"%SEMI-OASIS\r\n"


def _record(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack(">HH", 4 + len(payload), kind) + payload


def _ascii(text: str) -> bytes:
    data = text.encode("ascii")
    return data + b"\0" if len(data) % 2 else data  # GDSII strings have even length


def _int2(*values: int) -> bytes:
    return struct.pack(f">{len(values)}h", *values)


def _real8(value: float) -> bytes:
    """GDSII 8-byte real: sign bit, base-16 exponent excess 64, 56-bit mantissa."""
    if value == 0:
        return bytes(8)
    sign = 0x80 if value < 0 else 0
    value = abs(value)
    exponent = math.floor(math.log(value, 16)) + 1
    mantissa = value / 16.0**exponent
    if mantissa >= 1:  # guard against log rounding
        mantissa /= 16
        exponent += 1
    while mantissa < 1 / 16:
        mantissa *= 16
        exponent -= 1
    return bytes([sign | (exponent + 64)]) + round(mantissa * 2**56).to_bytes(7, "big")


def directive_text(directive: str) -> str:
    return f"PRECHECK_SIM {directive}"


def gds(top: str = "chip_top", *directives: str, die: tuple[int, int] | None = None) -> bytes:
    """A valid GDSII stream with cell ``top`` holding one text per directive; with ``die``
    (width, height in nm), also a box of that size at the origin on layer 1/0, as a die."""
    parts = [
        _record(_HEADER, _int2(600)),
        _record(_BGNLIB, _int2(*_TIMESTAMP)),
        _record(_LIBNAME, _ascii("LIB")),
        _record(_UNITS, _real8(0.001) + _real8(1e-9)),
        _record(_BGNSTR, _int2(*_TIMESTAMP)),
        _record(_STRNAME, _ascii(top)),
    ]
    for i, directive in enumerate(directives):
        parts += [
            _record(_TEXT),
            _record(_LAYER, _int2(_TEXT_LAYER)),
            _record(_TEXTTYPE, _int2(0)),
            _record(_XY, struct.pack(">2i", 0, i * 1000)),
            _record(_STRING, _ascii(directive_text(directive))),
            _record(_ENDEL),
        ]
    if die is not None:
        w, h = die
        parts += [
            _record(_BOUNDARY),
            _record(_LAYER, _int2(1)),
            _record(_DATATYPE, _int2(0)),
            _record(_XY, struct.pack(">10i", 0, 0, w, 0, w, h, 0, h, 0, 0)),
            _record(_ENDEL),
        ]
    parts += [_record(_ENDSTR), _record(_ENDLIB)]
    return b"".join(parts)


def gds_gz(top: str = "chip_top", *directives: str) -> bytes:
    """Same as :func:`gds`, gzip-compressed (reproducibly: mtime 0)."""
    return gzip.compress(gds(top, *directives), mtime=0)


def oasis(top: str = "chip_top", *directives: str) -> bytes:
    """OASIS magic followed by the cell name and directives as plain ASCII.

    Not a complete OASIS file: only what the simulator looks at.
    """
    body = "\n".join([top, *(directive_text(d) for d in directives)])
    return OASIS_MAGIC + body.encode("ascii") + b"\n"
