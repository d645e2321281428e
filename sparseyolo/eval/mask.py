"""Where a sparse model looked: the mask that ran, in the original image's pixels, and the objects it kept.

A sparse model's stem keeps an active mask on the (letterboxed) network input. Mapped back to the image it came
from, the mask answers the questions a user of a sparse model has: which share of the image was computed
(`active`), and did every object get looked at (`mask recall`: the share of ground-truth objects with at least
`MIN_COVER` of their box active). A speed-up that comes from skipping pixels is only worth its mask recall.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparseyolo.boxes import MIN_COVER, box_coverage, box_pixels  # noqa: F401  (public here too)


def mask_stats(mask: np.ndarray, boxes: np.ndarray, min_cover: float = MIN_COVER) -> dict:
    """`{"active", "n_objects", "n_kept", "mask_recall"}` of one image's mask `bool[h, w]` and its ground-truth
    xyxy boxes; `mask_recall` is None for an image without objects."""
    if not 0.0 < float(min_cover) <= 1.0:
        raise ValueError(f"min_cover must be a share in (0, 1], got {min_cover}")
    mask = np.asarray(mask, bool)
    cover = box_coverage(mask, boxes)
    kept = int((cover >= min_cover - 1e-9).sum())
    n = len(cover)
    return {
        "active": float(mask.mean()) if mask.size else 0.0,
        "n_objects": n,
        "n_kept": kept,
        "mask_recall": kept / n if n else None,
    }


def pooled_recall(per_image: list[dict | None]) -> float | None:
    """Dataset mask recall: kept objects over all objects (each object weighs the same), None without objects."""
    rows = [r for r in per_image if r]
    n = sum(r["n_objects"] for r in rows)
    return sum(r["n_kept"] for r in rows) / n if n else None


def save_overlay(
    image: np.ndarray, mask: np.ndarray, boxes: np.ndarray, path: Path, min_cover: float = MIN_COVER, max_side=2048
) -> Path:
    """Write `image (h, w, 3) uint8 RGB` with the inactive pixels darkened and each ground-truth box drawn green
    when kept (>= `min_cover` active), red when dropped; downscaled so its longest side is at most `max_side`."""
    from PIL import Image, ImageDraw

    image, mask = np.asarray(image), np.asarray(mask, bool)
    if image.shape[:2] != mask.shape:
        raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")
    shown = np.where(mask[..., None], image, (image * 0.3).astype(np.uint8))
    im = Image.fromarray(shown)
    scale = min(1.0, max_side / max(im.size))
    if scale < 1.0:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
    draw = ImageDraw.Draw(im)
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    for b, c in zip(boxes, box_coverage(mask, boxes), strict=True):
        colour = (0, 230, 0) if c >= min_cover - 1e-9 else (255, 40, 40)
        draw.rectangle([float(v) * scale for v in b], outline=colour, width=max(1, round(2 * scale)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, quality=85) if path.suffix.lower() in (".jpg", ".jpeg") else im.save(path)
    return path
