"""Side-by-side evaluation of detectors and inference methods on the same images.

A *method* is how a model is run on a (possibly large) image:

- `native`: the whole image at its own resolution (longest side rounded up to a multiple of 32), batch 1;
- `640`: the whole image downscaled so its longest side is 640 (what most deployments do);
- `sahi`: sliced inference with the `sahi` package (640-pixel slices, overlap 0.2, plus SAHI's standard
  full-image pass, merged by SAHI's default GREEDYNMM; SAHI itself switches to NMS/IoU below conf 0.1, so the
  accuracy pass merges by NMS): what practitioners use for small objects today.

Detections are capped nowhere in practice: `EVAL_MAX_DET` per image in `predict` and per SAHI slice, pycocotools'
`maxDets` at least as large (`sparseyolo.eval.coco`); each result records the most detections one call returned and
whether a limit was reached (a warning too). Ultralytics' NMS also keeps at most `max_nms` (30000) candidates per
image before suppression, a fixed default its predictor does not expose: the count is recorded and checked too.

For each (model, method) and image: COCO metrics (faster-coco-eval) at a low confidence threshold, executed GFLOPs of
every forward the method ran (`sparseyolo.eval.flops`), the sparse stem's active fraction, and — in separate,
interleaved timing rounds at a deployment confidence threshold — batch-1 wall time p50/p90 of the whole call
(pre-processing, every forward, NMS/merging) and its peak resident-memory growth.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparseyolo.data.split import read_image
from sparseyolo.eval.coco import EVAL_MAX_DET, STAT_NAMES, coco_metrics, subset_ground_truth, to_coco_results
from sparseyolo.eval.flops import executed_flops
from sparseyolo.eval.mask import mask_stats, pooled_recall, save_overlay
from sparseyolo.memory import PeakRSS
from sparseyolo.nn import DFFNeck, SparseBlock

METHODS = ("native", "640", "sahi")
EVAL_CONF = 0.001  # COCO AP: keep (nearly) every detection, as Ultralytics' val does
DEPLOY_CONF = 0.25  # timing: Ultralytics' predict default
NMS_IOU = 0.7  # Ultralytics' default NMS IoU (predict and val)
SAHI_SLICE = 640
SAHI_OVERLAP = 0.2
EVAL_VERSION = 2  # bump when how a figure is measured changes (2: uncapped detections, subsets scored on themselves)


def max_nms() -> int:
    """Candidates Ultralytics' NMS keeps per image before suppression (a default its predictor does not expose)."""
    import inspect

    from ultralytics.utils import nms

    return int(inspect.signature(nms.non_max_suppression).parameters["max_nms"].default)


def eval_settings() -> dict:
    """Everything besides models, images and ground truth that the figures of `evaluate` depend on."""
    from importlib.metadata import version

    return {
        "version": EVAL_VERSION,
        "eval_conf": EVAL_CONF,
        "deploy_conf": DEPLOY_CONF,
        "iou": NMS_IOU,
        "max_det": EVAL_MAX_DET,
        "max_nms": max_nms(),
        "sahi_slice": SAHI_SLICE,
        "sahi_overlap": SAHI_OVERLAP,
        "packages": {p: version(p) for p in ("torch", "ultralytics", "sahi", "faster-coco-eval")},
    }


def native_imgsz(h: int, w: int, stride: int = 32) -> int:
    """Ultralytics `imgsz` that keeps an `h x w` image at (about) its own resolution: longest side, rounded up."""
    return int(np.ceil(max(h, w) / stride) * stride)


@dataclass
class Detections:
    boxes: np.ndarray  # (N, 4) xyxy pixels of the original image
    scores: np.ndarray  # (N,)
    classes: np.ndarray  # (N,) int


class ForwardRecorder:
    """Records the input of every forward of a DetectionModel (a pre-hook), to count FLOPs afterwards, and the
    most NMS candidates one forward gave: anchors whose best class score exceeds `conf` (output `(B, 4 + nc, A)`)."""

    def __init__(self, model, conf: float = EVAL_CONF):
        self.model, self.inputs, self.on, self.conf, self.most_candidates = model, [], False, conf, 0
        self.handles = [model.register_forward_pre_hook(self._hook), model.register_forward_hook(self._count)]

    def _hook(self, module, args):
        if self.on and args and hasattr(args[0], "shape"):
            self.inputs.append(args[0].detach().clone())

    def _count(self, module, args, output):
        y = output[0] if isinstance(output, (tuple, list)) else output
        if self.on and hasattr(y, "ndim") and y.ndim == 3 and y.shape[1] > 4:
            n = int((y[:, 4:].amax(1) > self.conf).sum(-1).max()) if y.shape[-1] else 0
            self.most_candidates = max(self.most_candidates, n)

    def close(self):
        for h in self.handles:
            h.remove()


@contextlib.contextmanager
def predict_overrides(yolo, **overrides):
    """Ultralytics `predict` arguments set on `yolo` for the calls inside (SAHI's wrapper passes no `max_det`)."""
    saved = {k: yolo.overrides[k] for k in overrides if k in yolo.overrides}
    yolo.overrides.update(overrides)
    try:
        yield yolo
    finally:
        for k in overrides:
            yolo.overrides.pop(k, None)
        yolo.overrides.update(saved)


def _sahi_model_class():
    from sahi.models.ultralytics import UltralyticsDetectionModel

    class SahiModel(UltralyticsDetectionModel):
        """SAHI's Ultralytics wrapper with `max_det` detections per slice (SAHI's own call leaves Ultralytics'
        default, 300) and the most detections one slice gave (`most_per_call`)."""

        max_det, most_per_call = EVAL_MAX_DET, 0

        def perform_batch_inference(self, images):
            with predict_overrides(self.model, max_det=self.max_det, iou=NMS_IOU):
                super().perform_batch_inference(images)
            counts = [len(p[0] if isinstance(p, tuple) else p) for p in self._original_predictions]
            self.most_per_call = max(self.most_per_call, *counts)

    return SahiModel


class Runner:
    """One model run by one method: `runner(image_rgb, conf) -> Detections`.

    At most `max_det` detections per model call (an image, or a SAHI slice); `most_per_call` is the most one call
    returned so far, so `most_per_call >= max_det` means the limit was reached."""

    def __init__(self, yolo, method: str, imgsz: int | None = None, max_det: int = EVAL_MAX_DET):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        if int(max_det) < 1:
            raise ValueError(f"max_det must be >= 1, got {max_det!r}")
        self.yolo, self.method, self.imgsz, self.max_det = yolo, method, imgsz, int(max_det)
        self._sahi = None
        self._most = 0

    @property
    def most_per_call(self) -> int:
        return max(self._most, self._sahi.most_per_call if self._sahi is not None else 0)

    def executed_model(self):
        """The DetectionModel the predictor really runs (Ultralytics' AutoBackend runs a fused copy)."""
        pred = getattr(self.yolo, "predictor", None)
        backend = getattr(pred, "model", None)
        inner = getattr(backend, "model", None)
        return inner if inner is not None and hasattr(inner, "model") else self.yolo.model

    def __call__(self, image: np.ndarray, conf: float) -> Detections:
        if self.method == "sahi":
            return self._sliced(image, conf)
        h, w = image.shape[:2]
        imgsz = self.imgsz or (640 if self.method == "640" else native_imgsz(h, w))
        bgr = np.ascontiguousarray(image[..., ::-1])  # Ultralytics reads numpy images as BGR
        r = self.yolo.predict(
            bgr, imgsz=imgsz, conf=conf, iou=NMS_IOU, max_det=self.max_det, device="cpu", verbose=False
        )[0]
        b = r.boxes
        self._most = max(self._most, len(b))
        return Detections(b.xyxy.cpu().numpy(), b.conf.cpu().numpy(), b.cls.cpu().numpy().astype(int))

    def _sliced(self, image: np.ndarray, conf: float) -> Detections:
        from sahi.predict import get_sliced_prediction

        if self._sahi is None:
            self._sahi = _sahi_model_class()(
                model=self.yolo, confidence_threshold=conf, device="cpu", image_size=self.imgsz or SAHI_SLICE
            )
            self._sahi.max_det = self.max_det
        self._sahi.confidence_threshold = conf  # one wrapper for every call: nothing built inside a timed call
        res = get_sliced_prediction(
            image,
            self._sahi,
            slice_height=SAHI_SLICE,
            slice_width=SAHI_SLICE,
            overlap_height_ratio=SAHI_OVERLAP,
            overlap_width_ratio=SAHI_OVERLAP,
            verbose=0,
        )
        preds = res.object_prediction_list
        boxes = np.array([p.bbox.to_xyxy() for p in preds], float).reshape(-1, 4)
        scores = np.array([p.score.value for p in preds], float)
        classes = np.array([p.category.id for p in preds], int)
        return Detections(boxes, scores, classes)


@dataclass
class Result:
    """Everything measured for one (model, method) over a set of images."""

    model: str
    method: str
    metrics: dict = field(default_factory=dict)
    images: list = field(default_factory=list)  # file names, in the order of the per-image lists below
    gflops: list = field(default_factory=list)  # per image: executed GFLOPs of every forward it ran
    gflops_groups: list = field(default_factory=list)  # per image: {group: GFLOPs}
    active: list = field(default_factory=list)  # per image: stem active fraction (None: dense)
    masks: list = field(default_factory=list)  # per image: `mask_stats` of the mask that ran (None: no one mask)
    latency: list = field(default_factory=list)  # seconds, all timed calls (all images)
    peak_mib: float | None = None
    detections: list = field(default_factory=list)  # COCO rows (eval conf)
    limits: dict = field(default_factory=dict)  # detection limits in force and how close the counts came

    def per_image(self, gt: dict) -> list[dict]:
        """One row per evaluated image (in `gt`'s order): its COCO metrics (None: no ground truth in that range),
        executed GFLOPs and active fraction, matched by file name."""
        k_of = {name: k for k, name in enumerate(self.images)}
        rows = []
        for im in gt["images"]:
            k = k_of.get(im["file_name"])
            if k is None:
                continue
            m = self.metrics.get("per_image", {}).get(im["id"], {})
            rows.append(
                {
                    "model": self.model,
                    "method": self.method,
                    "image": im["file_name"],
                    **{key: m.get(key) for key in ("map", "map50", "ap_small", "ap_medium", "ap_large")},
                    "gflops": self.gflops[k] if k < len(self.gflops) else None,
                    "active": self.active[k] if k < len(self.active) else None,
                    **self._mask_row(k),
                }
            )
        return rows

    def _mask_row(self, k: int) -> dict:
        m = self.masks[k] if k < len(self.masks) else None
        return {"mask_recall": m["mask_recall"], "objects_kept": m["n_kept"], "objects": m["n_objects"]} if m else {}

    def summary(self) -> dict:
        lat = sorted(self.latency)
        act = [a for a in self.active if a is not None]
        masks = [m for m in self.masks if m]
        if masks:  # the share of the images' own pixels (letterbox padding excluded)
            act = [m["active"] for m in masks]
        return {
            "model": self.model,
            "method": self.method,
            **{k: self.metrics.get(k) for k in STAT_NAMES},
            "gflops": float(np.mean(self.gflops)) if self.gflops else None,
            "active": float(np.mean(act)) if act else None,
            "mask_recall": pooled_recall(masks) if masks else None,
            "p50_ms": 1e3 * statistics.median(lat) if lat else None,
            "p90_ms": 1e3 * float(np.percentile(lat, 90)) if lat else None,
            "peak_mib": self.peak_mib,
            "n_images": self.metrics.get("n_images"),
            **self.limits,
        }


def _limits(res: Result, runner: Runner, rec: ForwardRecorder) -> dict:
    """The detection limits of the accuracy pass and whether one was reached (then also a warning)."""
    out = {
        "max_det": runner.max_det,  # per predict call: an image, or a SAHI slice
        "coco_max_dets": res.metrics["coco_max_dets"],
        "max_nms": max_nms(),
        "most_detections": res.metrics["most_detections"],  # on one image, after merging
        "most_per_call": runner.most_per_call,
        "most_nms_candidates": rec.most_candidates,
    }
    reached = []
    if out["most_per_call"] >= out["max_det"]:
        reached.append(f"max_det {out['max_det']} (a call returned {out['most_per_call']})")
    if out["most_nms_candidates"] > out["max_nms"]:
        reached.append(f"max_nms {out['max_nms']} ({out['most_nms_candidates']} candidates in one forward)")
    if out["most_detections"] > out["coco_max_dets"]:  # impossible by construction; checked all the same
        reached.append(f"COCO maxDets {out['coco_max_dets']}")
    out["limit_reached"] = bool(reached)
    if reached:
        warnings.warn(
            f"{res.model} · {res.method}: detection limit reached: {'; '.join(reached)}; its AP is a lower bound",
            stacklevel=3,
        )
    return out


def _flops_of(model, inputs: list, cache: dict) -> tuple[float, dict, float | None, list]:
    """Executed GFLOPs (total, by group), active fraction and the sparse stem's masks `bool[H, W]` (one per
    forward input image; empty for a dense model) of recorded forward inputs. A dense model's FLOPs depend on the
    input's shape only: they are counted on a copy of the model on the `meta` device (shapes, no arithmetic; the
    same count, tested) and cached by shape."""
    sparse = any(isinstance(m, (SparseBlock, DFFNeck)) for m in model.modules())  # FLOPs vary per image
    total, groups, actives, masks = 0.0, {}, [], []
    for x in inputs:
        key = tuple(x.shape)
        if sparse:
            f = executed_flops(model, x)
        elif key not in cache:
            if "meta" not in cache:
                cache["meta"] = _meta_copy(model)
            f = cache[key] = executed_flops(cache["meta"], x.to("meta"))
        else:
            f = cache[key]
        total += f["total"] / 1e9
        for g, v in f["groups"].items():
            groups[g] = groups.get(g, 0.0) + v / 1e9
        if f["active"] is not None:
            actives.append(f["active"])
        if f.get("mask") is not None:
            masks += list(f["mask"].cpu())
    return total, groups, (float(np.mean(actives)) if actives else None), masks


def _meta_copy(model):
    """A copy of `model` on the `meta` device, its strides (read as numbers by Detect's anchors) kept as they are."""
    import copy

    import torch

    meta = copy.deepcopy(model).to("meta")
    for m, orig in zip(meta.modules(), model.modules(), strict=True):
        if isinstance(getattr(orig, "stride", None), torch.Tensor):
            m.stride = orig.stride.clone()
    return meta


def _gt_boxes(gt: dict, image_id: int) -> np.ndarray:
    """`(N, 4)` xyxy ground-truth boxes of one image of a COCO dict."""
    boxes = [a["bbox"] for a in gt["annotations"] if a["image_id"] == image_id]
    b = np.asarray(boxes, float).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in text)


def _mask_of(masks: list, image: np.ndarray, boxes: np.ndarray, save: Path | None) -> dict | None:
    """Mask recall and active share of the one mask a whole-image method ran on `image` (None: no mask, or
    several forwards such as SAHI's slices, whose masks do not map to one image); optionally its overlay."""
    from sparseyolo.yolo.finder import to_image  # Ultralytics' letterbox: loaded with the models, not with eval

    if len(masks) != 1:
        return None
    m = to_image(masks[0], image.shape[:2])
    if save is not None:
        save_overlay(image, m, boxes, save)
    return mask_stats(m, boxes)


def evaluate(
    models: dict,
    images: list[Path],
    gt: dict,
    plan: list[tuple[str, str]] | None = None,
    repeats: int = 3,
    memory: bool = True,
    progress: bool = True,
    max_det: int = EVAL_MAX_DET,
    save_masks: str | Path | None = None,
) -> list[Result]:
    """Evaluate `(model name, method)` pairs of `plan` (default: every model with every method) on `images`
    (matched to `gt`'s `file_name`s; scored against those images only); `models[name]` is a `sparseyolo.YOLO`.
    Accuracy and FLOPs pass first (at most `max_det` detections per model call), then `repeats` interleaved
    timing rounds (every image, every pair), then one memory probe per pair on the largest image (with
    `repeats=0` that call's wall time is the pair's latency: one call on the largest image, for frames too large
    to time twice).

    A model with a sparse stem run on whole images also gets its mask recall (the share of ground-truth objects
    with at least 90% of their box active, `sparseyolo.eval.mask`) and the active share of the images' pixels;
    `save_masks`: a folder to write each of those masks over its image (`<model>-<method>/<image>.jpg`)."""
    from tqdm import tqdm

    by_name = {im["file_name"]: im["id"] for im in gt["images"]}
    missing = [p.name for p in images if p.name not in by_name]
    if missing:
        raise ValueError(f"images without ground truth: {missing[:5]}")
    if not images:
        raise ValueError("no images to evaluate")
    twice = sorted({p.name for p in images if [q.name for q in images].count(p.name) > 1})
    if twice:
        raise ValueError(f"images must have distinct file names (ground truth is matched by name), got {twice[:5]}")
    gt = subset_ground_truth(gt, [by_name[p.name] for p in images])  # a subset is scored on itself
    pixels = {p: read_image(p) for p in images}
    plan = plan if plan is not None else [(n, m) for n in models for m in METHODS]
    unknown = sorted({n for n, _ in plan} - set(models))
    if unknown:
        raise ValueError(f"plan names models that were not given: {unknown}")
    runners = {(n, m): Runner(models[n], m, max_det=max_det) for n, m in plan}
    results = {k: Result(*k) for k in runners}
    flop_cache: dict = {}
    bar = tqdm(total=len(runners) * len(images), desc="accuracy + FLOPs", disable=not progress, leave=False)
    for (name, method), runner in runners.items():
        runner(pixels[images[0]][:64, :64], DEPLOY_CONF)  # creates the predictor and its fused model copy (cheap)
        dm = runner.executed_model()
        rec = ForwardRecorder(dm)
        res = results[name, method]
        cache = flop_cache.setdefault(name, {})
        try:
            for p in images:
                rec.inputs, rec.on = [], True
                det = runner(pixels[p], EVAL_CONF)
                rec.on = False
                res.images.append(p.name)
                res.detections += to_coco_results(by_name[p.name], det.boxes, det.scores, det.classes)
                g, groups, act, masks = _flops_of(dm, rec.inputs, cache)
                res.gflops.append(g)
                res.gflops_groups.append(groups)
                res.active.append(act)
                save = None if save_masks is None else Path(save_masks) / _slug(f"{name}-{method}") / f"{p.stem}.jpg"
                res.masks.append(_mask_of(masks, pixels[p], _gt_boxes(gt, by_name[p.name]), save))
                bar.update()
        finally:
            rec.close()
        res.metrics = coco_metrics(gt, res.detections, max_det=runner.max_det)
        res.limits = _limits(res, runner, rec)
    bar.close()
    if repeats > 0:
        bar = tqdm(total=repeats * len(runners) * len(images), desc="latency", disable=not progress, leave=False)
        for _ in range(repeats):
            for key, runner in runners.items():
                for p in images:
                    t0 = time.perf_counter()
                    runner(pixels[p], DEPLOY_CONF)
                    results[key].latency.append(time.perf_counter() - t0)
                    bar.update()
        bar.close()
    if memory:
        probe = PeakRSS(pin_allocator=False)
        largest = max(images, key=lambda p: pixels[p].size)
        for key, runner in runners.items():
            t0 = time.perf_counter()
            _, results[key].peak_mib = probe.measure(lambda r=runner: r(pixels[largest], DEPLOY_CONF))
            if repeats == 0:  # no timing rounds: the probe's call is the one timed call
                results[key].latency.append(time.perf_counter() - t0)
    return list(results.values())
