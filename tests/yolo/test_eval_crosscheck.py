"""Independent cross-check: `sparseyolo.eval`'s figures against Ultralytics' own validator (`DetectionValidator`,
through `YOLO.val`) on the same images, model, confidence, NMS IoU and max_det.

Measured with `yolov8n-aerial` (mAP50-95 / mAP50 / mAP75, ours vs Ultralytics):
- the held-out 1249x1035 scene at native resolution: 0.148 / 0.407 / 0.062 vs 0.143 / 0.417 / 0.057 (before the
  fix of the detection caps ours read 0.082 / 0.196: pycocotools scored the best 100 of 3450 detections);
- the 20 val tiles (320 px): 0.151 / 0.409 / 0.068 vs 0.148 / 0.407 / 0.063.
The two differ by design, not by error: Ultralytics integrates the interpolated precision envelope where COCO
samples it at 101 recall points, matches detections by IoU where COCO matches in score order, and letterboxes
the scene to 1088x1312 (rect batches, pad 0.5) where predict runs 1088x1280. Scored by pycocotools, Ultralytics'
own scene detections (3529) read 0.148 / 0.421 / 0.061. Tolerance: 0.015 on each figure.
"""

from __future__ import annotations

import pytest
from yolo_utils import require_aerial_data

from sparseyolo import YOLO
from sparseyolo.data.split import load_split, read_image
from sparseyolo.eval.coco import EVAL_MAX_DET
from sparseyolo.eval.compare import EVAL_CONF, NMS_IOU, evaluate, native_imgsz
from sparseyolo.yolo.reference import shipped_names

pytest.importorskip("pycocotools")
TOL = 0.015
MODEL = "yolov8n-aerial"


@pytest.fixture(scope="module")
def aerial(tmp_path_factory):
    if MODEL not in shipped_names():
        pytest.skip(f"reference model {MODEL} not shipped")
    require_aerial_data()
    from sparseyolo.data.aerial import build_aerial_dataset

    return build_aerial_dataset(tmp_path_factory.mktemp("aerial") / "aer", tile=320, overlap=0.2)


@pytest.mark.parametrize(
    "split, rect",
    [("data.yaml", False), ("full.yaml", True)],  # tiles: square 320 as predict; the scene: rect as predict
    ids=["val tiles", "whole scene"],
)
def test_eval_agrees_with_ultralytics_validator(aerial, tmp_path, split, rect):
    data = aerial.parent / split
    images, gt, _ = load_split(data, "val")
    sizes = {native_imgsz(*read_image(p).shape[:2]) for p in images}
    assert len(sizes) == 1  # one imgsz for the validator: every image at its native size
    imgsz = sizes.pop()
    (r,) = evaluate({"m": YOLO(MODEL)}, images, gt, [("m", "native")], repeats=0, memory=False, progress=False)
    assert not r.limits["limit_reached"]
    v = YOLO(MODEL).val(
        data=str(data),
        imgsz=imgsz,
        rect=rect,
        batch=1,
        max_det=EVAL_MAX_DET,
        conf=EVAL_CONF,
        iou=NMS_IOU,
        device="cpu",
        workers=0,
        plots=False,
        verbose=False,
        project=str(tmp_path),
        name="val",
    )
    ours = [r.metrics[k] for k in ("map", "map50", "map75")]
    theirs = [float(v.box.map), float(v.box.map50), float(v.box.map75)]
    assert ours == pytest.approx(theirs, abs=TOL), f"ours {ours}, Ultralytics {theirs}"
    if split == "full.yaml":
        assert r.metrics["most_detections"] > 1000 and r.metrics["n_objects"] == 279  # far beyond the old 100
