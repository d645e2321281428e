"""Fixtures for the data tests: a real aerial build (deepforest files cached, else skipped) and fake scenes."""

from __future__ import annotations

import numpy as np
import pytest

import sparseyolo.data.aerial as aerial

# Fake stand-ins for the four deepforest scenes: (height, width) and boxes x0 y0 x1 y1. Scene 0 has one box
# sticking out of the image (clipped, counted as fixed) and one entirely outside it (dropped).
FAKE = {
    aerial.SCENES[0]: ((160, 200), [[10, 10, 40, 30], [90, 60, 130, 100], [180, 140, 215, 170], [300, 10, 320, 20]]),
    aerial.SCENES[1]: ((100, 120), [[5, 5, 25, 25], [60, 40, 90, 70]]),
    aerial.SCENES[2]: ((64, 64), [[2, 2, 20, 20], [30, 30, 60, 60]]),
    aerial.SCENES[3]: ((64, 64), [[10, 40, 30, 60]]),
}


def fake_load_scene(name: str = aerial.SCENES[0]) -> tuple[np.ndarray, np.ndarray]:
    (h, w), boxes = FAKE[name]
    img = np.random.default_rng(aerial.SCENES.index(name)).integers(1, 256, (h, w, 3), dtype=np.uint8)
    return img, np.asarray(boxes, np.float32)


@pytest.fixture
def fake_scenes(monkeypatch):
    """`build_aerial_dataset` reads small fake scenes instead of the deepforest files (fast, no download)."""
    monkeypatch.setattr(aerial, "load_scene", fake_load_scene)
    return FAKE


@pytest.fixture(scope="session")
def real_scenes():
    try:
        return {s: aerial.load_scene(s) for s in aerial.SCENES}
    except RuntimeError as e:  # no access to the package index and nothing cached
        pytest.skip(f"deepforest data unavailable: {e}")


@pytest.fixture(scope="session")
def aerial_build(real_scenes, tmp_path_factory):
    """The real aerial dataset with the default parameters (tile 640, overlap 0.2), built once (~3 s)."""
    return aerial.build_aerial_dataset(tmp_path_factory.mktemp("aerial") / "aer")
