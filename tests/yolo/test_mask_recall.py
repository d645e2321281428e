"""Mask recall: box coverage against brute force, the letterbox undone against Ultralytics' own LetterBox, the
stem's mask as executed, the overlay picture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparseyolo.eval.mask import box_coverage, box_pixels, mask_stats, pooled_recall, save_overlay
from sparseyolo.yolo.finder import to_image


def _brute_coverage(mask, boxes):
    """Per box: the mean of the mask over the pixels whose centres lie in the box (at least the nearest pixel)."""
    h, w = mask.shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    out = []
    for x0, y0, x1, y1 in boxes:
        inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
        if not inside.any():  # sub-pixel box: the pixel holding its centre
            cy = min(h - 1, max(0, int((y0 + y1) / 2)))
            cx = min(w - 1, max(0, int((x0 + x1) / 2)))
            inside = np.zeros_like(mask)
            inside[cy, cx] = True
        out.append(mask[inside].mean())
    return np.array(out)


def test_box_coverage_matches_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((70, 90)) < 0.4
    x0 = rng.uniform(0, 80, 200)
    y0 = rng.uniform(0, 60, 200)
    boxes = np.stack([x0, y0, x0 + rng.uniform(1.2, 30, 200), y0 + rng.uniform(1.2, 30, 200)], 1)
    boxes[:, 2] = np.minimum(boxes[:, 2], 90)
    boxes[:, 3] = np.minimum(boxes[:, 3], 70)
    np.testing.assert_allclose(box_coverage(mask, boxes), _brute_coverage(mask, boxes))
    # a box smaller than a pixel still covers one pixel; an empty box list gives nothing
    assert box_pixels(np.array([[10.2, 10.3, 10.4, 10.5]]), (70, 90)).tolist() == [[10, 10, 11, 11]]
    assert box_coverage(mask, np.zeros((0, 4))).shape == (0,)
    with pytest.raises(ValueError, match=r"bool\[h, w\]"):
        box_coverage(mask[None], boxes)


def test_mask_stats_counts_objects_kept_at_90_percent():
    mask = np.zeros((100, 100), bool)
    mask[0:50, 0:50] = True
    boxes = np.array([[0, 0, 20, 20], [40, 0, 60, 20], [40, 0, 50.6, 10], [70, 70, 90, 90]], float)
    # coverage: 1.0, 0.5, 10 of 11 columns (0.909), 0.0
    s = mask_stats(mask, boxes)
    assert s == {"active": 0.25, "n_objects": 4, "n_kept": 2, "mask_recall": 0.5}
    assert mask_stats(mask, np.zeros((0, 4)))["mask_recall"] is None
    assert mask_stats(mask, boxes, min_cover=0.5)["n_kept"] == 3
    assert pooled_recall([s, None, {"n_objects": 6, "n_kept": 6}]) == pytest.approx(8 / 10)
    assert pooled_recall([None]) is None
    with pytest.raises(ValueError, match="min_cover"):
        mask_stats(mask, boxes, min_cover=0)


@pytest.mark.parametrize("shape, imgsz", [((1035, 1249), 1280), ((480, 640), 320), ((300, 200), 256)])
def test_to_image_undoes_ultralytics_letterbox(shape, imgsz):
    """A mask drawn on the image, letterboxed by Ultralytics' LetterBox as the predictor does, comes back."""
    from ultralytics.data.augment import LetterBox

    h, w = shape
    truth = np.zeros((h, w), bool)
    truth[h // 5 : h // 2, w // 3 : w - w // 6] = True
    truth[h - h // 4 :, : w // 5] = True
    img = np.repeat((truth * 255).astype(np.uint8)[..., None], 3, axis=2)
    boxed = LetterBox((imgsz, imgsz), auto=True, stride=32)(image=img)
    assert boxed.shape[:2] != (h, w)  # a real rescale and padding
    back = to_image(boxed[..., 0] > 127, (h, w))
    assert back.shape == (h, w)
    # equal except within a pixel or two of an edge (two resamplings)
    scale = max(h, w) / imgsz
    edge = np.zeros_like(truth)
    r = int(np.ceil(2 * scale))
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            edge |= np.roll(truth, (dy, dx), (0, 1)) != truth
    assert (back != truth)[~edge].sum() == 0
    with pytest.raises(ValueError, match="one mask"):
        to_image(np.zeros((1, 4, 4), bool), (4, 4))


def test_executed_flops_returns_the_stem_mask_that_ran():
    """The mask reported with the FLOPs is the one the stem keeps: nonzero pixels (dense model: None)."""
    from sparseyolo import YOLO
    from sparseyolo.eval.flops import executed_flops
    from sparseyolo.nn.sparsify import Sparsifier

    model = YOLO("yolov8n-sparse.yaml").model.eval()
    model.model[0].sparsify = Sparsifier(3, "nonzero")
    x = torch.zeros(2, 3, 64, 96)
    x[0, :, 8:20, 16:40] = 0.5
    x[1, 1, 40:48, 0:8] = 0.7
    f = executed_flops(model, x)
    assert f["mask"].shape == (2, 64, 96) and f["mask"].dtype == torch.bool
    torch.testing.assert_close(f["mask"], (x != 0).any(1))
    assert f["active"] == pytest.approx(float((x != 0).any(1).float().mean()))
    dense = YOLO("yolov8n.yaml").model.eval()
    assert executed_flops(dense, x)["mask"] is None


def test_save_overlay_marks_kept_and_dropped(tmp_path):
    from PIL import Image

    img = np.full((60, 80, 3), 200, np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[:, :40] = True
    boxes = np.array([[5, 5, 20, 20], [50, 30, 70, 50]], float)
    p = save_overlay(img, mask, boxes, tmp_path / "m.png")
    out = np.asarray(Image.open(p).convert("RGB"))
    assert out.shape == (60, 80, 3)
    assert tuple(out[30, 10]) == (200, 200, 200) and tuple(out[2, 75]) == (60, 60, 60)  # inactive darkened
    assert tuple(out[5, 12]) == (0, 230, 0) and tuple(out[30, 60]) == (255, 40, 40)  # kept green, dropped red
    big = save_overlay(np.zeros((300, 500, 3), np.uint8), np.ones((300, 500), bool), boxes, tmp_path / "b.jpg", 1, 100)
    assert Image.open(big).size == (100, 60)
    with pytest.raises(ValueError, match="does not match"):
        save_overlay(img, mask[:10], boxes, tmp_path / "x.png")


def _sparse_model(method: str, threshold: float = 0.0):
    """A YOLO with a sparse stem whose mask is `method` (nonzero keeps every object of the tiny dataset, whose
    objects are bright boxes on a black background; a high intensity threshold keeps none)."""
    from sparseyolo import YOLO
    from sparseyolo.nn.sparsify import Sparsifier

    y = YOLO("yolov8n-sparse.yaml")
    y.model.model[0].sparsify = Sparsifier(3, method, threshold)
    y.model.eval()
    return y


def test_evaluate_reports_mask_recall_and_saves_masks(tiny_data, tmp_path):
    from sparseyolo import YOLO
    from sparseyolo.data.split import load_split
    from sparseyolo.eval.compare import _mask_of, evaluate

    images, gt, _ = load_split(tiny_data, "val")
    models = {
        "keeps": _sparse_model("nonzero"),
        "drops": _sparse_model("threshold", 0.99),
        "dense": YOLO("yolov8n.yaml"),
    }
    plan = [("keeps", "native"), ("keeps", "640"), ("keeps", "sahi"), ("drops", "native"), ("dense", "native")]
    res = {(r.model, r.method): r for r in evaluate(models, images, gt, plan, 0, False, False, save_masks=tmp_path)}
    s = {k: r.summary() for k, r in res.items()}
    n_objects = len(gt["annotations"])
    assert s["keeps", "native"]["mask_recall"] == 1.0 and s["keeps", "640"]["mask_recall"] == 1.0
    assert s["drops", "native"]["mask_recall"] == 0.0 and s["drops", "native"]["active"] == 0.0
    assert s["dense", "native"]["mask_recall"] is None
    # several forwards of one image (SAHI's slices) have no one mask to score
    assert (
        _mask_of([torch.ones(8, 8, dtype=torch.bool)] * 2, np.zeros((8, 8, 3), np.uint8), np.zeros((0, 4)), None)
        is None
    )
    # the active share is the share of the images' own pixels under the mask (letterbox padding excluded)
    from sparseyolo.data.split import read_image

    own = np.mean([(read_image(p) != 0).any(2).mean() for p in images])
    assert s["keeps", "native"]["active"] == pytest.approx(own, abs=0.02)
    rows = res["keeps", "native"].per_image(gt)
    assert sum(r["objects"] for r in rows) == n_objects and all(r["mask_recall"] == 1.0 for r in rows)
    saved = sorted((tmp_path / "keeps-native").glob("*.jpg"))
    assert [p.stem for p in saved] == sorted(p.stem for p in images)
    assert not (tmp_path / "dense-native").exists()


def test_eval_cli_save_masks_and_bad_flag(tiny_data, tmp_path, capsys):
    from sparseyolo.eval.cli import main

    out = tmp_path / "ev"
    assert (
        main(
            [
                "model=yolov8n-sparse-aerial",
                f"data={tiny_data}",
                "repeats=0",
                "memory=False",
                "save_masks=True",
                f"out={out}",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "mask recall" in text and "masks in" in text
    assert len(list((out / "masks" / "yolov8n-sparse-aerial-native").glob("*.jpg"))) == 4
    assert main(["model=yolov8n-sparse-aerial", f"data={tiny_data}", "save_masks=maybe"]) == 1
    assert "save_masks must be True or False" in capsys.readouterr().err
