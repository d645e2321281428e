"""A YOLO dataset split: its images, their COCO ground truth read from the YOLO label files, their boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparseyolo.data.aerial import read_rgb as read_image  # RGB uint8, clear errors

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


def yolo_ground_truth(images: list[Path], names: dict) -> dict:
    """COCO ground truth from YOLO label files (`labels/` beside `images/`, normalised `cls cx cy w h`).

    Missing label files mean "no objects" (as in Ultralytics); a malformed row raises a ValueError naming the
    file and line."""
    from PIL import Image

    gt = {"images": [], "annotations": [], "categories": [{"id": int(k), "name": v} for k, v in names.items()]}
    for i, img in enumerate(images, start=1):
        with Image.open(img) as im:
            w, h = im.size
        gt["images"].append({"id": i, "file_name": img.name, "width": w, "height": h})
        label = label_path(img)
        if not label.is_file():
            continue
        for n, line in enumerate(label.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                c, cx, cy, bw, bh = (float(v) for v in line.split()[:5])
            except ValueError as e:
                raise ValueError(f"malformed YOLO label {label}:{n}: {line!r}") from e
            x0, y0 = max(0.0, (cx - bw / 2) * w), max(0.0, (cy - bh / 2) * h)
            x1, y1 = min(float(w), (cx + bw / 2) * w), min(float(h), (cy + bh / 2) * h)
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": i,
                    "category_id": int(c),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    return gt


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last `images` folder in the path becomes `labels`, the suffix `.txt`."""
    parts = list(image.parts)
    for j in range(len(parts) - 2, -1, -1):
        if parts[j] == "images":
            parts[j] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def split_boxes(data: str | Path, split: str = "train") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """RGB images and xyxy pixel boxes of a YOLO dataset split (labels read from its label files)."""
    paths, gt, _ = load_split(data, split)
    by_id = {im["id"]: [] for im in gt["images"]}
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        by_id[a["image_id"]].append([x, y, x + w, y + h])
    id_of = {im["file_name"]: im["id"] for im in gt["images"]}
    images = [read_image(p) for p in paths]
    boxes = [np.asarray(by_id[id_of[p.name]], np.float32).reshape(-1, 4) for p in paths]
    return images, boxes
