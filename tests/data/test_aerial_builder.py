"""`build_aerial_dataset`: split by region, the whole held-out scene, box bookkeeping, bad input, atomic builds.

Tests on the real deepforest scenes share one default build (`aerial_build`, skipped when the files are not
cached and cannot be downloaded); reuse, force and interrupted builds run on small fake scenes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

import sparseyolo.data.aerial as aerial
from sparseyolo.data.aerial import SCENES, VAL_SCENES, build_aerial_dataset, read_rgb, read_voc_boxes

VAL = VAL_SCENES[0]  # the 1249x1035 Yellowstone scene, 279 boxes


def labels(path) -> np.ndarray:
    return np.loadtxt(path, ndmin=2).reshape(-1, 5) if path.stat().st_size else np.zeros((0, 5))


def tiles_of(root, split: str, scene: str) -> dict[tuple[int, int], np.ndarray]:
    """`(y, x)` origin -> label rows of the tiles of `scene` in `split` (the file names carry the origins)."""
    out = {}
    for p in (root / "labels" / split).glob(f"{scene}_*.txt"):
        m = re.fullmatch(re.escape(scene) + r"_(\d+)_(\d+)", p.stem)
        if m:
            out[int(m[1]), int(m[2])] = labels(p)
    return out


def test_split_by_region(aerial_build):
    root = aerial_build.parent
    train = [p.stem for p in (root / "images" / "train").glob("*.png")]
    val = [p.stem for p in (root / "images" / "val").glob("*.png")]
    assert train and val
    assert not [n for n in train if VAL in n]  # no pixel of the held-out region in training
    assert all(n.startswith(VAL + "_") for n in val)
    for split in ("train", "val"):  # every image has its label file, and nothing else is there
        imgs = {p.stem for p in (root / "images" / split).glob("*")}
        assert imgs == {p.stem for p in (root / "labels" / split).glob("*")}
    assert f"path: {root.resolve()}" in aerial_build.read_text() and "  0: tree" in aerial_build.read_text()


def test_full_split_is_the_whole_scene(aerial_build, real_scenes):
    from pycocotools.coco import COCO

    root = aerial_build.parent
    (full,) = (root / "images" / "full").glob("*.png")
    assert full.stem == VAL
    with Image.open(full) as im:
        assert im.size == (1249, 1035)
    np.testing.assert_array_equal(read_rgb(full), real_scenes[VAL][0])  # native resolution, lossless
    rows = labels(root / "labels" / "full" / f"{VAL}.txt")
    assert len(rows) == 279 and np.all((rows[:, 1:] > 0) & (rows[:, 1:] <= 1))
    assert "val: images/full" in (root / "full.yaml").read_text()
    coco = COCO(str(root / "annotations" / "full.json"))
    (img,) = coco.loadImgs(coco.getImgIds())
    assert (img["file_name"], img["width"], img["height"]) == (f"{VAL}.png", 1249, 1035)
    assert len(coco.getAnnIds()) == 279
    report = json.loads((root / "build.json").read_text())
    assert report["images"]["full"] == 1 and report["boxes"]["full"] == 279


def test_box_counts_add_up(aerial_build, real_scenes):
    """Per tile, the kept boxes are exactly the source boxes with >= min_visible of their area inside it; per
    split, kept + slivers = every (box, tile) pair that overlaps; every source box is kept whole somewhere."""
    root = aerial_build.parent
    report = json.loads((root / "build.json").read_text())
    p = report["params"]
    tile, min_visible = p["tile"], p["min_visible"]
    touching = {"train": 0, "val": 0}
    kept = {"train": 0, "val": 0}
    for scene, (img, boxes) in real_scenes.items():
        h, w = img.shape[:2]
        split = "val" if scene == VAL else "train"
        tiles = tiles_of(root, split, scene)
        t = min(tile, h, w)
        cover = np.zeros((h, w), bool)
        whole = np.zeros(len(boxes), bool)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for (y, x), rows in tiles.items():
            cover[y : y + t, x : x + t] = True
            iw = np.minimum(boxes[:, 2], x + t) - np.maximum(boxes[:, 0], x)
            ih = np.minimum(boxes[:, 3], y + t) - np.maximum(boxes[:, 1], y)
            vis = np.clip(iw, 0, None) * np.clip(ih, 0, None)
            expect = vis >= min_visible * area
            assert len(rows) == expect.sum(), f"{scene} tile {(y, x)}"
            touching[split] += int((vis > 0).sum())
            kept[split] += len(rows)
            whole |= vis >= area - 1e-3
        assert cover.all(), f"{scene}: the tiles do not cover the scene"
        assert whole.all(), f"{scene}: {int((~whole).sum())} boxes are never kept whole"
    for split in ("train", "val"):
        assert report["boxes"][split] == kept[split]
        assert kept[split] + report["slivers"][split] == touching[split]
    assert report["source_boxes_dropped"] == 0


def test_reuse_and_parameter_mismatch(aerial_build):
    root = aerial_build.parent
    stamp = (root / "build.json").stat().st_mtime_ns
    assert build_aerial_dataset(root) == aerial_build  # same parameters: reused
    assert (root / "build.json").stat().st_mtime_ns == stamp
    for kwargs in ({"tile": 512}, {"overlap": 0.1}, {"min_visible": 0.3}, {"val_scenes": ["OSBS_029"]}):
        with pytest.raises(FileExistsError, match="other parameters"):
            build_aerial_dataset(root, **kwargs)
    assert (root / "build.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tile": 16}, "tile"),
        ({"tile": 640.0}, "tile"),
        ({"overlap": 1.0}, "overlap"),
        ({"overlap": -0.1}, "overlap"),
        ({"overlap": float("nan")}, "overlap"),
        ({"min_visible": 0.0}, "min_visible"),
        ({"val_scenes": []}, "val_scenes"),
        ({"val_scenes": ["nowhere"]}, "val_scenes"),
        ({"val_scenes": list(SCENES)}, "val_scenes"),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_aerial_dataset(tmp_path / "aer", **kwargs)
    assert not (tmp_path / "aer").exists()


def test_read_errors_name_the_file(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((16, 16, 3), 7, np.uint8)).save(good)
    data = good.read_bytes()
    for name, content in {
        "empty.png": b"",
        "garbage.png": b"not a png" * 20,
        "cut.png": data[: len(data) // 2],
    }.items():
        with pytest.raises(ValueError, match=re.escape(str(tmp_path / name))):
            (tmp_path / name).write_bytes(content)
            read_rgb(tmp_path / name)
    assert read_rgb(good).shape == (16, 16, 3)
    box = "<object><bndbox><xmin>{}</xmin><ymin>1</ymin><xmax>5</xmax><ymax>6</ymax></bndbox></object>"
    bad_xml = {
        "empty.xml": "",
        "unclosed.xml": "<annotation>" + box.format(1),
        "nobox.xml": "<annotation><object><name>tree</name></object></annotation>",
        "text.xml": "<annotation>" + box.format("left") + "</annotation>",
    }
    for name, content in bad_xml.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(ValueError, match=re.escape(str(tmp_path / name))):
            read_voc_boxes(tmp_path / name)
    (tmp_path / "ok.xml").write_text("<annotation>" + box.format(2) + "</annotation>")
    np.testing.assert_array_equal(read_voc_boxes(tmp_path / "ok.xml"), [[2, 1, 5, 6]])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_rgb(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError, match="missing.xml"):
        read_voc_boxes(tmp_path / "missing.xml")


def test_force_rebuild_and_source_box_bookkeeping(tmp_path, fake_scenes):
    out = tmp_path / "aer"
    yaml = build_aerial_dataset(out, tile=64, overlap=0.0)
    report = json.loads((out / "build.json").read_text())
    assert report["source_boxes_fixed"] == 1 and report["source_boxes_dropped"] == 1  # see FAKE in conftest
    assert report["images"]["full"] == 1 and report["boxes"]["full"] == 2
    with pytest.raises(FileExistsError, match="other parameters"):
        build_aerial_dataset(out, tile=48, overlap=0.0)
    assert build_aerial_dataset(out, tile=48, overlap=0.0, force=True) == yaml
    assert json.loads((out / "build.json").read_text())["params"]["tile"] == 48
    rows = {int(p.stem.rsplit("_", 2)[1]) for p in (out / "images" / "train").glob(f"{SCENES[0]}_*.png")}
    assert rows == {0, 48, 96, 112}  # 160 px high: 48 px tiles at 0, 48, 96, and the last one ends at the border
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aer"]


def test_interrupted_build_leaves_nothing_complete(tmp_path, fake_scenes, monkeypatch):
    out = tmp_path / "aer"
    real, calls = aerial.load_scene, []

    def failing(name):
        calls.append(name)
        if len(calls) == 3:
            raise OSError("disk gone")
        return real(name)

    monkeypatch.setattr(aerial, "load_scene", failing)
    with pytest.raises(OSError, match="disk gone"):
        build_aerial_dataset(out, tile=64)
    assert list(tmp_path.iterdir()) == []  # no output, no partial folder
    monkeypatch.setattr(aerial, "load_scene", real)
    build_aerial_dataset(out, tile=64)
    stamp = (out / "build.json").stat().st_mtime_ns
    calls.clear()
    monkeypatch.setattr(aerial, "load_scene", failing)
    with pytest.raises(OSError, match="disk gone"):
        build_aerial_dataset(out, tile=48, force=True)
    assert (out / "build.json").stat().st_mtime_ns == stamp  # the old build is whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aer"]


def test_never_replaces_a_folder_it_did_not_build(tmp_path, fake_scenes):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(FileExistsError, match="not a dataset build"):
            build_aerial_dataset(mine, tile=64, force=force)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_aerial_dataset(empty, tile=64).is_file()  # an empty folder is fine
    (empty / "build.json").write_text("{not json")  # a damaged build: refused, replaced with force
    with pytest.raises(FileExistsError, match="damaged"):
        build_aerial_dataset(empty, tile=64)
    assert build_aerial_dataset(empty, tile=64, force=True).is_file()
    assert json.loads((empty / "build.json").read_text())["params"]["tile"] == 64
