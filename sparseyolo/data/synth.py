"""Synthetic high-resolution scenes with a controlled foreground: textured objects on an exactly black background.

`synth_scene` draws one scene: rectangles and ellipses filled with a random colour plus noise (never exactly zero
inside), sides drawn from `size`, placed until they cover `fg` of the pixels (or exactly `count` of them), apart
from each other when there is room. `clutter` adds unlabelled distractors (thin lines, small noise blobs) on that
fraction of the pixels, kept 2 px away from every box, so a detector has something to reject. The background is
exact zeros, so the `nonzero` sparsifier keeps exactly the objects and the clutter: the foreground share is the
controlled variable of a benchmark.

`build_synth_dataset` writes such scenes as a YOLO dataset laid out like the aerial one (`images/{train,val}`,
`labels/{train,val}`, `data.yaml`, `annotations/val.json` COCO ground truth, `build.json`), as PNG (lossless: the
zeros stay zeros).
"""

from __future__ import annotations

import json
import math
import numbers
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from sparseyolo.data.aerial import coco_ground_truth, yolo_lines
from sparseyolo.data.build import atomic_build, data_yaml, prepare_out

NAMES = {0: "object"}
SHAPES = ("rect", "ellipse")
BUILD_FORMAT = 1  # bump when the layout of a built synthetic dataset changes
GAP = 1  # free pixels kept around an object when placing the next one (objects do not touch when there is room)
CLUTTER_GAP = 2  # clutter stays this many pixels away from every box
TRIES = 30  # random positions tried for an object before all positions are scanned for room
SCANS = 64  # full scans for room per scene


class SynthScene(NamedTuple):
    """One synthetic scene.

    image (ndarray[H, W, 3], uint8): exact zeros off the objects and the clutter.
    boxes (ndarray[N, 4], float32): `x0, y0, x1, y1` in pixels, tight (`x1`, `y1` exclusive), one per object.
    fg (float): measured fraction of the pixels covered by objects.
    clutter (float): measured fraction of the pixels covered by clutter (disjoint from the objects).
    """

    image: np.ndarray
    boxes: np.ndarray
    fg: float
    clutter: float


def _int(name: str, v, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return int(v)


def _fraction(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 <= float(v) < 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1), got {v!r}")
    return float(v)


def _size_range(size, height: int, width: int) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, numbers.Integral) and not isinstance(size, bool) else size
    try:
        lo, hi = pair
    except (TypeError, ValueError):
        raise ValueError(f"size must be an int or a (min, max) pair of ints, got {size!r}") from None
    ok = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (lo, hi))
    if not ok or not 1 <= lo <= hi:
        raise ValueError(f"size must be positive ints with min <= max, got {size!r}")
    if hi > min(height, width):
        raise ValueError(
            f"object size {size!r} does not fit in a {height}x{width} image (max side {min(height, width)})"
        )
    return int(lo), int(hi)


def _check(height, width, fg, size, count, clutter, seed, shapes) -> tuple:
    height, width = _int("height", height, 1), _int("width", width, 1)
    fg, clutter = _fraction("fg", fg), _fraction("clutter", clutter)
    lo, hi = _size_range(size, height, width)
    count = None if count is None else _int("count", count)
    seed = _int("seed", seed)
    shapes = (shapes,) if isinstance(shapes, str) else tuple(shapes)
    if not shapes or any(s not in SHAPES for s in shapes):
        raise ValueError(f"shapes must be a non-empty subset of {SHAPES}, got {shapes!r}")
    if count is None and fg + clutter >= 1.0:
        raise ValueError(f"fg + clutter must be < 1, got fg={fg!r} + clutter={clutter!r}")
    return height, width, fg, (lo, hi), count, clutter, seed, shapes


def _shape_mask(shape: str, h: int, w: int) -> np.ndarray:
    if shape == "rect":
        return np.ones((h, w), bool)
    yy = (np.arange(h) - (h - 1) / 2) / (h / 2)
    xx = (np.arange(w) - (w - 1) / 2) / (w / 2)
    return yy[:, None] ** 2 + xx[None, :] ** 2 <= 1.0  # touches all four sides: the box is tight


def _texture(rng: np.random.Generator, n: int) -> np.ndarray:
    """`uint8 (n, 3)`: a random colour plus per-pixel noise, in [1, 255] (never exactly zero)."""
    base = rng.integers(48, 256, 3)
    return np.clip(base + rng.normal(0.0, 16.0, (n, 3)), 1, 255).astype(np.uint8)


def _free_spots(taken: np.ndarray, h: int, w: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners `(ys, xs)` where an `h x w` box is at least `GAP` px away from every taken pixel, on a
    grid of `c` px (the mask is max-pooled by `c`: conservative, and `c * c` times cheaper than every pixel)."""
    H, W = taken.shape
    hc, wc = -(-H // c), -(-W // c)
    pooled = np.zeros((hc * c, wc * c), bool)
    pooled[:H, :W] = taken
    pooled = pooled.reshape(hc, c, wc, c).any(axis=(1, 3))
    p = np.zeros((hc + 1, wc + 1), np.int32)
    p[1:, 1:] = pooled.cumsum(0).cumsum(1)  # summed-area table
    kh, kw = -(-(h + 2 * GAP) // c), -(-(w + 2 * GAP) // c)  # the box and its gap, in cells, from y - GAP = i * c
    ny, nx = min(hc - kh, (H - h - GAP) // c) + 1, min(wc - kw, (W - w - GAP) // c) + 1
    if ny <= 0 or nx <= 0:
        return np.zeros(0, int), np.zeros(0, int)
    win = p[kh : kh + ny, kw : kw + nx] - p[:ny, kw : kw + nx] - p[kh : kh + ny, :nx] + p[:ny, :nx]
    i, j = np.nonzero(win == 0)
    return i * c + GAP, j * c + GAP


class _Placer:
    """Places boxes apart from each other (`GAP` px) when there is room: random tries first, then (when they all
    fail) a scan of every position (at most `SCANS` scans per scene; a size that found no room is not scanned
    again), and only then the random spot whose object pixels hide the fewest pixels of earlier objects."""

    def __init__(self, rng: np.random.Generator, occ: np.ndarray):
        self.rng, self.occ, self.taken, self.scans, self.full = rng, occ, np.zeros_like(occ), 0, []
        self.cell = max(1, round(math.sqrt(occ.size / 2**19)))  # scans cost about the same at any image size

    def __call__(self, h: int, w: int, mask: np.ndarray) -> tuple[int, int]:
        rng, taken = self.rng, self.taken
        H, W = taken.shape
        tries = [(int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))) for _ in range(TRIES)]
        for y, x in tries:
            if not taken[max(y - GAP, 0) : y + h + GAP, max(x - GAP, 0) : x + w + GAP].any():
                return y, x
        if self.scans < SCANS and not any(h >= fh and w >= fw for fh, fw in self.full):
            self.scans += 1
            ys, xs = _free_spots(taken, h, w, self.cell)
            if ys.size:
                k = int(rng.integers(ys.size))
                return int(ys[k]), int(xs[k])
            self.full.append((h, w))
        hidden = [int(np.count_nonzero(self.occ[y : y + h, x : x + w] & mask)) for y, x in tries]
        return tries[int(np.argmin(hidden))]

    def take(self, y: int, x: int, h: int, w: int) -> None:
        self.taken[y : y + h, x : x + w] = True


def _objects(rng, img, occ, fg, size, count, shapes) -> list[list[int]]:
    H, W = occ.shape
    lo, hi = size
    target = int(round(fg * H * W))
    covered, boxes, stalled = 0, [], 0
    place = _Placer(rng, occ)
    max_objects = count if count is not None else 4 * target // (lo * lo) + 1000
    while len(boxes) < max_objects and stalled < TRIES:
        remaining = target - covered
        if count is None and remaining <= 0:
            break
        h, w = (int(v) for v in rng.integers(lo, hi + 1, 2))
        shape = shapes[int(rng.integers(len(shapes)))]
        if count is None:
            area = h * w * (1.0 if shape == "rect" else math.pi / 4)
            if area > remaining:  # the last object: shrink it to the remainder, or stop if that overshoots more
                s = math.sqrt(remaining / area)
                h, w = max(lo, round(h * s)), max(lo, round(w * s))
                if h * w * (1.0 if shape == "rect" else math.pi / 4) > 2 * remaining:
                    break
        mask = _shape_mask(shape, h, w)
        y, x = place(h, w, mask)
        new = int(np.count_nonzero(mask & ~occ[y : y + h, x : x + w]))
        if count is None and (new == 0 or covered + new - target > remaining):
            stalled += 1  # a crowded scene: this object would hide under others, or overshoot the target
            continue
        img[y : y + h, x : x + w][mask] = _texture(rng, int(mask.sum()))
        occ[y : y + h, x : x + w] |= mask
        covered += new
        place.take(y, x, h, w)
        boxes.append([x, y, x + w, y + h])
        stalled = 0
    return boxes


def _clutter(rng, img, occ, boxes: np.ndarray, clutter: float, size: tuple[int, int]) -> int:
    """Paint unlabelled distractors (lines 1-2 px wide, noise blobs smaller than the smallest object) on
    `clutter` of the pixels, off the objects and at least `CLUTTER_GAP` px away from every box."""
    H, W = occ.shape
    target = int(round(clutter * H * W))
    if target == 0:
        return 0
    free = ~occ
    for x0, y0, x1, y1 in boxes.astype(int):
        free[max(y0 - CLUTTER_GAP, 0) : y1 + CLUTTER_GAP, max(x0 - CLUTTER_GAP, 0) : x1 + CLUTTER_GAP] = False
    lo, hi = size
    r_max = max(1, (lo - 1) // 2)
    covered, failures = 0, 0
    while covered < target and failures < 1000:
        y, x = int(rng.integers(0, H)), int(rng.integers(0, W))
        if rng.random() < 0.5:  # a thin line
            length = int(rng.integers(lo, 4 * hi + 1))
            theta = rng.uniform(0, math.pi)
            t = np.arange(length + 1)
            ys, xs = np.rint(y + t * math.sin(theta)).astype(int), np.rint(x + t * math.cos(theta)).astype(int)
            if rng.random() < 0.5:
                ys, xs = np.concatenate([ys, ys + 1]), np.concatenate([xs, xs])
        else:  # a noise blob: a small disc with random holes
            r = int(rng.integers(1, r_max + 1))
            dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
            keep = (dy**2 + dx**2 <= r * r) & (rng.random(dy.shape) < 0.7)
            keep[r, r] = True
            ys, xs = y + dy[keep], x + dx[keep]
        inside = (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
        idx = np.unique(ys[inside] * W + xs[inside])
        idx = idx[free.flat[idx]][: target - covered]  # the last one is trimmed: the clutter share is exact
        if idx.size == 0:
            failures += 1
            continue
        failures = 0
        img.reshape(-1, 3)[idx] = _texture(rng, idx.size)
        free.flat[idx] = False
        covered += int(idx.size)
    return covered


def synth_scene(
    height: int,
    width: int,
    fg: float = 0.05,
    size: int | tuple[int, int] = (8, 48),
    count: int | None = None,
    clutter: float = 0.0,
    seed: int = 0,
    shapes: tuple[str, ...] = SHAPES,
) -> SynthScene:
    """A synthetic `height x width` scene: `image, boxes, fg, clutter = synth_scene(...)`.

    Objects are rectangles or ellipses (`shapes`) with sides drawn uniformly from `size` (`(min, max)` pixels, or
    one int), textured with a random colour plus noise, on exact zeros. They are placed until they cover `fg` of
    the pixels (the last one is shrunk to fit: the measured `fg` is within about half the smallest object's area
    of the request), or exactly `count` objects when `count` is given (then `fg` is ignored). No box comes
    within 1 px of another as long as room is found (random tries, then up to 64 scans of free positions); in
    crowded scenes (about fg > 0.35) objects may overlap and partly hide earlier ones, and a cover that cannot be
    reached stops early with a warning: the returned `fg` is measured.
    `clutter` of the pixels get unlabelled distractors, placed from their own random stream: the objects are the
    same with or without clutter. Deterministic in `seed`.
    """
    height, width, fg, size, count, clutter, seed, shapes = _check(
        height, width, fg, size, count, clutter, seed, shapes
    )
    img = np.zeros((height, width, 3), np.uint8)
    occ = np.zeros((height, width), bool)
    boxes = _objects(np.random.default_rng(seed), img, occ, fg, size, count, shapes)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n_clutter = _clutter(np.random.default_rng([seed, 1]), img, occ, boxes, clutter, size)
    hw = height * width
    got_fg, got_clutter = int(occ.sum()) / hw, n_clutter / hw
    lo = size[0]
    if count is None and abs(got_fg - fg) > max(0.01 * fg, lo * lo / hw):
        warnings.warn(
            f"synth_scene: foreground {got_fg:.4f} instead of {fg} (too crowded for objects of {size})", stacklevel=2
        )
    if abs(got_clutter - clutter) > 0.5 / hw:
        warnings.warn(f"synth_scene: clutter {got_clutter:.4f} instead of {clutter} (no free room left)", stacklevel=2)
    return SynthScene(img, boxes, got_fg, got_clutter)


def _scene_seeds(seed: int, n: int) -> list[int]:
    """One independent seed per image (prefix-stable: image i has the same seed whatever `n`)."""
    return [int(c.generate_state(1)[0]) for c in np.random.SeedSequence(seed).spawn(n)]


def build_synth_dataset(
    out: str | Path,
    n_images: int = 8,
    height: int = 1080,
    width: int = 1920,
    fg: float = 0.05,
    size: int | tuple[int, int] = (8, 48),
    count: int | None = None,
    clutter: float = 0.0,
    seed: int = 0,
    val_fraction: float = 0.25,
    force: bool = False,
    verbose: bool = False,
) -> Path:
    """Write `n_images` synthetic scenes (see `synth_scene`) as a YOLO dataset; returns the path of its `data.yaml`.

    The last `round(n_images * val_fraction)` images (at least one) are the validation split, with COCO ground
    truth in `annotations/val.json`. `build.json` holds the parameters and, per image, its seed, box count and
    measured foreground and clutter fractions. The build is written to a temporary folder and renamed at the end
    (an interrupted build never looks complete). An existing build with the same parameters is reused; another
    build is replaced only with `force=True`; a folder that is neither empty nor a build is never replaced.
    A progress bar is shown for more than 4 images.
    """
    from PIL import Image
    from tqdm import tqdm

    if out is None:
        raise ValueError("out must be a folder path, got None")
    n_images = _int("n_images", n_images, 2)
    height, width, fg, size, count, clutter, seed, _ = _check(height, width, fg, size, count, clutter, seed, SHAPES)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    n_val = min(max(1, round(n_images * val_fraction)), n_images - 1)
    params = {
        "dataset": "synth",
        "format": BUILD_FORMAT,
        "n_images": n_images,
        "height": height,
        "width": width,
        "fg": None if count is not None else fg,  # count overrides fg
        "size": list(size),
        "count": count,
        "clutter": clutter,
        "seed": seed,
        "val_fraction": float(val_fraction),
    }
    out = Path(out)
    if prepare_out(out, params, force, "synthetic"):
        return out / "data.yaml"
    report = {"params": params, "images": {}, "boxes": {}, "per_image": []}
    coco = []
    with atomic_build(out) as tmp:
        for split in ("train", "val"):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            report["images"][split] = report["boxes"][split] = 0
        seeds = _scene_seeds(seed, n_images)
        bar = tqdm(range(n_images), desc="synthetic scenes", unit="img", disable=n_images <= 4, leave=False)
        for i in bar:
            split = "train" if i < n_images - n_val else "val"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the measured fractions go to build.json
                s = synth_scene(height, width, fg, size, count, clutter, seeds[i])
            name = f"synth_{i:04d}"
            Image.fromarray(s.image).save(tmp / "images" / split / f"{name}.png", compress_level=1)
            (tmp / "labels" / split / f"{name}.txt").write_text(
                "".join(t + "\n" for t in yolo_lines(s.boxes, width, height))
            )
            report["images"][split] += 1
            report["boxes"][split] += len(s.boxes)
            report["per_image"].append(
                {"file": f"images/{split}/{name}.png", "split": split, "seed": seeds[i], "boxes": len(s.boxes),
                 "fg": s.fg, "clutter": s.clutter}
            )  # fmt: skip
            if split == "val":
                coco.append((f"{name}.png", width, height, s.boxes))
        fgs = [p["fg"] for p in report["per_image"]]
        report["fg"] = {"mean": float(np.mean(fgs)), "min": float(np.min(fgs)), "max": float(np.max(fgs))}
        (tmp / "data.yaml").write_text(data_yaml(out, NAMES))
        gt = coco_ground_truth(coco, NAMES)
        (tmp / "annotations").mkdir()
        (tmp / "annotations" / "val.json").write_text(json.dumps(gt))
        (tmp / "build.json").write_text(json.dumps(report, indent=1))  # last: marks the build complete
    if verbose:
        print(f"synthetic dataset in {out}\n{summary(report)}")
    return out / "data.yaml"


def summary(report: dict) -> str:
    """A short text summary of a synthetic build's `build.json` contents."""
    p, f = report["params"], report["fg"]
    parts = "; ".join(f"{s}: {report['images'][s]} images, {report['boxes'][s]} boxes" for s in report["images"])
    what = f"count={p['count']}" if p["count"] is not None else f"fg={p['fg']}"
    return (
        f"{parts}\n{p['width']}x{p['height']}, {what}, object sizes {p['size'][0]}-{p['size'][1]} px, "
        f"clutter={p['clutter']}, seed={p['seed']}; measured foreground mean {f['mean']:.4f} "
        f"(min {f['min']:.4f}, max {f['max']:.4f})"
    )
