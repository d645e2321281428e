"""The demo's cache holds only what its key proves (labels, settings, crossover, weights, images), only freshly
measured figures are recorded into the shipped JSONs, and `ship_variant` writes the files it should."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from sparseyolo import YOLO, demo
from sparseyolo.data.split import yolo_ground_truth
from sparseyolo.eval import compare
from sparseyolo.yolo import reference
from sparseyolo.yolo.recipe import VARIANTS, Recipe, ship_variant
from sparseyolo.yolo.reference import save_reference

NAME = "tiny-sparse"  # a reference saved into a temporary weights folder


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    d = tmp_path / "weights"
    monkeypatch.setattr(reference, "WEIGHTS_DIR", d)
    return d


@pytest.fixture
def setup(tmp_path, weights_dir, monkeypatch, setenv):
    """A sparse reference model in a temporary weights folder, two labelled images, their ground truth."""
    from PIL import Image

    from sparseyolo.nn import crossover

    monkeypatch.setattr(crossover, "store_path", lambda: tmp_path / "crossover.json")  # this machine's: none yet
    setenv("SPARSEYOLO_CROSSOVER", None)
    torch.manual_seed(0)
    src = YOLO("yolov8n-sparse-budget.yaml")
    src.model.names = {0: "tree"}
    save_reference(src.model, NAME, {"command": "test"})
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    images = []
    for k in range(2):
        Image.fromarray(np.full((32, 48, 3), 40 * k, np.uint8)).save(tmp_path / "images" / f"{k}.png")
        (tmp_path / "labels" / f"{k}.txt").write_text("0 0.5 0.5 0.2 0.3\n")
        images.append(tmp_path / "images" / f"{k}.png")
    return {NAME: YOLO(NAME)}, images, [(NAME, "native")]


def key(models, images, plan, gt=None):
    return demo._cache_key("full", models, images, gt or yolo_ground_truth(images, {0: "tree"}), plan, 1, False)


def test_cache_key_covers_what_the_figures_depend_on(setup, monkeypatch, setenv, weights_dir):
    models, images, plan = setup
    base = key(models, images, plan)
    assert key(models, images, plan) == base
    # the ground truth: a label file changes
    label = images[1].parent.parent / "labels" / "1.txt"
    label.write_text("0 0.5 0.5 0.2 0.31\n")
    assert key(models, images, plan) != base
    label.write_text("0 0.5 0.5 0.2 0.3\n")
    assert key(models, images, plan) == base
    # every evaluation setting
    for attr, value in (("EVAL_CONF", 0.01), ("DEPLOY_CONF", 0.3), ("EVAL_MAX_DET", 300), ("SAHI_SLICE", 512),
                        ("SAHI_OVERLAP", 0.25), ("NMS_IOU", 0.6), ("EVAL_VERSION", 99)):  # fmt: skip
        with monkeypatch.context() as m:
            m.setattr(compare, attr, value)
            assert key(models, images, plan) != base, attr
    assert key(models, images, plan) == base
    # the crossover in force: environment, this machine's store, the model's own
    setenv("SPARSEYOLO_CROSSOVER", "0.3")
    assert key(models, images, plan) != base
    setenv("SPARSEYOLO_CROSSOVER", None)
    from sparseyolo.nn.crossover import save_crossover

    assert key(models, images, plan) == base
    save_crossover(0.42, "cpu")
    stored = key(models, images, plan)
    assert stored != base
    models[NAME].set_crossover(0.9)
    assert key(models, images, plan) not in (base, stored)
    models[NAME].set_crossover(None)
    assert key(models, images, plan) == stored
    # the images' pixels and the weights
    images[0].write_bytes(images[1].read_bytes())
    changed = key(models, images, plan)
    assert changed != stored
    sd = weights_dir / f"{NAME}.safetensors"
    sd.write_bytes(sd.read_bytes()[:-2] + b"\x00\x01")
    assert key(models, images, plan) != changed


class FakeEvaluate:
    """Stands for `compare.evaluate`: counts calls, returns one fixed result per plan entry."""

    def __init__(self):
        self.calls = 0

    def __call__(self, models, images, gt, plan, repeats, memory, save_masks=None):
        self.calls += 1
        return [compare.Result(n, m, metrics={"map": 0.5, "map50": 0.7, "ap_large": None}) for n, m in plan]


def test_evaluate_cached_reuses_only_matching_figures(setup, tmp_path, monkeypatch, setenv):
    models, images, plan = setup
    fake = FakeEvaluate()
    monkeypatch.setattr(compare, "evaluate", fake)
    gt = yolo_ground_truth(images, {0: "tree"})
    cache = tmp_path / "democache"

    def run(gt=gt, force=False):
        return demo._evaluate_cached(cache, "full", models, images, gt, plan, 1, False, force)

    first = run()
    assert first["cached"] is False and fake.calls == 1 and first["rows"][0]["ap_large"] is None
    from sparseyolo.nn.crossover import BUILTIN

    assert first["settings"] == compare.eval_settings() and first["crossover"] == {NAME: [BUILTIN["cpu"]]}
    again = run()
    assert again["cached"] is True and fake.calls == 1 and again["rows"] == first["rows"]
    moved = json.loads(json.dumps(gt))
    moved["annotations"][0]["bbox"][0] += 1.0
    assert run(moved)["cached"] is False and fake.calls == 2
    assert run(force=True)["cached"] is False and fake.calls == 3
    setenv("SPARSEYOLO_CROSSOVER", "0.5")
    assert run()["cached"] is False and fake.calls == 4


def _shipped_files(weights_dir):
    weights_dir.mkdir(parents=True, exist_ok=True)
    for name in demo.SHIPPED:
        for ext in (".yaml", ".safetensors"):
            (weights_dir / f"{name}{ext}").write_text("")
        (weights_dir / f"{name}.json").write_text(json.dumps({"name": name}))


def _figures(cached):
    rows = [{"model": n, "method": "native", "map": 0.1 * k} for k, n in enumerate(demo.SHIPPED)]
    out = {"rows": rows, "settings": {"max_det": 10000}}
    return out if cached is None else {**out, "cached": cached}


def test_record_metrics_writes_only_fresh_figures(weights_dir, capsys):
    _shipped_files(weights_dir)
    before = {p.name: p.read_text() for p in weights_dir.iterdir()}
    for tiles, full in ((True, False), (False, True), (None, False), (False, None)):
        assert demo.record_metrics(_figures(tiles), _figures(full), "sparseyolo demo --train") == []
        assert {p.name: p.read_text() for p in weights_dir.iterdir()} == before
        assert "metrics not recorded" in capsys.readouterr().out
    written = demo.record_metrics(_figures(False), _figures(False), "sparseyolo demo --train")
    assert written == list(demo.SHIPPED)
    for k, name in enumerate(demo.SHIPPED):
        info = json.loads((weights_dir / f"{name}.json").read_text())
        assert info["name"] == name and info["metrics"]["measured_by"] == "sparseyolo demo --train"
        assert info["metrics"]["val_scene_native"]["map"] == pytest.approx(0.1 * k)
        assert info["metrics"]["val_tiles"]["model"] == name and info["metrics"]["settings"] == {"max_det": 10000}


def test_record_metrics_after_a_cached_demo_run_writes_nothing(setup, tmp_path, monkeypatch, weights_dir):
    """The path `sparseyolo demo --train` takes: figures from `_evaluate_cached`, then `record_metrics`."""
    models, images, _ = setup
    _shipped_files(weights_dir)
    monkeypatch.setattr(reference, "reference_files", lambda n: (None, weights_dir / f"{NAME}.safetensors",
                                                                  weights_dir / f"{n}.json"))  # fmt: skip
    monkeypatch.setattr(compare, "evaluate", FakeEvaluate())
    plan = [(n, "native") for n in demo.SHIPPED]
    models = {n: models[NAME] for n in demo.SHIPPED}
    gt = yolo_ground_truth(images, {0: "tree"})

    def measure():
        cache = tmp_path / "c"
        tiles = demo._evaluate_cached(cache, "tiles", models, images, gt, plan, 1, False, False)
        return tiles, demo._evaluate_cached(cache, "full", models, images, gt, plan, 1, False, False)

    assert demo.record_metrics(*measure(), "c") == list(demo.SHIPPED)
    for name in demo.SHIPPED:
        (weights_dir / f"{name}.json").write_text(json.dumps({"name": name}))
    assert demo.record_metrics(*measure(), "c") == []
    assert all("metrics" not in json.loads((weights_dir / f"{n}.json").read_text()) for n in demo.SHIPPED)


def test_targets_with_na_figures():
    from sparseyolo.demo import DENSE, DENSE_SEED1, SPARSE, SPARSE_P3, targets

    def row(model, method, m, ms, recall=None):
        return {"model": model, "method": method, "map": m, "p50_ms": ms, "mask_recall": recall}

    rows = [row(DENSE, "native", None, 900), row(DENSE_SEED1, "native", 0.1, 950), row(DENSE, "sahi", None, 1500),
            row(SPARSE, "native", 0.2, 500, 0.98), row(SPARSE_P3, "native", None, None, None)]  # fmt: skip
    got = {a: (b, m) for a, b, _, m in targets(rows)}
    assert got[f"{SPARSE}: mAP50-95 vs the dense seed(s)"] == ("0.200 vs n/a, 0.100", None)
    assert got[f"{SPARSE}: mask recall"] == ("0.980", True)
    assert got[f"{SPARSE}: predict time, dense / sparse"] == ("1.80x", True)
    assert got[f"{SPARSE} vs SAHI: time and mAP50-95"] == ("3.00x faster, 0.200 vs n/a", None)
    assert got[f"{SPARSE_P3}: mask recall"] == ("n/a", None)
    assert got[f"{SPARSE_P3}: predict time, dense / sparse"] == ("n/a", None)
    assert f"{SPARSE_P3} vs SAHI: time and mAP50-95" not in got  # not timed: not judged
    assert not any("predict time" in a for a, *_ in targets(rows, speed=None))


def test_ship_variant_writes_the_reference_files(tmp_path, weights_dir, make_trained_like_yolov8n):
    """A fake finished run: Ultralytics' `last.pt` (fp16 EMA) and `results.csv`. The shipped files go to the
    (redirected) weights folder only; the weights are the EMA's; the JSON holds the recipe and the final epoch."""
    real = {p.name: p.stat().st_mtime_ns for p in reference.Path(reference.__file__).parent.parent.glob("weights/*")}
    variant = VARIANTS["yolov8n-aerial-seed1"]
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    ema = make_trained_like_yolov8n().eval()
    ema.names = {0: "tree"}
    torch.save({"epoch": 2, "model": None, "ema": ema.half(), "optimizer": None}, run / "weights" / "last.pt")
    ema.float()
    (run / "results.csv").write_text(
        "epoch,time,train/box_loss,metrics/mAP50(B),metrics/mAP50-95(B),val/box_loss,lr/pg0\n"
        "1,10.5,2.0,0.10,0.04,1.9,0.01\n"
        "2,21.0,1.8,0.20,0.08,1.7,0.009\n"
    )
    recipe = Recipe(epochs=2)
    path = ship_variant(variant, recipe, run, "sparseyolo demo --train --epochs 2", metrics={"note": "m"})
    assert path == weights_dir / f"{variant.name}.safetensors"
    assert sorted(p.name for p in weights_dir.iterdir()) == [f"{variant.name}{e}" for e in (".json", ".safetensors",
                                                                                                ".yaml")]  # fmt: skip
    info = json.loads((weights_dir / f"{variant.name}.json").read_text())
    assert info["recipe"] == dataclasses.replace(recipe, seed=1).as_dict()  # the variant's seed
    assert info["name"] == variant.name and info["cfg"] == "yolov8n.yaml" and info["note"] == variant.note
    assert info["command"] == "sparseyolo demo --train --epochs 2" and info["metrics"] == {"note": "m"}
    assert info["epochs_trained"] == 2 and info["train_seconds"] == 21.0 and info["names"] == {"0": "tree"}
    assert info["final_epoch_val_tiles"] == {"metrics/mAP50(B)": 0.2, "metrics/mAP50-95(B)": 0.08, "val/box_loss": 1.7}
    assert "calibration" not in info  # no DFF neck
    from safetensors.torch import load_file

    sd = load_file(str(path))
    want = ema.state_dict()
    assert set(sd) == set(want)
    for k, v in want.items():
        assert torch.equal(sd[k], v.half() if v.is_floating_point() else v), k
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(YOLO(variant.name).model(x)[0], ema(x)[0], rtol=1e-3, atol=1e-3)
    after = {p.name: p.stat().st_mtime_ns for p in reference.Path(reference.__file__).parent.parent.glob("weights/*")}
    assert after == real  # the shipped references are untouched
    (run / "weights" / "last.pt").unlink()
    with pytest.raises(FileNotFoundError, match="last.pt"):
        ship_variant(variant, recipe, run, "x")
