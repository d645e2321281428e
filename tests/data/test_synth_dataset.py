"""`build_synth_dataset`: YOLO layout, labels and COCO ground truth match the scenes, reuse / refusal / force,
atomic builds."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sparseyolo.data.synth as synth
from sparseyolo.data.aerial import read_rgb
from sparseyolo.data.synth import build_synth_dataset, synth_scene

SMALL = {"n_images": 4, "height": 64, "width": 96, "fg": 0.08, "size": (4, 12)}


def read_labels(path) -> np.ndarray:
    return np.loadtxt(path, ndmin=2).reshape(-1, 5)


def test_layout_labels_and_ground_truth(tmp_path):
    from pycocotools.coco import COCO

    yaml = build_synth_dataset(tmp_path / "syn", clutter=0.02, seed=3, **SMALL)
    root = yaml.parent
    assert yaml == root / "data.yaml" and root == tmp_path / "syn"
    text = yaml.read_text()
    assert f"path: {root.resolve()}" in text and "train: images/train" in text and "val: images/val" in text
    assert "  0: object" in text
    train, val = sorted((root / "images" / "train").glob("*.png")), sorted((root / "images" / "val").glob("*.png"))
    assert len(train) == 3 and len(val) == 1  # round(4 * 0.25) = 1 val image
    assert not list(tmp_path.glob(".syn.partial-*"))
    report = json.loads((root / "build.json").read_text())
    assert report["params"]["seed"] == 3 and report["params"]["size"] == [4, 12]
    assert report["images"] == {"train": 3, "val": 1} and len(report["per_image"]) == 4
    for item in report["per_image"]:
        img_path = root / item["file"]
        img = read_rgb(img_path)
        s = synth_scene(64, 96, fg=0.08, size=(4, 12), clutter=0.02, seed=item["seed"])  # reproducible per image
        np.testing.assert_array_equal(img, s.image)  # PNG is lossless: exact zeros stay zeros
        assert item["fg"] == s.fg and item["clutter"] == s.clutter and item["boxes"] == len(s.boxes)
        rows = read_labels(root / "labels" / item["split"] / f"{img_path.stem}.txt")
        assert np.all(rows[:, 0] == 0) and len(rows) == len(s.boxes)
        cx, cy, bw, bh = rows[:, 1] * 96, rows[:, 2] * 64, rows[:, 3] * 96, rows[:, 4] * 64
        xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
        np.testing.assert_allclose(xyxy, s.boxes, atol=1e-3)
    coco = COCO(str(root / "annotations" / "val.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["object"]
    (img_info,) = coco.loadImgs(coco.getImgIds())
    assert (img_info["file_name"], img_info["width"], img_info["height"]) == (val[0].name, 96, 64)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_info["id"]]))
    rows = read_labels(root / "labels" / "val" / f"{val[0].stem}.txt")
    assert len(anns) == len(rows) == report["boxes"]["val"]
    x, y, w, h = np.array([a["bbox"] for a in anns]).T
    np.testing.assert_allclose(np.stack([x + w / 2, y + h / 2], 1), rows[:, 1:3] * [96, 64], atol=1e-3)


def test_count_mode_and_progress_bar(tmp_path, capsys):
    yaml = build_synth_dataset(tmp_path / "syn", n_images=5, height=48, width=48, size=6, count=3, seed=1)
    assert "synthetic scenes" in capsys.readouterr().err  # a bar for more than 4 images
    report = json.loads((yaml.parent / "build.json").read_text())
    assert report["params"]["fg"] is None and report["params"]["count"] == 3  # count overrides fg
    assert [p["boxes"] for p in report["per_image"]] == [3] * 5
    assert report["images"] == {"train": 4, "val": 1}


def test_reuse_refuse_force(tmp_path):
    out = tmp_path / "syn"
    yaml = build_synth_dataset(out, **SMALL)
    stamp = (out / "build.json").stat().st_mtime_ns
    assert build_synth_dataset(out, **SMALL) == yaml  # same parameters: reused, not rewritten
    assert (out / "build.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match=r"fg 0\.08 there, 0\.1 here"):
        build_synth_dataset(out, **{**SMALL, "fg": 0.1})
    assert (out / "build.json").stat().st_mtime_ns == stamp  # untouched
    build_synth_dataset(out, force=True, **{**SMALL, "fg": 0.1})
    assert json.loads((out / "build.json").read_text())["params"]["fg"] == 0.1
    build_synth_dataset(out, force=True, **{**SMALL, "fg": 0.1})  # force rebuilds even the same parameters
    assert (out / "build.json").stat().st_mtime_ns != stamp


def test_never_replaces_a_folder_it_did_not_build(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(FileExistsError, match="not a dataset build"):
            build_synth_dataset(mine, force=force, **SMALL)
    assert (mine / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_synth_dataset(empty, **SMALL).is_file()  # an empty folder is fine


def test_interrupted_build_leaves_nothing_complete(tmp_path, monkeypatch):
    real, calls = synth.synth_scene, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("power cut")
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "synth_scene", failing)
    out = tmp_path / "syn"
    with pytest.raises(RuntimeError, match="power cut"):
        build_synth_dataset(out, **SMALL)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no output, no partial folder
    monkeypatch.setattr(synth, "synth_scene", real)
    build_synth_dataset(out, **SMALL)
    stamp = (out / "build.json").stat().st_mtime_ns
    calls.clear()
    monkeypatch.setattr(synth, "synth_scene", failing)
    with pytest.raises(RuntimeError, match="power cut"):
        build_synth_dataset(out, force=True, **{**SMALL, "fg": 0.1})
    assert (out / "build.json").stat().st_mtime_ns == stamp  # a failed rebuild keeps the old build whole
    assert json.loads((out / "build.json").read_text())["params"]["fg"] == 0.08
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_images": 1}, "n_images"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"height": -1}, "height"),
        ({"size": (4, 200)}, "does not fit"),
        ({"fg": 2}, "fg"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_synth_dataset(tmp_path / "syn", **{**SMALL, **kwargs})
    assert not (tmp_path / "syn").exists()
    with pytest.raises(ValueError, match="out"):
        build_synth_dataset(None)
