"""The finder's tools around the model: the recall/active trade-off (brute-force oracle), the conversion's default
margin, the `sparseyolo finder` command, the `bench finder` benchmark and the converted reference variants."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_finder import scene

from sparseyolo.boxes import box_coverage
from sparseyolo.nn.finder import PAD_VALUE, Finder, recall_curve, threshold_for_recall


def _random_finder(seed: int = 3) -> Finder:
    torch.manual_seed(seed)
    finder = Finder()
    for p in finder.parameters():
        p.data.normal_(0, 0.3)
    return finder.eval()


def _brute(finder: Finder, images, boxes, threshold: float, margin: int) -> tuple[float, float]:
    """Recall and mean active share of the finder's own mask at `threshold`, each image padded with letterbox grey
    to a multiple of 32 (the model's input) and the mask cropped back; coverage by `box_coverage`."""
    finder.set_threshold(threshold)
    kept, active = [], []
    for img, b in zip(images, boxes):
        h, w = img.shape[:2]
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        x = F.pad(x, (0, -w % 32, 0, -h % 32), value=PAD_VALUE)
        with torch.no_grad():
            mask = finder.mask(x, margin=margin)[0][0, :h, :w].numpy()
        kept += list(box_coverage(mask, b) >= 0.9 - 1e-9)
        active.append(mask.mean())
    return float(np.mean(kept)), float(np.mean(active))


@pytest.mark.parametrize("margin", [0, 16])
def test_recall_curve_matches_the_finders_own_masks(margin):
    finder = _random_finder()
    rng = np.random.default_rng(7)
    data = [scene(rng, size=s, n=4, lo=6, hi=40) for s in (128, 100, 150)]  # 100/150: padded inputs
    images, boxes = [d[0] for d in data], [d[1] for d in data]
    recalls = (0.5, 0.9, 1.0)
    curve = recall_curve(finder, images, boxes, recalls, margin)
    assert [p["threshold"] for p in curve] == sorted((p["threshold"] for p in curve), reverse=True)
    for p, r in zip(curve, recalls):
        recall, active = _brute(finder, images, boxes, p["threshold"], margin)
        assert recall >= r and recall == pytest.approx(p["recall"]) and active == pytest.approx(p["active"])
    # at given thresholds (another set's): the same figures
    again = recall_curve(finder, images, boxes, margin=margin, thresholds=[p["threshold"] for p in curve])
    assert [(a["recall"], a["active"]) for a in again] == [(p["recall"], p["active"]) for p in curve]
    # no object: recall None, the active share still measured
    empty = recall_curve(finder, images[:1], [np.zeros((0, 4))], margin=margin, thresholds=[curve[0]["threshold"]])
    assert empty[0]["recall"] is None and 0.0 <= empty[0]["active"] <= 1.0


@pytest.mark.parametrize("recall", [0, 1.5, True, "0.9"])
def test_threshold_for_recall_refuses_bad_input(recall):
    with pytest.raises(ValueError, match="recall must be"):
        threshold_for_recall(np.array([1.0, 2.0]), recall)
    with pytest.raises(ValueError, match="no objects"):
        threshold_for_recall(np.zeros(0), 0.9)


@pytest.mark.parametrize(("p3", "p4", "margin"), [(False, False, 8), (True, False, 8), (True, True, 16)])
def test_convert_to_a_finder_takes_the_context_margin(p3, p4, margin):
    from sparseyolo import YOLO
    from sparseyolo.yolo.convert import convert
    from sparseyolo.yolo.finder import context_margin

    model = convert(YOLO("yolov8n.yaml").model, method="finder", p3=p3, p4=p4)
    sp = model.model[0].sparsify
    assert sp.method == "finder" and sp.dilate == margin == context_margin(model)
    assert model.yaml["backbone"][0][3][6] == margin  # in the YAML too: a shipped model rebuilds with it
    assert convert(YOLO("yolov8n.yaml").model, method="finder", dilate=3).model[0].sparsify.dilate == 3
    assert convert(YOLO("yolov8n.yaml").model, method="nonzero").model[0].sparsify.dilate == 0


def test_finder_command(tiny_data, tmp_path, capsys):
    from sparseyolo import YOLO
    from sparseyolo.cli import main
    from sparseyolo.yolo.convert import convert, save_checkpoint

    for argv, msg in (
        (["finder"], "model= is required"),
        (["finder", "model=x.pt", "bogus=1"], "unknown argument"),
        (["finder", "model=x.pt", "recall=2"], "recall must be in"),
        (["finder", "model=x.pt", "train=maybe"], "train must be True or False"),
        (["finder", "model=x.pt", "steps=many"], "integers"),
    ):
        assert main(argv) == 2, argv
        assert msg in capsys.readouterr().err
    assert main(["finder", f"model={tmp_path / 'missing.pt'}"]) == 1
    assert "not found" in capsys.readouterr().err
    dense = save_checkpoint(YOLO("yolov8n.yaml").model, tmp_path / "dense.pt")
    assert main(["finder", f"model={dense}", "train=False"]) == 1
    assert "no sparse stem" in capsys.readouterr().err
    sparse = save_checkpoint(convert(str(dense), method="finder"), tmp_path / "sparse.pt")
    out = tmp_path / "calibrated.pt"
    argv = ["finder", f"model={sparse}", f"data={tiny_data}", "composites=False", "recall=0.9", "threads=1"]
    assert main(argv + ["train=False", f"out={out}"]) == 0
    text = capsys.readouterr().out
    finder = YOLO(str(out)).model.model[0].sparsify.finder
    assert bool(finder.calibrated) and f"threshold {float(finder.threshold):.4g}" in text and "saved" in text
    assert torch.get_num_threads() >= 1
    assert main(argv + ["steps=3", f"out={tmp_path / 'trained.pt'}"]) == 0  # train, then calibrate
    report = json.loads(capsys.readouterr().out.split("\nsparseyolo finder:")[0])
    assert report["train"]["steps"] == 3 and report["calibration"]["recall"] >= 0.9


@pytest.fixture(scope="module")
def converted_finder(tmp_path_factory):
    """A converted sparse-P3+P4 YOLOv8n checkpoint whose (random) finder keeps part of a frame: threshold at the
    median logit of a generated scene."""
    from sparseyolo import YOLO
    from sparseyolo.yolo.convert import convert, save_checkpoint

    torch.manual_seed(0)
    model = convert(YOLO("yolov8n.yaml").model, method="finder", p3=True, p4=True)
    finder = model.model[0].sparsify.finder
    for p in finder.parameters():
        p.data.normal_(0, 0.3)
    img, _ = scene(np.random.default_rng(0), size=256)
    with torch.no_grad():
        finder.eval()
        lo = finder(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)
    finder.set_threshold(float(lo.median()))
    return save_checkpoint(model, tmp_path_factory.mktemp("finder") / "p34.pt")


def test_bench_finder_smoke(converted_finder, tmp_path, capsys):
    from yolo_utils import require_aerial_data

    from sparseyolo.bench import main
    from sparseyolo.yolo import YOLO

    require_aerial_data()
    out = tmp_path / "bench"
    argv = ["finder", "--models", str(converted_finder), "--size", "640x640", "--blank", "96", "--repeats", "1"]
    assert main(argv + ["--threads", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "targets" in text and (out / "finder.md").is_file()
    masks = {r["set"]: r for r in _csv(out / "finder-masks.csv")}
    assert set(masks) == {"forest", "640x640 1%", "640x640 4%", "640x640 empty", "blank 96"}
    # the blank frame's active share is the finder's own mask on a grey frame (independent of the bench's code)
    finder = YOLO(str(converted_finder)).model.model[0].sparsify.finder.eval()
    with torch.no_grad():
        mask = finder.mask(torch.full((1, 3, 96, 96), 114 / 255), margin=16)[0]
    assert float(masks["blank 96"]["active"]) == pytest.approx(float(mask.float().mean()))
    assert masks["blank 96"]["recall"] == "" and 0 <= float(masks["forest"]["recall"]) <= 1
    targets = _csv(out / "finder-targets.csv")
    assert len(targets) == 8 and {t["met"] for t in targets} <= {"True", "False"}
    with pytest.raises(SystemExit):
        main(["finder", "--size", "10x10"])


def _csv(path):
    import csv

    return list(csv.DictReader(open(path)))


def test_a_converted_variant_is_made_shipped_and_says_how(tmp_path, monkeypatch):
    """The conversion path of the recipe (tiny settings): convert the shipped dense reference, train the finder,
    fine-tune with distillation; the finder's calibration survives the fine-tune; the JSON records how."""
    from yolo_utils import require_aerial_data

    from sparseyolo.data.aerial import build_aerial_dataset
    from sparseyolo.yolo import recipe, reference
    from sparseyolo.yolo.recipe import Recipe, Variant, ship_variant, train_variant

    if "yolov8n-aerial" not in reference.shipped_names():
        pytest.skip("the dense reference is not shipped")
    require_aerial_data()
    monkeypatch.setattr(recipe, "FINDER", {"recall": 0.9, "steps": 2})
    variant = Variant("tiny-p34", "yolov8n.yaml", "test", convert={"from": "yolov8n-aerial", "method": "finder",
                      "p3": True, "p4": True}, finetune=1)  # fmt: skip
    recipe = Recipe(batch=4)
    data = build_aerial_dataset(tile=recipe.tile, overlap=recipe.overlap)
    final = train_variant(variant, recipe, data, tmp_path, threads=1, log=lambda *a: None)
    found = json.loads((tmp_path / "tiny-p34" / "finder.json").read_text())
    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    model = ckpt["model"]
    finder = model.model[0].sparsify.finder
    assert bool(finder.calibrated) and float(finder.threshold) == found["calibration"]["threshold"]
    assert model.model[0].sparsify.dilate == 16
    converted = torch.load(tmp_path / "tiny-p34" / "weights" / "converted.pt", weights_only=False)["model"]
    before, after = converted.state_dict(), model.state_dict()
    finder_keys = [k for k in before if ".sparsify.finder." in k]
    assert finder_keys and all(torch.equal(before[k], after[k]) for k in finder_keys)  # restored after tuning
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("model.22."))  # tuned
    assert train_variant(variant, recipe, data, tmp_path, threads=1, log=lambda *a: None) == final  # reused
    shipped = reference.WEIGHTS_DIR
    monkeypatch.setattr(reference, "WEIGHTS_DIR", tmp_path / "weights")
    ship_variant(variant, recipe, tmp_path / "tiny-p34", "a command")
    info = json.loads((tmp_path / "weights" / "tiny-p34.json").read_text())
    assert info["made"]["converted_from"]["from"] == "yolov8n-aerial" and info["made"]["finetune"]["epochs"] == 1
    assert info["made"]["finder"]["calibration"]["threshold"] == float(finder.threshold)
    assert info["epochs_trained"] == 1
    monkeypatch.setattr(reference, "WEIGHTS_DIR", shipped)
    # a second converted variant with the same finder settings: the same finder weights, its own margin's threshold
    stem = Variant("tiny-stem", "yolov8n.yaml", "test", convert={"from": "yolov8n-aerial", "method": "finder"})
    final2 = train_variant(stem, recipe, data, tmp_path, threads=1, log=lambda *a: None)
    report2 = json.loads((tmp_path / "tiny-stem" / "finder.json").read_text())
    assert report2["train"] is None and report2["weights"].startswith("finders/finder-") and report2["margin"] == 8
    sp2 = torch.load(final2, map_location="cpu", weights_only=False)["model"].model[0].sparsify
    assert sp2.dilate == 8 and float(sp2.finder.threshold) == report2["calibration"]["threshold"]
    w1, w2 = finder.state_dict(), sp2.finder.state_dict()
    assert all(torch.equal(w1[k], w2[k]) for k in w1 if k not in ("threshold", "calibrated"))


def test_train_finder_refuses_bad_steps():
    from sparseyolo import YOLO
    from sparseyolo.yolo.finder import train_finder

    model = YOLO("yolov8n-sparse.yaml", sparsify={"method": "finder"}).model
    for steps in (-1, 1.5, True):
        with pytest.raises(ValueError, match="steps must be"):
            train_finder(model, steps=steps)


def test_the_margin_loss_reads_what_the_mask_reads():
    """`finder_loss(margin > 0)`: BCE on the max-pooled logits (box cells -> 1, cells with no box within the margin
    -> 0, the ring around a box ignored) plus a share of the per-cell loss (oracle: the formula by hand); a map
    whose dilated mask holds the box and nothing else costs less than one that also fires on empty ground."""
    from sparseyolo.nn.finder import PLAIN_SHARE, POS_WEIGHT, cell_cover, finder_loss

    torch.manual_seed(0)
    logits = torch.randn(1, 1, 12, 12)
    cover = cell_cover([torch.tensor([[40.0, 40.0, 56.0, 56.0]])], (12, 12), 8)  # cells 5-6 x 5-6
    pooled = torch.stack([logits[0, 0, max(0, y - 2) : y + 3, max(0, x - 2) : x + 3].max() for y in range(12)
                          for x in range(12)]).view(12, 12)  # fmt: skip
    pos = cover[0] > 0
    near = torch.zeros(12, 12, dtype=torch.bool)
    near[3:9, 3:9] = True  # within 2 cells of the box
    w = (1 + POS_WEIGHT * pos.float()) * (pos | ~near).float()
    want = F.binary_cross_entropy_with_logits(pooled, pos.float(), weight=w)
    torch.testing.assert_close(finder_loss(logits, cover, margin=16, plain=0.0), want)
    torch.testing.assert_close(finder_loss(logits, cover, margin=16), want + PLAIN_SHARE * finder_loss(logits, cover))
    assert finder_loss(logits, cover, margin=9) == finder_loss(logits, cover, margin=16)  # whole cells: 2 either way
    good = torch.full((1, 1, 12, 12), -6.0)
    good[0, 0, 5:7, 5:7] = 6.0
    noisy = good.clone()
    noisy[0, 0, 0, 11] = 6.0  # fires on empty ground, far from the box
    assert finder_loss(good, cover, margin=16) < finder_loss(noisy, cover, margin=16)
    with pytest.raises(ValueError, match="margin must be"):
        finder_loss(logits, cover, margin=-1)


def test_fit_finder_trains_a_finder_whose_gradients_were_off():
    """A finder taken from an EMA checkpoint has `requires_grad` off on every weight: it still trains."""
    from sparseyolo.nn.finder import fit_finder

    finder = Finder(down=4, width=8)
    finder.requires_grad_(False)
    before = [p.clone() for p in finder.parameters()]
    rng = np.random.default_rng(0)
    data = [scene(rng, size=96, n=2) for _ in range(3)]
    fit_finder(finder, [d[0] for d in data], [d[1] for d in data], steps=2, batch=2, crop=64, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(before, finder.parameters()))
