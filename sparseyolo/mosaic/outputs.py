"""What a mosaic run writes for one input, each file atomically (a temporary file renamed into place):

- `<name>.geojson`: a FeatureCollection, one Polygon per box (its four corners through the raster's affine
  transform, counter-clockwise), properties `score`, `class` (id), `name` (class name) and the pixel box `bbox_px`;
  the CRS is recorded in the GeoJSON 2008 `crs` member (`urn:ogc:def:crs:EPSG::NNNN`, which GDAL/QGIS read) and as
  WKT in `crs_wkt`. Without georeferencing the coordinates are pixels (`"coordinates": "pixel"`, no `crs`).
- `<name>.csv`: one row per box in pixel coordinates: `x0, y0, x1, y1, score, class, name`.
- `<name>.coco.json`: COCO (`images`, `categories`, `annotations` with `score`) in pixel coordinates.
- `<name>.quicklook.jpg`: the raster downscaled to at most `QUICKLOOK` px a side, boxes scoring at least
  `QUICKLOOK_CONF` drawn.
- `<name>.done.json`, last: the settings and counts; a rerun with the same settings skips the input.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from sparseyolo.mosaic.merge import Detections
from sparseyolo.mosaic.raster import QUICKLOOK_SUFFIX, RasterInfo

QUICKLOOK = 1024  # longest side of the quick-look picture
QUICKLOOK_CONF = 0.25  # boxes drawn on it: those scoring at least this (Ultralytics' predict default); a run at
# conf=0.001 (for AP) has tens of thousands of boxes that would cover the picture
DONE = ".done.json"


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; it replaces `path` when the block succeeds and is removed otherwise."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_atomic(path: Path, data: str | bytes) -> Path:
    with atomic_path(path) as tmp:
        (tmp.write_bytes if isinstance(data, bytes) else tmp.write_text)(data)
    return Path(path)


def to_map(info: RasterInfo, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates `(x, y)` to map coordinates through the raster's affine transform."""
    a, b, c, d, e, f = info.transform
    return a * x + b * y + c, d * x + e * y + f


def geojson(det: Detections, info: RasterInfo, names: dict) -> dict:
    """The FeatureCollection of `det` (see the module docstring)."""
    b = det.boxes
    # corners in the order (x0, y1), (x1, y1), (x1, y0), (x0, y0): counter-clockwise for a north-up transform
    xs = np.stack([b[:, 0], b[:, 2], b[:, 2], b[:, 0]], 1)
    ys = np.stack([b[:, 3], b[:, 3], b[:, 1], b[:, 1]], 1)
    mx, my = to_map(info, xs, ys)
    a, bb, _, d, e, _ = info.transform
    if a * e - bb * d > 0:  # a transform that keeps the handedness of pixels (y down): reverse to stay CCW
        mx, my = mx[:, ::-1], my[:, ::-1]
    features = []
    for k in range(len(det)):
        ring = [[float(mx[k, j]), float(my[k, j])] for j in range(4)]
        ring.append(ring[0])
        cls = int(det.classes[k])
        features.append(
            {
                "type": "Feature",
                "id": k,
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "score": round(float(det.scores[k]), 6),
                    "class": cls,
                    "name": names.get(cls, str(cls)),
                    "bbox_px": [round(float(v), 3) for v in b[k]],
                },
            }
        )
    out = {"type": "FeatureCollection", "name": info.name}
    if info.crs is not None:
        if info.crs_name:
            code = info.crs_name.split(":")[1]
            out["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{code}"}}
        out["crs_wkt"] = info.crs
    else:
        out["coordinates"] = "pixel"
    out["source"] = {"path": info.path, "width": info.width, "height": info.height, "transform": list(info.transform)}
    out["features"] = features
    return out


def csv_text(det: Detections, names: dict) -> str:
    f = io.StringIO()
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["x0", "y0", "x1", "y1", "score", "class", "name"])
    for box, s, c in zip(det.boxes, det.scores, det.classes):
        w.writerow([*(f"{v:.3f}" for v in box), f"{float(s):.6f}", int(c), names.get(int(c), str(int(c)))])
    return f.getvalue()


def coco(det: Detections, info: RasterInfo, names: dict) -> dict:
    anns = []
    for k, (box, s, c) in enumerate(zip(det.boxes, det.scores, det.classes), start=1):
        x0, y0, x1, y1 = (float(v) for v in box)
        anns.append(
            {
                "id": k,
                "image_id": 1,
                "category_id": int(c),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "score": float(s),
                "iscrowd": 0,
            }
        )
    return {
        "images": [{"id": 1, "file_name": Path(info.path).name, "width": info.width, "height": info.height}],
        "categories": [{"id": int(k), "name": v} for k, v in sorted(names.items())],
        "annotations": anns,
    }


def quicklook_scale(height: int, width: int, size: int = QUICKLOOK) -> float:
    """The quick-look's scale: its longest side is at most `size` px."""
    return min(1.0, size / max(height, width))


def quicklook_piece(pixels: np.ndarray, window, scale: float) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """The core of `window` (`pixels`: the window's own) downscaled by `scale`: `((y0, x0, y1, x1), piece)` in
    quick-look pixels (None: the core is less than a quick-look pixel). Neighbouring cores meet without a gap."""
    from PIL import Image

    y0, x0 = int(round(window.cy0 * scale)), int(round(window.cx0 * scale))
    y1, x1 = int(round(window.cy1 * scale)), int(round(window.cx1 * scale))
    if y1 <= y0 or x1 <= x0:
        return None
    core = pixels[window.cy0 - window.y0 : window.cy1 - window.y0, window.cx0 - window.x0 : window.cx1 - window.x0]
    small = np.asarray(Image.fromarray(core).resize((x1 - x0, y1 - y0), Image.BOX))
    return (y0, x0, y1, x1), small


class QuickLook:
    """The downscaled picture of a raster, filled window core by window core (no second pass over the raster)."""

    def __init__(self, height: int, width: int, size: int = QUICKLOOK):
        self.scale = quicklook_scale(height, width, size)
        h, w = int(round(height * self.scale)), int(round(width * self.scale))
        self.canvas = np.zeros((max(1, h), max(1, w), 3), np.uint8)

    def paste(self, piece) -> None:
        if piece is not None:
            (y0, x0, y1, x1), small = piece
            self.canvas[y0:y1, x0:x1] = small

    def jpeg(self, det: Detections, min_score: float = QUICKLOOK_CONF) -> bytes:
        """The picture as JPEG, with the boxes scoring at least `min_score` drawn in red."""
        from PIL import Image, ImageDraw

        im = Image.fromarray(self.canvas)
        draw = ImageDraw.Draw(im)
        for x0, y0, x1, y1 in det.boxes[det.scores >= min_score] * self.scale:
            draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=(255, 40, 40))
        f = io.BytesIO()
        im.save(f, "JPEG", quality=88)
        return f.getvalue()


def output_paths(out: Path, name: str) -> dict[str, Path]:
    out = Path(out)
    return {
        "geojson": out / f"{name}.geojson",
        "csv": out / f"{name}.csv",
        "coco": out / f"{name}.coco.json",
        "quicklook": out / f"{name}{QUICKLOOK_SUFFIX}",
        "done": out / f"{name}{DONE}",
    }


def is_done(out: Path, name: str, settings: dict) -> bool:
    """True when `out` holds every output of `name`, written with `settings` (the marker is written last)."""
    paths = output_paths(out, name)
    if not all(p.is_file() for p in paths.values()):
        return False
    try:
        return json.loads(paths["done"].read_text()).get("settings") == settings
    except (ValueError, OSError):
        return False


def write_outputs(
    out: Path, info: RasterInfo, det: Detections, names: dict, quicklook: QuickLook, settings: dict, stats: dict
) -> dict[str, Path]:
    """Write every output of one input (see the module docstring), the `done` marker last."""
    paths = output_paths(out, info.name)
    Path(out).mkdir(parents=True, exist_ok=True)
    paths["done"].unlink(missing_ok=True)  # outputs being replaced: not done until the marker is back
    write_atomic(paths["geojson"], json.dumps(geojson(det, info, names)))
    write_atomic(paths["csv"], csv_text(det, names))
    write_atomic(paths["coco"], json.dumps(coco(det, info, names)))
    write_atomic(paths["quicklook"], quicklook.jpeg(det))
    marker = {"settings": settings, "source": info.path, "crs": info.crs_name or info.crs, **stats}
    write_atomic(paths["done"], json.dumps(marker, indent=1))
    return paths
