"""Sample mosaics for tests and benchmarks: a real georeferenced GeoTIFF and large composite GeoTIFFs.

- `osbs_029()`: `OSBS_029.tif` from deepforest 2.1.0's wheel (MIT; 400x400 RGB, 10 cm pixels, WGS 84 / UTM 17N),
  fetched once through `sparseyolo.data.registry` and cached.
- `build_mosaic(...)`: a large tiled GeoTIFF with a CRS and its ground truth, made of composite frames
  (`sparseyolo.data.composite`: real crowns of the held-out scene pasted on real validation ground) laid side by
  side, one frame in memory at a time. The ground truth is COCO (`<name>.gt.json`, pixel boxes of the mosaic).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

MOSAIC_FORMAT = 1  # bump when a build changes for the same parameters
CRS = "EPSG:32612"  # WGS 84 / UTM zone 12N: Yellowstone, where the crowns and the ground come from
PIXEL = 0.1  # metres per pixel (NEON's RGB mosaics)
ORIGIN = (528000.0, 4980000.0)  # upper-left corner in CRS metres


def osbs_029() -> Path:
    """Path of deepforest's `OSBS_029.tif` (downloaded with the wheel once, then cached)."""
    from sparseyolo.data.aerial import DEEPFOREST_REQUIREMENT
    from sparseyolo.data.registry import fetch_member_files

    return fetch_member_files(DEEPFOREST_REQUIREMENT, ["deepforest/data/OSBS_029.tif"], sdist=False)[0]


def default_transform():
    """`PIXEL`-metre north-up pixels from `ORIGIN` (rasterio's `Affine`)."""
    from affine import Affine

    return Affine(PIXEL, 0.0, ORIGIN[0], 0.0, -PIXEL, ORIGIN[1])


def write_geotiff(path, image: np.ndarray, crs: str | None = CRS, transform=None, tile: int = 256, **profile) -> Path:
    """Write `image` (`(H, W, C)` or `(H, W)`) as a tiled, deflate-compressed GeoTIFF with `crs` (None: none) and
    `transform` (default: `PIXEL` m pixels from `ORIGIN`). Extra `profile` keys go to rasterio (e.g. `nbits`)."""
    import rasterio

    a = image[..., None] if image.ndim == 2 else image
    h, w, c = a.shape
    prof = {
        "driver": "GTiff",
        "height": h,
        "width": w,
        "count": c,
        "dtype": str(a.dtype),
        "crs": crs,
        "transform": transform if transform is not None else default_transform(),
        "compress": "deflate",
    }
    if h >= tile and w >= tile:
        prof.update(tiled=True, blockxsize=tile, blockysize=tile)
    prof.update(profile)
    if crs is None:
        prof.pop("crs")
        if transform is None:
            prof.pop("transform")
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(a.transpose(2, 0, 1))
    return Path(path)


def _parts(size: int, tile: int) -> list[tuple[int, int]]:
    """`size` cut into `ceil(size / tile)` nearly equal parts: `(start, length)`."""
    n = max(1, math.ceil(size / tile))
    edges = [round(i * size / n) for i in range(n + 1)]
    return [(edges[i], edges[i + 1] - edges[i]) for i in range(n)]


def build_mosaic(
    out,
    size: int | tuple[int, int] = 16384,
    tile: int = 4096,
    fg: float = 0.01,
    seed: int = 0,
    block: int = 512,
    force: bool = False,
    progress: bool = False,
) -> Path:
    """Write `OUT/mosaic-<W>x<H>-fg<fg>-seed<seed>.tif`: a tiled (`block` px) GeoTIFF with CRS `CRS`, made of
    composite frames of about `tile` px laid side by side (real crowns on real ground, `fg` of each frame's area in
    boxes), and `<same>.gt.json`, its COCO ground truth. Returns the `.tif` path. A build with the same parameters
    is reused (`force`: rebuilt); files appear complete or not at all. Memory: one frame (~3x `tile`^2 x 3 bytes).
    """
    from rasterio.windows import Window
    from tqdm import tqdm

    from sparseyolo.data import composite
    from sparseyolo.data.aerial import coco_ground_truth

    width, height = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(width, height) < composite.WINDOW or tile < composite.WINDOW:
        raise ValueError(f"size and tile must be at least {composite.WINDOW} px, got size={size!r}, tile={tile!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"mosaic-{width}x{height}-fg{fg:g}-seed{seed}"
    tif, gt_path = out / f"{name}.tif", out / f"{name}.gt.json"
    params = {
        "format": MOSAIC_FORMAT,
        "width": width,
        "height": height,
        "tile": tile,
        "fg": fg,
        "seed": seed,
        "block": block,
        "crs": CRS,
        "pixel": PIXEL,
        "origin": list(ORIGIN),
    }
    if not force and tif.is_file() and gt_path.is_file():
        try:
            if json.loads(gt_path.read_text()).get("params") == params:
                return tif
        except ValueError:
            pass
    import rasterio

    ground, crowns = composite.ground_windows("val"), composite.crowns("val")
    rows, cols = _parts(height, tile), _parts(width, tile)
    boxes, frames = [], []
    tmp_tif, tmp_gt = out / f".{tif.name}.partial-{os.getpid()}", out / f".{gt_path.name}.partial-{os.getpid()}"
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": 3,
        "dtype": "uint8",
        "crs": CRS,
        "transform": default_transform(),
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    try:
        with rasterio.open(tmp_tif, "w", **profile) as ds:
            for i, (y, h) in enumerate(tqdm(rows, desc="mosaic rows", disable=not progress)):
                for j, (x, w) in enumerate(cols):
                    rng = np.random.default_rng([seed, i, j])
                    frame = composite.composite_frame(rng, ground, crowns, h, w, fg)
                    ds.write(frame.image.transpose(2, 0, 1), window=Window(x, y, w, h))
                    boxes.append(frame.boxes + np.array([x, y, x, y], np.float32))
                    frames.append({"x": x, "y": y, "width": w, "height": h, "fg": frame.fg, "boxes": len(frame.boxes)})
        all_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
        gt = coco_ground_truth([(tif.name, width, height, all_boxes)], composite.NAMES)
        gt["params"] = params
        gt["frames"] = frames
        gt["fg"] = float(
            ((all_boxes[:, 2] - all_boxes[:, 0]) * (all_boxes[:, 3] - all_boxes[:, 1])).sum() / (width * height)
        )
        tmp_gt.write_text(json.dumps(gt))
        os.replace(tmp_gt, gt_path)
        os.replace(tmp_tif, tif)
    finally:
        for p in (tmp_tif, tmp_gt):
            p.unlink(missing_ok=True)
    return tif
