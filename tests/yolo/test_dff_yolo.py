"""DFF neck through the Ultralytics boundary: YAMLs, training columns and curriculum, calibration and budget=,
static ONNX export, CLI."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from sparseyolo import YOLO
from sparseyolo.nn import DFFNeck, dff_necks
from sparseyolo.yolo import SparseDetectionModel
from sparseyolo.yolo.cli import main as cli_main
from sparseyolo.yolo.curriculum import Curriculum

COMMON = dict(imgsz=64, batch=4, workers=0, device="cpu", plots=False, amp=False, exist_ok=True)
DFF_COLUMNS = ("eff_loss", "route_loss", "smooth_loss", "gate_loss", "cx_loss", "neck_ratio")


YAMLS = ["yolov8n-dff.yaml", "yolov8s-dff.yaml", "yolo11n-dff.yaml", "yolov8n-sparse-dff.yaml"]


@pytest.mark.parametrize("name", YAMLS)
def test_yamls_build_and_detect(name):
    m = SparseDetectionModel(name, nc=2, verbose=False).eval()
    (neck,) = dff_necks(m)
    assert neck.c == {"s": 128}.get(name[6] if name.startswith("yolov8") else "n", 64)
    with torch.no_grad():
        y = m(torch.rand(2, 3, 128, 96))[0]
    assert y.shape == (2, 4 + 2, (16 * 12) + (8 * 6) + (4 * 3))
    assert neck.last_stats["gflops"].shape == (2,)


def test_backbone_weight_names_match_ultralytics():
    """The DFF YAML keeps yolov8's backbone (layers 0-9): a stock checkpoint's backbone loads unchanged."""
    dense = SparseDetectionModel("yolov8n.yaml", nc=2, verbose=False)
    dff = SparseDetectionModel("yolov8n-dff.yaml", nc=2, verbose=False)
    bb = {k: v for k, v in dense.state_dict().items() if int(k.split(".")[1]) <= 9}
    own = dff.state_dict()
    assert all(k in own and own[k].shape == v.shape for k, v in bb.items())


def test_bad_yaml_inputs(tmp_path):
    bad = tmp_path / "bad-dff.yaml"
    bad.write_text(
        "nc: 2\nbackbone:\n  - [-1, 1, Conv, [16, 3, 2]]\n  - [-1, 1, Conv, [32, 3, 2]]\n"
        "head:\n  - [-1, 1, DFFNeck, [32]]\n  - [2, 1, Pick, [0]]\n  - [[3], 1, Detect, [nc]]\n"
    )
    with pytest.raises(ValueError, match="list 'from'"):
        SparseDetectionModel(str(bad), verbose=False)
    bad.write_text(bad.read_text().replace("[-1, 1, DFFNeck, [32]]", "[[0, 1], 1, DFFNeck, []]"))
    with pytest.raises(ValueError, match="needs its width"):
        SparseDetectionModel(str(bad), verbose=False)


def test_curriculum_phases_and_errors():
    c = Curriculum(warmup=0.3, finetune=0.2, t_start=1.0, t_end=0.1)
    phases = [c.phase(e, 10) for e in range(10)]
    assert [p for p, _ in phases] == ["warmup"] * 3 + ["dynamic"] * 5 + ["finetune"] * 2
    temps = [t for p, t in phases if p == "dynamic"]
    assert temps[0] == pytest.approx(1.0) and temps[-1] == pytest.approx(0.1) and temps == sorted(temps, reverse=True)
    neck = DFFNeck([8, 8, 8], c=8)
    c.apply([neck], 0, 10)
    assert neck.mode == "all_on" and not neck.efficiency_on
    c.apply([neck], 9, 10)
    assert neck.mode == "dynamic" and neck.supervision_on and not neck.efficiency_on
    supervised = {id(p) for p in neck.supervised_parameters()}
    assert supervised and all(p.requires_grad for p in neck.supervised_parameters())  # taught by the boxes to the end
    assert not any(p.requires_grad for p in neck.policy_parameters() if id(p) not in supervised)
    Curriculum(supervise=0.0).apply([neck], 9, 10)  # no supervision: the whole policy frozen
    assert not any(p.requires_grad for p in neck.policy_parameters())
    assert all(p.requires_grad for p in neck.blocks.parameters())
    with pytest.raises(ValueError, match="unknown curriculum setting 'dff_warmpu'"):
        Curriculum.pop_from({"dff_warmpu": 0.2})
    with pytest.raises(ValueError, match="must not exceed 1"):
        Curriculum(warmup=0.8, finetune=0.5)
    with pytest.raises(ValueError, match="budget"):
        Curriculum(budget=1.5)
    ablate = Curriculum(without="pixel, routing", supervise=0.0)  # a retrained ablation
    neck = DFFNeck([8, 8, 8], c=8)
    ablate.apply([neck], 0, 10)
    assert neck.disabled == frozenset() and neck.mode == "all_on"  # warm-up: every path
    ablate.apply([neck], 5, 10)
    assert neck.disabled == {"pixel", "routing"} and neck.loss_weights["gate_loss"] == 0.0
    neck.train()
    neck([torch.randn(2, 8, s, s) for s in (16, 8, 4)])  # trains without them: no pixel-gate logits recorded
    assert neck._aux["gate_logits"] == []
    with pytest.raises(ValueError, match="dff_without takes parts from routing, depth, pixel"):
        Curriculum(without="pixels")
    with pytest.raises(ValueError, match="dff_supervise must be >= 0"):
        Curriculum(supervise=-1)


@pytest.fixture(scope="module")
def dff_run(tiny_data, runs_dir):
    model = YOLO("yolov8n-dff.yaml")
    model.train(data=str(tiny_data), project=str(runs_dir), name="dff", epochs=3, dff_warmup=0.34, dff_finetune=0.33,
                **COMMON)  # fmt: skip
    return model


def test_training_columns_and_curriculum(dff_run):
    trainer = dff_run.trainer
    assert trainer.loss_names[-len(DFF_COLUMNS) :] == DFF_COLUMNS
    assert all(math.isfinite(float(v)) for v in trainer.tloss.values())
    rows = list(csv.DictReader(open(trainer.save_dir / "results.csv")))
    assert len(rows) == 3
    keys = [k.strip() for k in rows[0]]
    for col in DFF_COLUMNS:
        assert f"train/{col}" in keys and f"val/{col}" in keys
    eff = [float(r["train/eff_loss"]) for r in rows]
    assert eff[0] == 0.0 and eff[1] > 0.0 and eff[2] == 0.0  # warm-up, dynamic, fine-tune
    for col in ("gate_loss", "cx_loss"):  # the policy's box supervision: after the warm-up
        sup = [float(r[f"train/{col}"]) for r in rows]
        assert sup[0] == 0.0 and sup[1] > 0.0 and sup[2] > 0.0, (col, sup)
    assert trainer.dff_phase == "finetune"
    assert dff_necks(dff_run.model)[0].mode == "dynamic"


def test_calibrate_predict_val_budget_and_save(dff_run, tiny_data, tmp_path):
    images = sorted((tiny_data.parent / "images" / "val").glob("*.png"))
    neck = dff_necks(dff_run.model)[0]
    with torch.no_grad():  # let decisions vary: close some gates
        dff_run.model.model[10].controller[-1].bias.copy_(torch.linspace(-1, 1, neck.L * neck.d_max))
    with pytest.raises(ValueError, match="needs a calibrated model"):
        dff_run.predict(images[0], budget=0.7, verbose=False)
    report = dff_run.calibrate(images, budget=0.9, imgsz=64, progress=False)
    assert report["ratio"] <= 0.9 and report["images"] == len(images)
    thr = float(neck.threshold)
    res = dff_run.predict(images[0], budget=1.0, imgsz=64, verbose=False)
    st = dff_run.neck_stats()
    assert st["gflops"].shape == (1,) and st["depth"].shape == (1, 3)  # the neck that ran, one image
    assert len(res) == 1 and float(neck.threshold) == thr  # restored after the call
    pred_neck = dff_necks(dff_run.predictor.model.model)[0]  # the model AutoBackend runs
    assert float(pred_neck.threshold) == thr
    metrics = dff_run.val(data=str(tiny_data), budget=0.9, imgsz=64, batch=2, plots=False, verbose=False)
    assert 0.0 <= metrics.box.map <= 1.0
    path = tmp_path / "calibrated.pt"
    dff_run.save(str(path))
    again = YOLO(str(path))
    n2 = dff_necks(again.model)[0]
    assert bool(n2.calib_valid) and float(n2.threshold) == pytest.approx(thr, rel=1e-3)  # saved as fp16
    with pytest.raises(ValueError, match="out of reach|below"):
        dff_run.predict(images[0], budget=0.001, verbose=False)
    # CLI: calibrate then predict/val with budget=
    out = tmp_path / "cli.pt"
    args = ["calibrate", f"model={path}", f"data={tiny_data}", "budget=0.9", "imgsz=64", f"out={out}"]
    assert cli_main(args) == 0 and out.is_file()
    assert cli_main(["predict", f"model={out}", f"source={images[0]}", "budget=0.9", "imgsz=64"]) == 0
    assert cli_main(["calibrate", f"model={out}", f"data={tiny_data}", "budget=2"]) == 1
    assert cli_main(["calibrate", f"model={out}", "budget=0.5"]) == 2
    assert cli_main(["train", f"model={out}", "dff_warmpu=0.1"]) == 1


def test_static_onnx_export_matches_all_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a YAML-built model exports into the working directory
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = YOLO("yolov8n-dff.yaml")
    m.model.names = {i: str(i) for i in range(80)}
    onnx_file = m.export(format="onnx", imgsz=96, device="cpu", simplify=False)
    neck = dff_necks(m.model)[0]
    assert neck.mode == "dynamic"  # switched back
    x = torch.rand(1, 3, 96, 96)
    m.model.eval()
    neck.mode = "all_on"
    with torch.no_grad():
        ref = m.model(x)[0].numpy()
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)
    path = tmp_path / "dff.pt"
    m.save(str(path))
    assert cli_main(["export", f"model={path}", "format=onnx", "imgsz=64", "simplify=False"]) == 0  # the CLI too
    assert (tmp_path / "dff.onnx").is_file()


def test_frame_rate_scheduler_and_presets(dff_run, tiny_data):
    images = sorted((tiny_data.parent / "images" / "val").glob("*.png"))
    neck = dff_necks(dff_run.model)[0]
    before = float(neck.threshold)
    # an unreachable frame rate: every frame is late, the budget falls step by step to its floor
    folder = str(images[0].parent)  # a folder (like a video) is read one frame per batch
    out = list(dff_run.predict(folder, stream=True, target_fps=1e6, preset="edge", imgsz=64, verbose=False))
    hist = dff_run.scheduler.history
    assert len(out) == len(images) == len(hist)
    assert [round(b, 2) for _, b, _ in hist] == [round(1 - 0.05 * (i + 1), 2) for i in range(len(images))]
    ran = dff_necks(dff_run.predictor.model.model)[0].last_stats  # the neck AutoBackend ran
    assert int(ran["depth"].max()) <= 1 and int(ran["routes"].max()) <= 3  # edge caps
    assert float(neck.threshold) == before and neck.max_depth is None and neck.max_routes is None  # restored
    # a generous frame rate: the budget stays at 1
    dff_run.predict(folder, target_fps=1e-3, imgsz=64, verbose=False)
    assert [b for _, b, _ in dff_run.scheduler.history] == [1.0] * len(images)
    with pytest.raises(ValueError, match="unknown hardware preset"):
        dff_run.predict(images[0], preset="tpu", verbose=False)
    with pytest.raises(ValueError, match="target_fps must be > 0"):
        dff_run.predict(images[0], target_fps=0, verbose=False)
    assert cli_main(["predict", "model=yolov8n.yaml", f"source={images[0]}", "preset=cpu", "imgsz=64"]) == 1


def test_distillation_from_a_teacher(dff_run, tiny_data, runs_dir):
    teacher = str(dff_run.trainer.best)
    m = YOLO("yolov8n-dff.yaml")
    m.train(data=str(tiny_data), project=str(runs_dir), name="distil", epochs=1, dff_teacher=teacher, **COMMON)
    assert "distill_loss" in m.trainer.loss_names and math.isfinite(float(m.trainer.tloss["distill_loss"]))
    ckpt = torch.load(m.trainer.last, map_location="cpu", weights_only=False)
    assert "_teacher" not in ckpt["model"].__dict__  # the teacher is never saved
    m2 = YOLO("yolov8n-dff.yaml")
    with pytest.raises(ValueError, match="dff_teacher has 80 classes"):
        m2.train(data=str(tiny_data), project=str(runs_dir), name="bad", epochs=1, dff_teacher="yolov8n.yaml",
                 **COMMON)  # fmt: skip
    with pytest.raises(FileNotFoundError, match="dff_teacher"):
        m2.train(data=str(tiny_data), project=str(runs_dir), name="bad", epochs=1, dff_teacher="missing.pt",
                 **COMMON)  # fmt: skip


def test_calibration_refuses_several_necks():
    from sparseyolo.yolo.budget import neck_inputs

    two = torch.nn.Sequential(DFFNeck([8, 8, 8], c=8), DFFNeck([8, 8, 8], c=8))
    with pytest.raises(ValueError, match="one DFF neck per model, this one has 2"):
        neck_inputs(two, [torch.zeros(1, 3, 64, 64)])
    with pytest.raises(ValueError, match="no DFF neck"):
        neck_inputs(torch.nn.Sequential(torch.nn.Identity()), [])
