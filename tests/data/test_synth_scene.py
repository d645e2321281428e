"""`synth_scene`: controlled foreground, tight boxes on exact zeros, count mode, unlabelled clutter, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from sparseyolo.data.synth import CLUTTER_GAP, SynthScene, synth_scene

H, W = 192, 256


def box_mask(boxes: np.ndarray, h: int, w: int, pad: int = 0) -> np.ndarray:
    m = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes.astype(int):
        m[max(y0 - pad, 0) : y1 + pad, max(x0 - pad, 0) : x1 + pad] = True
    return m


def nonzero(img: np.ndarray) -> np.ndarray:
    return (img != 0).any(-1)


def test_types_and_shapes():
    s = synth_scene(H, W, fg=0.05, size=(4, 16), seed=0)
    assert isinstance(s, SynthScene)
    img, boxes, fg, clutter = s  # unpacks
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and boxes.dtype == np.float32 and len(boxes) > 0
    assert isinstance(fg, float) and clutter == 0.0


@pytest.mark.parametrize("fg", [0.01, 0.05, 0.2, 0.3])
def test_foreground_fraction_matches_request(fg):
    lo = 4
    s = synth_scene(H, W, fg=fg, size=(lo, 24), seed=1)
    assert s.fg == pytest.approx(nonzero(s.image).mean(), abs=1e-12)  # measured = what a nonzero sparsifier sees
    assert abs(s.fg - fg) <= lo * lo / (H * W)  # within one smallest object of the request


@pytest.mark.parametrize("shapes", [("rect",), ("ellipse",), ("rect", "ellipse")])
def test_boxes_inside_tight_and_apart(shapes):
    s = synth_scene(H, W, fg=0.2, size=(3, 30), seed=2, shapes=shapes)
    b = s.boxes
    assert np.all(b[:, :2] >= 0) and np.all(b[:, 2] <= W) and np.all(b[:, 3] <= H)
    assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1]) and np.all(b == np.round(b))
    sides = np.concatenate([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]])
    assert sides.min() >= 3 and sides.max() <= 30
    nz = nonzero(s.image)
    assert not np.any(nz & ~box_mask(b, H, W))  # no pixel outside the boxes (no clutter here)
    for k, (x0, y0, x1, y1) in enumerate(b.astype(int)):
        crop = nz[y0:y1, x0:x1]
        assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any(), f"box {k} not tight"
        if shapes == ("rect",):
            assert np.all(s.image[y0:y1, x0:x1] > 0), f"box {k}: a zero inside a rectangle"  # every channel
        others = np.delete(b, k, axis=0)  # boxes at least 1 px apart at this density
        apart = (
            (others[:, 0] >= x1 + 1) | (others[:, 2] <= x0 - 1) | (others[:, 1] >= y1 + 1) | (others[:, 3] <= y0 - 1)
        )
        assert apart.all(), f"box {k} touches another"


def test_count_mode_and_empty_scenes():
    s = synth_scene(H, W, fg=0.0, count=7, size=(5, 9), seed=3)
    assert len(s.boxes) == 7  # count overrides fg
    assert s.fg == pytest.approx(nonzero(s.image).mean())
    assert len(synth_scene(H, W, fg=0.5, count=7, size=(5, 9), seed=3).boxes) == 7
    for s in (synth_scene(H, W, count=0), synth_scene(H, W, fg=0.0)):
        assert s.boxes.shape == (0, 4) and s.boxes.dtype == np.float32 and s.fg == 0.0 and not s.image.any()


def test_count_mode_crowded_still_places_every_object():
    s = synth_scene(32, 32, count=40, size=8, seed=0)  # 40 * 64 px > 1024 px: must overlap
    assert len(s.boxes) == 40
    assert np.all(s.boxes[:, 2] <= 32) and np.all(s.boxes[:, 3] <= 32)


def test_clutter_is_unlabelled_and_apart_from_boxes():
    clean = synth_scene(H, W, fg=0.05, size=(4, 16), seed=4)
    s = synth_scene(H, W, fg=0.05, size=(4, 16), clutter=0.03, seed=4)
    np.testing.assert_array_equal(s.boxes, clean.boxes)  # clutter has its own random stream: same objects
    inside = box_mask(s.boxes, H, W)
    np.testing.assert_array_equal(s.image[inside], clean.image[inside])  # objects untouched
    extra = nonzero(s.image) & ~inside
    assert extra.sum() == round(0.03 * H * W) and s.clutter == pytest.approx(extra.mean())
    assert not np.any(extra & box_mask(s.boxes, H, W, pad=CLUTTER_GAP))  # never next to a labelled box
    assert s.fg == clean.fg and nonzero(s.image).mean() == pytest.approx(s.fg + s.clutter)


def test_deterministic_by_seed():
    a = synth_scene(H, W, fg=0.1, clutter=0.02, seed=5)
    b = synth_scene(H, W, fg=0.1, clutter=0.02, seed=5)
    c = synth_scene(H, W, fg=0.1, clutter=0.02, seed=6)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.image, c.image)


def test_crowded_scenes():
    s = synth_scene(128, 128, fg=0.97, size=16, shapes=("rect",), seed=0)  # objects must overlap to get there
    assert abs(s.fg - 0.97) <= 16 * 16 / 128**2 and s.fg == pytest.approx(nonzero(s.image).mean())
    with pytest.warns(UserWarning, match="clutter"):  # no room left for the clutter: the measured share is returned
        s = synth_scene(32, 32, fg=0.5, size=4, clutter=0.45, seed=0)
    assert s.clutter < 0.45 and s.clutter == pytest.approx((nonzero(s.image) & ~box_mask(s.boxes, 32, 32)).mean())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"height": 0}, "height"),
        ({"width": 12.5}, "width"),
        ({"fg": 1.0}, "fg"),
        ({"fg": -0.1}, "fg"),
        ({"fg": float("nan")}, "fg"),
        ({"fg": "0.1"}, "fg"),
        ({"clutter": 1.2}, "clutter"),
        ({"fg": 0.6, "clutter": 0.5}, "fg \\+ clutter"),
        ({"size": 0}, "size"),
        ({"size": (8, 4)}, "size"),
        ({"size": (4, 8, 16)}, "size"),
        ({"size": (2.5, 8)}, "size"),
        ({"size": (8, 100)}, "does not fit"),
        ({"count": -1}, "count"),
        ({"count": 2.0}, "count"),
        ({"seed": -3}, "seed"),
        ({"shapes": ("triangle",)}, "shapes"),
        ({"shapes": ()}, "shapes"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = {"height": 64, "width": 96, **kwargs}
    with pytest.raises(ValueError, match=match):
        synth_scene(**args)
