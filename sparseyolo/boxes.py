"""Boxes on pixel masks: which pixels a box holds and how much of it a mask covers (numpy only).

A neutral low module: the foreground finder (`sparseyolo.nn.finder`) calibrates with it and the evaluation
(`sparseyolo.eval.mask`) measures with it, so both count a kept object the same way.
"""

from __future__ import annotations

import numpy as np

MIN_COVER = 0.9  # an object counts as kept when at least this share of its box is active


def box_pixels(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Integer pixel ranges `int[N, 4]` (x0, y0, x1, y1; end exclusive) of float xyxy `boxes (N, 4)`: the pixels
    whose centres lie inside the box, at least one pixel per box, clipped to `shape (h, w)`."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    h, w = shape
    x0 = np.ceil(b[:, 0] - 0.5)
    y0 = np.ceil(b[:, 1] - 0.5)
    x1 = np.floor(b[:, 2] - 0.5) + 1
    y1 = np.floor(b[:, 3] - 0.5) + 1
    x1, y1 = np.maximum(x1, x0 + 1), np.maximum(y1, y0 + 1)  # a box smaller than a pixel still has one
    x0, x1 = np.clip(x0, 0, w - 1), np.clip(x1, 1, w)
    y0, y1 = np.clip(y0, 0, h - 1), np.clip(y1, 1, h)
    return np.stack([x0, y0, np.maximum(x1, x0 + 1), np.maximum(y1, y0 + 1)], 1).astype(np.int64)


def box_coverage(mask: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """`float[N]`: the active share of each xyxy box `(N, 4)` in `mask bool[h, w]` (summed-area table)."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"box_coverage expects a mask bool[h, w], got shape {mask.shape}")
    px = box_pixels(boxes, mask.shape)
    if not len(px):
        return np.zeros(0)
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    sat[1:, 1:] = mask.cumsum(0).cumsum(1)
    x0, y0, x1, y1 = px.T
    inside = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    return inside / ((x1 - x0) * (y1 - y0))
