"""The foreground finder: shapes and cost, training from boxes, exact recall calibration (brute-force oracle), a mask
that follows content, the early exit on empty frames, batch == one by one, FLOPs counted, the sparsify override,
`YOLO.foreground` on a real image, shipping in safetensors, bad inputs."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sparseyolo.boxes import box_coverage
from sparseyolo.nn.finder import (
    Finder,
    calibrate_recall,
    cell_cover,
    critical_thresholds,
    expand_cells,
    finder_loss,
    fit_finder,
)


def scene(rng: np.random.Generator, size: int = 192, n: int = 3, lo: int = 12, hi: int = 40):
    """`(RGB uint8 (size, size, 3), boxes (n, 4) xyxy)`: bright textured boxes on a textured dark-green noise."""
    noise = rng.random((size // 4 + 1, size // 4 + 1, 3))
    ground = np.kron(noise, np.ones((4, 4, 1)))[:size, :size] * 0.25 + rng.random((size, size, 3)) * 0.1
    img = ground * np.array([0.6, 1.0, 0.5]) + 0.15
    boxes = []
    for _ in range(n):
        for _ in range(50):
            w, h = (int(v) for v in rng.integers(lo, hi, 2))
            x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            if all(x0 > b[2] + 4 or x0 + w < b[0] - 4 or y0 > b[3] + 4 or y0 + h < b[1] - 4 for b in boxes):
                break
        img[y0 : y0 + h, x0 : x0 + w] = 0.75 + 0.25 * rng.random((h, w, 3))
        boxes.append([x0, y0, x0 + w, y0 + h])
    return (img.clip(0, 1) * 255).astype(np.uint8), np.asarray(boxes, np.float32).reshape(-1, 4)


def tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255


@pytest.fixture(scope="module")
def trained():
    """A finder trained on 32 generated scenes (a quarter without objects), its report, and 12 other scenes of the
    kind to calibrate on."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = [scene(rng, n=int(rng.integers(0, 5)) if i % 4 else 0) for i in range(32)]
    images, boxes = [d[0] for d in data], [d[1] for d in data]
    finder = Finder(down=4, width=8)  # small and quick: the training mechanics, not the default size
    report = fit_finder(finder, images, boxes, steps=250, batch=8, crop=96, lr=5e-3, progress=False)
    cal = [scene(rng, n=4) for _ in range(12)]
    return finder, report, [c[0] for c in cal], [c[1] for c in cal]


# --- shapes and cost ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("down", [2, 4])
@pytest.mark.parametrize("cell", [8, 16])
@pytest.mark.parametrize("shape", [(64, 64), (100, 77), (33, 250)])
def test_finder_shapes(cell, shape, down):
    f = Finder(cell=cell, down=down).eval()
    x = torch.rand(2, 3, *shape)
    lo = f(x)
    assert lo.shape == (2, 1, -(-shape[0] // cell), -(-shape[1] // cell))
    f.set_threshold(0.0)
    mask, logits = f.mask(x, margin=cell)
    assert mask.shape == (2, *shape) and mask.dtype == torch.bool
    assert torch.equal(logits, lo)
    # a blank frame gives one logit everywhere (convs pad by replication: the border is not an edge)
    blank = f(torch.full((1, 3, *shape), 0.3))
    torch.testing.assert_close(blank, blank.flatten()[0].expand_as(blank))


def _conv_flops(finder: Finder, H: int, W: int) -> float:
    """Analytic FLOPs of the finder's convs on an H x W image (2 per multiply-add)."""
    h, w = -(-H // finder.down), -(-W // finder.down)
    total = 0.0
    for conv in (finder.conv1, finder.conv2, finder.conv3, finder.conv4):
        s = conv.stride[0]
        h, w = -(-h // s), -(-w // s)  # 3x3, padding 1 (or dilation 2, padding 2): ceil(n / s)
        total += 2.0 * h * w * conv.in_channels * conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        if conv is finder.conv2:
            h8, w8 = h, w
    total += 2.0 * h8 * w8 * finder.fuse.in_channels * finder.fuse.out_channels
    return total + 2.0 * h8 * w8 * finder.out.in_channels


@pytest.mark.parametrize("down", [2, 4])
def test_finder_cost_at_4k_is_a_few_percent_of_yolov8n(down):
    """Counted on the meta device (no compute): 2.2 GFLOPs at 3840x2176 (1.8 with down=4), where dense YOLOv8n
    runs ~180."""
    f = Finder(down=down).to("meta")
    with FlopCounterMode(display=False) as fc:
        f(torch.empty(1, 3, 2176, 3840, device="meta"))
    got = fc.get_total_flops()
    assert got == pytest.approx(_conv_flops(f, 2176, 3840))
    yolov8n = 8.7e9 * (3840 * 2176) / 640**2  # Ultralytics' 8.7 GFLOPs at 640x640, fully convolutional
    assert got / yolov8n < 0.015


# --- supervision and training -------------------------------------------------------------------------------


def test_cell_cover_is_the_covered_share_of_each_cell():
    boxes = [torch.tensor([[0.0, 0.0, 12.0, 4.0], [20.0, 8.0, 24.0, 16.0]]), torch.zeros(0, 4)]
    cover = cell_cover(boxes, (2, 3), 8)
    want = torch.tensor([[[0.5, 0.25, 0.0], [0.0, 0.0, 0.5]], [[0.0] * 3, [0.0] * 3]])
    torch.testing.assert_close(cover, want)
    # brute force on a random layout: the share of each cell's pixels inside a box (integer boxes)
    rng = np.random.default_rng(1)
    b = rng.integers(0, 60, (6, 2))
    b = np.concatenate([b, b + rng.integers(1, 20, (6, 2))], 1).astype(np.float32)
    px = np.zeros((80, 80))
    for x0, y0, x1, y1 in b.astype(int):
        px[y0:y1, x0:x1] += 1
    brute = np.minimum(px.reshape(10, 8, 10, 8).mean((1, 3)), 1.0)
    got = cell_cover([torch.from_numpy(b)], (10, 10), 8)[0].numpy()
    assert np.all(got >= brute - 1e-6)  # overlaps add up (capped at 1): never below the union's share
    np.testing.assert_allclose(got[(px <= 1).reshape(10, 8, 10, 8).all((1, 3))],
                               brute[(px <= 1).reshape(10, 8, 10, 8).all((1, 3))], atol=1e-6)  # fmt: skip


def test_training_reduces_the_loss_and_finds_the_objects(trained):
    finder, report, images, boxes = trained
    assert report["loss_last"] < 0.6 * report["loss_first"]
    assert not finder.training
    rng = np.random.default_rng(7)  # new scenes, same kind
    test = [scene(rng, n=4) for _ in range(6)]
    calibrate_recall(finder, images, boxes, recall=0.99)
    kept = total = 0
    for img, b in test:
        mask = finder.mask(tensor(img))[0][0].numpy()
        kept += int((box_coverage(mask, b) >= 0.9 - 1e-9).sum())
        total += len(b)
    assert kept / total >= 0.9


def test_mask_follows_content(trained):
    finder, _, images, boxes = trained
    calibrate_recall(finder, images, boxes, recall=0.99)
    rng = np.random.default_rng(3)
    empty = scene(rng, size=256, n=0)[0]
    assert finder.mask(tensor(empty))[0].float().mean() <= 0.02
    shares = [float(finder.mask(tensor(scene(np.random.default_rng(5), 256, n, 16, 24)[0]))[0].float().mean())
              for n in (1, 4, 10)]  # fmt: skip
    assert shares[0] < shares[1] < shares[2]


# --- calibration ------------------------------------------------------------------------------------------------


def _brute_critical(finder, x, boxes, margin):
    """Per box: the largest candidate logit v such that the finder's own mask at a threshold just below v keeps 90%
    of the box (coverage from `box_coverage`)."""
    lo = finder(x)[0, 0]
    values = torch.unique(lo).flip(0)
    best = np.full(len(boxes), -np.inf)
    for v in values.tolist():
        cells = lo[None] > torch.nextafter(torch.tensor(v), torch.tensor(-float("inf")))  # lo >= v
        mask = expand_cells(cells, finder.cell, margin, tuple(x.shape[-2:]))[0].numpy()
        ok = box_coverage(mask, boxes) >= 0.9 - 1e-9
        best = np.where(ok & (best == -np.inf), v, best)
    return best


@pytest.mark.parametrize("margin", [0, 8, 13])
def test_critical_thresholds_match_brute_force(margin):
    torch.manual_seed(2)
    finder = Finder().eval()
    for p in finder.parameters():
        p.data.normal_(0, 0.3)
    rng = np.random.default_rng(4)
    img, boxes = scene(rng, size=96, n=6, lo=3, hi=30)
    x = tensor(img)
    with torch.no_grad():
        got = critical_thresholds(finder(x), boxes, (96, 96), 8, margin)
        want = _brute_critical(finder, x, boxes, margin)
    np.testing.assert_allclose(got, want, atol=2e-7)


@pytest.mark.parametrize("recall", [0.5, 0.8, 0.99, 1.0])
def test_calibration_meets_the_requested_recall(recall):
    """Oracle: the finder's own mask at the stored threshold, box coverage counted by `box_coverage`."""
    torch.manual_seed(3)
    finder = Finder()
    for p in finder.parameters():
        p.data.normal_(0, 0.3)
    rng = np.random.default_rng(5)
    data = [scene(rng, size=128, n=5, lo=4, hi=40) for _ in range(4)]
    images, boxes = [d[0] for d in data], [d[1] for d in data]
    report = calibrate_recall(finder, images, boxes, recall=recall, margin=8)
    assert bool(finder.calibrated) and float(finder.threshold) == report["threshold"]
    assert float(torch.tensor(report["threshold"]).half()) == report["threshold"]  # ships exactly in float16
    kept, actives = [], []
    for img, b in zip(images, boxes):
        mask = finder.eval().mask(tensor(img), margin=8)[0][0].numpy()
        kept += list(box_coverage(mask, b) >= 0.9 - 1e-9)
        actives.append(mask.mean())
    assert np.mean(kept) >= recall
    assert np.mean(kept) == pytest.approx(report["recall"])
    assert np.mean(actives) == pytest.approx(report["active"])
    # not needlessly low: just below the critical logit of the ceil(recall * N)-th box (at it, that box is lost)
    with torch.no_grad():
        crit = np.sort(np.concatenate([critical_thresholds(finder(tensor(i)), b, i.shape[:2], 8, 8)
                                       for i, b in zip(images, boxes)]))[::-1]  # fmt: skip
    k = int(np.ceil(recall * len(crit)))
    assert crit[k - 1] - 0.01 < report["threshold"] < crit[k - 1]


@pytest.mark.parametrize("recall", [0, -0.1, 1.01, True, "0.9", None])
def test_bad_recall_is_refused(recall):
    rng = np.random.default_rng(0)
    img, b = scene(rng, size=64, n=1)
    with pytest.raises(ValueError, match="recall must be a share in"):
        calibrate_recall(Finder(), [img], [b], recall=recall)


def test_bad_inputs_are_refused():
    f = Finder()
    with pytest.raises(ValueError, match=r"Tensor\[B, 3, H, W\]"):
        f(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match=r"Tensor\[B, 3, H, W\]"):
        f(torch.rand(1, 4, 64, 64))
    with pytest.raises(ValueError, match="cell must be one of"):
        Finder(cell=4)
    with pytest.raises(ValueError, match="down must be 2 or 4"):
        Finder(down=3)
    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="needs images with objects"):
        calibrate_recall(f, [img], [np.zeros((0, 4))])
    with pytest.raises(ValueError, match="one \\(N, 4\\) xyxy array per image"):
        calibrate_recall(f, [img, img], [np.zeros((1, 4))])
    with pytest.raises(ValueError, match="x1 > x0"):
        calibrate_recall(f, [img], [np.array([[10, 10, 5, 20]])])
    with pytest.raises(ValueError, match=r"RGB arrays \(H, W, 3\)"):
        calibrate_recall(f, [np.zeros((64, 64))], [np.array([[1, 1, 5, 5]])])
    with pytest.raises(ValueError, match="crop must be a multiple"):
        fit_finder(f, [img], [np.zeros((0, 4))], steps=1, crop=100)
    with pytest.raises(ValueError, match="must match"):
        finder_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5, 5))


def test_an_uncalibrated_finder_keeps_every_pixel_and_says_so():
    import warnings

    from sparseyolo import YOLO

    f = Finder().eval()
    mask, _ = f.mask(torch.rand(1, 3, 64, 48))
    assert bool(mask.all())
    f.set_threshold(1e4)
    assert not bool(f.mask(torch.rand(1, 3, 64, 48))[0].any())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # building the model runs a forward: no warning there
        model = YOLO("yolov8n-sparse.yaml", sparsify="finder").model.eval()
    with pytest.warns(UserWarning, match="not calibrated: it keeps every pixel"):
        with torch.no_grad():
            model(torch.rand(1, 3, 64, 64))
    assert float(model.model[0].last_empty.float().sum()) == 0


# --- in a YOLO model ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finder_model(trained):
    """A sparse-P3 YOLOv8n (random detector weights, BN statistics as after training) whose stem uses the trained
    finder, calibrated at margin 8."""
    from sparseyolo import YOLO

    torch.manual_seed(0)
    yolo = YOLO("yolov8n-sparse-p3.yaml", sparsify={"method": "finder", "dilate": 8})
    for m in yolo.model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    for branch in yolo.model.model[-1].cv3:
        branch[-1].bias.data.fill_(-2.0)  # scores ~0.1: detections to compare
    finder, _, images, boxes = trained
    sp = yolo.model.model[0].sparsify
    sp.finder = copy.deepcopy(finder)
    calibrate_recall(sp.finder, images, boxes, recall=0.99, margin=sp.dilate)
    yolo.model.eval()
    return yolo


def test_the_override_replaces_what_does_not_fit_the_new_method():
    from sparseyolo import YOLO

    y = YOLO("yolov8n-sparse-p3.yaml", sparsify={"method": "nonzero"})  # the YAML's learned target 0.25 is dropped
    sp = y.model.model[0].sparsify
    assert (sp.method, sp.target, sp.dilate) == ("nonzero", None, 2)
    y = YOLO("yolov8n-sparse-p3.yaml", sparsify={"method": "finder", "dilate": 16})
    sp = y.model.model[0].sparsify
    assert (sp.method, sp.target, sp.dilate, sp.finder.cell) == ("finder", None, 16, 8)
    y = YOLO("yolov8n-sparse-p3.yaml", sparsify={"method": "finder", "target": 0.1})  # given: kept
    assert y.model.model[0].sparsify.target == 0.1
    with pytest.raises(ValueError, match="target .* needs method 'learned' or 'finder'.*drop target"):
        YOLO("yolov8n-sparse-p3.yaml", sparsify={"method": "nonzero", "target": 0.25})
    # on a loaded model (the shipped learned model), switching method drops its target too
    y = YOLO("yolov8n-sparse-p3-aerial", sparsify="gradient")
    assert (y.model.model[0].sparsify.method, y.model.model[0].sparsify.target) == ("gradient", None)


def test_context_margin_follows_the_sparse_path():
    from sparseyolo import YOLO
    from sparseyolo.yolo.finder import context_margin

    assert context_margin(YOLO("yolov8n-sparse.yaml").model) == 8
    assert context_margin(YOLO("yolov8n-sparse-p3.yaml")) == 8
    assert context_margin(YOLO("yolov8n-sparse-p34.yaml").model) == 16
    assert context_margin(YOLO("yolov8n.yaml").model) == 0


def test_early_exit_on_empty_frames_and_batch_equals_one_by_one(finder_model):
    yolo = finder_model
    model = yolo.model
    rng = np.random.default_rng(11)
    empty = scene(rng, size=256, n=0)[0]
    full = scene(rng, size=256, n=4)[0]
    x_empty, x_full = tensor(empty), tensor(full)
    calls = []
    handle = model.model[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            y, raw = model(x_empty)
        assert y.shape == (1, 4 + model.model[-1].nc, 0) and not calls  # nothing after the stem ran
        assert raw["scores"].shape[0] == 1 and calls  # the raw output is computed when read
        calls.clear()
        with torch.no_grad():
            model(x_full)
        assert calls
    finally:
        handle.remove()
    assert not yolo.predict(empty[..., ::-1], imgsz=256, conf=0.0)[0].boxes.shape[0]
    # a batch gives each image what it gives alone (the empty one: nothing, though the batch ran the network)
    xs = [x_full, x_empty, x_full.flip(-2)]
    with torch.no_grad():
        together = model(torch.cat(xs))[0]
        alone = [model(x)[0] for x in xs]
    for i, a in enumerate(alone):
        n = a.shape[-1]
        torch.testing.assert_close(together[i, :, :n], a[0], atol=1e-4, rtol=1e-4)  # decoded anchors, in order
        assert not bool(together[i, 4:, n:].any())  # the batch's padding rows score 0
    assert alone[1].shape[-1] == 0 and not bool(together[1, 4:].any())
    bgr = [np.ascontiguousarray(im) for im in (full[..., ::-1], empty[..., ::-1], full[::-1, :, ::-1])]
    results = yolo.predict(bgr, imgsz=256, conf=0.01, batch=3)
    assert [len(r.boxes) > 0 for r in results] == [True, False, True]


def test_dense_above_the_crossover_gives_the_same_detections(finder_model):
    yolo = finder_model
    full = np.ascontiguousarray(scene(np.random.default_rng(12), size=256, n=4)[0][..., ::-1])
    sparse = yolo.predict(full, imgsz=256, conf=0.01, crossover=1.0)[0]
    dense = yolo.predict(full, imgsz=256, conf=0.01, crossover=0.0)[0]
    assert len(sparse.boxes) == len(dense.boxes) > 0
    torch.testing.assert_close(sparse.boxes.data, dense.boxes.data, atol=1e-3, rtol=1e-4)


def test_executed_flops_count_the_finder_and_stop_on_empty_frames(finder_model):
    from sparseyolo.eval.flops import executed_flops

    model = finder_model.model
    stem = model.model[0]
    x = tensor(scene(np.random.default_rng(13), size=256, n=4)[0])
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        mask = stem.sparsify(x)[0]
    finder_flops = fc.get_total_flops()
    assert finder_flops == pytest.approx(_conv_flops(stem.sparsify.finder, 256, 256))
    f = executed_flops(model, x)
    assert f["layers"][0] == pytest.approx(stem.flops_at(mask)[0] + finder_flops)
    assert len(f["layers"]) == len(model.model)
    e = executed_flops(model, tensor(scene(np.random.default_rng(14), size=256, n=0)[0]))
    assert e["active"] == 0.0 and e["layers"] == {0: pytest.approx(finder_flops)} and e["total"] == e["layers"][0]


def test_mask_loss_in_detector_training(finder_model):
    """With the finder method the detection loss has a `mask_loss` column: the finder's BCE against the boxes."""
    model = finder_model.model
    assert model.aux_names()[0] == ["mask_loss"]
    sp = model.model[0].sparsify
    model.train()
    try:
        x = torch.rand(2, 3, 64, 64)
        sp(x)
        bboxes = torch.tensor([[0.5, 0.5, 0.25, 0.25]])
        losses, stats = sp.pop_aux({"batch_idx": torch.tensor([1.0]), "bboxes": bboxes, "imgsz": (64, 64),
                                    "batch_size": 2})  # fmt: skip
        logits = sp.finder(x)  # BatchNorm on batch statistics, as in the loss
    finally:
        model.eval()
    cover = cell_cover([torch.zeros(0, 4), torch.tensor([[24.0, 24.0, 40.0, 40.0]])], (8, 8), 8)
    torch.testing.assert_close(losses["mask_loss"], finder_loss(logits, cover, margin=sp.dilate, cell=8))
    assert 0 <= float(stats["active"]) <= 1


def test_foreground_on_a_real_image(finder_model):
    from ultralytics.data.augment import LetterBox
    from yolo_utils import require_aerial_data

    from sparseyolo import YOLO
    from sparseyolo.data.aerial import load_scene
    from sparseyolo.yolo.finder import to_image

    require_aerial_data()
    img = np.ascontiguousarray(load_scene("OSBS_029")[0])  # RGB 400x400
    bgr = np.ascontiguousarray(img[..., ::-1])
    masks = finder_model.foreground(bgr, imgsz=416)
    assert len(masks) == 1 and masks[0].shape == img.shape[:2] and masks[0].dtype == bool
    # the same as the sparsifier run by hand on Ultralytics' letterbox, mapped back
    boxed = LetterBox((416, 416), auto=True, stride=32)(image=bgr)
    x = torch.from_numpy(np.ascontiguousarray(boxed[..., ::-1].transpose(2, 0, 1))).float()[None] / 255
    want = to_image(finder_model.model.model[0].sparsify(x)[0][0], img.shape[:2])
    assert np.array_equal(masks[0], want)
    assert 0 < masks[0].mean() < 1
    # a second image, a list; predict still predicts afterwards
    assert [m.shape for m in finder_model.foreground([bgr, bgr[:200]], imgsz=416)] == [(400, 400), (200, 400)]
    assert finder_model.predict(bgr, imgsz=416, conf=0.01)[0].boxes is not None
    with pytest.raises(ValueError, match="no sparse stem"):
        YOLO("yolov8n.yaml").foreground(bgr)


def test_train_finder_needs_a_finder_stem():
    from sparseyolo import YOLO

    with pytest.raises(ValueError, match="not 'finder'.*sparsify='finder'"):
        YOLO("yolov8n-sparse.yaml").train_finder(steps=1)
    with pytest.raises(ValueError, match="no sparse stem"):
        YOLO("yolov8n.yaml").train_finder(steps=1)


def test_the_finder_ships_in_safetensors_and_old_pickles_load(finder_model, tmp_path, monkeypatch):
    from sparseyolo.nn.sparsify import Sparsifier
    from sparseyolo.yolo import reference

    model = finder_model.model
    monkeypatch.setattr(reference, "WEIGHTS_DIR", tmp_path)
    reference.save_reference(model, "finder-test", {"recipe": {"imgsz": 256}})
    back = reference.load_reference_model("finder-test")
    a, b = model.model[0].sparsify.finder, back.model[0].sparsify.finder
    assert bool(b.calibrated) and float(b.threshold) == float(a.threshold)  # the float16 threshold is exact
    x = tensor(scene(np.random.default_rng(15), size=256, n=3)[0])
    assert torch.equal(a.mask(x, 8)[0], b.mask(x, 8)[0])  # weights were rounded to float16 by the calibration
    # a Sparsifier pickled before the finder existed
    old = Sparsifier(3, "nonzero")
    del old.__dict__["finder"]
    assert pickle.loads(pickle.dumps(old)).finder is None


def test_train_finder_on_a_dataset_trains_only_the_finder_and_calibrates(tiny_data):
    from sparseyolo import YOLO

    yolo = YOLO("yolov8n-sparse.yaml", sparsify={"method": "finder", "dilate": 8})
    before = {k: v.clone() for k, v in yolo.model.state_dict().items()}
    report = yolo.train_finder(data=tiny_data, composites=None, steps=4, batch=2, crop=64, progress=False)
    after = yolo.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".sparsify.finder." in k for k in changed)  # the detector is frozen
    assert report["fit_images"] + report["calibration_images"] == 8 and report["calibration_images"] == 2
    cal = report["calibration"]
    assert cal["recall"] >= 0.99 and bool(yolo.model.model[0].sparsify.finder.calibrated)
    assert float(yolo.model.model[0].sparsify.finder.threshold) == cal["threshold"] and report["margin"] == 8
    with pytest.raises(ValueError, match="holdout must be"):
        yolo.train_finder(data=tiny_data, composites=None, steps=1, holdout=1.0)
    with pytest.raises(ValueError, match="composite_share must be"):
        yolo.train_finder(data=tiny_data, composites=None, steps=1, composite_share=1.5)
