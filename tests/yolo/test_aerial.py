"""Real aerial data from deepforest's wheel: scenes, box counts, YOLO tiles."""

from __future__ import annotations

import numpy as np
import pytest

from sparseyolo.data.aerial import SCENES, VAL_SCENES, build_aerial_dataset, load_scene


@pytest.fixture(scope="module")
def scenes():
    try:
        return {s: load_scene(s) for s in SCENES}
    except RuntimeError as e:  # no access to the package index and nothing cached
        pytest.skip(f"deepforest data unavailable: {e}")


def test_scenes_match_published_counts(scenes):
    shapes = {s: (img.shape, len(b)) for s, (img, b) in scenes.items()}
    assert shapes[SCENES[0]] == ((2472, 2299, 3), 574)
    assert shapes[SCENES[1]] == ((1035, 1249, 3), 279)
    assert shapes["OSBS_029"] == ((400, 400, 3), 61)
    assert shapes["SOAP_061"] == ((400, 400, 3), 37)
    for img, b in scenes.values():
        assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
        assert b[:, 2].max() <= img.shape[1] + 1 and b[:, 3].max() <= img.shape[0] + 1


def test_build_yolo_tiles(scenes, tmp_path):
    yaml = build_aerial_dataset(tmp_path / "aer", tile=320, overlap=0)
    assert yaml.is_file() and "0: tree" in yaml.read_text()
    root = tmp_path / "aer"
    full = list((root / "labels" / "full").glob("*.txt"))
    assert [p.stem for p in full] == [VAL_SCENES[0]]  # the held-out region, whole
    rows = np.loadtxt(full[0], ndmin=2)
    assert len(rows) == 279 and np.all((rows[:, 1:] > 0) & (rows[:, 1:] <= 1))
    assert len(list((root / "images" / "val").glob("*.png"))) == 4 * 4  # 1035x1249 -> 4x4 tiles of 320
    train = list((root / "images" / "train").glob("*.png"))
    assert len(train) == 8 * 8 + 2 * 2 + 2 * 2  # 2472x2299 -> 8x8 tiles of 320, 400 -> 2x2
    assert not any(VAL_SCENES[0] in p.name for p in train)  # split by region
    n_boxes = sum(len(np.loadtxt(p, ndmin=2)) for p in (root / "labels" / "train").glob("*.txt") if p.stat().st_size)
    assert 574 + 61 + 37 <= n_boxes <= 2 * (574 + 61 + 37)  # a box split by a border may be kept in both tiles
