"""The foreground finder of a YOLO model: its context margin, its training from boxes, its recall calibration and the
masks it gives (`YOLO.foreground`).

- `context_margin(model)`: the margin the finder's mask gets (pixels): the coarsest stride at which the model's
  sparse blocks compute at active sites only (the largest input stride of a sparse block): 8 for a sparse stem or
  a sparse P3 path (`yolov8-sparse.yaml`, `-p3`), 16 with the P4 path (`-p34`). A detection at a sparse level
  reads its neighbours at that level's stride: one cell of it around the objects keeps their context.
- `train_finder(model, ...)`: trains the finder of a model's sparse stem (nothing else: the detector is frozen)
  on training images and their YOLO labels, then calibrates it for recall. Data (`training_data`): the aerial
  training tiles (training scenes only) and training composites (real crowns on real empty ground, training
  split). Never the held-out scene or the validation composites.
- `calibrate_recall(model, images, boxes, recall)`: the threshold at which `recall` of the objects keep 90% of
  their box active (`sparseyolo.nn.finder.calibrate_recall`), stored in the finder's buffer (shipped with it).
- `foreground(yolo, source, **predict_kwargs)`: the masks the model runs on, at the images' own resolution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparseyolo.data.aerial import build_aerial_dataset
from sparseyolo.data.composite import build_composite_dataset
from sparseyolo.data.split import split_boxes
from sparseyolo.nn import SparseBlock, SparseStem
from sparseyolo.nn.finder import Finder, fit_finder
from sparseyolo.nn.finder import calibrate_recall as _calibrate

# Training composites for the finder: 640x640 frames of training crowns on training ground (a quarter of them
# ground only); `COMPOSITE_SHARE` of the training crops come from them (crowns on open ground are the use case and
# the hard part: the forest tiles alone teach "forest texture").
COMPOSITES = {"size": (640, 640), "fg": (0.0, 0.01, 0.03, 0.1), "images": 192, "seed": 0}
COMPOSITE_SHARE = 0.6
HOLDOUT = 0.2  # the share of training images kept out of the fit, to calibrate on


def finder_sparsifiers(model: nn.Module) -> list:
    """The `finder` sparsifiers of `model`'s sparse stems; a clear error when there is none."""
    stems = [m for m in model.modules() if isinstance(m, SparseStem)]
    if not stems:
        raise ValueError("this model has no sparse stem (SparseStem): it has no foreground finder")
    found = [m.sparsify for m in stems if m.sparsify.method == "finder"]
    if not found:
        methods = sorted({m.sparsify.method for m in stems})
        raise ValueError(
            f"the model's sparse stem uses sparsify method {methods[0]!r}, not 'finder': build it with "
            "sparsify='finder' (YOLO(..., sparsify='finder'), convert(..., method='finder'))"
        )
    return found


def detection_model(obj) -> nn.Module:
    """The DetectionModel of `obj` (a DetectionModel, a `YOLO`, an Ultralytics AutoBackend)."""
    m = obj
    for _ in range(3):
        if isinstance(getattr(m, "model", None), nn.Sequential):
            return m
        m = getattr(m, "model", None)
    raise TypeError(f"expected a YOLO detection model, got {type(obj).__name__}")


def _out_stride(m: nn.Module, s_in: float) -> float:
    """Output stride of layer `m` from its input stride (strided convs, nearest upsampling; others keep it)."""
    if type(m).__name__ == "SUpsample":
        return s_in / float(m.scale)
    if isinstance(m, nn.Upsample):
        return s_in / float(m.scale_factor)
    conv = m if isinstance(m, nn.Conv2d) else getattr(m, "conv", None)
    if isinstance(conv, nn.Conv2d):
        return s_in * conv.stride[0]
    return s_in


def context_margin(model: nn.Module) -> int:
    """The finder's context margin for `model` (a DetectionModel or YOLO), in input pixels: the largest input stride
    of its sparse blocks (see the module doc); 0 for a model without sparse blocks."""
    model = detection_model(model)
    strides: list[float] = []
    margin = 0.0
    for m in model.model:
        f = [m.f] if isinstance(m.f, int) else list(m.f)
        ins = [(strides[-1] if strides else 1.0) if j == -1 else strides[j] for j in f]
        s_in = max(ins)
        if isinstance(m, SparseBlock):
            margin = max(margin, s_in)
        strides.append(_out_stride(m, s_in))
    return int(round(margin))


def training_data(data: str | Path | None = None, composites: dict | None = COMPOSITES):
    """`(images, boxes, sources)` to train and calibrate a finder on: the `train` split of `data` (default: the
    aerial training tiles, `build_aerial_dataset(tile=320)`: training scenes only) and, unless `composites` is None,
    the training composites `build_composite_dataset(split="train", **composites)` (cached), after them. Images:
    RGB uint8 `(H, W, 3)`; boxes: `(N, 4)` xyxy pixels; `sources["images"]`: how many come from `data`."""
    if data is None:
        data = build_aerial_dataset(tile=320, overlap=0.2)
    images, boxes = split_boxes(data, "train")
    sources = {"data": str(data), "images": len(images)}
    if composites is not None:
        args = {**composites}
        if args.get("split", "train") != "train":
            raise ValueError(f"finder composites must be the training split, got split={args['split']!r}")
        args["split"] = "train"
        if "size" in args:
            args["size"] = tuple(args["size"])
        if "fg" in args and not isinstance(args["fg"], (int, float)):
            args["fg"] = list(args["fg"])
        comp = build_composite_dataset(**args)
        ci, cb = split_boxes(comp, "train")
        images, boxes = images + ci, boxes + cb
        sources.update(composites=str(comp), composite_images=len(ci))
    return images, boxes, sources


def calibrate_recall(model: nn.Module, images, boxes, recall: float = 0.99) -> dict:
    """Calibrate the finder of `model` (a DetectionModel, `YOLO`, or a `Finder`) so that at least `recall` of the
    objects of `images`/`boxes` (training data) keep 90% of their box active after the model's context margin
    (the stem's `dilate`); see `sparseyolo.nn.finder.calibrate_recall`. Returns its report."""
    if isinstance(model, Finder):
        return _calibrate(model, images, boxes, recall)
    sparsifiers = finder_sparsifiers(detection_model(model))
    report = {}
    for sp in sparsifiers:
        sp.target = None  # the threshold decides from now on
        report = _calibrate(sp.finder, images, boxes, recall, margin=sp.dilate)
    return report


def train_finder(
    model: nn.Module,
    data: str | Path | None = None,
    composites: dict | None = COMPOSITES,
    recall: float = 0.99,
    steps: int = 6000,
    batch: int = 16,
    crop: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    composite_share: float = COMPOSITE_SHARE,
    holdout: float = HOLDOUT,
    progress: bool = True,
    loss_margin: int | None = None,
) -> dict:
    """Train the foreground finder of `model`'s sparse stem on training data, then calibrate it to `recall`.

    Only the finder's weights change (the detector is frozen); they are saved with the model (state dict, also in
    shipped safetensors) with the calibrated threshold. `data`/`composites`: see `training_data`;
    `composite_share`: the share of training crops drawn from the composites; `holdout`: the share of the
    training images (of each source, drawn with `seed`) kept out of the fit and calibrated on, so the threshold
    is set on images the finder has not memorised (0: fit and calibrate on all); `loss_margin`: the margin (pixels)
    the loss pools the logits over (`finder_loss`; default the model's context margin); `steps`, `batch`, `crop`, `lr`,
    `seed`: see `sparseyolo.nn.finder.fit_finder` (`steps=0`: no training, the finder as it is is calibrated on
    the same held-out images). Returns a report: training losses and seconds, the calibration
    (threshold, recall and active share on the calibration images), the same measured on the fitted images, the
    data used."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0 (0: calibrate the finder as it is), got {steps!r}")
    if not 0.0 <= float(composite_share) < 1.0:
        raise ValueError(f"composite_share must be in [0, 1), got {composite_share!r}")
    if not 0.0 <= float(holdout) < 1.0:
        raise ValueError(f"holdout must be a share in [0, 1), got {holdout!r}")
    net = detection_model(model)
    sparsifiers = finder_sparsifiers(net)
    images, boxes, sources = training_data(data, composites)
    n_data = sources["images"]
    rng = np.random.default_rng(seed)
    held = set()
    for lo, hi in ((0, n_data), (n_data, len(images))):
        k = int(round(float(holdout) * (hi - lo)))
        held |= set((lo + rng.permutation(hi - lo)[:k]).tolist())
    fit = [i for i in range(len(images)) if i not in held]
    cal = sorted(held) or fit
    n_comp = sum(1 for i in fit if i >= n_data)
    share = float(composite_share) if n_comp else 0.0
    weights = [(1 - share) / (len(fit) - n_comp) if i < n_data else share / n_comp for i in fit]
    fit_images, fit_boxes = [images[i] for i in fit], [boxes[i] for i in fit]
    report = {"data": sources, "composite_share": share, "fit_images": len(fit), "calibration_images": len(cal)}
    margin = int(sparsifiers[0].dilate if loss_margin is None else loss_margin)
    report["loss_margin"] = margin
    report["train"] = None  # steps=0: the finder's weights as they are (e.g. another variant's), calibrated only
    for sp in sparsifiers if int(steps) else ():
        report["train"] = fit_finder(
            sp.finder, fit_images, fit_boxes, steps, batch, crop, lr, seed, progress, weights=weights, margin=margin
        )
    if held:  # the same calibration on the fitted images, for comparison (the threshold is set just below)
        report["calibration_on_fit"] = _calibrate(sparsifiers[0].finder, fit_images, fit_boxes, recall,
                                                  sparsifiers[0].dilate)  # fmt: skip
    report["calibration"] = calibrate_recall(net, [images[i] for i in cal], [boxes[i] for i in cal], recall)
    report["margin"] = int(sparsifiers[0].dilate)
    return report


# --- masks at the images' own resolution ------------------------------------------------------------------------


def to_image(mask, image_shape: tuple[int, int]) -> np.ndarray:
    """`bool[H', W']` mask on the letterboxed network input -> `bool[h, w]` on the original `image_shape`.

    Undoes Ultralytics' letterbox (scale, centred padding) with its own `scale_masks`, nearest neighbour."""
    from ultralytics.utils.ops import scale_masks

    m = torch.as_tensor(np.asarray(mask))
    if m.dim() != 2:
        raise ValueError(f"to_image expects one mask bool[H, W], got shape {tuple(m.shape)}")
    h, w = (int(v) for v in image_shape[:2])
    if h < 1 or w < 1:
        raise ValueError(f"image_shape must be positive (h, w), got {image_shape}")
    out = scale_masks(m[None, None].float(), (h, w), mode="nearest")
    return (out[0, 0] > 0.5).numpy()


def _predictor_class():
    from ultralytics.engine.results import Results
    from ultralytics.models.yolo.detect import DetectionPredictor

    class ForegroundPredictor(DetectionPredictor):
        """Ultralytics' detection predictor (same sources, letterbox, batching) that runs only the sparse stem's
        sparsifier and returns its mask at each image's own resolution (`Results.masks`, one mask)."""

        def inference(self, im, *args, **kwargs):
            net = getattr(self.model, "model", self.model)
            stem = next((m for m in net.modules() if isinstance(m, SparseStem)), None)
            if stem is None:
                raise ValueError("foreground: this model has no sparse stem (SparseStem): it looks at every pixel")
            return stem.sparsify(im)[0]

        def postprocess(self, preds, img, orig_imgs, **kwargs):
            if not isinstance(orig_imgs, list):
                orig_imgs = list(orig_imgs)
            out = []
            for mask, orig, path in zip(preds, orig_imgs, self.batch[0]):
                m = torch.from_numpy(to_image(mask.cpu(), orig.shape[:2]))
                out.append(Results(orig, path=path, names=self.model.names, masks=m[None]))
            return out

    return ForegroundPredictor


def foreground(yolo, source, **predict_kwargs) -> list[np.ndarray]:
    """The active masks `bool ndarray (h, w)` the model's sparse stem runs on, one per image of `source`, at each
    image's own resolution: the images are loaded and letterboxed by Ultralytics' predictor (`predict_kwargs`:
    `imgsz`, `batch`, ...), the stem's sparsifier runs on them, and each mask is mapped back with Ultralytics'
    `scale_masks` (nearest). Only the sparsifier runs, not the detector."""
    if not any(isinstance(m, SparseStem) for m in yolo.model.modules()):
        raise ValueError("foreground: this model has no sparse stem (SparseStem): it looks at every pixel")
    predict_kwargs.setdefault("verbose", False)
    saved, yolo.predictor = yolo.predictor, None
    try:
        results = yolo.predict(source, stream=True, predictor=_predictor_class(), **predict_kwargs)
        return [r.masks.data[0].cpu().numpy().astype(bool) for r in results]
    finally:
        yolo.predictor = saved
