"""`sparseyolo demo`: the main job. Shipped reference detectors on the held-out aerial region, side by side.

Default (no arguments, a few minutes): build the aerial dataset (cached), load the shipped reference models,
evaluate them on the held-out region's tiles and on the whole scene at native resolution — dense YOLOv8n at
native resolution, downscaled to 640, with SAHI slices, and SparseYOLO at native resolution — then print the
table and write `runs/demo/report.md` with plots. Results are cached (keyed by weights, images and settings):
a rerun only redraws. `--train` first runs the training recipe of every variant and ships its weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from sparseyolo.demo_scenes import print_scenes, run_scenes, scenes_report
from sparseyolo.yolo.integration import enable

DENSE, DENSE_SEED1, SPARSE = "yolov8n-aerial", "yolov8n-aerial-seed1", "yolov8n-sparse-aerial"
SPARSE_LOW = f"{SPARSE} target 0.10"  # the same weights, keeping 10% of the pixels at inference: the budget knob
SPARSE_P3 = "yolov8n-sparse-p3-aerial"  # sparse stem + sparse P3 path (P3 fusion and P3 head at active sites)
SPARSE_P34 = "yolov8n-sparse-p34-aerial"  # sparse stem + sparse P3 and P4 paths
DFF = "yolov8n-dff-aerial"  # DFF neck at its shipped calibration (budget 0.7 of all-on neck FLOPs)
DFF_ALL_ON = f"{DFF} all-on"  # the same weights with every neck path on
SPARSE_DFF = "yolov8n-sparse-dff-aerial"  # the finder's sparse stem before the DFF neck (at its calibration)
FULL_PLAN = [
    (DENSE, "native"),
    (DENSE, "640"),
    (DENSE, "sahi"),
    (SPARSE, "native"),
    (SPARSE_LOW, "native"),
    (SPARSE_P3, "native"),
    (SPARSE_P34, "native"),
    (DFF, "native"),
    (DFF_ALL_ON, "native"),
    (SPARSE_DFF, "native"),
    (DENSE_SEED1, "native"),
]
SHIPPED = (DENSE, DENSE_SEED1, SPARSE, SPARSE_P3, SPARSE_P34, DFF, SPARSE_DFF)
# models of the reduced sparse scenes, by role
ROLES = {"dense": DENSE, "sparse": SPARSE, "sparse_p3": SPARSE_P3, "sparse_p34": SPARSE_P34, "sparse_dff": SPARSE_DFF}
SCENE_REPEATS = 1  # timing rounds per sparse scene (a 4K forward takes seconds here; 8K about 15 s)
CACHE_VERSION = 4  # bump when what is measured changes (cached results are then remeasured)


def _key(*parts) -> str:
    """A hash of `parts`: a file's bytes for an existing file path, else its JSON (dict keys sorted)."""
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, Path) and p.is_file():
            h.update(p.read_bytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def crossovers(models: dict) -> dict:
    """The crossover in force for each model with sparse blocks: the blocks' own values, else the default chain
    (`SPARSEYOLO_CROSSOVER`, this machine's stored value, the built-in one), resolved now."""
    from sparseyolo.nn import SparseBlock
    from sparseyolo.nn.crossover import default_crossover

    out = {}
    for name, yolo in models.items():
        own = {m.crossover for m in yolo.model.modules() if isinstance(m, SparseBlock)}
        if own:
            out[name] = sorted(default_crossover("cpu") if c is None else c for c in own)
    return out


def _cache_key(name: str, models: dict, images, gt: dict, plan, repeats, memory) -> str:
    """Everything the figures depend on: the plan, the images (bytes), the weights (bytes), the ground truth, the
    evaluation settings and code, the crossover in force, the timing and memory settings."""
    import sparseyolo.eval as ev
    from sparseyolo.eval.compare import eval_settings
    from sparseyolo.yolo.reference import reference_files

    weights = sorted({reference_files(m.split()[0])[1] for m, _ in plan})  # "name target 0.10" -> name
    code = sorted(Path(ev.__file__).parent.glob("*.py"))
    used = {m: models[m] for m in dict.fromkeys(m for m, _ in plan)}
    parts = [CACHE_VERSION, name, plan, [p.name for p in images], *images, *weights, gt, eval_settings(), *code]
    return _key(*parts, crossovers(used), repeats, memory)


def _evaluate_cached(
    cache_dir: Path, name: str, models, images, gt, plan, repeats, memory, force, save_masks: Path | None = None
) -> dict:
    """Summaries, per-image GFLOPs and detections of `plan` on `images`, from the cache when present (then
    `"cached": True`; freshly measured: False). The key holds everything a figure depends on (`_cache_key`)."""
    from sparseyolo.eval.compare import eval_settings, evaluate

    key = _cache_key(name, models, images, gt, plan, repeats, memory)
    path = cache_dir / f"{name}-{key}.json"
    if path.is_file() and not force:
        print(f"{name}: cached results reused ({path})")
        return {**json.loads(path.read_text()), "cached": True}
    used = {m: models[m] for m in dict.fromkeys(m for m, _ in plan)}
    results = evaluate(used, images, gt, plan, repeats=repeats, memory=memory, save_masks=save_masks)
    out = {
        "cached": False,
        "settings": eval_settings(),
        "crossover": crossovers(used),
        "rows": [r.summary() for r in results],
        "per_image": [row for r in results for row in r.per_image(gt)],
        "per_image_gflops": {f"{r.model} · {r.method}": r.gflops for r in results},
        "per_image_active": {f"{r.model} · {r.method}": r.active for r in results},
        "detections": {f"{r.model} · {r.method}": r.detections for r in results},
        "groups": {f"{r.model} · {r.method}": r.gflops_groups for r in results},
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def _f3(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _at_least(v, lo) -> bool | None:
    """`v >= lo`; None (not judged) when either figure is n/a (no ground truth in that size range)."""
    return None if v is None or lo is None else v >= lo


SPARSE_MODELS = (SPARSE, SPARSE_P3, SPARSE_P34, SPARSE_DFF)
MASK_RECALL = 0.97  # the finder's recall target: objects with >= 90% of their box active


def targets(rows: list[dict], speed: float | None = 1.2) -> list[tuple[str, str, str, bool | None]]:
    """The targets of the issue "Where to look", for each sparse reference natively in `rows` (the whole held-out
    scene or a sparse scene): mAP50-95 at least the lower dense seed's (seeds run here), mask recall at least
    `MASK_RECALL`, `predict` at least `speed` times faster than the dense reference (None: not judged here), and
    faster than SAHI at no less mAP50-95. `(target, measured, requirement, met)`; met is None where a figure is
    n/a (no objects, no timing)."""
    row = {(r["model"], r["method"]): r for r in rows}
    dn, d1, sahi = row.get((DENSE, "native")), row.get((DENSE_SEED1, "native")), row.get((DENSE, "sahi"))
    out = []
    for name in SPARSE_MODELS:
        sp = row.get((name, "native"))
        if not (sp and dn):
            continue
        seeds = [dn["map"]] + ([d1["map"]] if d1 else [])
        lo = None if None in seeds else min(seeds)
        out.append((f"{name}: mAP50-95 vs the dense seed(s)", f"{_f3(sp['map'])} vs {', '.join(_f3(s) for s in seeds)}",
                    ">= the lower dense seed", _at_least(sp["map"], lo)))  # fmt: skip
        recall = sp.get("mask_recall")
        out.append((f"{name}: mask recall", _f3(recall), f">= {MASK_RECALL}", _at_least(recall, MASK_RECALL)))
        fast = dn["p50_ms"] / sp["p50_ms"] if sp.get("p50_ms") and dn.get("p50_ms") else None
        if speed is not None:
            out.append((f"{name}: predict time, dense / sparse", "n/a" if fast is None else f"{fast:.2f}x",
                        f">= {speed:g}x", None if fast is None else fast >= speed))  # fmt: skip
        if sahi and sp.get("p50_ms") and sahi.get("p50_ms"):
            faster = sahi["p50_ms"] / sp["p50_ms"]
            ap = _at_least(sp["map"], sahi["map"])
            out.append((f"{name} vs SAHI: time and mAP50-95",
                        f"{faster:.2f}x faster, {_f3(sp['map'])} vs {_f3(sahi['map'])}",
                        "faster at >= mAP50-95", None if ap is None else faster > 1.0 and ap))  # fmt: skip
    return out


def write_report(
    out: Path, tiles: dict, full: dict, gt_full: dict, full_image: Path, info: dict, sparse_scenes=()
) -> Path:
    import numpy as np

    from sparseyolo.data.split import read_image
    from sparseyolo.eval.report import (
        plot_accuracy_vs_flops,
        plot_boxes_grid,
        plot_latency,
        plot_per_image_flops,
        rows_table,
        write_rows,
    )

    out.mkdir(parents=True, exist_ok=True)
    write_rows(tiles["rows"], out / "tiles")
    write_rows(full["rows"], out / "full")
    write_rows(tiles["per_image"], out / "tiles_per_image")
    plot_accuracy_vs_flops(full["rows"], out / "accuracy_vs_gflops.png", "map50")
    latency_png = plot_latency(full["rows"], out / "latency.png")
    plot_per_image_flops(tiles["per_image_gflops"], out / "tiles_gflops.png", "executed GFLOPs per val tile")
    img = read_image(full_image)
    gt_boxes = np.array(
        [
            [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
            for a in gt_full["annotations"]
        ]
    ).reshape(-1, 4)
    panels = []
    for name, dets in full["detections"].items():
        if name.startswith((DENSE_SEED1, DFF_ALL_ON)):
            continue
        kept = [d["bbox"] for d in dets if d["score"] >= 0.25]
        panels.append(
            (f"{name} (conf >= 0.25)", np.array([[x, y, x + w, y + h] for x, y, w, h in kept]).reshape(-1, 4))
        )
    plot_boxes_grid(img, gt_boxes, panels, out / "val_scene_boxes.jpg")
    tgt = targets(full["rows"])
    lines = [
        "# SparseYOLO demo report",
        "",
        f"Generated by `{info['command']}` in {info['seconds']:.0f} s on {info['machine']}"
        + (" (measurements from the cache of an earlier run; `--force` remeasures)." if info["cached"] else "."),
        "",
        "Held-out region: the deepforest 1249x1035 Yellowstone scene (279 tree crowns), never seen in training.",
        "Models: the shipped reference models (`sparseyolo demo --train`; recipe and metrics in",
        "`sparseyolo/weights/*.json`). COCO AP (faster-coco-eval, pycocotools' algorithm) at conf 0.001 with no",
        "detection limit binding (the limits and the largest counts under each table); latency = batch-1 wall",
        "time of the whole call (pre-processing, forwards, NMS or SAHI merging) at conf 0.25, 2 threads, interleaved",
        "rounds; GFLOPs = executed FLOPs of every forward (sparse layers counted at their active sites);",
        "`active` = share of the image's pixels the sparse stem keeps; `mask recall` = share of ground-truth objects",
        "with at least 90% of their box in that mask; peak MiB = resident-memory growth of one call.",
        f"`{DFF}`: the Dynamic Feature Fusion neck at its shipped calibration (the gate threshold that keeps",
        "the mean executed neck FLOPs within 0.7 of all-on on 48 training tiles and the training composites);",
        "`all-on`: every neck path.",
        f"Sparse models: `{SPARSE}` (sparse stem, layers 0-4), `{SPARSE_P3}` (plus the sparse P3 path: the P3",
        f"fusion and head run at the stem's active stride-8 sites only), `{SPARSE_P34}` (plus the P4 path) and",
        f"`{SPARSE_DFF}` (the sparse stem before `{DFF}`'s neck, fine-tuned, then calibrated as it is); each",
        "looks where its foreground finder points (a mask calibrated for recall on training images; above the",
        "crossover share the blocks run dense). How each was made: `sparseyolo/weights/<name>.json`.",
        "",
        "## Whole scene at native resolution",
        "",
        rows_table(full["rows"]),
        "",
        "## Targets",
        "",
        "| target | measured | required | met |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {'n/a' if m is None else 'yes' if m else 'no'} |" for a, b, c, m in tgt],
        "",
        "## Validation tiles (320 px, as in training)",
        "",
        rows_table(tiles["rows"]),
        "",
        "![accuracy vs GFLOPs](accuracy_vs_gflops.png)",
        "",
        *(["![latency](latency.png)", ""] if latency_png else []),
        "![per-tile GFLOPs](tiles_gflops.png)",
        "",
        "![val scene](val_scene_boxes.jpg)",
        "",
    ]
    if sparse_scenes:
        lines += scenes_report(out, list(sparse_scenes), targets, skip=(DENSE_SEED1,))
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def run_demo(
    out: Path,
    repeats: int = 5,
    force: bool = False,
    threads: int = 2,
    command: str = "sparseyolo demo",
    memory=True,
    scenes: bool = True,
):
    """The demo (see the module doc) with `threads` torch threads, restored afterwards; returns `(tiles, full,
    sparse_scenes)`."""
    from sparseyolo.threads import threads as using_threads

    with using_threads(threads):
        return _run_demo(out, repeats, force, threads, command, memory, scenes)


def _run_demo(out: Path, repeats: int, force: bool, threads: int, command: str, memory, scenes: bool):
    import platform

    from sparseyolo.data.aerial import build_aerial_dataset
    from sparseyolo.data.split import load_split
    from sparseyolo.eval.report import rows_table
    from sparseyolo.nn import set_neck_mode
    from sparseyolo.yolo.api import YOLO
    from sparseyolo.yolo.recipe import Recipe
    from sparseyolo.yolo.reference import reference_files

    t0 = time.time()
    for name in SHIPPED:
        reference_files(name)  # a clear error naming what is missing, before any work
    recipe = Recipe()
    data = build_aerial_dataset(tile=recipe.tile, overlap=recipe.overlap, verbose=False)
    models = {n: YOLO(n) for n in SHIPPED}
    models[SPARSE_LOW] = YOLO(SPARSE, sparsify={"target": 0.10})
    models[DFF_ALL_ON] = YOLO(DFF)
    set_neck_mode(models[DFF_ALL_ON].model, "all_on")
    cache = out / "cache"
    tile_imgs, tile_gt, _ = load_split(data, "val")
    tiles = _evaluate_cached(
        cache, "tiles", models, tile_imgs, tile_gt, [(n, "native") for n in models], 1, False, force
    )
    full_imgs, full_gt, _ = load_split(data.parent / "full.yaml", "val")
    full = _evaluate_cached(cache, "full", models, full_imgs, full_gt, FULL_PLAN, repeats, memory, force)
    sparse_scenes = []
    if scenes:
        shipped = {n: models[n] for n in SHIPPED}
        sparse_scenes = run_scenes(out, shipped, _evaluate_cached, ROLES, SCENE_REPEATS, force)
    info = {
        "command": command,
        "seconds": time.time() - t0,
        "machine": f"{platform.machine()}, {threads} threads",
        "cached": all(d.get("cached") for d in (tiles, full, *sparse_scenes)),
    }
    report = write_report(out, tiles, full, full_gt, full_imgs[0], info, sparse_scenes)
    print("\nWhole held-out scene (1249x1035) at native resolution:\n" + rows_table(full["rows"], markdown=False))
    print("\nValidation tiles:\n" + rows_table(tiles["rows"], markdown=False))
    print("\nTargets:")
    for a, b, c, m in targets(full["rows"]):
        print(f"  {'n/a ' if m is None else 'MET ' if m else 'MISS'}  {a}: {b} (required {c})")
    print_scenes(sparse_scenes, targets)
    print(f"\nreport: {report}")
    return tiles, full, sparse_scenes


def record_metrics(tiles: dict, full: dict, command: str, sparse_scenes=()) -> list[str]:
    """Write the demo's figures of each shipped model into its JSON (`metrics`); returns the names written.

    Only freshly measured figures are recorded: when `tiles`, `full` or a sparse scene is not marked
    `"cached": False` (figures reused from the cache, or of unknown origin) nothing is written and a note says so."""
    from sparseyolo.yolo.reference import reference_files

    parts = (("tiles", tiles), ("full", full), *((r["scene"].name, r) for r in sparse_scenes))
    stale = [k for k, d in parts if d.get("cached") is not False]
    if stale:
        print(f"metrics not recorded: the {' and '.join(stale)} figures were not measured in this run (--force)")
        return []
    written = []
    for name in SHIPPED:
        meta = reference_files(name)[2]
        info = json.loads(meta.read_text())
        native = {
            r["scene"].name: next((x for x in r["rows"] if x["model"] == name and x["method"] == "native"), None)
            for r in sparse_scenes
        }
        info["metrics"] = {
            "measured_by": command,
            "settings": full.get("settings"),
            "val_tiles": next((r for r in tiles["rows"] if r["model"] == name), None),
            "val_scene_native": next((r for r in full["rows"] if r["model"] == name and r["method"] == "native"), None),
            **({"sparse_scenes_native": {k: v for k, v in native.items() if v}} if sparse_scenes else {}),
        }
        meta.write_text(json.dumps(info, indent=1) + "\n")
        written.append(name)
    return written


def run_training(
    epochs: int | None, variants: list[str], threads: int, project: Path, composites: bool = False
) -> None:
    from sparseyolo.data.aerial import build_aerial_dataset
    from sparseyolo.yolo.recipe import (
        ABLATIONS,
        COMPOSITES,
        VARIANTS,
        Recipe,
        recipe_command,
        ship_variant,
        train_variant,
    )

    recipe = Recipe(composites=COMPOSITES if composites else None)
    if epochs is not None:
        recipe.epochs = epochs
    data = build_aerial_dataset(tile=recipe.tile, overlap=recipe.overlap, verbose=True)
    command = recipe_command(recipe, variants)
    for name in variants:
        v = VARIANTS.get(name) or ABLATIONS[name]
        final = train_variant(v, recipe, data, project.resolve(), threads=threads)
        if not v.shipped:  # an ablation: measured from its run (`sparseyolo bench neck --retrained`)
            print(f"{name}: trained {final} (not shipped)")
            continue
        path = ship_variant(v, recipe, project.resolve() / v.name, command)
        print(f"{name}: shipped {path}")


def main(argv: list[str] | None = None) -> int:
    from sparseyolo.yolo.recipe import ABLATIONS, VARIANTS

    ap = argparse.ArgumentParser(prog="sparseyolo demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/demo"), help="report folder (default runs/demo)")
    ap.add_argument("--repeats", type=int, default=5, help="timing rounds on the full scene (default 5)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--force", action="store_true", help="ignore cached results")
    ap.add_argument("--no-scenes", action="store_true", help="skip the sparse scenes (4K/8K composites, minutes)")
    ap.add_argument(
        "--record", action="store_true", help="write the freshly measured figures into the shipped models' JSONs"
    )
    ap.add_argument("--train", action="store_true", help="first train every variant with the recipe and ship it")
    ap.add_argument("--epochs", type=int, default=None, help="recipe epochs (default: the recipe's)")
    ap.add_argument(
        "--composites", action="store_true", help="train on training composites beside the forest tiles (--train)"
    )
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"variants to train (default {','.join(VARIANTS)}; the retrained ablations, not shipped: "
        f"{','.join(ABLATIONS)})",
    )
    ap.add_argument("--project", type=Path, default=Path("runs/reference"), help="training runs folder")
    a = ap.parse_args(argv)
    variants = [v for v in a.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS and v not in ABLATIONS]
    if bad:
        ap.error(f"unknown variant(s) {bad}; expected some of {list(VARIANTS) + list(ABLATIONS)}")
    if any(v in ABLATIONS for v in variants) and not a.train:
        ap.error("--variants names an ablation: it is only trained (--train), never shipped or demonstrated")
    if a.composites and not a.train:
        ap.error("--composites changes the training recipe: it needs --train")
    if a.repeats < 0 or a.threads < 1 or (a.epochs is not None and a.epochs < 1):
        ap.error("--repeats must be >= 0, --threads >= 1, --epochs >= 1")
    enable()  # first: offline defaults before Ultralytics loads, then registration
    try:
        command = " ".join(["sparseyolo", "demo", *(sys.argv[2:] if argv is None else argv)])
        if a.train:
            run_training(a.epochs, variants, a.threads, a.project, a.composites)
            if all(v in ABLATIONS for v in variants):
                return 0  # ablations only: nothing shipped changed, no demo to run
        tiles, full, sparse_scenes = run_demo(a.out, a.repeats, a.force, a.threads, command, scenes=not a.no_scenes)
        if a.train or a.record:
            record_metrics(tiles, full, command, sparse_scenes)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as e:
        print(f"sparseyolo demo: error: {e}", file=sys.stderr)
        return 1
    return 0
