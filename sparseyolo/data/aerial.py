"""Real aerial RGB images with tree-crown boxes from deepforest 2.1.0's wheel (MIT), as a YOLO dataset.

Four annotated NEON scenes ship in `deepforest/data/`: two large crops of Yellowstone (2299x2472, 574 boxes;
1249x1035, 279 boxes) and two 400x400 tiles (OSBS_029, 61 boxes; SOAP_061, 37 boxes). Every box is one class,
`tree` (the XMLs also label some crowns "Dead"; `classes` below maps names if you want two classes).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from sparseyolo.data.registry import cache_dir, fetch_member_files

DEEPFOREST_REQUIREMENT = "deepforest==2.1.0"
SCENES = (
    "2019_YELL_2_528000_4978000_image_crop2",
    "2019_YELL_2_541000_4977000_image_crop",
    "OSBS_029",
    "SOAP_061",
)


def aerial_files() -> list[Path]:
    """The annotated scenes' `.png` images and Pascal-VOC `.xml` files (downloaded once, then cached)."""
    pats = [f"deepforest/data/{s}.{ext}" for s in SCENES for ext in ("png", "xml")]
    return fetch_member_files(DEEPFOREST_REQUIREMENT, pats, sdist=False)


def scene_paths(name: str) -> tuple[Path, Path]:
    if name not in SCENES:
        raise ValueError(f"unknown aerial scene {name!r}; expected one of {SCENES}")
    files = {p.name: p for p in aerial_files()}
    return files[f"{name}.png"], files[f"{name}.xml"]


def load_scene(name: str = SCENES[0]) -> tuple[np.ndarray, np.ndarray]:
    """RGB `uint8 (H, W, 3)` image and `float32 (N, 4)` boxes `x0, y0, x1, y1` in pixels."""
    from PIL import Image

    img_path, xml_path = scene_paths(name)
    img = np.asarray(Image.open(img_path).convert("RGB"))
    boxes = []
    for obj in ET.parse(xml_path).getroot().iter("object"):
        bb = obj.find("bndbox")
        boxes.append([float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")])
    return img, np.asarray(boxes, np.float32).reshape(-1, 4)


def _tiles(h: int, w: int, tile: int, overlap: int):
    step = max(1, tile - overlap)
    ys = list(range(0, max(h - tile, 0) + 1, step)) or [0]
    xs = list(range(0, max(w - tile, 0) + 1, step)) or [0]
    if ys[-1] + tile < h:
        ys.append(h - tile)
    if xs[-1] + tile < w:
        xs.append(w - tile)
    return [(y, x) for y in ys for x in xs]


def build_aerial_dataset(
    root: str | Path | None = None,
    tile: int = 640,
    overlap: int = 64,
    val_scene: str = "OSBS_029",
    min_visible: float = 0.5,
) -> Path:
    """Tile the scenes into `tile`-pixel crops with YOLO labels and write `data.yaml`; returns its path.

    Training tiles come from every scene but `val_scene`, which is the validation set (whole, untiled). A box
    is kept in a tile when at least `min_visible` of its area is inside (clipped to the tile). Idempotent.
    """
    from PIL import Image

    root = Path(root) if root is not None else cache_dir() / f"aerial-yolo-{tile}"
    yaml = root / "data.yaml"
    if yaml.is_file():
        return yaml
    for scene in SCENES:
        split = "val" if scene == val_scene else "train"
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        img, boxes = load_scene(scene)
        h, w = img.shape[:2]
        t = min(tile, h, w)
        origins = [(0, 0)] if split == "val" else _tiles(h, w, t, overlap)  # validation: the whole scene
        for y, x in origins:
            th, tw = (h, w) if split == "val" else (t, t)
            crop = img[y : y + th, x : x + tw]
            b = boxes - np.array([x, y, x, y], np.float32)
            clipped = np.clip(b, 0, np.array([tw, th, tw, th], np.float32))
            area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            vis = (clipped[:, 2] - clipped[:, 0]).clip(0) * (clipped[:, 3] - clipped[:, 1]).clip(0)
            keep = vis >= min_visible * np.maximum(area, 1e-6)
            lines = [
                f"0 {(c[0] + c[2]) / 2 / tw:.6f} {(c[1] + c[3]) / 2 / th:.6f} {(c[2] - c[0]) / tw:.6f} "
                f"{(c[3] - c[1]) / th:.6f}"
                for c in clipped[keep]
            ]
            stem = f"{scene}_{y}_{x}"
            Image.fromarray(crop).save(root / "images" / split / f"{stem}.png")
            (root / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: tree\n")
    return yaml
