"""The demo's "sparse scenes" section: held-out crowns on real empty ground, where sparse compute is meant to pay.

Each scene is a val composite (`sparseyolo data composite`): real tree crowns of the held-out region pasted on
real object-free meadow of the training scenes, at a chosen foreground share. Every reference model runs at
native resolution, the dense reference also downscaled to 640 and with SAHI slices; the figures are AP,
AP_small, the mask recall and active share of the sparse models' masks, executed GFLOPs, batch-1 latency and
peak memory. To keep `make demo` within minutes, the empty-ground scene runs the dense reference, the two
sparse references, 640 and SAHI, and the 8K scene the dense reference, the sparse-P3+P4 model, 640 and SAHI;
peak memory is probed on the 4K 1% and the 8K scenes; on the 8K scene the probe's call is the timed one (a
forward takes ~20 s there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Scene:
    """One sparse scene of the demo: a val composite of `size` (w, h) at foreground share `fg`."""

    name: str
    size: tuple[int, int]
    fg: float
    images: int = 1
    seed: int = 0
    roles: tuple[str, ...] | None = None  # the models run natively, by role (None: every model)
    memory: bool = False  # probe peak memory
    timed: bool = True  # a timing round; False: the memory probe's call is the one timed call
    speed: float | None = None  # the sparse models' speed target over the dense reference (None: not judged)

    @property
    def slug(self) -> str:
        return f"scene-{self.size[0]}x{self.size[1]}-fg{self.fg:g}-n{self.images}-s{self.seed}"


SCENES = (
    Scene("4K, 1% foreground", (3840, 2160), 0.01, memory=True, speed=4.0),
    Scene("4K, 4% foreground", (3840, 2160), 0.04, speed=2.5),
    Scene(
        "4K, empty ground (no object)",
        (3840, 2160),
        0.0,
        roles=("dense", "sparse", "sparse_p3", "sparse_p34", "sparse_dff"),
    ),
    Scene("8K, 1% foreground", (7680, 4320), 0.01, roles=("dense", "sparse_p34"), memory=True, timed=False),
)


def scene_plan(scene: Scene, models: dict, roles: dict[str, str]) -> list[tuple[str, str]]:
    """`(model, method)` pairs of a scene: its models natively (`roles`: role -> model name; "dense" is the dense
    reference), then the dense reference at 640 and with SAHI."""
    names = list(models) if scene.roles is None else [roles[r] for r in scene.roles]
    return [(n, "native") for n in names] + [(roles["dense"], "640"), (roles["dense"], "sahi")]


def build_scene(scene: Scene) -> Path:
    """The scene's data.yaml (built once, then reused from the cache)."""
    from sparseyolo.data.composite import build_composite_dataset

    return build_composite_dataset(size=scene.size, fg=scene.fg, images=scene.images, split="val", seed=scene.seed)


def focus_crop(shape: tuple[int, int], boxes, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """`(x0, y0, x1, y1)`: the `size (w, h)` window of an image of `shape (h, w)` holding the most box centres
    (the top-left corner when there are none), so a picture of a big frame shows its objects."""
    h, w = shape
    cw, ch = min(size[0], w), min(size[1], h)
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    best, corner = -1, (0, 0)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    for y in np.linspace(0, h - ch, 5).astype(int):
        for x in np.linspace(0, w - cw, 7).astype(int):
            n = int(((cx >= x) & (cx < x + cw) & (cy >= y) & (cy < y + ch)).sum())
            if n > best:
                best, corner = n, (int(x), int(y))
    return corner[0], corner[1], corner[0] + cw, corner[1] + ch


def boxes_at(detections: list[dict], conf: float = 0.25) -> np.ndarray:
    """`(N, 4)` xyxy boxes of COCO result rows with a score of at least `conf`."""
    kept = [d["bbox"] for d in detections if d["score"] >= conf]
    return np.array([[x, y, x + w, y + h] for x, y, w, h in kept], float).reshape(-1, 4)


def run_scenes(out: Path, models: dict, evaluate_cached, roles: dict[str, str], repeats: int, force: bool):
    """Evaluate every scene of `SCENES` (cached like the rest of the demo); returns one dict per scene with its
    `scene`, `images`, `gt` and the cached evaluation (`rows`, `per_image`, `detections`, ...). Masks of the
    sparse models are written over their images under `out/masks/<scene>/` when measured."""
    from sparseyolo.data.split import load_split

    results = []
    for scene in SCENES:
        images, gt, _ = load_split(build_scene(scene), "val")
        plan = scene_plan(scene, models, roles)
        res = evaluate_cached(
            out / "cache",
            scene.slug,
            models,
            images,
            gt,
            plan,
            repeats if scene.timed else 0,
            scene.memory,
            force,
            out / "masks" / scene.slug,
        )
        for r in res["rows"]:  # boxes a deployment would show (conf 0.25) per image: false alarms on empty ground
            dets = res["detections"][f"{r['model']} · {r['method']}"]
            r["boxes_025"] = len(boxes_at(dets)) / max(1, len(images))
        results.append({"scene": scene, "images": images, "gt": gt, **res})
    return results


def write_scene_pictures(out: Path, scene_result: dict, skip: tuple[str, ...] = ()) -> list[Path]:
    """For the first image of a scene: each method's boxes (conf >= 0.25) beside the ground truth on the crop
    that holds the most objects, and each sparse model's mask over the whole frame (copied from `out/masks`)."""
    import shutil

    from sparseyolo.data.split import read_image
    from sparseyolo.eval.report import plot_boxes_grid

    scene, image = scene_result["scene"], scene_result["images"][0]
    img = read_image(image)
    im_id = next(im["id"] for im in scene_result["gt"]["images"] if im["file_name"] == image.name)
    gt_boxes = boxes_at([{**a, "score": 1.0} for a in scene_result["gt"]["annotations"] if a["image_id"] == im_id], 0.0)
    x0, y0, x1, y1 = focus_crop(img.shape[:2], gt_boxes, (1280, 720))
    shift = [x0, y0, x0, y0]
    panels = []
    for name, dets in scene_result["detections"].items():
        if name.split(" · ")[0] in skip:
            continue
        b = boxes_at([d for d in dets if d["image_id"] == im_id]) - shift
        inside = (b[:, 2] > 0) & (b[:, 3] > 0) & (b[:, 0] < x1 - x0) & (b[:, 1] < y1 - y0)
        panels.append((f"{name} (conf >= 0.25)", b[inside]))
    g = gt_boxes - shift
    g = g[(g[:, 2] > 0) & (g[:, 3] > 0) & (g[:, 0] < x1 - x0) & (g[:, 1] < y1 - y0)]
    written = [plot_boxes_grid(img[y0:y1, x0:x1], g, panels, out / f"{scene.slug}_boxes.jpg")]
    for folder in sorted((out / "masks" / scene.slug).glob("*")):
        src = folder / f"{image.stem}.jpg"
        if src.is_file():
            dst = out / f"{scene.slug}_mask_{folder.name}.jpg"
            shutil.copyfile(src, dst)
            written.append(dst)
    return written


def scenes_report(out: Path, results: list[dict], targets, skip: tuple[str, ...] = ()) -> list[str]:
    """The report's "sparse scenes" section (markdown lines); writes each scene's rows as `<slug>.csv/.json` and
    draws the pictures of the first scene."""
    from sparseyolo.eval.report import rows_table, write_rows

    lines = [
        "## Sparse scenes: held-out crowns on real empty ground",
        "",
        "Val composites (`sparseyolo data composite --split val`): crowns of the held-out scene pasted on real",
        "object-free meadow of the training scenes; `fg` = box area / image area. `mask recall` = share of",
        "ground-truth objects with at least 90% of their box active in the sparse model's mask; `active` = share",
        "of the image's pixels in that mask; `boxes@0.25/img` = detections a deployment shows (conf >= 0.25).",
        "",
    ]
    for res in results:
        scene = res["scene"]
        n_obj = len(res["gt"]["annotations"])
        w, h = scene.size
        lines += [f"### {scene.name} ({w}x{h}, {len(res['images'])} image(s), {n_obj} objects)", ""]
        lines += [rows_table(res["rows"]), ""]
        write_rows(res["rows"], out / scene.slug.replace(".", "_"))  # <slug>.csv / .json (no dot: not a suffix)
        tgt = targets(res["rows"], speed=scene.speed) if n_obj else []
        if tgt:
            lines += ["| target | measured | required | met |", "|---|---|---|---|"]
            lines += [f"| {a} | {b} | {c} | {'n/a' if m is None else 'yes' if m else 'no'} |" for a, b, c, m in tgt]
            lines.append("")
    first = results[0]
    pics = write_scene_pictures(out, first, skip)
    lines += [f"Boxes on the busiest 1280x720 crop of the {first['scene'].name} scene, and the masks:", ""]
    lines += [f"![{p.stem}]({p.name})" for p in pics] + [""]
    return lines


def print_scenes(results: list[dict], targets) -> None:
    from sparseyolo.eval.report import rows_table

    for res in results:
        scene = res["scene"]
        print(f"\nSparse scene: {scene.name} ({len(res['gt']['annotations'])} objects):")
        print(rows_table(res["rows"], markdown=False))
        for a, b, c, m in targets(res["rows"], speed=scene.speed) if res["gt"]["annotations"] else []:
            print(f"  {'n/a ' if m is None else 'MET ' if m else 'MISS'}  {a}: {b} (required {c})")
