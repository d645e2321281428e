"""The evaluation's figures are true: no detection limit binds (pycocotools, predict, SAHI slices), the six AP
figures are read at the limit actually used, empty size ranges are n/a, a subset is scored on itself, per-image
rows are matched by file name, and the latency and memory probes measure what they claim."""

from __future__ import annotations

import copy
import csv
import json
import time
import warnings
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sparseyolo import YOLO
from sparseyolo.eval import compare
from sparseyolo.eval.coco import (
    EVAL_MAX_DET,
    STAT_NAMES,
    ap_figures,
    coco_metrics,
    subset_ground_truth,
    to_coco_results,
)
from sparseyolo.eval.compare import DEPLOY_CONF, EVAL_CONF, ForwardRecorder, Runner, evaluate
from sparseyolo.eval.report import limits_note, rows_table, write_rows

pytest.importorskip("pycocotools")
pytest.importorskip("sahi")

SMALL, MEDIUM, LARGE = 20, 40, 120  # box sides: COCO area ranges < 32^2, < 96^2, above


def grid_boxes(n: int, side: int, origin=(0, 0), pitch: int | None = None) -> np.ndarray:
    """`(n, 4)` xyxy boxes of `side` px on a grid (no two overlap)."""
    pitch = pitch or side + 10
    cols = int(np.ceil(np.sqrt(n)))
    k = np.arange(n)
    x0, y0 = origin[0] + (k % cols) * pitch, origin[1] + (k // cols) * pitch
    return np.stack([x0, y0, x0 + side, y0 + side], 1).astype(float)


def coco_gt(boxes: list[np.ndarray], size: int = 4000, classes: list[np.ndarray] | None = None) -> dict:
    """COCO ground truth with one image per entry of `boxes` (xyxy), image ids 1..n."""
    gt = {"images": [], "annotations": [], "categories": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}]}
    for i, b in enumerate(boxes, start=1):
        gt["images"].append({"id": i, "file_name": f"{i:03d}.png", "width": size, "height": size})
        cls = np.zeros(len(b), int) if classes is None else classes[i - 1]
        for (x0, y0, x1, y1), c in zip(b, cls, strict=True):
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


def perfect(gt: dict, seed: int = 0) -> list[dict]:
    """One detection on every ground-truth box, with distinct random scores."""
    scores = np.random.default_rng(seed).uniform(0.3, 1.0, len(gt["annotations"]))
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": float(s)}
        for a, s in zip(gt["annotations"], scores, strict=True)
    ]


def test_perfect_detections_beyond_300_objects_score_one():
    """Before the fix pycocotools kept the best 100 detections of an image: 400 perfect detections read ~0.25."""
    many = np.concatenate([grid_boxes(200, SMALL), grid_boxes(200, MEDIUM, origin=(0, 1000), pitch=60)])
    gt = coco_gt([many, grid_boxes(3, LARGE, pitch=200), grid_boxes(350, SMALL)])
    m = coco_metrics(gt, perfect(gt))
    assert {k: m[k] for k in STAT_NAMES} == {k: pytest.approx(1.0) for k in STAT_NAMES}
    assert m["most_detections"] == 400 and m["coco_max_dets"] == EVAL_MAX_DET and m["n_objects"] == 753
    per = m["per_image"]
    assert per[1]["map"] == pytest.approx(1.0) and per[1]["ap_large"] is None  # no large box on image 1
    assert per[2]["ap_large"] == pytest.approx(1.0) and per[2]["ap_small"] is None and per[2]["ap_medium"] is None
    # pycocotools' maxDets follows the most detections on an image when max_det is lower: still nothing dropped
    low = coco_metrics(gt, perfect(gt), per_image=False, max_det=50)
    assert low["coco_max_dets"] == 400 and low["map"] == pytest.approx(1.0)
    # no large box anywhere: n/a, not 0
    gt2 = coco_gt([many])
    m2 = coco_metrics(gt2, perfect(gt2))
    assert m2["ap_large"] is None and m2["map"] == pytest.approx(1.0) and m2["ap_small"] == pytest.approx(1.0)
    assert coco_metrics(gt2, [])["map"] == 0.0 and coco_metrics(gt2, [])["ap_large"] is None


def test_half_found_reads_51_of_101():
    """Independent oracle: every detection correct, half the 400 objects found -> precision 1 at the 51 recall
    thresholds 0.00..0.50 of COCO's 101, 0 above: AP = 51/101 at every IoU."""
    gt = coco_gt([grid_boxes(400, SMALL)])
    dets = perfect(gt)[::2]
    m = coco_metrics(gt, dets)
    for k in ("map", "map50", "map75", "ap_small"):
        assert m[k] == pytest.approx(51 / 101), k
    assert m["ap_medium"] is None and m["ap_large"] is None


def _noisy(gt: dict, seed: int, per_image_cap: int | None = None) -> list[dict]:
    """Jittered detections of most boxes plus false positives, random scores."""
    rng = np.random.default_rng(seed)
    out = []
    for a in gt["annotations"]:
        if rng.random() < 0.8:
            x, y, w, h = a["bbox"]
            j = rng.normal(0, 0.08, 4) * [w, h, w, h]
            out.append({**_row(a, rng), "bbox": [x + j[0], y + j[1], w + j[2], h + j[3]]})
    for im in gt["images"]:
        for _ in range(15):
            x, y, s = *rng.uniform(0, 3000, 2), rng.uniform(10, 150)
            out.append({"image_id": im["id"], "category_id": int(rng.integers(0, 2)), "bbox": [x, y, s, s],
                        "score": float(rng.random())})  # fmt: skip
    if per_image_cap:
        out = [d for i in {d["image_id"] for d in out} for d in
               sorted((d for d in out if d["image_id"] == i), key=lambda d: -d["score"])[:per_image_cap]]  # fmt: skip
    return out


def _row(a, rng):
    return {"image_id": a["image_id"], "category_id": a["category_id"], "score": float(rng.random())}


def _noisy_gt(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    boxes = [
        np.concatenate([grid_boxes(20, SMALL), grid_boxes(15, MEDIUM, origin=(0, 1500), pitch=60)]),
        np.concatenate([grid_boxes(4, LARGE, pitch=200), grid_boxes(30, SMALL, origin=(1000, 1000))]),
        grid_boxes(25, MEDIUM, pitch=70),
        np.zeros((0, 4)),
    ]
    return coco_gt(boxes, classes=[rng.integers(0, 2, len(b)) for b in boxes])


def test_figures_equal_pycocotools_summarize_where_its_limit_does_not_bind():
    """Oracle: pycocotools' own `summarize()` (maxDets 100) on detections with <= 100 per image."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = _noisy_gt()
    dets = _noisy(gt, 1, per_image_cap=100)
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    want = {k: (None if v == -1 else pytest.approx(float(v), abs=1e-12)) for k, v in zip(STAT_NAMES, ev.stats)}
    assert ap_figures(ev) == want
    m = coco_metrics(gt, dets)
    assert {k: m[k] for k in STAT_NAMES} == want
    assert all(0.0 < m[k] < 1.0 for k in STAT_NAMES)


def _pycocotools_figures(gt: dict, dets: list[dict], max_dets: list[int], img_ids=None) -> dict:
    """The six figures by pycocotools itself (the reference implementation) at `max_dets`."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
    ev.params.maxDets = list(max_dets)
    if img_ids is not None:
        ev.params.imgIds = list(img_ids)
    ev.evaluate(), ev.accumulate()
    return ap_figures(ev)


def test_figures_equal_pycocotools_beyond_100_detections_per_image():
    """Oracle: pycocotools (the scorer here is faster-coco-eval) at the same uncapped maxDets, over the dataset
    and per image, on hundreds of noisy detections per image with both classes and every size range."""
    gt = _noisy_gt()
    dets = _noisy(gt, 2) + _noisy(gt, 3) + _noisy(gt, 4)  # ~150 per image: beyond pycocotools' 100
    assert max(Counter(d["image_id"] for d in dets).values()) > 100
    m = coco_metrics(gt, dets)
    max_dets = [1, 10, m["coco_max_dets"]]
    want = _pycocotools_figures(gt, dets, max_dets)
    assert {k: m[k] for k in STAT_NAMES} == {
        k: v if v is None else pytest.approx(v, abs=1e-12) for k, v in want.items()
    }
    for im in gt["images"]:
        one = _pycocotools_figures(gt, dets, max_dets, [im["id"]])
        approx = {k: v if v is None else pytest.approx(v, abs=1e-12) for k, v in one.items()}
        assert m["per_image"][im["id"]] == approx, im["id"]


def test_per_image_figures_equal_each_image_scored_alone():
    gt = _noisy_gt(3)
    dets = _noisy(gt, 4)
    m = coco_metrics(gt, dets)
    assert set(m["per_image"]) == {1, 2, 3, 4}
    for im in gt["images"]:
        alone = coco_metrics(subset_ground_truth(gt, [im["id"]]), [d for d in dets if d["image_id"] == im["id"]])
        assert m["per_image"][im["id"]] == {k: alone[k] for k in STAT_NAMES}, im["id"]
    assert all(v is None for v in m["per_image"][4].values())  # an image without objects: nothing to score
    with pytest.raises(ValueError, match="not in the ground truth"):
        subset_ground_truth(gt, [9])


def _rows(**over):
    base = {"model": "m", "method": "native", "map": 0.5, "map50": 0.7, "map75": 0.4, "ap_small": 0.3,
            "ap_medium": 0.6, "ap_large": None, "gflops": 2.0, "active": None, "max_det": 10000,
            "coco_max_dets": 10000, "max_nms": 30000, "most_detections": 3450, "most_per_call": 3450,
            "limit_reached": False}  # fmt: skip
    return [{**base, **over}]


def test_tables_show_na_and_the_limits(tmp_path):
    text = rows_table(_rows(), markdown=False)
    head, row, note = text.splitlines()
    assert "AP_large" in head and row.split()[6] == "n/a" and "active" not in head  # all-None non-AP: dropped
    assert note == (
        "limits: max_det 10000 per image/slice, COCO maxDets 10000, NMS candidates 30000; most detections on one "
        "image: 3450, in one call: 3450; no limit reached"
    )
    md = rows_table(_rows(limit_reached=True, most_per_call=10000))
    assert "| n/a |" in md and "LIMIT REACHED (AP is a lower bound): m · native" in md
    assert limits_note([{"model": "m", "method": "x", "map": 0.1}]) == ""
    write_rows(_rows(), tmp_path / "t")
    with open(tmp_path / "t.csv") as f:
        row = next(csv.DictReader(f))
    assert row["ap_large"] == "n/a" and row["map"] == "0.5"
    assert json.loads((tmp_path / "t.json").read_text())[0]["ap_large"] is None


# --- evaluate() with a scripted model -----------------------------------------------------------------


class Scripted(torch.nn.Identity):
    """Stands for a YOLO: `Runner` is patched to return the ground truth of the image whose first pixel encodes
    its index k (moved off every box unless k is in `perfect`), to run this module on `k + 1` zeros (counted as k
    GFLOPs), and at the deployment confidence to sleep `sleep_s` and touch `alloc_mib` MiB."""

    def __init__(self, gt: dict, perfect: set, sleep_s: float = 0.0, alloc_mib: int = 0):
        super().__init__()
        self.gt, self.perfect, self.sleep_s, self.alloc_mib = gt, perfect, sleep_s, alloc_mib


def _scripted_call(self, image, conf):
    net, k = self.yolo, int(image[0, 0, 0])
    net(torch.zeros(k + 1))  # recorded; its "FLOPs": k (patched executed_flops)
    if conf == DEPLOY_CONF:
        time.sleep(net.sleep_s)
        if net.alloc_mib:
            np.ones(net.alloc_mib << 20, np.uint8).sum()
    image_id = next(im["id"] for im in net.gt["images"] if im["file_name"] == f"{k:03d}.png")
    boxes = np.array(
        [[x, y, x + w, y + h] for a in net.gt["annotations"] if a["image_id"] == image_id for x, y, w, h in [a["bbox"]]]
    ).reshape(-1, 4)
    hit = k in net.perfect
    boxes = boxes if hit else boxes + 1000.0  # every box misses, at a lower score than any hit
    return compare.Detections(boxes, np.full(len(boxes), 0.9 if hit else 0.5), np.zeros(len(boxes), int))


@pytest.fixture
def scripted(monkeypatch, tmp_path):
    """20 images (`000.png`...; first pixel = index) with 1-4 boxes each, and their ground truth."""
    from PIL import Image

    from sparseyolo.data.split import yolo_ground_truth

    monkeypatch.setattr(compare.Runner, "__call__", _scripted_call)
    monkeypatch.setattr(compare.Runner, "executed_model", lambda self: self.yolo)
    monkeypatch.setattr(compare, "executed_flops", lambda model, x: {"total": (x.numel() - 1) * 1e9, "groups": {},
                                                                      "active": None})  # fmt: skip
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(0)
    images = []
    for k in range(20):
        img = np.zeros((64, 96 if k == 7 else 64, 3), np.uint8)
        img[0, 0, 0] = k
        Image.fromarray(img).save(tmp_path / "images" / f"{k:03d}.png")
        n = 1 + k % 4
        xy = rng.uniform(0.2, 0.8, (n, 2))
        (tmp_path / "labels" / f"{k:03d}.txt").write_text("".join(f"0 {x} {y} 0.1 0.1\n" for x, y in xy))
        images.append(tmp_path / "images" / f"{k:03d}.png")
    return images, yolo_ground_truth(images, {0: "a"})


def test_evaluate_scores_a_subset_on_itself(scripted):
    """Before the fix, perfect detections on 2 of 20 images were scored against all 20 (mAP50 ~0.1)."""
    images, gt = scripted
    net = Scripted(gt, perfect={3, 11})
    (r,) = evaluate({"s": net}, [images[11], images[3]], gt, [("s", "native")], 0, False, False)
    assert [r.metrics[k] for k in ("map", "map50", "map75")] == [pytest.approx(1.0)] * 3
    assert r.metrics["n_images"] == 2 and r.metrics["n_objects"] == 4 + 4  # images 3 and 11: 4 boxes each
    assert r.summary()["n_images"] == 2 and r.limits["limit_reached"] is False
    (whole,) = evaluate({"s": net}, images, gt, [("s", "native")], 0, False, False)
    # on all 20: 8 of 50 objects found, ranked above every miss -> precision 1 at the recall thresholds <= 0.16
    assert len(gt["annotations"]) == 50 and whole.metrics["map50"] == pytest.approx(17 / 101, abs=0.011)


def test_per_image_rows_are_matched_by_file_name(scripted):
    images, gt = scripted
    order = list(np.random.default_rng(1).permutation(len(images)))
    shuffled = [images[k] for k in order]
    net = Scripted(gt, perfect={k for k in range(20) if k % 3 == 0})
    (r,) = evaluate({"s": net}, shuffled, gt, [("s", "native")], 0, False, False)
    assert r.images == [p.name for p in shuffled] and r.gflops == [float(k) for k in order]
    rows = r.per_image(gt)
    assert [row["image"] for row in rows] == [im["file_name"] for im in gt["images"]]  # ground truth's order
    for row in rows:
        k = int(row["image"][:3])
        assert row["gflops"] == float(k)  # this image's own forward, not the k-th in the list
        assert row["map50"] == pytest.approx(1.0 if k % 3 == 0 else 0.0)
    (sub,) = evaluate({"s": net}, shuffled[:5], gt, [("s", "native")], 0, False, False)
    assert sorted(row["image"] for row in sub.per_image(gt)) == sorted(p.name for p in shuffled[:5])
    with pytest.raises(ValueError, match="distinct file names"):
        evaluate({"s": net}, [images[0], images[0]], gt, [("s", "native")], 0, False, False)


def test_latency_and_memory_probes_measure_the_call(scripted):
    """Latency: one sample per (round, image), each at least the call's 30 ms sleep; memory: a call that touches
    200 MiB reports at least that (the probe wraps the call on the largest image)."""
    images, gt = scripted
    net = Scripted(gt, perfect=set(), sleep_s=0.03, alloc_mib=200)
    (r,) = evaluate({"s": net}, images[5:9], gt, [("s", "native")], repeats=3, memory=True, progress=False)
    assert len(r.latency) == 3 * 4 and min(r.latency) >= 0.03
    assert 0.98 * 200 <= r.peak_mib < 400  # the growth of the resident set: a few pages may be handed back
    s = r.summary()
    assert s["p50_ms"] >= 30 and s["p90_ms"] >= s["p50_ms"] and s["peak_mib"] == r.peak_mib
    (quiet,) = evaluate({"s": Scripted(gt, set())}, images[5:9], gt, [("s", "native")], 1, True, False)
    assert quiet.peak_mib < 50 and max(quiet.latency) < 0.03


def test_peak_rss_probe():
    from sparseyolo.bench.common import PeakRSS

    probe = PeakRSS(pin_allocator=False)
    if not probe.available:
        pytest.skip(f"peak-RSS probe unavailable: {probe.reason}")
    out, mib = probe.measure(lambda: int(np.ones(200 << 20, np.uint8).sum()))
    assert out == 200 << 20 and 0.98 * 200 <= mib < 260
    _, small = probe.measure(lambda: sum(range(1000)))
    assert small < 20


# --- detection limits in predict and SAHI --------------------------------------------------------------


def every_anchor_model():
    """YOLOv8n whose head detects class 0 at every stride-8 anchor: a `stride x stride` box centred on it (DFL
    distance 0.5 stride each side), score sigmoid(4); no two boxes overlap, so NMS keeps them all: 6400 true
    detections on a 640 x 640 input, 1600 at 320."""
    y = YOLO("yolov8n.yaml")
    det = y.model.model[-1]
    y.model.names = {i: f"c{i}" for i in range(det.nc)}
    with torch.no_grad():
        for i in range(det.nl):
            box, cls = det.cv2[i][-1], det.cv3[i][-1]
            box.weight.zero_(), cls.weight.zero_()
            bias = torch.full((4, det.reg_max), -20.0)
            bias[:, :2] = 20.0
            box.bias.copy_(bias.flatten())
            cls.bias.fill_(-20.0)
            if i == 0:
                cls.bias[0] = 4.0
    return y


def test_predict_and_sahi_slices_are_not_capped():
    """Ultralytics' default max_det (300) used to cap every SAHI slice and 1000 capped predict."""
    from sahi.models.ultralytics import UltralyticsDetectionModel
    from sahi.predict import get_sliced_prediction

    y = every_anchor_model()
    img = np.full((640, 640, 3), 100, np.uint8)
    native = Runner(y, "native")
    d = native(img, EVAL_CONF)
    assert len(d.boxes) == 6400 == native.most_per_call
    sliced = Runner(y, "sahi", imgsz=320)  # the one 640 slice (and no full-image pass) predicted at 320
    d = sliced(img, EVAL_CONF)
    assert sliced.most_per_call == 1600 and len(d.boxes) == 1600
    assert "max_det" not in y.overrides  # the per-slice limit is set for SAHI's calls only
    plain = UltralyticsDetectionModel(model=y, confidence_threshold=EVAL_CONF, device="cpu", image_size=320)
    res = get_sliced_prediction(img, plain, 640, 640, 0.2, 0.2, verbose=0)
    assert len(res.object_prediction_list) == 300  # SAHI's own call: Ultralytics' default cap per slice
    capped = Runner(y, "native", max_det=500)
    assert len(capped(img, EVAL_CONF).boxes) == 500 and capped.most_per_call >= capped.max_det
    with pytest.raises(ValueError, match="max_det"):
        Runner(y, "native", max_det=0)


def test_a_reached_limit_is_reported(tmp_path):
    from PIL import Image

    y = every_anchor_model()
    Image.fromarray(np.full((640, 640, 3), 100, np.uint8)).save(tmp_path / "a.png")
    gt = coco_gt([grid_boxes(5, 8, pitch=8)], size=640)
    gt["images"][0]["file_name"] = "a.png"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (r,) = evaluate({"e": y}, [tmp_path / "a.png"], gt, [("e", "native")], 0, False, False)
    assert not [w for w in caught if "limit reached" in str(w.message)]
    assert r.limits == {
        "max_det": EVAL_MAX_DET,
        "coco_max_dets": EVAL_MAX_DET,
        "max_nms": 30000,
        "most_detections": 6400,
        "most_per_call": 6400,
        "most_nms_candidates": 6400,
        "limit_reached": False,
    }
    assert r.metrics["n_detections"] == 6400 and r.metrics["map50"] > 0
    with pytest.warns(UserWarning, match=r"e · native: detection limit reached: max_det 500"):
        (r,) = evaluate({"e": y}, [tmp_path / "a.png"], gt, [("e", "native")], 0, False, False, max_det=500)
    assert r.limits["limit_reached"] and r.summary()["limit_reached"] and r.limits["most_per_call"] == 500
    assert "LIMIT REACHED" in rows_table([r.summary()])


def test_nms_candidates_beyond_max_nms_are_reported():
    net = torch.nn.Module()
    net.forward = lambda x: (torch.cat([torch.zeros(1, 4, 40000), torch.full((1, 2, 40000), 0.5)], 1), None)
    rec = ForwardRecorder(net)
    rec.on = True
    net(torch.zeros(1))
    rec.close()
    assert rec.most_candidates == 40000 and compare.max_nms() == 30000
    res = compare.Result("m", "native", metrics={"coco_max_dets": 10000, "most_detections": 12})
    with pytest.warns(UserWarning, match="max_nms 30000 .40000 candidates"):
        limits = compare._limits(res, SimpleNamespace(max_det=10000, most_per_call=12), rec)
    assert limits["limit_reached"]


def test_sahi_runner_equals_sahi_called_directly():
    """Oracle: SAHI's own wrapper and `get_sliced_prediction`, with max_det given to the model the way a user
    would (the model's overrides), on a crop of the held-out scene (4 slices + the full-image pass)."""
    from sahi.models.ultralytics import UltralyticsDetectionModel
    from sahi.predict import get_sliced_prediction
    from yolo_utils import require_aerial_data

    from sparseyolo.data.aerial import VAL_SCENES, load_scene
    from sparseyolo.yolo.reference import shipped_names

    if "yolov8n-aerial" not in shipped_names():
        pytest.skip("reference model yolov8n-aerial not shipped")
    require_aerial_data()
    img = np.ascontiguousarray(load_scene(VAL_SCENES[0])[0][:700, :900])
    ours = Runner(YOLO("yolov8n-aerial"), "sahi")
    got = ours(img, EVAL_CONF)
    y = YOLO("yolov8n-aerial")

    def direct(max_det=None):
        if max_det:
            y.overrides["max_det"] = max_det
        m = UltralyticsDetectionModel(model=y, confidence_threshold=EVAL_CONF, device="cpu", image_size=640)
        res = get_sliced_prediction(img, m, 640, 640, 0.2, 0.2, verbose=0).object_prediction_list
        rows = to_coco_results(0, [p.bbox.to_xyxy() for p in res], [p.score.value for p in res], [0] * len(res))
        y.overrides.pop("max_det", None)
        return sorted((tuple(np.round(r["bbox"], 3)), round(r["score"], 5)) for r in rows)

    rows = to_coco_results(0, got.boxes, got.scores, got.classes)
    mine = sorted((tuple(np.round(r["bbox"], 3)), round(r["score"], 5)) for r in rows)
    assert mine == direct(EVAL_MAX_DET)
    assert ours.most_per_call > 300  # a real slice at conf 0.001 holds more than Ultralytics' default cap
    assert len(direct()) < len(mine)  # which SAHI's own call applied
