"""Compute control of DFF necks at inference: calibration to a FLOP budget, `budget=` for predict/val.

`calibrate(model, source, budget)` runs the model's backbone once per image, keeps the neck's inputs, and sweeps
the neck's gate threshold on them (`sparseyolo.nn.dff.calibrate_neck`): the chosen threshold and the whole
threshold -> FLOP-ratio curve are stored in the neck's buffers, so they are saved with the checkpoint (and in
shipped safetensors). `budget_threshold(model, budget)` reads that curve back for `predict(budget=...)`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sparseyolo.data.split import list_images, load_split, read_image
from sparseyolo.nn.dff import calibrate_neck, check_budget, dff_necks, threshold_for_budget


def image_paths(source) -> list[Path]:
    """Images of `source`: an image file, a folder, a YOLO `data.yaml` (its `val` split) or a list of files."""
    if isinstance(source, (list, tuple)):
        paths = [Path(p) for p in source]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"calibration image(s) not found: {missing[:3]}")
        return paths
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"calibration source not found: {p} (an image, a folder or a data.yaml)")
    if p.suffix.lower() in (".yaml", ".yml"):
        return load_split(p, "val")[0]
    if p.is_dir():
        return list_images(p)
    return [p]


def calibration_images(data_yaml, n: int, split: str = "train") -> list[Path]:
    """`n` images of a dataset split, evenly spaced over its sorted list (calibrate on training images, evaluate on
    the others)."""
    images = load_split(data_yaml, split)[0]
    idx = np.linspace(0, len(images) - 1, min(n, len(images))).round().astype(int)
    return [images[i] for i in sorted(set(idx.tolist()))]


def letterboxed(path: Path, imgsz: int) -> torch.Tensor:
    """`Tensor[1, 3, H, W]` in [0, 1]: the image resized and padded as Ultralytics' predictor does."""
    from ultralytics.data.augment import LetterBox

    rgb = read_image(path)  # RGB uint8, clear errors for corrupt files
    img = LetterBox(new_shape=(imgsz, imgsz), auto=True, stride=32)(image=np.ascontiguousarray(rgb[..., ::-1]))
    return torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1))).float()[None] / 255.0


@torch.no_grad()
def neck_inputs(model: torch.nn.Module, images: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """The input maps of the (first) DFF neck of `model` for each image batch."""
    necks = dff_necks(model)
    if not necks:
        raise ValueError("the model has no DFF neck (DFFNeck): nothing to calibrate")
    if len(necks) > 1:
        raise ValueError(f"calibration supports one DFF neck per model, this one has {len(necks)}")
    captured: list = []
    handle = necks[0].register_forward_pre_hook(lambda m, args: captured.append([t.detach() for t in args[0]]))
    was_training = model.training
    model.eval()
    try:
        for x in images:
            model(x)
    finally:
        handle.remove()
        model.train(was_training)
    return captured


def calibrate(model: torch.nn.Module, source, budget: float, imgsz: int = 640, progress: bool = True) -> dict:
    """Calibrate every DFF neck of `model` to `budget` on the images of `source`; returns a report."""
    budget = check_budget(budget)
    paths = image_paths(source)
    it = paths
    if progress:
        from tqdm import tqdm

        it = tqdm(paths, desc="calibrate: backbone", unit="img")
    images = [letterboxed(p, imgsz) for p in it]
    inputs = neck_inputs(model, images)
    report = calibrate_neck(dff_necks(model)[0], inputs, budget)
    report["images"] = len(paths)
    report["imgsz"] = imgsz
    return report


def budget_threshold(model: torch.nn.Module, budget: float) -> float:
    necks = dff_necks(model)
    if not necks:
        raise ValueError("budget= applies to models with a DFF neck; this model has none")
    return threshold_for_budget(necks[0], budget)
