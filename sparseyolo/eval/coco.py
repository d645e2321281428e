"""COCO box metrics through pycocotools (the reference implementation), for a dataset and per image.

Ground truth is a COCO dict (`images`, `annotations`, `categories`); detections are COCO result rows
`{"image_id", "category_id", "bbox": [x, y, w, h], "score"}` in pixels of the original image.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np

# COCOeval.stats order
STAT_NAMES = ("map", "map50", "map75", "ap_small", "ap_medium", "ap_large")


def load_ground_truth(gt) -> dict:
    """A COCO ground-truth dict from a dict or a `.json` path (a clear error for a missing/corrupt file)."""
    if isinstance(gt, dict):
        return gt
    path = Path(gt)
    if not path.is_file():
        raise FileNotFoundError(f"COCO ground truth not found: {path}")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt COCO ground truth {path}: {e}") from e
    missing = [k for k in ("images", "annotations", "categories") if k not in d]
    if missing:
        raise ValueError(f"COCO ground truth {path} lacks {missing}")
    return d


def yolo_ground_truth(images: list[Path], names: dict) -> dict:
    """COCO ground truth from YOLO label files (`labels/` beside `images/`, normalised `cls cx cy w h`).

    Missing label files mean "no objects" (as in Ultralytics); a malformed row raises a ValueError naming the
    file and line."""
    from PIL import Image

    gt = {"images": [], "annotations": [], "categories": [{"id": int(k), "name": v} for k, v in names.items()]}
    for i, img in enumerate(images, start=1):
        with Image.open(img) as im:
            w, h = im.size
        gt["images"].append({"id": i, "file_name": img.name, "width": w, "height": h})
        label = label_path(img)
        if not label.is_file():
            continue
        for n, line in enumerate(label.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                c, cx, cy, bw, bh = (float(v) for v in line.split()[:5])
            except ValueError as e:
                raise ValueError(f"malformed YOLO label {label}:{n}: {line!r}") from e
            x0, y0 = max(0.0, (cx - bw / 2) * w), max(0.0, (cy - bh / 2) * h)
            x1, y1 = min(float(w), (cx + bw / 2) * w), min(float(h), (cy + bh / 2) * h)
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": i,
                    "category_id": int(c),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    return gt


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last `images` folder in the path becomes `labels`, the suffix `.txt`."""
    parts = list(image.parts)
    for j in range(len(parts) - 2, -1, -1):
        if parts[j] == "images":
            parts[j] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _evaluate(gt: dict, dets: list[dict], img_ids: list[int] | None = None) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        if not dets:
            return np.zeros(12)
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if img_ids is not None:
            ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.maximum(ev.stats, 0.0)  # pycocotools gives -1 where a size range has no objects


def coco_metrics(gt, dets: list[dict], per_image: bool = True) -> dict:
    """`{"map", "map50", "map75", "ap_small", "ap_medium", "ap_large", "per_image": {image_id: {...}}}`.

    Values are in [0, 1]; a size range without ground truth gives 0 (pycocotools' -1 clipped). Detections on
    image ids absent from the ground truth raise a ValueError."""
    gt = load_ground_truth(gt)
    known = {im["id"] for im in gt["images"]}
    unknown = sorted({d["image_id"] for d in dets} - known)
    if unknown:
        raise ValueError(f"detections refer to image ids not in the ground truth: {unknown[:5]}")
    stats = _evaluate(gt, dets)
    out = {k: float(v) for k, v in zip(STAT_NAMES, stats[:6], strict=True)}
    out["n_images"], out["n_objects"], out["n_detections"] = len(gt["images"]), len(gt["annotations"]), len(dets)
    if per_image:
        out["per_image"] = {}
        for im in gt["images"]:
            s = _evaluate(gt, [d for d in dets if d["image_id"] == im["id"]], [im["id"]])
            out["per_image"][im["id"]] = {k: float(v) for k, v in zip(STAT_NAMES, s[:6], strict=True)}
    return out


def to_coco_results(image_id: int, boxes_xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> list[dict]:
    """COCO result rows of one image from `(N, 4)` pixel boxes, `(N,)` scores and class ids."""
    rows = []
    for b, s, c in zip(np.asarray(boxes_xyxy, float), np.asarray(scores, float), np.asarray(classes), strict=True):
        rows.append(
            {
                "image_id": int(image_id),
                "category_id": int(c),
                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                "score": float(s),
            }
        )
    return rows
