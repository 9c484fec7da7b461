"""Renders of a layout made the way the real flow's render step makes them (a layout view of
the whole top cell, `width` pixels wide and as high as the layout's aspect asks), and where the
layout's shapes landed in them: what the page's µm-to-pixel mapping is held against."""

from __future__ import annotations

import tempfile
from pathlib import Path

import klayout.lay as klay


def render_like_the_flow(layout: bytes, width: int) -> bytes:
    """The PNG the flow's render step writes for this layout (without its layer colours)."""
    with tempfile.TemporaryDirectory() as folder:
        source, image = Path(folder) / "layout.gds", Path(folder) / "render.png"
        source.write_bytes(layout)
        view = klay.LayoutView()
        view.set_config("background-color", "#000000")
        view.set_config("grid-visible", "false")
        view.load_layout(str(source))
        view.max_hier()
        box = view.active_cellview().layout().top_cell().dbbox()
        view.save_image_with_options(str(image), width, int(width / (box.width() / box.height())))
        return image.read_bytes()


def drawn_bounds(png: bytes) -> tuple[int, int, int, int]:
    """Left, top, right and bottom pixel of what is drawn on the middle row and column (the
    background is black)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "render.png"
        path.write_bytes(png)
        pixels = klay.PixelBuffer.read_png(str(path))
    width, height = pixels.width(), pixels.height()

    def drawn(x: int, y: int) -> bool:
        return pixels.pixel(x, y) & 0xFFFFFF != 0

    xs = [x for x in range(width) if drawn(x, height // 2)]
    ys = [y for y in range(height) if drawn(width // 2, y)]
    return xs[0], ys[0], xs[-1], ys[-1]
