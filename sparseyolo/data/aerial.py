"""Real aerial RGB images with tree-crown boxes from deepforest 2.1.0's wheel (MIT), as a YOLO dataset.

Four annotated NEON scenes ship in `deepforest/data/`: two large crops of Yellowstone (2299x2472, 574 boxes;
1249x1035, 279 boxes) and two 400x400 tiles (OSBS_029, 61 boxes; SOAP_061, 37 boxes). Every box is one class,
`tree`.

`build_aerial_dataset` splits by region: whole scenes are held out for validation (default: the 1249x1035
Yellowstone scene), so no validation pixel is ever seen in training. Validation is written twice: as tiles
(`images/val`, what Ultralytics validates during training) and as the whole scenes at native resolution
(`images/full`, what the sparse stem exists for), each with COCO ground truth for pycocotools.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sparseyolo.data.build import atomic_build, data_yaml, prepare_out
from sparseyolo.data.registry import cache_dir, fetch_member_files

DEEPFOREST_REQUIREMENT = "deepforest==2.1.0"
SCENES = (
    "2019_YELL_2_528000_4978000_image_crop2",
    "2019_YELL_2_541000_4977000_image_crop",
    "OSBS_029",
    "SOAP_061",
)
VAL_SCENES = ("2019_YELL_2_541000_4977000_image_crop",)  # 1249x1035, 279 boxes: the held-out region
NAMES = {0: "tree"}
BUILD_FORMAT = 2  # bump when the layout of a built dataset changes (old builds are then rebuilt on request)


def aerial_files() -> list[Path]:
    """The annotated scenes' `.png` images and Pascal-VOC `.xml` files (downloaded once, then cached)."""
    pats = [f"deepforest/data/{s}.{ext}" for s in SCENES for ext in ("png", "xml")]
    return fetch_member_files(DEEPFOREST_REQUIREMENT, pats, sdist=False)


def scene_paths(name: str) -> tuple[Path, Path]:
    if name not in SCENES:
        raise ValueError(f"unknown aerial scene {name!r}; expected one of {SCENES}")
    files = {p.name: p for p in aerial_files()}
    missing = [f"{name}.{e}" for e in ("png", "xml") if f"{name}.{e}" not in files]
    if missing:
        raise FileNotFoundError(
            f"aerial scene files missing from the cache: {missing}; run `python -m sparseyolo.data fetch`"
        )
    return files[f"{name}.png"], files[f"{name}.xml"]


def read_voc_boxes(xml_path: str | Path) -> np.ndarray:
    """`float32 (N, 4)` boxes `x0, y0, x1, y1` of a Pascal-VOC file; a clear error when it is unreadable."""
    xml_path = Path(xml_path)
    if not xml_path.is_file():
        raise FileNotFoundError(f"label file not found: {xml_path}")
    try:
        root = ET.parse(xml_path).getroot()
        boxes = []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            boxes.append([float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")])
    except (ET.ParseError, AttributeError, TypeError, ValueError) as e:
        raise ValueError(f"corrupt Pascal-VOC label file {xml_path}: {e}") from e
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def read_rgb(path: str | Path) -> np.ndarray:
    """RGB `uint8 (H, W, 3)`; a clear error for a missing or undecodable image."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises OSError/SyntaxError/ValueError; plugins (e.g. HEIF openers) more
        raise ValueError(f"corrupt or unreadable image {path}: {type(e).__name__}: {e}") from e


def load_scene(name: str = SCENES[0]) -> tuple[np.ndarray, np.ndarray]:
    """RGB `uint8 (H, W, 3)` image and `float32 (N, 4)` boxes `x0, y0, x1, y1` in pixels."""
    img_path, xml_path = scene_paths(name)
    return read_rgb(img_path), read_voc_boxes(xml_path)


def tile_origins(h: int, w: int, tile: int, overlap: float) -> list[tuple[int, int]]:
    """Top-left corners `(y, x)` of `tile`-pixel tiles covering an `h x w` image with fractional `overlap`.

    The last row/column is shifted to end at the border (no padding); an image smaller than `tile` gives one
    origin (the tile is then the whole image)."""
    step = max(1, int(round(tile * (1.0 - overlap))))

    def axis(n: int) -> list[int]:
        pos = list(range(0, max(n - tile, 0) + 1, step))
        if pos[-1] + tile < n:
            pos.append(n - tile)
        return pos

    return [(y, x) for y in axis(h) for x in axis(w)]


@dataclass
class BoxCut:
    """Boxes of one crop: `boxes (K, 4)` in crop pixels, and how many were clipped or dropped as slivers."""

    boxes: np.ndarray
    clipped: int
    slivers: int


def cut_boxes(boxes: np.ndarray, y: int, x: int, th: int, tw: int, min_visible: float) -> BoxCut:
    """Boxes of the crop `[y, y+th) x [x, x+tw)`: clipped to it, kept when >= `min_visible` of the area is in."""
    b = boxes - np.array([x, y, x, y], np.float32)
    c = np.clip(b, 0, np.array([tw, th, tw, th], np.float32))
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    vis = (c[:, 2] - c[:, 0]).clip(0) * (c[:, 3] - c[:, 1]).clip(0)
    touching = vis > 0
    kept = touching & (vis >= min_visible * np.maximum(area, 1e-6))
    changed = np.any(np.abs(c - b) > 1e-6, axis=1)
    return BoxCut(c[kept], int((kept & changed).sum()), int((touching & ~kept).sum()))


def yolo_lines(boxes: np.ndarray, w: int, h: int, cls: int = 0) -> list[str]:
    return [
        f"{cls} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} {(b[2] - b[0]) / w:.6f} {(b[3] - b[1]) / h:.6f}"
        for b in boxes
    ]


def coco_ground_truth(items: list[tuple[str, int, int, np.ndarray]], names: dict | None = None) -> dict:
    """COCO detection ground truth from `(file_name, width, height, boxes xyxy)` items (image ids from 1);
    every box has category 0; `names` (default: the aerial `{0: "tree"}`) gives the categories."""
    images, anns = [], []
    for i, (name, w, h, boxes) in enumerate(items, start=1):
        images.append({"id": i, "file_name": name, "width": int(w), "height": int(h)})
        for b in boxes:
            bw, bh = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 0,
                    "bbox": [float(b[0]), float(b[1]), bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
    cats = [{"id": int(k), "name": v} for k, v in (names or NAMES).items()]
    return {"images": images, "annotations": anns, "categories": cats}


@dataclass
class BuildReport:
    """What a build wrote and what it left out (nothing is dropped without being counted here)."""

    params: dict
    images: dict = field(default_factory=dict)  # split -> images written
    boxes: dict = field(default_factory=dict)  # split -> boxes written
    clipped: dict = field(default_factory=dict)  # split -> boxes cut at a tile border (kept, clipped)
    slivers: dict = field(default_factory=dict)  # split -> box parts under min_visible (dropped)
    source_boxes_fixed: int = 0  # source boxes outside their image, clipped to it
    source_boxes_dropped: int = 0  # source boxes with no area inside their image
    empty_tiles: int = 0  # tiles with no box (kept, with an empty label file)

    def summary(self) -> str:
        parts = [f"{s}: {self.images[s]} images, {self.boxes[s]} boxes" for s in self.images]
        cut = ", ".join(f"{s} {self.clipped[s]} clipped / {self.slivers[s]} slivers dropped" for s in self.clipped)
        return (
            "; ".join(parts)
            + f"\nboxes at tile borders: {cut} (min_visible={self.params['min_visible']})"
            + f"\nsource boxes clipped to their image: {self.source_boxes_fixed}, without area (dropped): "
            f"{self.source_boxes_dropped}; tiles without boxes: {self.empty_tiles}"
        )


def _clean_source_boxes(boxes: np.ndarray, h: int, w: int, report: BuildReport) -> np.ndarray:
    c = np.clip(boxes, 0, np.array([w, h, w, h], np.float32))
    ok = (c[:, 2] - c[:, 0] > 0) & (c[:, 3] - c[:, 1] > 0)
    report.source_boxes_fixed += int((np.any(np.abs(c - boxes) > 1e-6, axis=1) & ok).sum())
    report.source_boxes_dropped += int((~ok).sum())
    return c[ok]


def build_aerial_dataset(
    out: str | Path | None = None,
    tile: int = 640,
    overlap: float = 0.2,
    val_scenes: tuple[str, ...] | list[str] = VAL_SCENES,
    min_visible: float = 0.5,
    force: bool = False,
    verbose: bool = False,
) -> Path:
    """Tile the deepforest scenes into a YOLO dataset; returns the path of its `data.yaml`.

    - train: `tile`-pixel tiles (fractional `overlap`) of every scene not in `val_scenes`;
    - val: tiles of the `val_scenes` (the same tiling), for Ultralytics' validation during training;
    - full: the `val_scenes` whole, at native resolution (`full.yaml` points Ultralytics' `val` at them).

    A box cut by a tile border is clipped and kept when at least `min_visible` of its area is inside; the
    rest (slivers) are dropped and counted in `build.json`. The build is written to a temporary folder and
    renamed at the end, so an interrupted build never looks complete. An existing build with the same
    parameters is reused; one with other parameters raises unless `force=True` (then it is replaced).
    """
    from PIL import Image

    if not isinstance(tile, int) or tile < 32:
        raise ValueError(f"tile must be an int >= 32 pixels, got {tile!r}")
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be a fraction in [0, 1), got {overlap!r}")
    if not 0.0 < float(min_visible) <= 1.0:
        raise ValueError(f"min_visible must be in (0, 1], got {min_visible!r}")
    val_scenes = tuple(val_scenes)
    unknown = [s for s in val_scenes if s not in SCENES]
    if unknown or not val_scenes or len(val_scenes) == len(SCENES):
        raise ValueError(f"val_scenes must be a non-empty proper subset of {SCENES}, got {val_scenes}")
    params = {
        "format": BUILD_FORMAT,
        "tile": tile,
        "overlap": float(overlap),
        "min_visible": float(min_visible),
        "val_scenes": list(val_scenes),
    }
    out = Path(out) if out is not None else cache_dir() / f"aerial-yolo-{tile}"
    if prepare_out(out, params, force, "aerial"):
        return out / "data.yaml"
    report = BuildReport(params=params)
    coco: dict[str, list] = {"val": [], "full": []}
    with atomic_build(out) as tmp:
        for split in ("train", "val", "full"):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            for key in ("images", "boxes", "clipped", "slivers"):
                getattr(report, key)[split] = 0
        for scene in SCENES:
            img, boxes = load_scene(scene)
            h, w = img.shape[:2]
            boxes = _clean_source_boxes(boxes, h, w, report)
            splits = ("val", "full") if scene in val_scenes else ("train",)
            for split in splits:
                t = min(tile, h, w)
                origins = [(0, 0)] if split == "full" else tile_origins(h, w, t, overlap)
                for y, x in origins:
                    th, tw = (h, w) if split == "full" else (t, t)
                    cut = cut_boxes(boxes, y, x, th, tw, min_visible)
                    name = scene if split == "full" else f"{scene}_{y}_{x}"
                    Image.fromarray(img[y : y + th, x : x + tw]).save(tmp / "images" / split / f"{name}.png")
                    lines = yolo_lines(cut.boxes, tw, th)
                    (tmp / "labels" / split / f"{name}.txt").write_text("".join(s + "\n" for s in lines))
                    report.images[split] += 1
                    report.boxes[split] += len(cut.boxes)
                    report.clipped[split] += cut.clipped
                    report.slivers[split] += cut.slivers
                    report.empty_tiles += int(len(cut.boxes) == 0 and split != "full")
                    if split in coco:
                        coco[split].append((f"{name}.png", tw, th, cut.boxes))
        (tmp / "data.yaml").write_text(data_yaml(out, NAMES))
        (tmp / "full.yaml").write_text(data_yaml(out, NAMES, val="images/full"))
        (tmp / "annotations").mkdir()
        for split, items in coco.items():
            (tmp / "annotations" / f"{split}.json").write_text(json.dumps(coco_ground_truth(items)))
        (tmp / "build.json").write_text(json.dumps(asdict(report), indent=1))  # last: marks the build complete
    if verbose:
        print(f"aerial dataset in {out}\n{report.summary()}")
    return out / "data.yaml"
