"""Reference models: learned sparsifier with a target active fraction, shipped weights loaded by name without
pickle, Python export of sparse models, the demo's target logic."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from yolo_utils import require_aerial_data

from sparseyolo import YOLO
from sparseyolo.nn.sparsify import Sparsifier, calibrate_threshold
from sparseyolo.yolo import reference
from sparseyolo.yolo.recipe import VARIANTS
from sparseyolo.yolo.reference import load_reference_model, save_reference, shipped_names


def test_skip_names_only_missing_data(monkeypatch):
    """A broken forward must fail, not skip: only the data fetch may turn into a skip."""
    from sparseyolo.data import aerial

    def offline():
        raise RuntimeError("could not download 'deepforest==2.1.0' from the package index")

    monkeypatch.setattr(aerial, "aerial_files", offline)
    with pytest.raises(pytest.skip.Exception, match="deepforest data files unavailable"):
        require_aerial_data()
    monkeypatch.setattr(aerial, "aerial_files", lambda: [])
    with pytest.raises(pytest.skip.Exception, match="missing"):
        require_aerial_data()


def test_target_keeps_a_fixed_share_per_image():
    torch.manual_seed(0)
    s = Sparsifier(3, "learned", target=0.25)
    x = torch.rand(3, 3, 40, 48)
    for mode in (s.train, s.eval):
        mode()
        mask, gate = s(x)
        assert mask.shape == (3, 40, 48)
        torch.testing.assert_close(mask.float().mean(dim=(1, 2)), torch.full((3,), 0.25))
    # the kept pixels are the highest-scoring ones
    score, _ = s.score(x)
    for b in range(3):
        assert score[b][mask[b]].min() >= score[b][~mask[b]].max()
    assert s.aux_names == (["mask_loss"], ["active"])
    with pytest.raises(ValueError, match="needs method 'learned' or 'finder'"):
        Sparsifier(3, "nonzero", target=0.3)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        Sparsifier(3, "learned", target=1.5)


def test_calibrate_threshold_meets_the_target_and_follows_content():
    torch.manual_seed(0)
    s = Sparsifier(3, "learned", dilate=1, target=0.25).eval()
    with torch.no_grad():  # a head whose logit is the mean intensity - 0.5: bright pixels are foreground
        s.head.conv1.weight.zero_(), s.head.conv1.bias.fill_(0.0), s.head.conv2.weight.zero_()
        s.head.conv1.weight[0, :, 1, 1] = 1.0 / 3
        s.head.conv2.weight[0, 0, 1, 1] = 1.0
        s.head.conv2.bias.fill_(-0.5)
        s.head.conv1.bias.fill_(1.0)  # SiLU is ~linear above 1; keep it monotonic
    dark, bright = torch.rand(1, 3, 64, 64) * 0.3, torch.rand(1, 3, 64, 64)
    got = calibrate_threshold(s, [torch.cat([dark, bright])], active=0.3)
    assert got == pytest.approx(0.3, abs=0.03)
    assert s.target is None
    m = s(torch.cat([dark, bright]))[0].float().mean(dim=(1, 2))
    assert m[1] > m[0]  # the busier image keeps more
    with pytest.raises(ValueError, match="learned"):
        calibrate_threshold(Sparsifier(3, "nonzero"), [dark], 0.5)
    with pytest.raises(ValueError, match="fraction"):
        calibrate_threshold(s, [dark], 0.0)
    with pytest.raises(ValueError, match="at least one"):
        calibrate_threshold(s, [], 0.5)


def test_budget_yaml_trains_with_fixed_share(tiny_data, runs_dir):
    m = YOLO("yolov8n-sparse-budget.yaml")
    m.train(
        data=str(tiny_data),
        project=str(runs_dir),
        name="budget",
        epochs=1,
        imgsz=64,
        batch=4,
        workers=0,
        device="cpu",
        plots=False,
        amp=False,
        exist_ok=True,
    )
    assert m.trainer.loss_names == ("box_loss", "cls_loss", "dfl_loss", "mask_loss", "active")
    active = float(m.trainer.tloss["active"])
    assert 0.25 <= active < 0.9  # 25% kept, grown by the 2 px dilation


def test_reference_roundtrip_without_pickle(tmp_path, monkeypatch):
    monkeypatch.setattr(reference, "WEIGHTS_DIR", tmp_path)
    torch.manual_seed(0)
    src = YOLO("yolov8n-sparse-budget.yaml")
    src.model.names = {0: "tree"}
    save_reference(src.model, "tiny-ref", {"command": "test"}, out_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-ref.json", "tiny-ref.safetensors", "tiny-ref.yaml"]
    assert shipped_names() == ["tiny-ref"]
    from safetensors.torch import load_file

    sd = load_file(str(tmp_path / "tiny-ref.safetensors"))  # plain tensors: no class is unpickled
    assert all(v.dtype in (torch.float16, torch.int64, torch.long) for v in sd.values())
    loaded = YOLO("tiny-ref")
    assert loaded.model.names == {0: "tree"} and loaded.reference == "tiny-ref"
    x = torch.rand(1, 3, 64, 64)
    src.model.eval().half().float()  # the reference is stored in fp16
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x)[0], src.model(x)[0], rtol=1e-3, atol=1e-3)
    assert load_reference_model("tiny-ref").model[0].sparsify.target == 0.25
    with pytest.raises(FileNotFoundError, match="shipped"):
        reference.reference_files("nope")
    (tmp_path / "tiny-ref.json").unlink()
    with pytest.raises(FileNotFoundError, match="tiny-ref.json"):
        YOLO("tiny-ref")


@pytest.mark.parametrize("name", shipped_names())
def test_shipped_reference_models(name, tiny_data):
    info = json.loads((reference.WEIGHTS_DIR / f"{name}.json").read_text())
    assert name in VARIANTS and info["command"].startswith("sparseyolo demo --train")
    assert info["recipe"]["epochs"] >= 1 and info["names"] == {"0": "tree"}
    m = YOLO(name)
    assert m.model.names == {0: "tree"}
    img = np.zeros((96, 128, 3), np.uint8)
    res = m.predict(img, imgsz=128, device="cpu", verbose=False)
    assert len(res) == 1


def test_python_export_of_a_sparse_model_matches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a YAML-built model exports into the working directory
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = YOLO("yolov8n-sparse-budget.yaml")
    m.model.names = {0: "tree"}
    path = m.export(format="onnx", imgsz=64, device="cpu", simplify=False)  # the Python API, as the CLI
    x = torch.rand(1, 3, 64, 64)
    m.model.eval()
    with torch.no_grad():
        ref = m.model(x)[0].numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="stem=dense"):
        m.export(stem="sparse", format="onnx")


def test_demo_targets():
    from sparseyolo.demo import DENSE, DENSE_SEED1, SPARSE, SPARSE_P34, targets

    def row(model, method, m, ms, recall=None):
        return {"model": model, "method": method, "map": m, "p50_ms": ms, "mask_recall": recall}

    rows = [row(DENSE, "native", 0.15, 900), row(DENSE_SEED1, "native", 0.14, 950), row(DENSE, "sahi", 0.16, 1500),
            row(SPARSE, "native", 0.16, 200, 0.99), row(SPARSE_P34, "native", 0.13, 1000, 0.5)]  # fmt: skip
    t = {a: m for a, _, _, m in targets(rows, speed=4.0)}
    assert [t[k] for k in t if k.startswith(SPARSE + ":") or k.startswith(SPARSE + " ")] == [True] * 4
    assert [t[k] for k in t if k.startswith(SPARSE_P34)] == [False] * 4


@pytest.mark.skipif(len(shipped_names()) < 3, reason="reference models not shipped")
def test_demo_runs_on_the_shipped_models_and_reuses_its_cache(tmp_path, capsys):
    from sparseyolo.demo import run_demo

    require_aerial_data()
    tiles, full, _ = run_demo(tmp_path / "demo", repeats=0, memory=False, scenes=False)
    for f in ("report.md", "full.csv", "tiles.csv", "accuracy_vs_gflops.png", "val_scene_boxes.jpg"):
        assert (tmp_path / "demo" / f).is_file(), f
    rows = {(r["model"], r["method"]): r for r in full["rows"]}
    for name in ("yolov8n-sparse-aerial", "yolov8n-sparse-p3-aerial", "yolov8n-sparse-p34-aerial"):
        r = rows[name, "native"]  # the finder keeps every crown of the forest (and so, there, every pixel)
        assert r["mask_recall"] >= 0.97 and 0.0 < r["active"] <= 1.0, (name, r["mask_recall"], r["active"])
    assert rows["yolov8n-sparse-aerial target 0.10", "native"]["active"] < 0.5  # the fixed share keeps it sparse
    assert rows["yolov8n-aerial", "sahi"]["gflops"] > rows["yolov8n-aerial", "native"]["gflops"]
    # the crowded forest opens every path of the box-supervised neck: at most all-on plus the policy's own FLOPs
    dff, all_on = rows["yolov8n-dff-aerial", "native"]["gflops"], rows["yolov8n-dff-aerial all-on", "native"]["gflops"]
    assert 0.9 * all_on < dff <= 1.001 * all_on
    assert all(0.0 <= r["map50"] <= 1.0 for r in full["rows"] + tiles["rows"])
    capsys.readouterr()
    run_demo(tmp_path / "demo", repeats=0, memory=False, scenes=False)
    assert capsys.readouterr().out.count("cached results reused") == 2


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 5, 7), (3, 64, 33)])
@pytest.mark.parametrize("r", [0, 1, 2, 5])
def test_dilate_mask_equals_max_pool(shape, r):
    import torch.nn.functional as F

    from sparseyolo.nn.sparsify import dilate_mask

    m = torch.rand(*shape, generator=torch.Generator().manual_seed(r)) > 0.8
    ref = F.max_pool2d(m.unsqueeze(1).float(), 2 * r + 1, 1, r).squeeze(1) > 0 if r else m
    assert torch.equal(dilate_mask(m, r), ref)


def test_learned_decision_on_the_head_grid_equals_full_resolution():
    """The learned mask is taken on the head's grid and expanded; the full-resolution rule gives the same mask."""
    import torch.nn.functional as F

    from sparseyolo.nn.sparsify import apply_budget, dilate_mask, topk_mask

    torch.manual_seed(0)
    x = torch.rand(2, 3, 37, 50)  # not a multiple of the head stride: partial border blocks
    for kw in ({"threshold": 0.1}, {"threshold": -0.2, "keep": 0.3}):
        s = Sparsifier(3, "learned", dilate=1, **kw).eval()
        with torch.no_grad():
            mask, gate = s(x)
            score = F.interpolate(s.head(x), scale_factor=4, mode="nearest")[:, 0, :37, :50]
        ref = apply_budget(score > s.threshold, score, s.keep, s.max_active)
        assert gate is None and torch.equal(mask, dilate_mask(ref, 1))
    s = Sparsifier(3, "learned", target=0.25).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        mask, _ = s(x)
        blocks = topk_mask(s.head(x)[:, 0], 0.25)  # (1, 16, 16): a quarter of the blocks
    assert torch.equal(mask, blocks.repeat_interleave(4, 1).repeat_interleave(4, 2))
    assert mask.float().mean() == 0.25


@pytest.mark.skipif(len(shipped_names()) < 3, reason="reference models not shipped")
def test_bench_aerial_smoke(tmp_path, capsys):
    from sparseyolo.bench import main

    require_aerial_data()
    rc = main(["aerial", "--repeats", "1", "--targets", "0.1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "free-stem bound" in out and "sparsifier" in out
    assert (tmp_path / "aerial.md").is_file()
    with pytest.raises(SystemExit):
        main(["aerial", "--repeats", "0"])


@pytest.mark.skipif("yolov8n-dff-aerial" not in shipped_names(), reason="DFF reference model not shipped")
def test_bench_neck_smoke(tmp_path, capsys):
    from sparseyolo.bench import main

    args = ["neck", "--dff", "yolov8n-dff-aerial", "--pan", "yolov8n-aerial", "--budgets", "0.7", "--repeats", "1"]
    require_aerial_data()
    rc = main(args + ["--synth", "1", "--calib", "6", "--composites", "4", "--out", str(tmp_path),
                      "--retrained", "routing=yolov8n-dff-aerial-seed1",
                      "--sizes", "320", "--size-images", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "## 3. Ablation" in out and "Targets at budget 0.7" in out
    assert "## 6. Time against FLOPs by image size" in out
    assert "| 320 | all-on |" in out and "| 320 | budget 0.7 |" in out
    assert "## 3b. Ablation, each part retrained" in out and "| without routing | yolov8n-dff-aerial-seed1 |" in out
    assert "Terciles of each DFF model's own complexity estimate" in out
    for f in ("neck.md", "neck.csv", "neck_per_image.csv", "neck_flops_hist.png", "neck_budget_curve.png"):
        assert (tmp_path / f).is_file(), f
    rows = list(csv.DictReader(open(tmp_path / "neck_per_image.csv")))
    assert len({r["image"] for r in rows}) == 24 and any(r["image"].startswith("composite_") for r in rows)
    with pytest.raises(SystemExit):
        main(["neck", "--budgets", "1.5"])
    with pytest.raises(SystemExit):
        main(["neck", "--retrained", "no-label"])
    with pytest.raises(SystemExit):
        main(["neck", "--sizes", "100"])  # not a multiple of 32
    assert main(["neck", "--dff", "no-such-model", "--pan", "", "--out", str(tmp_path)]) == 1


def test_shipped_dff_model_carries_its_calibration():
    if "yolov8n-dff-aerial" not in shipped_names():
        pytest.skip("DFF reference model not shipped")
    from sparseyolo.nn import dff_necks

    info = json.loads((reference.WEIGHTS_DIR / "yolov8n-dff-aerial.json").read_text())
    neck = dff_necks(YOLO("yolov8n-dff-aerial").model)[0]
    assert bool(neck.calib_valid) and info["calibration"]["budget"] == 0.7
    assert float(neck.threshold) == pytest.approx(info["calibration"]["threshold"], abs=1e-3)
    assert info["calibration"]["ratio"] <= 0.7
    assert float(neck.temperature) == pytest.approx(0.2, abs=1e-3)  # the curriculum's final temperature travels
