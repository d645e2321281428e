"""The window grid (cores tile the raster exactly, origins on the stride grid), the merge (equal to a greedy NMS
over every kept box), and seams against a whole-image run with an exact detector: equal detections, and unequal
ones when the overlap is smaller than the objects (the test can fail)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mosaic_utils import BlobDetector
from torchvision.ops import batched_nms

from sparseyolo.mosaic.detector import detect_image
from sparseyolo.mosaic.merge import Detections, keep_core, merge_windows
from sparseyolo.mosaic.run import predict_mosaic
from sparseyolo.mosaic.windows import axis_spans, check_window, window_grid


@pytest.mark.parametrize("size", [1, 31, 100, 512, 513, 1000, 4097])
@pytest.mark.parametrize("window,overlap", [(128, 64), (256, 0), (512, 256), (96, 32)])
def test_cores_tile_the_raster(size, window, overlap):
    spans = axis_spans(size, window, overlap)
    count = np.zeros(size, int)
    for s, e, c0, c1 in spans:
        assert s % 32 == 0 or window % 32  # origins on the stride grid when window and overlap are multiples of it
        assert 0 <= s < e <= size and e - s <= window and s <= c0 < c1 <= e
        count[c0:c1] += 1
        # an interior core edge stays overlap/2 inside its window
        assert c0 == 0 or c0 - s >= overlap // 2
        assert c1 == size or e - c1 >= overlap // 2
    assert (count == 1).all()


def test_window_grid_is_row_major_and_clipped():
    grid = window_grid(700, 900, 256, 64)
    assert [w.index for w in grid] == list(range(len(grid)))
    assert all(w.y1 <= 700 and w.x1 <= 900 for w in grid)
    cover = np.zeros((700, 900), int)
    for w in grid:
        cover[w.cy0 : w.cy1, w.cx0 : w.cx1] += 1
    assert (cover == 1).all()


def test_check_window_rounds_and_refuses():
    assert check_window(4096, 256, 32) == (4096, 256)
    assert check_window(1000, 100, 32) == (992, 128)
    with pytest.raises(ValueError, match=r"window=16 is smaller than the model's stride \(32 px\): use window >= 32"):
        check_window(16, 0, 32)
    with pytest.raises(ValueError, match="leaves no core"):
        check_window(256, 256, 32)
    with pytest.raises(ValueError, match="overlap must be an int >= 0"):
        check_window(256, -1, 32)


def test_merge_equals_greedy_nms_over_all_kept_boxes():
    rng = np.random.default_rng(1)
    grid = window_grid(600, 600, 256, 96)
    parts, everything = [], []
    for w in grid:
        n = 40
        xy = rng.uniform([w.x0, w.y0], [w.x1, w.y1], (n, 2))
        wh = rng.uniform(4, 60, (n, 2))
        boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1) - [w.x0, w.y0, w.x0, w.y0]
        det = Detections(boxes, rng.random(n), rng.integers(0, 2, n))
        keep = batched_nms(
            torch.from_numpy(det.boxes), torch.from_numpy(det.scores.astype(float)), torch.from_numpy(det.classes), 0.5
        ).numpy()  # what the model's own NMS leaves
        core = keep_core(det.take(keep), w)
        parts.append((w, core))
        everything.append(core)
    merged = merge_windows(parts, 0.5)
    allk = Detections.concat(everything)
    ref = allk.take(
        batched_nms(
            torch.from_numpy(allk.boxes),
            torch.from_numpy(allk.scores.astype(float)),
            torch.from_numpy(allk.classes),
            0.5,
        ).numpy()
    ).sorted()
    assert len(ref) < len(allk)  # seams did produce duplicates to remove
    np.testing.assert_array_equal(merged.boxes, ref.boxes)
    np.testing.assert_array_equal(merged.scores, ref.scores)
    np.testing.assert_array_equal(merged.classes, ref.classes)


def _as_set(det: Detections) -> set:
    return {(tuple(np.round(b, 6)), round(float(s), 6), int(c)) for b, s, c in zip(det.boxes, det.scores, det.classes)}


def test_seams_equal_a_whole_image_run(blob_tif, tmp_path):
    """An exact detector: windowed == whole image, box for box and score for score; every object found whole."""
    path, img, boxes = blob_tif
    det = BlobDetector()
    whole = detect_image(det, img)
    assert len(whole) == len(boxes)  # the oracle sees each object once, whole
    res = predict_mosaic(det, path, tmp_path / "out", window=384, overlap=224, progress=False)
    assert res[0].status == "done" and res[0].windows > 20
    import json

    coco = json.loads((tmp_path / "out" / "blobs.coco.json").read_text())
    got = Detections(
        [
            [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
            for a in coco["annotations"]
        ],
        [a["score"] for a in coco["annotations"]],
        [a["category_id"] for a in coco["annotations"]],
    )
    assert _as_set(got) == _as_set(whole)
    # objects straddling a core boundary exist, so the seams were exercised
    grid = window_grid(img.shape[0], img.shape[1], 384, 224)
    cuts = {w.cx1 for w in grid} - {img.shape[1]}
    assert any(b[0] < c < b[2] for b in boxes for c in cuts)


def test_too_small_an_overlap_cuts_objects(blob_tif, tmp_path):
    path, img, _ = blob_tif
    det = BlobDetector()
    whole = detect_image(det, img)
    predict_mosaic(det, path, tmp_path / "out", window=384, overlap=32, progress=False)
    import json

    n = len(json.loads((tmp_path / "out" / "blobs.coco.json").read_text())["annotations"])
    assert n != len(whole)  # cut objects: the equality above is not automatic


def test_never_reads_more_than_a_window(blob_tif, tmp_path, monkeypatch):
    """The raster is read window by window: no read larger than the window, each window read once, and the reads
    cover the raster."""
    from sparseyolo.mosaic import raster

    path, img, _ = blob_tif
    reads = []
    real = raster.RasterReader.read

    def spy(self, y0, x0, y1, x1):
        reads.append((y0, x0, y1, x1))
        return real(self, y0, x0, y1, x1)

    monkeypatch.setattr(raster.RasterReader, "read", spy)
    res = predict_mosaic(BlobDetector(), path, tmp_path, window=256, overlap=64, progress=False)
    assert len(reads) == res[0].windows == len(set(reads)) == len(window_grid(*img.shape[:2], 256, 64))
    assert max((y1 - y0) * (x1 - x0) for y0, x0, y1, x1 in reads) <= 256 * 256
    cover = np.zeros(img.shape[:2], bool)
    for y0, x0, y1, x1 in reads:
        cover[y0:y1, x0:x1] = True
    assert cover.all()


def test_keep_core_at_the_raster_edge_keeps_the_pad():
    """A box centred in the pad below/right of the raster is kept by the edge window (a whole-image run keeps it
    too); inside the raster, a centre on a core boundary belongs to the next core only."""
    grid = window_grid(100, 300, 128, 64)  # one row; columns start at 0, 64, 128, 192
    last, first = grid[-1], grid[0]
    assert last.cx1 == last.x1 == 300 and first.cx1 < first.x1
    pad = Detections([[295 - last.x0, 10, 310 - last.x0, 20]], [0.9], [0])  # centre x 302.5 > 300
    assert len(keep_core(pad, last)) == 1
    edge = Detections([[first.cx1 - 5, 10, first.cx1 + 5, 20]], [0.9], [0])  # centre exactly on the boundary
    assert len(keep_core(edge, first)) == 0 and len(keep_core(edge.shifted(-grid[1].x0, 0), grid[1])) == 1
