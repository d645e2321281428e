"""What runs on a window: a detector maps an RGB window to boxes in its own pixels.

The mosaic pipeline needs only `stride` (window origins fall on its grid), `names` (class id -> name) and
`__call__(image) -> Detections`, with `image` an RGB `uint8 (H, W, 3)` array whose sides are multiples of the stride.
`YOLODetector` is the one for SparseYOLO/Ultralytics models; anything else with these three works (the tests use a
plain connected-component detector as an exact oracle).

`YOLODetector` pickles as its settings (the model name or path, not the weights): a distributed worker loads the
model itself, once per process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparseyolo.mosaic.merge import Detections

MAX_DET = 30_000  # detections per window: Ultralytics' NMS keeps at most 30000 candidates (`max_nms`) anyway
PAD_VALUE = 114  # Ultralytics' letterbox grey: the pad below/right of a window at the raster's edge

_MODELS: dict = {}  # (model, device) -> sparseyolo.YOLO, per process


def load_model(model, device: str = "cpu"):
    """A `sparseyolo.YOLO` for `model` (a shipped reference name, a model YAML, a `.pt` checkpoint, or a YOLO), loaded
    once per process. A missing model is a `FileNotFoundError` saying what can be passed."""
    if not isinstance(model, (str, Path)):
        return model
    key = (str(model), device)
    if key not in _MODELS:
        import sparseyolo.yolo  # noqa: F401  (offline defaults before Ultralytics reads its settings)
        from sparseyolo.yolo.api import YOLO

        try:
            _MODELS[key] = YOLO(str(model))
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"model {str(model)!r} not found: {e}. Pass a shipped reference name (e.g. yolov8n-aerial), a model "
                "YAML or a local .pt checkpoint"
            ) from None
    return _MODELS[key]


def model_files(model) -> list:
    """`[name, size, mtime_ns]` of the files a model name or path loads (a shipped reference's weights, a `.pt`, a
    YAML); empty for a model object."""
    if not isinstance(model, (str, Path)):
        return []
    paths = [Path(model)]
    if not paths[0].is_file():
        from sparseyolo.yolo.reference import is_reference_name, reference_files

        paths = list(reference_files(str(model))) if is_reference_name(str(model)) else []
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in paths if p.is_file()]


class YOLODetector:
    """A SparseYOLO/Ultralytics detection model run on one window at native resolution, batch 1.

    The window (sides multiples of the stride) is passed to `predict` with `imgsz` equal to its own shape, so
    Ultralytics neither resizes nor pads it. conf, iou, max_det: as in `predict` (Ultralytics' class-wise NMS).
    threads: torch intra-op threads while it runs (None: leave them)."""

    def __init__(
        self,
        model,
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = MAX_DET,
        device: str = "cpu",
        threads: int | None = None,
    ):
        if not 0.0 <= float(conf) <= 1.0 or not 0.0 <= float(iou) <= 1.0:
            raise ValueError(f"conf and iou must be in [0, 1], got conf={conf!r}, iou={iou!r}")
        if int(max_det) < 1:
            raise ValueError(f"max_det must be >= 1, got {max_det!r}")
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads!r}")
        self.model, self.conf, self.iou, self.max_det = model, float(conf), float(iou), int(max_det)
        self.device, self.threads = device, None if threads is None else int(threads)
        self._yolo = None

    @property
    def yolo(self):
        if self._yolo is None:
            self._yolo = load_model(self.model, self.device)
        return self._yolo

    @property
    def stride(self) -> int:
        return int(max(self.yolo.model.stride))

    @property
    def names(self) -> dict[int, str]:
        return {int(k): str(v) for k, v in self.yolo.names.items()}

    def describe(self) -> dict:
        """The settings the detections depend on (recorded with the outputs; a change reruns an input): the model's
        name, and the size and modification time of its files (new weights under the same name rerun an input)."""
        name = self.model if isinstance(self.model, (str, Path)) else type(self.model).__name__
        return {
            "model": str(name),
            "files": model_files(self.model),
            "conf": self.conf,
            "iou": self.iou,
            "max_det": self.max_det,
        }

    def __getstate__(self):
        if not isinstance(self.model, (str, Path)):
            raise TypeError(
                "a YOLODetector built from a model object cannot travel to distributed workers: pass the model's "
                "name or path (a shipped name, a YAML or a .pt file)"
            )
        return {**self.__dict__, "_yolo": None}

    def __call__(self, image: np.ndarray) -> Detections:
        from sparseyolo.threads import threads

        h, w = image.shape[:2]
        bgr = np.ascontiguousarray(image[..., ::-1])  # Ultralytics reads numpy images as BGR
        with threads(self.threads):
            r = self.yolo.predict(
                bgr,
                imgsz=[h, w],
                conf=self.conf,
                iou=self.iou,
                max_det=self.max_det,
                device=self.device,
                verbose=False,
            )[0]
        b = r.boxes
        return Detections(b.xyxy.cpu().numpy(), b.conf.cpu().numpy(), b.cls.cpu().numpy())


def padded(image: np.ndarray, stride: int) -> np.ndarray:
    """`image` padded below and right with `PAD_VALUE` to sides that are multiples of `stride` (or itself)."""
    h, w = image.shape[:2]
    H, W = -(-h // stride) * stride, -(-w // stride) * stride
    if (H, W) == (h, w):
        return image
    out = np.full((H, W, image.shape[2]), PAD_VALUE, image.dtype)
    out[:h, :w] = image
    return out


def detect_image(detector, image: np.ndarray) -> Detections:
    """`detector` on a whole `image` (padded to the stride as a window is, boxes clipped to the image): the
    reference a windowed run is compared with."""
    det = detector(padded(image, int(detector.stride)))
    return clip(det, image.shape[0], image.shape[1])


def clip(det: Detections, height: int, width: int) -> Detections:
    """Boxes clipped to `[0, width] x [0, height]` (boxes reaching into the pad below/right of a raster's edge)."""
    b = det.boxes.copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    return Detections(b, det.scores, det.classes)
