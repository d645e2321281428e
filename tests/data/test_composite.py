"""`build_composite_dataset` / `sparseyolo data composite`: real crowns on real object-free ground.

Every test runs on the real deepforest scenes (skipped when they are not cached and cannot be downloaded), read
once per session; frames are small (640x480) except where a size is the point."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sparseyolo.data.aerial as aerial
import sparseyolo.data.composite as composite
from sparseyolo.data.aerial import VAL_SCENES, read_rgb
from sparseyolo.data.cli import main
from sparseyolo.data.composite import build_composite_dataset, crown_alpha, ground_windows

SMALL = (640, 480)


@pytest.fixture(autouse=True)
def scenes(real_scenes, monkeypatch):
    """The builders read the session's decoded scenes (fast) instead of decoding the PNGs again."""
    monkeypatch.setattr(aerial, "load_scene", lambda name=aerial.SCENES[0]: real_scenes[name])
    return real_scenes


@pytest.fixture(scope="module")
def both(tmp_path_factory, real_scenes):
    """A small build of both splits with a mixed share list (0: empty frames), built once for several tests."""
    mp = pytest.MonkeyPatch()
    mp.setattr(aerial, "load_scene", lambda name=aerial.SCENES[0]: real_scenes[name])
    try:
        yaml = build_composite_dataset(
            tmp_path_factory.mktemp("comp") / "c", size=SMALL, fg=[0.0, 0.01, 0.05, 0.2], images=4, split="both"
        )
    finally:
        mp.undo()
    return yaml.parent, json.loads((yaml.parent / "build.json").read_text())


def label_boxes(path: Path, w: int, h: int) -> np.ndarray:
    """YOLO label rows -> `x0, y0, x1, y1` pixels."""
    rows = np.loadtxt(path, ndmin=2).reshape(-1, 5) if path.stat().st_size else np.zeros((0, 5))
    cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)


def packed(a: np.ndarray) -> np.ndarray:
    a = a.reshape(-1, 3).astype(np.int64)
    return (a[:, 0] << 16) | (a[:, 1] << 8) | a[:, 2]


def test_ground_windows_hold_no_box_and_splits_are_disjoint(scenes):
    """No window lies within 32 px of a box of its source scene (nor in the shadow zone), only training scenes give
    ground, and no pixel is both training and validation ground."""
    cover = {}
    for split in ("train", "val"):
        pool = ground_windows(split)
        assert len(pool.items) >= 20
        cover[split] = {}
        for scene, _, x0, y0, x1, y1 in pool.items:
            assert scene not in VAL_SCENES and (x1 - x0, y1 - y0) == (composite.WINDOW, composite.WINDOW)
            boxes = scenes[scene][1]
            m = composite.MARGIN
            near = (boxes[:, 0] < x1 + m) & (boxes[:, 2] > x0 - m) & (boxes[:, 1] < y1 + m) & (boxes[:, 3] > y0 - m)
            assert not near.any(), f"{scene} window {(x0, y0)} is within {m} px of box {boxes[near][0]}"
            h, w = scenes[scene][0].shape[:2]
            mask = cover[split].setdefault(scene, np.zeros((h, w), bool))
            mask[y0:y1, x0:x1] = True
    for scene in set(cover["train"]) & set(cover["val"]):
        assert not (cover["train"][scene] & cover["val"][scene]).any()


def test_min_cut_is_optimal():
    rng = np.random.default_rng(0)
    err = rng.random((3, 5, 4))
    paths = composite._min_cut(err)
    for b in range(3):
        best = min(
            (p for p in itertools.product(range(4), repeat=5) if all(abs(i - j) <= 1 for i, j in zip(p, p[1:]))),
            key=lambda p: sum(err[b, i, j] for i, j in enumerate(p)),
        )
        np.testing.assert_array_equal(paths[b], best)


def test_share_is_reached_and_labels_are_the_pasted_boxes(both):
    root, report = both
    w, h = SMALL
    assert report["images"] == {"train": 4, "val": 4}
    crowns = {s: report["crowns"][s] for s in ("train", "val")}
    for p in report["per_image"]:
        split, req = p["split"], p["fg_requested"]
        a_min = min((c[4] - c[2]) * (c[5] - c[3]) for c in crowns[split])
        assert abs(p["fg"] - req) * w * h <= a_min / 2 + 1e-6, p  # within half the smallest crown
        boxes = np.array([o[2:] for o in p["objects"]], float).reshape(-1, 4)
        got = label_boxes(root / p["file"].replace("images", "labels").replace(".png", ".txt"), w, h)
        np.testing.assert_allclose(got, boxes, atol=0.01)  # the label is the pasted box
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum()
        assert area / (w * h) == pytest.approx(p["fg"])
        assert np.all(boxes >= 0) and np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h)
        for a, b in itertools.combinations(boxes, 2):  # no overlap: at least GAP px apart
            gap = max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])
            assert gap >= composite.GAP
    gt = json.loads((root / "annotations" / "val.json").read_text())
    assert len(gt["annotations"]) == report["boxes"]["val"] and len(gt["images"]) == 4
    text = (root / "data.yaml").read_text()
    assert f"path: {root.resolve()}" in text and "train: images/train" in text and "val: images/val" in text


def test_pixels_differ_from_the_ground_only_inside_the_boxes(both):
    """An independent check of the labels: the same seed quilts the same ground; the frame differs from it only
    inside the labelled boxes, and inside every one of them."""
    root, report = both
    w, h = SMALL
    for split in ("train", "val"):
        pool = ground_windows(split)
        for p in [q for q in report["per_image"] if q["split"] == split][1:3]:
            img = read_rgb(root / p["file"])
            ground, _ = composite.quilt_ground(np.random.default_rng(p["seed"]), pool, h, w)
            diff = (img != ground).any(axis=-1)
            inside = np.zeros_like(diff)
            for *_, x0, y0, x1, y1 in p["objects"]:
                inside[y0:y1, x0:x1] = True
                assert diff[y0:y1, x0:x1].any()
            assert diff.any() and not (diff & ~inside).any()


def test_empty_frames_are_real_ground_only(both, scenes):
    root, report = both
    for p in [q for q in report["per_image"] if q["fg_requested"] == 0.0]:
        assert p["fg"] == 0.0 and p["boxes"] == 0 and p["objects"] == []
        assert (root / p["file"].replace("images", "labels").replace(".png", ".txt")).read_text() == ""
        img = read_rgb(root / p["file"])
        windows = [report["windows"][p["split"]][i] for i in p["windows"]]
        src = np.concatenate([packed(scenes[sc][0][y0:y1, x0:x1]) for sc, x0, y0, x1, y1 in windows])
        assert np.isin(packed(img), src).all()  # every pixel is a pixel of a ground window the frame lists


def test_objects_come_from_their_split_and_are_real_pixels(both, scenes):
    """Val crowns only from the held-out scene, train crowns only from the training scenes; where the alpha is 1
    (the centre included) a pasted crown is its source pixels exactly."""
    root, report = both
    for split in ("train", "val"):
        table = report["crowns"][split]
        assert {c[0] for c in table} == (set(VAL_SCENES) if split == "val" else set(aerial.SCENES) - set(VAL_SCENES))
        for scene, idx, *box in table[:: max(1, len(table) // 40)]:
            np.testing.assert_array_equal(np.rint(scenes[scene][1][idx]), box)  # the source box itself
        checked = 0
        for p in [q for q in report["per_image"] if q["split"] == split]:
            img = read_rgb(root / p["file"])
            for k, turn, x0, y0, x1, y1 in p["objects"]:
                scene, _, sx0, sy0, sx1, sy1 = table[k]
                src = composite._turned(scenes[scene][0][sy0:sy1, sx0:sx1], turn)
                out = img[y0:y1, x0:x1]
                assert out.shape == src.shape
                one = crown_alpha(y1 - y0, x1 - x0) >= 1.0
                assert one[(y1 - y0) // 2, (x1 - x0) // 2]
                np.testing.assert_array_equal(out[one], src[one])
                checked += 1
        assert checked >= 5


def test_deterministic_and_the_cli_agrees(tmp_path, capsys):
    a = build_composite_dataset(tmp_path / "a", size=SMALL, fg=0.05, images=2, split="val", seed=3).parent
    rc = main(["composite", "--out", str(tmp_path / "b"), "--size", "640x480", "--fg", "0.05", "--images", "2",
               "--split", "val", "--seed", "3"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f"data: {tmp_path / 'b' / 'data.yaml'}" in out and "val: 2 images" in out and "achieved share" in out
    b = tmp_path / "b"
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "data.yaml")
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != "data.yaml")
    assert len(files) == 2 + 2 + 1 + 1  # images, labels, annotations/val.json, build.json
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    c = build_composite_dataset(tmp_path / "c", size=SMALL, fg=0.05, images=2, split="val", seed=4).parent
    assert (c / files[0]).read_bytes() != (a / files[0]).read_bytes()  # another seed, another frame


def test_reuse_refusal_and_force(tmp_path, capsys):
    out = tmp_path / "c"
    yaml = build_composite_dataset(out, size=SMALL, fg=0.02, images=1, split="train")
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert build_composite_dataset(out, size=SMALL, fg=0.02, images=1, split="train") == yaml  # reused
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp
    with pytest.raises(FileExistsError, match=r"composite build with other parameters \(fg 0.02 there, 0.03 here\)"):
        build_composite_dataset(out, size=SMALL, fg=0.03, images=1, split="train")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp  # nothing overwritten
    rc = main(
        ["composite", "--out", str(out), "--size", "640x480", "--fg", "0.02", "--images", "1", "--split", "train"]
    )
    assert rc == 0 and "reused" in capsys.readouterr().out
    rc = main(
        ["composite", "--out", str(out), "--size", "640x480", "--fg", "0.03", "--images", "1", "--split", "train"]
    )
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("sparseyolo data: error: ") and "--force" in err and "Traceback" not in err
    build_composite_dataset(out, size=SMALL, fg=0.03, images=1, split="train", force=True)
    assert json.loads((out / "build.json").read_text())["params"]["fg"] == 0.03
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a dataset build"):
        build_composite_dataset(other, size=SMALL, force=True)
    assert (other / "mine.txt").read_text() == "keep"
    aer = tmp_path / "aer"
    aer.mkdir()
    (aer / "build.json").write_text(json.dumps({"params": {"dataset": "synth"}}))
    with pytest.raises(FileExistsError, match="holds another dataset build"):
        build_composite_dataset(aer, size=SMALL)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fg": -0.01}, r"fg \(box area / image area\) must be .* in \[0, 0.2\], got -0.01"),
        ({"fg": 0.25}, r"in \[0, 0.2\], got 0.25"),
        ({"fg": [0.01, 0.3]}, r"got \[0.01, 0.3\]"),
        ({"fg": "0.01"}, r"got '0.01'"),
        ({"size": (100, 480)}, "size 100x480 is smaller than the 192-px ground window"),
        ({"size": (640, 64)}, "size 640x64 is smaller than the 192-px ground window"),
        ({"size": "640x480"}, r"size must be \(width, height\) in pixels, got '640x480'"),
        ({"size": (640.5, 480)}, r"whole pixels, got \(640.5, 480\)"),
        ({"split": "test"}, "split must be 'train', 'val' or 'both', got 'test'"),
        ({"images": 0}, "images must be an int >= 1"),
        ({"seed": -1}, "seed must be an int >= 0"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_composite_dataset(tmp_path / "x", **{"size": SMALL, **kwargs})
    assert not list(tmp_path.iterdir())


def test_a_share_that_does_not_fit_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "x"
    build_composite_dataset(out, size=SMALL, fg=0.01, images=1)
    before = (out / "build.json").read_bytes()
    monkeypatch.setattr(composite, "GAP", 150)  # crowns must keep 150 px apart: a few fit in 640x480
    with pytest.raises(ValueError, match=r"fg=0.2 cannot be reached on a 640x480 frame: room for \d+ crowns"):
        build_composite_dataset(out, size=SMALL, fg=0.2, images=1, force=True)
    assert (out / "build.json").read_bytes() == before  # the old build is still there, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no partial build left behind


@pytest.mark.parametrize(
    "argv, rc, message",
    [
        (["--size", "640"], 2, "argument --size: expected WIDTHxHEIGHT"),
        (["--fg", "lots"], 2, "argument --fg: expected a fraction or comma-separated fractions"),
        (["--split", "test"], 2, "argument --split: invalid choice: 'test'"),
        (["--fg", "0.5"], 1, "sparseyolo data: error: fg (box area / image area) must be"),
        (["--size", "100x100"], 1, "smaller than the 192-px ground window"),
    ],
)
def test_cli_bad_input(tmp_path, capsys, argv, rc, message):
    got = main(["composite", "--out", str(tmp_path / "x"), *argv])
    err = capsys.readouterr().err
    assert got == rc and message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_python_dash_m_and_the_cache_folder(tmp_path, monkeypatch, setenv):
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "sparseyolo.data", "composite", "--out", str(tmp_path / "m"), "--size", "256x256",
         "--fg", "0,0.1", "--images", "2", "--split", "val"],
        capture_output=True, text=True, cwd=root, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "m" / "build.json").read_text())
    assert [p["fg_requested"] for p in report["per_image"]] == [0.0, 0.1]
    setenv("SPARSEYOLO_CACHE", str(tmp_path / "cache"))  # out=None: a cache folder named by the params
    yaml = build_composite_dataset(size=(256, 256), fg=[0, 0.1], images=2, split="val")
    assert yaml.parent == tmp_path / "cache" / "composite-256x256-fg0-0.1-n2-val-seed0"
    assert (yaml.parent / "images/val/composite_0001.png").read_bytes() == (
        tmp_path / "m" / "images/val/composite_0001.png"
    ).read_bytes()
    format_now = composite.BUILD_FORMAT
    monkeypatch.setattr(composite, "BUILD_FORMAT", 99)  # a newer builder: the stale cache is rebuilt, not refused
    assert build_composite_dataset(size=(256, 256), fg=[0, 0.1], images=2, split="val") == yaml
    assert json.loads((yaml.parent / "build.json").read_text())["params"]["format"] == 99
    with pytest.raises(FileExistsError, match=f"format {format_now} there, 99 here"):
        build_composite_dataset(tmp_path / "m", size=(256, 256), fg=[0, 0.1], images=2)  # a folder of the user's


@pytest.mark.parametrize("split", ["train", "val"])
def test_share_in_small_crowded_frames(split):
    """Down to the smallest frame at the largest share, the share is met within half the smallest crown."""
    g, c = ground_windows(split), composite.crowns(split)
    a_min = min((y1 - y0) * (x1 - x0) for *_, x0, y0, x1, y1 in c.items)
    for (w, h), seed, fg in itertools.product([(192, 192), (256, 256), (200, 1000)], range(5), [0.001, 0.05, 0.2]):
        frame = composite.composite_frame(np.random.default_rng(seed), g, c, h, w, fg)
        assert abs(frame.fg - fg) * w * h <= a_min / 2, (w, h, seed, fg, frame.fg)


def test_1080p_at_the_largest_share(scenes):
    g, c = ground_windows("train"), composite.crowns("train")
    frame = composite.composite_frame(np.random.default_rng(0), g, c, 1080, 1920, 0.2)
    assert frame.image.shape == (1080, 1920, 3) and abs(frame.fg - 0.2) * 1920 * 1080 <= 36
    assert len(frame.boxes) > 100


@pytest.mark.slow
def test_8k_frame_memory(scenes):
    """An 8K frame at 5% peaks at about 2x its own size in numpy allocations (measured by tracemalloc)."""
    import tracemalloc

    g, c = ground_windows("val"), composite.crowns("val")
    tracemalloc.start()
    try:
        frame = composite.composite_frame(np.random.default_rng(0), g, c, 4320, 7680, 0.05)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert frame.image.shape == (4320, 7680, 3) and abs(frame.fg - 0.05) < 1e-4
    assert peak < 3 * frame.image.nbytes, f"peak {peak / 2**20:.0f} MiB"
