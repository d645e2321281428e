"""Evaluation: COCO metrics through pycocotools, executed FLOPs against FlopCounterMode, models x methods, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sparseyolo import YOLO
from sparseyolo.data.split import label_path, load_split, yolo_ground_truth
from sparseyolo.eval.coco import coco_metrics, load_ground_truth, to_coco_results
from sparseyolo.eval.compare import Runner, evaluate, native_imgsz
from sparseyolo.eval.flops import executed_flops

pytest.importorskip("pycocotools")


def _gt_boxes(gt, image_id):
    return np.array(
        [
            [*a["bbox"][:2], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
            for a in gt["annotations"]
            if a["image_id"] == image_id
        ]
    ).reshape(-1, 4)


def test_coco_metrics_perfect_partial_and_wrong(tiny_data):
    images, gt, names = load_split(tiny_data, "val")
    assert names == {0: "red", 1: "green"} and len(images) == 4
    perfect, half, shifted = [], [], []
    for im in gt["images"]:
        for a in [a for a in gt["annotations"] if a["image_id"] == im["id"]]:
            x, y, w, h = a["bbox"]
            row = {"image_id": im["id"], "category_id": a["category_id"], "bbox": [x, y, w, h], "score": 0.9}
            perfect.append(row)
            if a["id"] % 2:
                half.append(row)
            shifted.append({**row, "bbox": [x + 2 * w, y + 2 * h, w, h]})
    m = coco_metrics(gt, perfect)
    assert m["map"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)
    assert all(v["map50"] == pytest.approx(1.0) for v in m["per_image"].values())
    assert 0.0 < coco_metrics(gt, half)["map50"] < 1.0
    assert coco_metrics(gt, shifted)["map50"] == 0.0
    assert coco_metrics(gt, [])["map"] == 0.0
    with pytest.raises(ValueError, match="image ids not in the ground truth"):
        coco_metrics(gt, [{**perfect[0], "image_id": 999}])


def test_yolo_ground_truth_matches_aerial_coco_json(tmp_path):
    """Two independent paths to the same boxes: the aerial builder's COCO json (from the VOC xml) and the ground
    truth re-read from the YOLO label files it wrote."""
    from sparseyolo.data.aerial import build_aerial_dataset

    try:
        data = build_aerial_dataset(tmp_path / "aer", tile=320, overlap=0.2)
    except RuntimeError as e:
        pytest.skip(f"deepforest data unavailable: {e}")
    built = json.loads((data.parent / "annotations" / "full.json").read_text())
    images, gt, _ = load_split(data.parent / "full.yaml", "val")
    assert len(gt["annotations"]) == len(built["annotations"]) == 279
    a = np.array(sorted((x["bbox"] for x in gt["annotations"]), key=lambda v: [round(c) for c in v]))
    b = np.array(sorted((x["bbox"] for x in built["annotations"]), key=lambda v: [round(c) for c in v]))
    np.testing.assert_allclose(a, b, atol=0.01)


def test_ground_truth_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_ground_truth(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        load_ground_truth(tmp_path / "bad.json")
    from PIL import Image

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.new("RGB", (20, 10)).save(tmp_path / "images" / "a.png")
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 oops 0.1\n")
    assert label_path(tmp_path / "images" / "a.png") == tmp_path / "labels" / "a.txt"
    with pytest.raises(ValueError, match=r"a.txt:1"):
        yolo_ground_truth([tmp_path / "images" / "a.png"], {0: "x"})
    (tmp_path / "labels" / "a.txt").write_text("")  # empty label file: an image without objects
    assert yolo_ground_truth([tmp_path / "images" / "a.png"], {0: "x"})["annotations"] == []
    with pytest.raises(FileNotFoundError):
        load_split(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="no images"):
        load_split(tmp_path / "labels")


def test_executed_flops_dense_equals_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    m = YOLO("yolov8n.yaml").model.eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(x)
    f = executed_flops(m, x)
    assert f["total"] == pytest.approx(fc.get_total_flops(), rel=1e-9)
    assert f["active"] is None and set(f["groups"]) == {"stem 0-4", "backbone 5-9", "neck 10-21", "head"}


def test_executed_flops_sparse_equals_counted_gemms():
    """Oracle: on the pure-PyTorch engine path every sparse conv is gather -> mm -> scatter, so FlopCounterMode
    counts exactly the GEMM FLOPs the sparse layers execute; the analytic count must equal it."""
    from torch.utils.flop_counter import FlopCounterMode

    from sparseyolo.sparse import _ext

    torch.manual_seed(0)
    m = YOLO("yolov8n-sparse.yaml", sparsify="nonzero").model.eval()
    x = torch.zeros(1, 3, 64, 96)
    x[:, :, 8:30, 10:40] = torch.rand(1, 3, 22, 30) + 0.1
    x[:, :, 40:50, 70:90] = torch.rand(1, 3, 10, 20) + 0.1
    f = executed_flops(m, x)
    assert 0.0 < f["active"] < 0.3
    with _ext.disabled(), torch.no_grad():
        y = x
        for layer in m.model[:5]:
            with FlopCounterMode(display=False) as fc:
                y = layer(y)
            assert f["layers"][layer.i] == pytest.approx(fc.get_total_flops(), rel=1e-9), f"layer {layer.i}"


def test_evaluate_models_and_methods(tiny_data):
    images, gt, _ = load_split(tiny_data, "val")
    dense = YOLO("yolov8n.yaml")
    sparse = YOLO("yolov8n-sparse-budget.yaml")
    for y in (dense, sparse):
        y.model.names = {0: "red", 1: "green"}
    res = evaluate(
        {"d": dense, "s": sparse},
        images[:2],
        gt,
        [("d", "native"), ("d", "640"), ("d", "sahi"), ("s", "native")],
        repeats=1,
        memory=False,
        progress=False,
    )
    rows = {(r.model, r.method): r.summary() for r in res}
    assert set(rows) == {("d", "native"), ("d", "640"), ("d", "sahi"), ("s", "native")}
    for r in rows.values():
        assert r["gflops"] > 0 and r["p50_ms"] > 0 and 0.0 <= r["map50"] <= 1.0
    assert rows["d", "640"]["gflops"] > rows["d", "native"]["gflops"]  # 96 px upscaled to 640
    assert rows["d", "native"]["active"] is None and 0.0 < rows["s", "native"]["active"] <= 1.0
    assert native_imgsz(1035, 1249) == 1280
    with pytest.raises(ValueError, match="unknown method"):
        Runner(dense, "tiles")
    with pytest.raises(ValueError, match="not given"):
        evaluate({"d": dense}, images, gt, [("x", "native")], repeats=0, memory=False, progress=False)


def test_to_coco_results():
    rows = to_coco_results(3, np.array([[1.0, 2.0, 11.0, 7.0]]), np.array([0.5]), np.array([1]))
    assert rows == [{"image_id": 3, "category_id": 1, "bbox": [1.0, 2.0, 10.0, 5.0], "score": 0.5}]


def test_eval_cli(tiny_data, tmp_path, capsys):
    from sparseyolo.cli import main

    out = tmp_path / "ev"
    rc = main(
        ["eval", "model=yolov8n.yaml", f"data={tiny_data}", "methods=native", "repeats=1", "memory=False", f"out={out}"]
    )
    assert rc == 0 and (out / "eval.csv").is_file() and (out / "eval.md").is_file()
    per_image = json.loads((out / "eval_per_image.json").read_text())
    assert len(per_image) == 4 and all(r["gflops"] > 0 and 0 <= r["map50"] <= 1 for r in per_image)
    assert "mAP50" in capsys.readouterr().out
    assert main(["eval", "model=yolov8n.yaml", f"data={tiny_data}", "methods=tiles"]) == 1
    assert main(["eval", "model=yolov8n.yaml", f"data={tmp_path / 'missing.yaml'}"]) == 1
    assert main(["eval", "model=yolov8n.yaml", f"data={tiny_data}", "colour=red"]) == 2
    assert main(["eval", "model=yolov8n.yaml"]) == 2
    assert "unknown argument" in capsys.readouterr().err


def test_dense_flops_counted_on_the_meta_device_equal_the_real_count():
    """A dense model's FLOPs are counted on a `meta` copy (shapes only): the same figures as on real tensors."""
    from sparseyolo.eval.compare import _flops_of

    model = YOLO("yolov8n.yaml").model.eval()
    x = torch.rand(1, 3, 96, 160)
    cache: dict = {}
    total, groups, active, masks = _flops_of(model, [x], cache)
    real = executed_flops(model, x)
    assert total == pytest.approx(real["total"] / 1e9, rel=1e-12)
    assert groups == pytest.approx({g: v / 1e9 for g, v in real["groups"].items()}, rel=1e-12)
    assert active is None and masks == [] and tuple(x.shape) in cache
    assert next(cache["meta"].parameters()).device.type == "meta"
    assert next(model.parameters()).device.type == "cpu"  # the model itself is untouched


def test_without_timing_rounds_the_memory_probe_call_is_timed(tiny_data):
    from sparseyolo.eval.compare import evaluate

    images, gt, _ = load_split(tiny_data, "val")
    (res,) = evaluate({"m": YOLO("yolov8n.yaml")}, images, gt, [("m", "native")], 0, True, False)
    assert len(res.latency) == 1 and res.latency[0] > 0 and res.summary()["p50_ms"] == 1e3 * res.latency[0]
    (res,) = evaluate({"m": YOLO("yolov8n.yaml")}, images, gt, [("m", "native")], 0, False, False)
    assert res.latency == [] and res.summary()["p50_ms"] is None
