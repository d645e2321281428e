"""COCO box metrics (COCO's algorithm through faster-coco-eval; pycocotools, the reference implementation, is
the tests' oracle), for a dataset and per image.

Ground truth is a COCO dict (`images`, `annotations`, `categories`); detections are COCO result rows
`{"image_id", "category_id", "bbox": [x, y, w, h], "score"}` in pixels of the original image.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np

# COCOeval.stats order, and the (IoU threshold, area range) each is averaged at (None: 0.50:0.95)
STAT_NAMES = ("map", "map50", "map75", "ap_small", "ap_medium", "ap_large")
STAT_SLICES = ((None, "all"), (0.5, "all"), (0.75, "all"), (None, "small"), (None, "medium"), (None, "large"))
EVAL_MAX_DET = 30_000  # detections kept per image (and per SAHI slice) for AP: Ultralytics' NMS keeps at most
# 30000 candidates (`max_nms`), so no lower limit than that one binds (an 8K frame gives ~22,000 at conf 0.001)


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


def coco_max_dets(dets: list[dict], max_det: int = EVAL_MAX_DET) -> list[int]:
    """pycocotools' `maxDets` for `dets`: `[1, 10, N]` with N = max(`max_det`, the most detections on one image),
    so the last limit, the one every figure here is read at, never drops a detection."""
    if int(max_det) < 1:
        raise ValueError(f"max_det must be >= 1, got {max_det!r}")
    counts = Counter(d["image_id"] for d in dets)
    return [1, 10, max(int(max_det), max(counts.values(), default=0))]


def subset_ground_truth(gt: dict, img_ids) -> dict:
    """`gt` restricted to the images `img_ids` and their annotations (categories kept)."""
    ids = set(img_ids)
    unknown = sorted(ids - {im["id"] for im in gt["images"]})
    if unknown:
        raise ValueError(f"image ids not in the ground truth: {unknown[:5]}")
    return {
        **gt,
        "images": [im for im in gt["images"] if im["id"] in ids],
        "annotations": [a for a in gt["annotations"] if a["image_id"] in ids],
    }


def _evaluate(gt: dict, dets: list[dict], max_dets: list[int]):
    """COCO's bbox evaluation of `dets` on `gt` at `max_dets`, evaluated and accumulated: faster-coco-eval's
    `COCOeval_faster` (pycocotools' algorithm and arrays, compiled; the tests compare it with pycocotools)."""
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        if dets:
            coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        else:  # an empty result set scores 0 where there is ground truth
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(gt["images"]), "annotations": [], "categories": gt["categories"]}
            coco_dt.createIndex()
        ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *a, **k: None)
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
    return ev


def _per_image(gt: dict, dets: list[dict], max_dets: list[int]) -> dict:
    """`{image id: figures}`: each image scored alone, at the dataset's `max_dets`."""
    by_image: dict = {}
    for d in dets:
        by_image.setdefault(d["image_id"], []).append(d)
    out = {}
    for im in gt["images"]:
        one = subset_ground_truth(gt, [im["id"]])
        out[int(im["id"])] = ap_figures(_evaluate(one, by_image.get(im["id"], []), max_dets))
    return out


def ap_figures(ev) -> dict:
    """`{name: AP or None}` of STAT_NAMES from an accumulated `COCOeval`, as its `_summarize` computes them but at
    the last `params.maxDets` (its `stats[0]` is hard-wired to maxDets=100 and reads -1 for any other list).

    precision (ndarray[T, R, K, A, M]): IoU thresholds x recall thresholds x categories x area ranges x maxDets,
    -1 where a category/size range has no ground truth."""
    p = ev.params
    precision = ev.eval["precision"]
    out = {}
    for name, (iou, area) in zip(STAT_NAMES, STAT_SLICES, strict=True):
        s = precision[:, :, :, p.areaRngLbl.index(area), -1]
        if iou is not None:
            s = s[np.isclose(p.iouThrs, iou)]
        valid = s[s > -1]
        out[name] = float(np.mean(valid)) if valid.size else None
    return out


def coco_metrics(gt, dets: list[dict], per_image: bool = True, max_det: int = EVAL_MAX_DET) -> dict:
    """`{"map", "map50", "map75", "ap_small", "ap_medium", "ap_large", "n_images", "n_objects", "n_detections",
    "coco_max_dets", "most_detections", "per_image": {image_id: {...}}}`.

    AP values are in [0, 1], or None where a size range (for `map`...: the images) has no ground truth. Scored
    with COCO's algorithm (faster-coco-eval, equal to pycocotools) at `maxDets` that never drop a detection
    (`coco_max_dets`); `most_detections` is the largest count on one image. Detections on image ids absent from
    the ground truth raise a ValueError."""
    gt = load_ground_truth(gt)
    known = {im["id"] for im in gt["images"]}
    unknown = sorted({d["image_id"] for d in dets} - known)
    if unknown:
        raise ValueError(f"detections refer to image ids not in the ground truth: {unknown[:5]}")
    max_dets = coco_max_dets(dets, max_det)
    ev = _evaluate(gt, dets, max_dets)
    out = ap_figures(ev)
    counts = Counter(d["image_id"] for d in dets)
    out["n_images"], out["n_objects"], out["n_detections"] = len(gt["images"]), len(gt["annotations"]), len(dets)
    out["coco_max_dets"], out["most_detections"] = max_dets[-1], max(counts.values(), default=0)
    if per_image:
        out["per_image"] = _per_image(gt, dets, max_dets)
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
