"""The window grid over a raster.

Windows of `window` pixels start every `window - overlap` pixels, so neighbours share `overlap` pixels. Each window
has a *core*: its share of the raster without overlap, `overlap / 2` inside its edges towards its neighbours (and
out to the raster's edge on the raster's border). The cores tile the raster exactly (half-open intervals, no gap,
no overlap), so every point of the raster belongs to exactly one core. A detection is kept by the one window whose
core holds its box centre: with `overlap >= ` the largest object, that window holds the whole object (the object
reaches at most half its size from its centre, the core stays `overlap / 2` inside the window), so no object is
cut in two and no object is kept twice.

Window origins are multiples of the model's stride, so a window sees the pixels on the same convolution grid as a
whole-image run would.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

DEFAULT_WINDOW = 4096
DEFAULT_MAX_OBJECT = 128  # px: the largest object the overlap is sized for (deepforest's crowns: 9-108 px)


@dataclass(frozen=True)
class Window:
    """One window of a raster: read region `[y0, y1) x [x0, x1)` (clipped to the raster) and its core
    `[cy0, cy1) x [cx0, cx1)`, in pixels of the raster; `index` is its position in row-major order."""

    index: int
    row: int
    col: int
    y0: int
    x0: int
    y1: int
    x1: int
    cy0: int
    cx0: int
    cy1: int
    cx1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0


def _int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


def default_overlap(max_object: int = DEFAULT_MAX_OBJECT) -> int:
    """The overlap for objects up to `max_object` px: twice their size, so a window's core keeps at least half the
    largest object (plus that much context) from the window's edge."""
    return 2 * _int("max_object", max_object, 1)


def check_window(window, overlap, stride: int) -> tuple[int, int]:
    """`(window, overlap)` checked against the model's `stride`: `window` rounded down and `overlap` rounded up to
    multiples of `stride` (window origins then fall on the stride grid). Raises `ValueError` saying what to use for
    a window smaller than the stride, a negative overlap, or an overlap that leaves no core."""
    stride = _int("stride", stride, 1)
    if isinstance(window, bool) or not isinstance(window, numbers.Integral):
        raise ValueError(f"window must be an int (pixels), got {window!r}")
    if window < stride:
        raise ValueError(
            f"window={window} is smaller than the model's stride ({stride} px): use window >= {stride} "
            f"(a multiple of {stride}; {DEFAULT_WINDOW} is the default)"
        )
    overlap = _int("overlap", overlap, 0)
    window = window // stride * stride
    overlap = math.ceil(overlap / stride) * stride
    if window - overlap < stride:
        raise ValueError(
            f"overlap={overlap} leaves no core in a window of {window} px (stride {stride}): use "
            f"window >= overlap + {stride} (e.g. window={max(DEFAULT_WINDOW, overlap + 8 * stride)}) or a smaller "
            "overlap"
        )
    return window, overlap


def axis_spans(size: int, window: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Windows along one axis of `size` px: `(start, end, core_start, core_end)`, ends clipped to `size`."""
    size = _int("size", size, 1)
    step = window - overlap
    if step < 1:
        raise ValueError(f"window ({window}) must be larger than overlap ({overlap})")
    n = max(1, math.ceil((size - overlap) / step))
    half = overlap // 2
    spans = []
    for k in range(n):
        s = k * step
        c0 = 0 if k == 0 else s + half
        c1 = size if k == n - 1 else s + window - half
        spans.append((s, min(s + window, size), c0, c1))
    return spans


def window_grid(height: int, width: int, window: int, overlap: int) -> list[Window]:
    """The windows of a `height x width` raster, row-major (see the module docstring)."""
    rows, cols = axis_spans(height, window, overlap), axis_spans(width, window, overlap)
    out = []
    for r, (y0, y1, cy0, cy1) in enumerate(rows):
        for c, (x0, x1, cx0, cx1) in enumerate(cols):
            out.append(Window(len(out), r, c, y0, x0, y1, x1, cy0, cx0, cy1, cx1))
    return out
