"""Evaluation inputs: the images of a YOLO dataset split and their COCO ground truth."""

from __future__ import annotations

from pathlib import Path

from sparseyolo.data.aerial import read_rgb as read_image  # noqa: F401  (RGB uint8, clear errors)
from sparseyolo.eval.coco import yolo_ground_truth

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def load_split(data: str | Path, split: str = "val") -> tuple[list[Path], dict, dict]:
    """`(images, coco ground truth, names)` of split `split` of a YOLO `data.yaml` (or of an image folder with
    `labels/` beside `images/`). Ground truth is read from the YOLO label files."""
    import yaml

    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"dataset not found: {data} (a data.yaml or an images folder)")
    names: dict = {0: "object"}
    if data.is_file():
        try:
            cfg = yaml.safe_load(data.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"corrupt dataset YAML {data}: {e}") from e
        if split not in cfg:
            raise ValueError(f"{data} has no {split!r} split (keys: {sorted(cfg)})")
        root = Path(cfg.get("path") or data.parent)
        if not root.is_absolute():
            root = data.parent / root
        folder = Path(cfg[split]) if Path(cfg[split]).is_absolute() else root / cfg[split]
        raw = cfg.get("names") or names
        names = dict(enumerate(raw)) if isinstance(raw, list) else {int(k): v for k, v in raw.items()}
    else:
        folder = data
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder of split {split!r} not found: {folder}")
    images = list_images(folder)
    return images, yolo_ground_truth(images, names), names


def list_images(folder: Path) -> list[Path]:
    """The image files of `folder`, sorted; `ValueError` when there are none."""
    images = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"no images in {folder} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return images
