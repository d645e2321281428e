"""Helpers of the mosaic tests (imported by name, as `tests/yolo/yolo_utils.py`): an exact blob detector (the
oracle of seams) and the raster it is run on."""

from __future__ import annotations

import numpy as np

from sparseyolo.mosaic.merge import Detections


class BlobDetector:
    """Boxes of the bright (> 128) 4-connected blobs of an image; score: their mean brightness. It sees only the
    pixels of a blob, so a window that holds a whole blob finds exactly what a whole-image run finds: an exact oracle
    for windowing and merging."""

    stride = 32
    names = {0: "blob"}

    def __call__(self, image: np.ndarray) -> Detections:
        import cv2

        bright = (image.max(2) > 128).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=4)
        boxes, scores = [], []
        for k in range(1, n):
            x, y, w, h = (int(v) for v in stats[k, :4])
            boxes.append([x, y, x + w, y + h])
            scores.append(float(image[y : y + h, x : x + w].mean()) / 255)
        return Detections(np.asarray(boxes, float).reshape(-1, 4), scores, np.zeros(len(boxes)))


def blob_raster(height: int = 1000, width: int = 1300, n: int = 60, lo: int = 6, hi: int = 100, seed: int = 0):
    """`(RGB uint8 (height, width, 3), boxes (N, 4))`: bright textured rectangles (sides lo..hi, >= 3 px apart) on
    dark noise, anywhere, seams included."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    taken = np.zeros((height, width), bool)
    boxes = []
    for _ in range(n * 20):
        if len(boxes) == n:
            break
        w, h = (int(v) for v in rng.integers(lo, hi + 1, 2))
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        if taken[max(0, y - 3) : y + h + 3, max(0, x - 3) : x + w + 3].any():
            continue
        taken[y : y + h, x : x + w] = True
        img[y : y + h, x : x + w] = rng.integers(140, 256, (h, w, 3), dtype=np.uint8)
        boxes.append([x, y, x + w, y + h])
    return img, np.asarray(boxes, float)
