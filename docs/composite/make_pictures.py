"""Redraw the pictures of docs/composite.md: `.venv/bin/python docs/composite/make_pictures.py`.

Builds (or reuses, from the cache) the default 4K validation composites at 1% and 4% and writes, for the first
frame of each, a downscaled JPEG with the ground-truth boxes and a 1:1 crop around a few pasted crowns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sparseyolo.data.composite import build_composite_dataset

HERE = Path(__file__).resolve().parent
WIDTH = 1600  # px of the downscaled overview
CROP = 640  # px of the 1:1 crop


def boxes_of(label: Path, w: int, h: int) -> np.ndarray:
    rows = np.loadtxt(label, ndmin=2).reshape(-1, 5) if label.stat().st_size else np.zeros((0, 5))
    cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)


def draw(fg: float) -> list[Path]:
    yaml = build_composite_dataset(fg=fg, size=(3840, 2160), images=2, split="val", seed=0, verbose=True)
    img_path = yaml.parent / "images" / "val" / "composite_0000.png"
    im = Image.open(img_path).convert("RGB")
    w, h = im.size
    boxes = boxes_of(yaml.parent / "labels" / "val" / "composite_0000.txt", w, h)
    tag = f"val_4k_fg{round(fg * 100)}"
    s = WIDTH / w
    small = im.resize((WIDTH, round(h * s)), Image.LANCZOS)
    d = ImageDraw.Draw(small)
    for x0, y0, x1, y1 in boxes * s:
        d.rectangle([x0 - 1, y0 - 1, x1 + 1, y1 + 1], outline=(255, 40, 40), width=2)
    out = [HERE / f"{tag}.jpg"]
    small.save(out[0], quality=70, optimize=True)
    # the 1:1 crop: the CROP x CROP window holding the most box centres (boxes drawn 1 px outside the box)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    best, xy = -1, (0, 0)
    for x in range(0, w - CROP + 1, 64):
        for y in range(0, h - CROP + 1, 64):
            n = int(((cx >= x + 40) & (cx < x + CROP - 40) & (cy >= y + 40) & (cy < y + CROP - 40)).sum())
            if n > best:
                best, xy = n, (x, y)
    x, y = xy
    crop = im.crop((x, y, x + CROP, y + CROP))
    d = ImageDraw.Draw(crop)
    for x0, y0, x1, y1 in boxes - [x, y, x, y]:
        if x1 > 0 and y1 > 0 and x0 < CROP and y0 < CROP:
            d.rectangle([x0 - 1, y0 - 1, x1, y1], outline=(255, 40, 40), width=1)
    out.append(HERE / f"{tag}_crop.jpg")
    crop.save(out[1], quality=85, optimize=True)
    print(f"{tag}: {len(boxes)} boxes; crop at x={x}, y={y} with {best} crowns")
    return out


if __name__ == "__main__":
    for fg in (0.01, 0.04):
        for p in draw(fg):
            print(p, f"{p.stat().st_size / 1024:.0f} KB")
