"""Sparse scenes from real pixels: real tree crowns pasted on real, object-free ground, at any frame size.

The use case of the project is a high-resolution aerial frame where objects cover 1-5% of the pixels and the rest
is real, textured, empty ground. `build_composite_dataset` makes such frames from deepforest's NEON scenes
(`sparseyolo.data.aerial`):

- **Ground**: 192-px windows of the training scenes that hold no box and no shadow: no box within `MARGIN` (32) px,
  nor within the shadow a box casts (the sun throws shadows up to ~180 px to the east, a little north, in these
  scenes: the keep-out zone of a box is stretched by `SHADOW` to the right and upwards), and no dark 8x8 block
  (mean luma < `SHADOW_LUMA`: shadows of trees outside the scene or unlabelled). Only the meadow in the left part
  of the 2299x2472 Yellowstone scene qualifies. Windows ending above row `GROUND_SPLIT_Y` are training ground, windows
  starting below it validation ground: no ground pixel is shared by a training and a validation composite. A frame
  is quilted from such windows (Efros & Freeman's image quilting): random windows in a random one of the 8
  flips/rotations, overlapping by `OVERLAP` px, each the best of `CANDIDATES` random ones at matching its
  neighbours, joined along minimum-error cuts. No blending: every ground pixel is a pixel of a window.
- **Objects**: crowns cut from the scenes with their boxes (validation composites: the held-out scene only;
  training composites: the training scenes only), pasted through an ellipse inscribed in the box, feathered over
  `FEATHER` px, so neighbouring crowns and their shadows stay behind; each pixel with alpha 1 is the source pixel.
  Crowns keep their size and their orientation (the sun's direction stays that of the ground); a crown used again
  in the same frame (when the share needs more crowns than the pool holds) is flipped or half-turned at random.
  Boxes never overlap (at least `GAP` px apart); the label is the pasted box.
- **Foreground share** `fg` = total box area / frame area, in [0, 0.2]: crowns are placed until the share is met
  (the last ones chosen by their area: the share is within half the pool's smallest box of the request, in all but
  crowded frames); a share that cannot be placed raises.

Output: the aerial builder's layout (`images/<split>`, `labels/<split>`, `data.yaml`, COCO ground truth in
`annotations/<split>.json`, `build.json` last), PNG (lossless), built atomically, reused when the parameters match.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from sparseyolo.data import aerial
from sparseyolo.data.build import atomic_build, data_yaml, prepare_out
from sparseyolo.data.synth import _free_spots

NAMES = aerial.NAMES  # {0: "tree"}
BUILD_FORMAT = 2  # bump when the output of a build changes for the same parameters
SPLITS = ("train", "val")
FG_MAX = 0.2
WINDOW = 192  # ground window (and quilting patch) side in pixels
OVERLAP = 64  # quilting overlap between neighbouring patches
CANDIDATES = 8  # random windows tried per patch; the one that best matches its neighbours is used
CUT_BATCH = 8  # rows of patches whose horizontal cuts are found together (speed vs memory)
WINDOW_STEP = 16  # ground windows start on this grid
MARGIN = 32  # no box within this many pixels of a ground window
SHADOW = (192, 96)  # a box's keep-out zone also reaches this far right and up (its shadow)
SHADOW_LUMA = 75.0  # an 8x8 block darker than this (mean luma) is shadow: no ground window holds one
GROUND_SCENE = aerial.SCENES[0]  # the 2299x2472 Yellowstone scene: its meadow is the ground
GROUND_SPLIT_Y = 1250  # ground windows of GROUND_SCENE above this row are training ground, below it validation
FEATHER = 3.0  # crown alpha ramps from 0 at the inscribed ellipse to 1 this many pixels inside it
GAP = 2  # pasted boxes stay at least this many pixels apart
SAME_SHAPE_TURNS = (2, 4, 6)  # a half turn, a left-right flip, an up-down flip: the box keeps its shape
TRIES = 30  # random positions tried for a crown before every position is scanned for room


class Pool(NamedTuple):
    """Source pixels of one split.

    scenes (dict[str, ndarray[H, W, 3] uint8]): the scenes the windows or crowns come from.
    items (list[tuple[str, int, int, int, int, int]]): ground windows `(scene, 0, x0, y0, x1, y1)` or crowns
        `(scene, box index, x0, y0, x1, y1)`, integer pixels, `x1`/`y1` exclusive.
    """

    scenes: dict
    items: list


def _check_split(split) -> tuple[str, ...]:
    if split not in (*SPLITS, "both"):
        raise ValueError(f"split must be 'train', 'val' or 'both', got {split!r}")
    return SPLITS if split == "both" else (split,)


def ground_windows(split: str) -> Pool:
    """The object-free `WINDOW`-px ground windows of `split` ('train' or 'val'), from the training scenes only.

    A window qualifies when no box (grown by `MARGIN`, and by `SHADOW` to the right and up) touches it and no 8x8
    block in it is darker than `SHADOW_LUMA`; windows start on a `WINDOW_STEP` grid. Train and val windows never
    share a pixel (they lie on either side of row `GROUND_SPLIT_Y` of `GROUND_SCENE`; other training scenes are
    training ground)."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    scenes, items = {}, []
    for scene in aerial.SCENES:
        if scene in aerial.VAL_SCENES or (split == "val" and scene != GROUND_SCENE):
            continue
        img, boxes = aerial.load_scene(scene)
        h, w = img.shape[:2]
        bad = np.zeros((h, w), bool)
        for x0, y0, x1, y1 in boxes:
            ya, xa = max(int(y0) - MARGIN - SHADOW[1], 0), max(int(x0) - MARGIN, 0)
            bad[ya : int(math.ceil(y1)) + MARGIN, xa : int(math.ceil(x1)) + MARGIN + SHADOW[0]] = True
        luma = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        c = 8
        hc, wc = h // c, w // c
        dark = luma[: hc * c, : wc * c].reshape(hc, c, wc, c).mean(axis=(1, 3)) < SHADOW_LUMA
        bad[: hc * c, : wc * c] |= np.repeat(np.repeat(dark, c, 0), c, 1)
        bad[hc * c :], bad[:, wc * c :] = True, True  # the few rows/columns no block covers are left out
        sat = np.zeros((h + 1, w + 1), np.int64)
        sat[1:, 1:] = bad.cumsum(0).cumsum(1)  # summed-area table: bad pixels in any window in O(1)
        ys, xs = np.mgrid[0 : h - WINDOW + 1 : WINDOW_STEP, 0 : w - WINDOW + 1 : WINDOW_STEP]
        n_bad = sat[ys + WINDOW, xs + WINDOW] - sat[ys, xs + WINDOW] - sat[ys + WINDOW, xs] + sat[ys, xs]
        ok = n_bad == 0
        if scene == GROUND_SCENE:
            ok &= (ys >= GROUND_SPLIT_Y) if split == "val" else (ys + WINDOW <= GROUND_SPLIT_Y)
        found = [(scene, 0, int(x), int(y), int(x) + WINDOW, int(y) + WINDOW) for y, x in zip(ys[ok], xs[ok])]
        if found:
            scenes[scene] = img
            items += found
    if not items:
        raise RuntimeError(f"no object-free {WINDOW}-px ground window found for split {split!r}")
    return Pool(scenes, items)


def crowns(split: str) -> Pool:
    """The crowns of `split`: every box of the held-out scenes ('val') or of the training scenes ('train'), as
    integer pixel boxes inside their scene (boxes without area are left out)."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    scenes, items = {}, []
    for scene in aerial.SCENES:
        if (scene in aerial.VAL_SCENES) != (split == "val"):
            continue
        img, boxes = aerial.load_scene(scene)
        h, w = img.shape[:2]
        r = np.rint(np.clip(boxes, 0, [w, h, w, h])).astype(int)
        scenes[scene] = img
        items += [(scene, i, *map(int, b)) for i, b in enumerate(r) if b[2] > b[0] and b[3] > b[1]]
    return Pool(scenes, items)


def _turned(a: np.ndarray, turn: int) -> np.ndarray:
    """A view of `a (h, w, ...)` turned by `turn` in 0..7: `turn % 4` quarter turns, then a left-right flip when
    `turn >= 4`."""
    a = np.rot90(a, turn % 4)
    return a[:, ::-1] if turn >= 4 else a


def _view(pool: Pool, k: int, turn: int = 0) -> np.ndarray:
    """Item `k` of `pool` as a view `(h, w, 3)` of its scene, turned by `turn` (see `_turned`)."""
    scene, _, x0, y0, x1, y1 = pool.items[k]
    return _turned(pool.scenes[scene][y0:y1, x0:x1], turn)


def _min_cut(err: np.ndarray) -> np.ndarray:
    """Minimum-error paths through `err (B, n, m)` from row 0 to row n-1, moving at most one column per row:
    `(B, n)` column indices (dynamic programming, as in image quilting)."""
    b, n, m = err.shape
    cost = np.empty((n, b, m), np.float64)
    cost[0] = err[:, 0]
    pad = np.full((b, m + 2), np.inf)
    rows, three = np.arange(b)[:, None], np.arange(3)
    for i in range(1, n):
        pad[:, 1:-1] = cost[i - 1]
        np.minimum(np.minimum(pad[:, :-2], pad[:, 1:-1]), pad[:, 2:], out=cost[i])
        cost[i] += err[:, i]
    path = np.empty((b, n), np.int64)
    j = cost[-1].argmin(axis=1)
    path[:, -1] = j
    for i in range(n - 2, -1, -1):  # step back to the cheapest of the (up to) three columns that lead to j
        pad[:, 1:-1] = cost[i]
        j = j - 1 + pad[rows, j[:, None] + three].argmin(axis=1)
        path[:, i] = j
    return path


def _sq_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a.astype(np.int32) - b
    return (d * d).sum(axis=-1)


def quilt_ground(rng: np.random.Generator, pool: Pool, height: int, width: int) -> tuple[np.ndarray, list[int]]:
    """`height x width` of ground quilted from the windows of `pool`: `(image uint8 (H, W, 3), window ids used)`.

    Patches of `WINDOW` px on a grid of `WINDOW - OVERLAP` px, row by row; each patch is the best of `CANDIDATES`
    random (window, turn) pairs at matching its left and upper neighbours (compared on every 4th pixel); neighbours
    in a row meet along minimum-error vertical cuts, rows along one minimum-error horizontal cut each (found for
    `CUT_BATCH` rows at once). Memory: the image plus a few rows of patches."""
    p, o = WINDOW, OVERLAP
    s = p - o
    p4, s4, o4 = p // 4, s // 4, o // 4
    nx, ny = max(1, -(-(width - o) // s)), max(1, -(-(height - o) // s))
    out = np.empty((height, width, 3), np.uint8)
    thumbs = np.stack([_view(pool, k)[::4, ::4] for k in range(len(pool.items))]).astype(np.int32)
    used: set[int] = set()
    prev = None  # bottom `o` rows of the previous row of patches, (o, nx * s + o, 3)
    pending = []  # (row, previous row's bottom band) of horizontal cuts not yet applied

    def cut_rows():  # above each cut the previous row of patches, below it the next (already in `out`)
        err = np.stack([_sq_err(band, out[y : y + o]).T for y, band in pending])
        for (y, band), cut in zip(pending, _min_cut(err)):
            above = np.arange(o)[:, None] < cut[None, :]
            out[y : y + o][above] = band[above]
        pending.clear()

    for r in range(ny):
        ks = rng.integers(len(pool.items), size=(nx, CANDIDATES))
        turns = rng.integers(8, size=(nx, CANDIDATES))
        top = None if prev is None else prev[::4, ::4].astype(np.int32)
        patches, left = [], None
        for c in range(nx):
            cands = np.stack([_turned(thumbs[k], t) for k, t in zip(ks[c], turns[c])])  # (K, p/4, p/4, 3)
            err = np.zeros(CANDIDATES)
            if left is not None:
                err += ((cands[:, :, :o4] - left) ** 2).sum(axis=(1, 2, 3))
            if top is not None:
                err += ((cands[:, :o4] - top[:, c * s4 : c * s4 + p4]) ** 2).sum(axis=(1, 2, 3))
            i = int(err.argmin())
            left = cands[i][:, s4:]
            patches.append(_view(pool, int(ks[c, i]), int(turns[c, i])))
            used.add(int(ks[c, i]))
        strip = np.empty((p, nx * s + o, 3), np.uint8)
        strip[:, :p] = patches[0]
        if nx > 1:  # vertical cuts of the whole row at once: left of a cut the left patch, right of it the next
            cuts = _min_cut(np.stack([_sq_err(a[:, s:], b[:, :o]) for a, b in zip(patches[:-1], patches[1:])]))
            for c in range(1, nx):
                region, new = strip[:, c * s : c * s + p], patches[c]
                region[:, o:] = new[:, o:]
                right = np.arange(o)[None, :] >= cuts[c - 1][:, None]
                region[:, :o][right] = new[:, :o][right]
        y0 = r * s
        out[y0 : y0 + p] = strip[: height - y0, :width]
        if prev is not None:
            pending.append((y0, prev[:, :width]))
        if len(pending) == CUT_BATCH or (r == ny - 1 and pending):
            cut_rows()
        prev = strip[s:].copy()
    return out, sorted(used)


def crown_alpha(h: int, w: int) -> np.ndarray:
    """`float32 (h, w)` alpha of an `h x w` crown: 0 outside the ellipse inscribed in the box, rising to 1 at
    `FEATHER` px inside it (distance to the ellipse to first order, at pixel centres)."""
    a, b = w / 2.0, h / 2.0
    dx = (np.arange(w) + 0.5 - a)[None, :]
    dy = (np.arange(h) + 0.5 - b)[:, None]
    f = (dx / a) ** 2 + (dy / b) ** 2 - 1.0
    grad = 2.0 * np.sqrt((dx / a**2) ** 2 + (dy / b**2) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = np.where(grad > 0, -f / grad, np.inf)
    return np.clip(dist / FEATHER, 0.0, 1.0).astype(np.float32)


def _free_spot(rng: np.random.Generator, taken: np.ndarray, h: int, w: int, cell: int):
    """A random top-left `(y, x)` where an `h x w` box touches no taken pixel, or None when there is none."""
    H, W = taken.shape
    for _ in range(TRIES):
        y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        if not taken[y : y + h, x : x + w].any():
            return y, x
    ys, xs = _free_spots(taken, h, w, cell)  # every position (on a grid of `cell` px), conservative
    if ys.size == 0:
        return None
    k = int(rng.integers(ys.size))
    return int(ys[k]), int(xs[k])


class Composite(NamedTuple):
    """One composite frame.

    image (ndarray[H, W, 3], uint8).
    boxes (ndarray[N, 4], float32): pasted boxes `x0, y0, x1, y1` in pixels (`x1`, `y1` exclusive).
    objects (list[tuple[int, int]]): per box, the crown's index in its pool and its turn (0..7, see `_turned`).
    windows (list[int]): indices of the ground windows the background was quilted from.
    fg (float): achieved share, total box area / image area.
    """

    image: np.ndarray
    boxes: np.ndarray
    objects: list
    windows: list
    fg: float


def composite_frame(
    rng: np.random.Generator, ground: Pool, objects: Pool, height: int, width: int, fg: float
) -> Composite:
    """Quilt a ground frame from `ground` and paste crowns of `objects` on it until their boxes cover `fg` of it.

    Crowns are drawn from the pool without replacement (reshuffled when used up); when a crown is larger than what
    is left (or finds no room), the largest crown that is not is taken instead; then the smallest crown when it
    brings the share closer. The achieved share is within half the smallest crown that still finds room (in all
    but crowded frames: of the pool) of the request. Raises `ValueError` when no crown finds room before then."""
    img, windows = quilt_ground(rng, ground, height, width)
    hw = height * width
    target = int(round(fg * hw))
    sizes = np.array([(y1 - y0, x1 - x0) for _, _, x0, y0, x1, y1 in objects.items], np.int64)
    areas = sizes[:, 0] * sizes[:, 1]
    a_min = int(areas.min())
    taken = np.zeros((height, width), bool)
    cell = max(1, round(math.sqrt(hw / 2**19)))  # scans for room cost about the same at any frame size
    boxes, placed, uses, full = [], [], {}, []  # full: (h, w) sizes that found no room (larger ones will not)
    deck: list[int] = []
    covered = 0
    while 2 * (target - covered) >= a_min:
        rest = target - covered
        fits = np.ones(len(areas), bool)
        for fh, fw in full:
            fits &= ~((sizes[:, 0] >= fh) & (sizes[:, 1] >= fw))
        if not fits.any():
            raise ValueError(
                f"fg={fg} cannot be reached on a {width}x{height} frame: room for {len(boxes)} crowns covering "
                f"{covered / hw:.4f} only (more objects than fit); lower fg or use a larger size"
            )
        if not deck:
            deck = [int(i) for i in rng.permutation(len(areas))][::-1]
        k = deck.pop()
        if areas[k] > rest or not fits[k]:  # the last ones: the largest crown that does not overshoot ...
            under = np.flatnonzero(fits & (areas <= rest))
            if under.size:
                k = int(under[np.argmax(areas[under])])
            else:  # ... or the smallest that fits, if overshooting with it misses the share by less than stopping
                k = int(np.flatnonzero(fits)[np.argmin(areas[fits])])
                if areas[k] - rest >= rest:
                    break
        turn = 0 if k not in uses else int(rng.choice(SAME_SHAPE_TURNS))
        crop = _view(objects, k, turn)
        h, w = crop.shape[:2]
        spot = _free_spot(rng, taken, h, w, cell)
        if spot is None:
            full.append((h, w))
            continue
        y, x = spot
        alpha = crown_alpha(h, w)[..., None]
        region = img[y : y + h, x : x + w]
        region[:] = np.rint(region * (1.0 - alpha) + crop * alpha).astype(np.uint8)
        taken[max(y - GAP, 0) : y + h + GAP, max(x - GAP, 0) : x + w + GAP] = True
        uses[k] = uses.get(k, 0) + 1
        boxes.append([x, y, x + w, y + h])
        placed.append((k, turn))
        covered += h * w
    return Composite(img, np.asarray(boxes, np.float32).reshape(-1, 4), placed, windows, covered / hw)


def _fgs(fg) -> list[float]:
    vals = [fg] if isinstance(fg, numbers.Real) and not isinstance(fg, bool) else fg
    try:
        vals = list(vals)
    except TypeError:
        raise ValueError(f"fg must be a number or a list of numbers in [0, {FG_MAX}], got {fg!r}") from None
    ok = vals and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in vals)
    if not ok or not all(0.0 <= float(v) <= FG_MAX for v in vals):
        raise ValueError(f"fg (box area / image area) must be a number or list of numbers in [0, {FG_MAX}], got {fg!r}")
    return [float(v) for v in vals]


def _size(size) -> tuple[int, int]:
    try:
        w, h = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be (width, height) in pixels, got {size!r}") from None
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (w, h)):
        raise ValueError(f"size must be (width, height) in whole pixels, got {size!r}")
    if w < WINDOW or h < WINDOW:
        raise ValueError(f"size {w}x{h} is smaller than the {WINDOW}-px ground window; use at least {WINDOW}x{WINDOW}")
    return int(w), int(h)


def _image_seeds(seed: int, split: str, n: int) -> list[int]:
    """One seed per image of `split` (each split its own stream; image i's seed does not depend on `n`)."""
    ss = np.random.SeedSequence([seed, SPLITS.index(split)])
    return [int(c.generate_state(1)[0]) for c in ss.spawn(n)]


def default_out(size, fg, images: int, split: str, seed: int) -> Path:
    """The cache folder of a build with these parameters (`out=None`)."""
    from sparseyolo.data.registry import cache_dir

    w, h = _size(size)
    fgs = "-".join(f"{v:g}" for v in _fgs(fg))
    return cache_dir() / f"composite-{w}x{h}-fg{fgs}-n{images}-{split}-seed{seed}"


def build_composite_dataset(
    out: str | Path | None = None,
    size: tuple[int, int] = (3840, 2160),
    fg: float | list[float] = 0.01,
    images: int = 2,
    split: str = "val",
    seed: int = 0,
    force: bool = False,
    verbose: bool = False,
) -> Path:
    """Write `images` composite frames per split (see the module docstring) as a YOLO dataset; returns the path of
    its `data.yaml`.

    size: `(width, height)`, at least `WINDOW` px each side (1080p to 8K and more). fg: the share of the frame
    covered by boxes, in [0, 0.2]; a list gives image i the share `fg[i % len(fg)]` (0: ground only). split:
    'val' (crowns of the held-out scene on validation ground), 'train' (crowns of the training scenes on training
    ground) or 'both'. `data.yaml` points `train`/`val` at `images/train` and `images/val` (a split not built is an
    empty folder). `build.json` lists the ground windows and crowns of each split (scene, box index, source box),
    and per image its seed, requested and achieved share, the window ids and, per box, `[crown id, turn, x0, y0,
    x1, y1]`. An existing build with the same parameters is reused; another build is replaced only with
    `force=True`; a folder that is not a build is never replaced. out=None: a cache folder named by the parameters
    (`default_out`), where a build of an older format is replaced.
    Deterministic in `seed` (same bytes). An 8K frame needs about 3x its own size in memory (~0.3 GB).
    """
    from PIL import Image
    from tqdm import tqdm

    width, height = _size(size)
    fgs = _fgs(fg)
    splits = _check_split(split)
    if isinstance(images, bool) or not isinstance(images, numbers.Integral) or images < 1:
        raise ValueError(f"images must be an int >= 1 (images per split), got {images!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    params = {
        "dataset": "composite",
        "format": BUILD_FORMAT,
        "width": width,
        "height": height,
        "fg": fgs[0] if len(fgs) == 1 else fgs,
        "images": int(images),
        "split": split,
        "seed": int(seed),
    }
    if out is None:  # the cache folder is named by the parameters: a build there with others is stale (format)
        out = default_out((width, height), fgs, images, split, seed)
        force = force or (out / "build.json").is_file() and _old_params(out) != params
    out = Path(out)
    if prepare_out(out, params, force, "composite"):
        return out / "data.yaml"
    pools = {s: (ground_windows(s), crowns(s)) for s in splits}
    for s, (_, objs) in pools.items():
        big = max(max(y1 - y0, x1 - x0) for *_, x0, y0, x1, y1 in objs.items)
        if max(fgs) > 0 and big > min(width, height):
            raise ValueError(f"size {width}x{height} is smaller than the largest {s} crown ({big} px)")
    report = {"params": params, "images": {}, "boxes": {}, "windows": {}, "crowns": {}, "per_image": []}
    with atomic_build(out) as tmp:
        for s in SPLITS:
            (tmp / "images" / s).mkdir(parents=True)
            (tmp / "labels" / s).mkdir(parents=True)
        (tmp / "annotations").mkdir()
        jobs = [(s, i) for s in splits for i in range(images)]
        seeds = {s: _image_seeds(seed, s, images) for s in splits}
        coco = {s: [] for s in splits}
        for s, i in tqdm(jobs, desc="composites", unit="img", disable=len(jobs) <= 2, leave=False):
            ground, objs = pools[s]
            f = fgs[i % len(fgs)]
            c = composite_frame(np.random.default_rng(seeds[s][i]), ground, objs, height, width, f)
            name = f"composite_{i:04d}"
            Image.fromarray(c.image).save(tmp / "images" / s / f"{name}.png", compress_level=1)
            lines = aerial.yolo_lines(c.boxes, width, height)
            (tmp / "labels" / s / f"{name}.txt").write_text("".join(t + "\n" for t in lines))
            coco[s].append((f"{name}.png", width, height, c.boxes))
            report["per_image"].append(
                {"file": f"images/{s}/{name}.png", "split": s, "seed": seeds[s][i], "fg_requested": f, "fg": c.fg,
                 "boxes": len(c.boxes), "windows": c.windows,
                 "objects": [[k, t, *map(int, b)] for (k, t), b in zip(c.objects, c.boxes)]}
            )  # fmt: skip
        for s in splits:
            ground, objs = pools[s]
            rows = [p for p in report["per_image"] if p["split"] == s]
            report["images"][s] = len(rows)
            report["boxes"][s] = sum(p["boxes"] for p in rows)
            report["windows"][s] = [[sc, x0, y0, x1, y1] for sc, _, x0, y0, x1, y1 in ground.items]
            report["crowns"][s] = [list(t) for t in objs.items]
            (tmp / "annotations" / f"{s}.json").write_text(json.dumps(aerial.coco_ground_truth(coco[s], NAMES)))
        got = [p["fg"] for p in report["per_image"]]
        report["fg"] = {"mean": float(np.mean(got)), "min": float(np.min(got)), "max": float(np.max(got))}
        (tmp / "data.yaml").write_text(data_yaml(out, NAMES))
        (tmp / "build.json").write_text(_dumps(report))  # last: marks the build complete
    if verbose:
        print(f"composite dataset in {out}\n{summary(report)}")
    return out / "data.yaml"


def _old_params(out: Path):
    try:
        return json.loads((out / "build.json").read_text()).get("params")
    except (ValueError, AttributeError, OSError):
        return None


def _dumps(report: dict) -> str:
    """JSON with one line per innermost list (a window, a crown, a box), not one line per number."""
    text = json.dumps(report, indent=1)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m[1].split()) + "]", text)


def summary(report: dict) -> str:
    """A short text summary of a composite build's `build.json` contents."""
    p, f = report["params"], report["fg"]
    parts = "; ".join(f"{s}: {report['images'][s]} images, {report['boxes'][s]} boxes" for s in report["images"])
    src = "; ".join(
        f"{s}: {len(report['windows'][s])} ground windows, {len(report['crowns'][s])} crowns from "
        + ", ".join(sorted({c[0] for c in report["crowns"][s]}))
        for s in report["images"]
    )
    return (
        f"{parts}\n{p['width']}x{p['height']}, fg={p['fg']}, seed={p['seed']}; achieved share mean {f['mean']:.4f} "
        f"(min {f['min']:.4f}, max {f['max']:.4f})\n{src}"
    )
