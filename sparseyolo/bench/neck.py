"""DFF neck vs stock PAN on the aerial val tiles: accuracy, executed neck GFLOPs, latency, by complexity, ablation.

`sparseyolo bench neck [--dff yolov8n-dff-aerial,yolov8n-dff-aerial-seed1] [--pan yolov8n-aerial,yolov8n-aerial-seed1]
[--budgets 0.5,0.7,0.9] [--calib 48] [--composites 64] [--retrained LABEL=MODEL,...] [--repeats 5] [--threads 2]
[--synth 6] [--sizes 320,640,1280] [--size-images 16] [--out results/bench-neck]`

Models (trained by one recipe, `sparseyolo demo --train`): the stock PAN neck and the DFF neck, two seeds each.
Each DFF model runs all-on (every path) and at each budget: its gate threshold is calibrated on `--calib`
training tiles (never on the evaluated tiles) so that the mean executed neck FLOPs is within the budget.

Images: the 320-px val tiles of the held-out region, plus `--composites` 320-px val composites (held-out crowns on
real empty ground, a quarter each at 0, 1, 3 and 10% foreground: empty to crowded; 0 for the tiles alone); the
calibration adds the recipe's training composites to the training tiles (as the shipped DFF models are calibrated).

Tables (COCO metrics by COCO's algorithm, executed GFLOPs counted per image, batch-1 CPU latency timed interleaved
by the one harness):
1. mAP50-95, mAP50, AP small/medium/large, mean neck GFLOPs and ratio to all-on, neck latency p50/p90 (the neck
   layers alone on their recorded inputs; p50/p90 over images of each image's median), whole predict p50/p90;
2. the same split by image complexity: terciles of the ground-truth object count, and terciles of each DFF model's
   own complexity estimate (neck GFLOPs, neck latency, mAP50-95 and the estimate each);
3. ablation on the first DFF model at the 0.7 budget's threshold, parts switched on one by one at inference
   (no retraining): fusion blocks only, + routing, + adaptive depth (controller, complexity cap, early stop),
   + pixel gates (the full neck); and, with `--retrained`, models trained without a part (`dff_without=...`,
   `dff_supervise=0`) against the first DFF model, each at its own budget-0.7 threshold;
plus synthetic scenes of graded complexity (object count; FLOPs and latency only: the detectors were trained on
trees), whole-model executed GFLOPs and mAP50-95 on the forest tiles and on the composites apart (the DFF
models at budget 0.7 against the stock PAN models: the issue's whole-model target), 4. one pixel-gated block on
the sparse engine against dense, 5. does time follow FLOPs: the first DFF model at budget 0.7 and the tightest of
`--budgets` as shipped and with each execution lever (`LEVERS`: gated maps dense, coarser gate grids, no pixel
gates), mean neck time against mean neck FLOPs; 6. the same at larger images (`--sizes`: val composites
built at each side, the first DFF model all-on and at those budgets); a histogram of per-image neck GFLOPs, the
accuracy-vs-neck-GFLOPs curve over budgets, and the issue's three targets at budget 0.7 (time: mean neck ms per
image, as the FLOP ratio is a mean).
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np

from sparseyolo.bench.common import (
    latency,
    markdown_table,
    percentile,
    set_threads,
    val_composites,
    write_csv,
    write_text,
)
from sparseyolo.data.aerial import build_aerial_dataset
from sparseyolo.data.split import load_split
from sparseyolo.data.synth import synth_scene
from sparseyolo.eval.coco import coco_metrics, subset_ground_truth
from sparseyolo.eval.report import pyplot, save_figure

NECK_GROUP = "neck 10-21"
ABLATION = (
    ("fusion blocks only", {"routing", "depth", "pixel"}),
    ("+ routing", {"depth", "pixel"}),
    ("+ adaptive depth", {"pixel"}),
    ("+ pixel gates (full)", set()),
)

# execution levers for "time follows FLOPs" (section 5): neck settings changed at inference, same weights
LEVERS = (
    ("gated maps run dense (masked)", {"sparse_density": 0.0}),
    ("gate grid 2x2 px", {"gate_cell": 2}),
    ("gate grid 4x4 px", {"gate_cell": 4}),
    ("no pixel gates", {"disabled": frozenset({"pixel"})}),
)


def run_layers(layers, y: list, out):
    """Run Ultralytics `layers` in order as `DetectionModel` does (each reads `m.f` of the outputs so far),
    appending every output to `y`; returns the last output."""
    for m in layers:
        if m.f != -1:
            out = y[m.f] if isinstance(m.f, int) else [out if j == -1 else y[j] for j in m.f]
        out = m(out)
        y.append(out)
    return out


def neck_callable(model, x):
    """`fn() -> None` running the neck layers (10 .. Detect-1) of DetectionModel `model` on the recorded outputs of
    layers 0-9 for image `x (1, 3, H, W)`."""
    import torch

    layers = list(model.model)
    y: list = []
    with torch.no_grad():
        run_layers(layers[:10], y, x)
    neck = layers[10:-1]
    return lambda: run_layers(neck, list(y), y[-1])


def configure(yolo, mode: str, threshold: float | None = None, disabled=frozenset(), **settings):
    """Set every DFF neck of `yolo` to `mode`, `threshold`, `disabled` parts and other attributes (`settings`,
    e.g. `sparse_density`, `gate_cell`); returns `yolo`."""
    from sparseyolo.nn import dff_necks

    for n in dff_necks(yolo.model):
        n.mode = mode
        n.disabled = frozenset(disabled)
        if threshold is not None:
            n.set_threshold(threshold)
        for k, v in settings.items():
            if not hasattr(n, k):
                raise AttributeError(f"DFFNeck has no setting {k!r}")
            setattr(n, k, v)
    return yolo


def subset_map(gt: dict, dets: list[dict], ids: set) -> float | None:
    """mAP50-95 of the images `ids` scored on themselves; None when they hold no ground truth."""
    sub = subset_ground_truth(gt, ids)
    return coco_metrics(sub, [d for d in dets if d["image_id"] in ids], per_image=False)["map"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sparseyolo bench neck", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dff", default="yolov8n-dff-aerial,yolov8n-dff-aerial-seed1", help="DFF models (seeds)")
    ap.add_argument("--pan", default="yolov8n-aerial,yolov8n-aerial-seed1", help="stock PAN models (seeds)")
    ap.add_argument("--budgets", default="0.5,0.7,0.9", help="neck FLOP budgets (fractions of all-on)")
    ap.add_argument("--calib", type=int, default=48, help="training tiles to calibrate on (default 48)")
    ap.add_argument("--composites", type=int, default=64, help="val composites beside the val tiles (0: none)")
    ap.add_argument("--retrained", default="", help="retrained ablations, LABEL=MODEL comma-separated")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds (default 5)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--synth", type=int, default=6, help="synthetic scenes per complexity level (0: none)")
    ap.add_argument(
        "--sizes", default="320,640,1280", help="image sides of section 6 (time vs FLOPs by size; '' to skip)"
    )
    ap.add_argument("--size-images", type=int, default=16, help="val composites per size in section 6 (default 16)")
    ap.add_argument("--out", type=Path, default=Path("results/bench-neck"))
    a = ap.parse_args(argv)
    if a.repeats < 1 or a.threads < 1 or a.calib < 1 or a.synth < 0 or a.composites < 0:
        ap.error("--repeats, --threads and --calib must be >= 1, --synth and --composites >= 0")
    retrained = {}
    for item in [x for x in a.retrained.split(",") if x.strip()]:
        label, sep, model = item.partition("=")
        if not sep or not label.strip() or not model.strip():
            ap.error(f"--retrained takes LABEL=MODEL items, got {item!r}")
        retrained[label.strip()] = model.strip()
    a.retrained = retrained
    try:
        a.sizes = [int(v) for v in a.sizes.split(",") if v.strip()]
    except ValueError:
        ap.error(f"--sizes must be comma-separated image sides, got {a.sizes!r}")
    if any(v < 64 or v % 32 for v in a.sizes) or a.size_images < 1:
        ap.error(f"--sizes must be multiples of 32, at least 64 (got {a.sizes}); --size-images >= 1")
    try:
        budgets = [float(b) for b in a.budgets.split(",") if b]
    except ValueError:
        ap.error(f"--budgets must be comma-separated fractions, got {a.budgets!r}")
    bad = [b for b in budgets if not 0 < b <= 1]
    if bad:
        ap.error(f"budgets must lie in (0, 1], got {bad}")
    dffs = [m for m in a.dff.split(",") if m]
    pans = [m for m in a.pan.split(",") if m]
    if not dffs:
        ap.error("--dff needs at least one model")
    try:
        return run(dffs, pans, budgets, a)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"sparseyolo bench neck: error: {e}")
        return 1


def run(dffs: list[str], pans: list[str], budgets: list[float], a) -> int:
    import torch

    from sparseyolo.yolo.integration import enable

    enable()  # first: offline defaults before Ultralytics loads, then registration
    from sparseyolo.eval.compare import evaluate
    from sparseyolo.nn import dff_necks
    from sparseyolo.nn.dff import threshold_for_budget
    from sparseyolo.yolo.api import YOLO
    from sparseyolo.yolo.budget import calibrate, letterboxed
    from sparseyolo.yolo.recipe import COMPOSITES, Recipe, calibration_set

    set_threads(a.threads)
    recipe = Recipe()  # the tiles the reference models were trained and validated on
    data = build_aerial_dataset(tile=recipe.tile, overlap=recipe.overlap)
    images, gt, names = load_split(data, "val")
    imgsz = recipe.imgsz
    # the shipped DFF references' calibration images (`--calib` training tiles, plus the training composites)
    calib = calibration_set(replace(recipe, composites=COMPOSITES if a.composites else None), a.calib)[0]
    if a.composites:
        from sparseyolo.data.split import list_images, yolo_ground_truth

        val = val_composites(a.composites, imgsz)
        images = images + list_images(val.parent / "images" / "val")
        gt = yolo_ground_truth(images, names)  # one ground truth, ids in `images` order

    # --- configurations: name -> (YOLO, info) ---------------------------------------------------------------
    configs: dict[str, tuple] = {}
    for name in pans:
        configs[f"PAN {name}"] = (YOLO(name), {"model": name, "neck": "PAN", "budget": None})
    thresholds: dict[tuple[str, float], float | None] = {}
    for k, name in enumerate(dffs):
        probe = YOLO(name)
        calibrate(probe.model, calib, 1.0, imgsz=imgsz, progress=False)  # the whole threshold -> ratio curve
        curve_neck = dff_necks(probe.model)[0]
        configs[f"DFF {name} all-on"] = (configure(YOLO(name), "all_on"), {"model": name, "neck": "DFF all-on"})
        for b in budgets:
            try:
                thr = threshold_for_budget(curve_neck, b)
            except ValueError as e:
                print(f"{name}: budget {b}: {e}")
                thr = None
            thresholds[name, b] = thr
            if thr is not None:
                configs[f"DFF {name} b={b:g}"] = (
                    configure(YOLO(name), "dynamic", thr),
                    {"model": name, "neck": f"DFF budget {b:g}", "budget": b, "threshold": thr},
                )
        if k == 0 and thresholds.get((name, 0.7)) is not None:
            for label, off in ABLATION[:-1]:
                configs[f"ablation {label}"] = (
                    configure(YOLO(name), "dynamic", thresholds[name, 0.7], off),
                    {"model": name, "neck": f"ablation: {label}", "budget": 0.7},
                )
        for b in lever_budgets(budgets) if k == 0 else ():
            if thresholds.get((name, b)) is None:
                continue
            for label, settings in LEVERS:
                configs[f"lever {label} b={b:g}"] = (
                    configure(YOLO(name), "dynamic", thresholds[name, b], **settings),
                    {"model": name, "neck": f"lever: {label}", "budget": b},
                )
    for label, name in a.retrained.items():
        probe = YOLO(name)
        if not dff_necks(probe.model):
            raise ValueError(f"--retrained {label}={name}: the model has no DFF neck")
        calibrate(probe.model, calib, 1.0, imgsz=imgsz, progress=False)
        try:
            thr = threshold_for_budget(dff_necks(probe.model)[0], 0.7)
        except ValueError as e:
            print(f"{name}: budget 0.7: {e}; run at its own threshold")
            thr = None
        y = YOLO(name)  # the neck's parts switched off in training stay off (`disabled` travels in the .pt)
        for n in dff_necks(y.model):
            n.mode = "dynamic"
            if thr is not None:
                n.set_threshold(thr)
        configs[f"retrained {label}"] = (y, {"model": name, "neck": f"retrained: {label}", "budget": 0.7,
                                             "threshold": thr})  # fmt: skip

    # --- accuracy, executed FLOPs, whole-call latency ----------------------------------------------------
    models = {n: y for n, (y, _) in configs.items()}
    results = evaluate(models, images, gt, plan=[(n, "native") for n in models], repeats=a.repeats, memory=False)
    res = {r.model: r for r in results}

    # --- neck latency (batch 1, interleaved) and the neck's own per-image stats ---------------------------
    tensors = [letterboxed(p, imgsz) for p in images]
    fns, stats = {}, {}
    for n, (y, _) in configs.items():
        m = y.model.eval()
        for i, x in enumerate(tensors):
            fns[f"{n}|{i}"] = neck_callable(m, x)
        necks = dff_necks(m)
        if necks:
            cx, ratio = [], []
            with torch.no_grad():
                for i in range(len(tensors)):
                    fns[f"{n}|{i}"]()
                    cx.append(float(necks[0].last_stats["complexity"][0]))
                    ratio.append(float(necks[0].last_stats["ratio"][0]))
            stats[n] = {"complexity": cx, "ratio": ratio}
    times = latency(fns, repeats=a.repeats, threads=a.threads)

    rows = []
    per_image = []
    for n, (_, info) in configs.items():
        r = res[n]
        neck_g = [g.get(NECK_GROUP, 0.0) for g in r.gflops_groups]
        img_ms = [times[f"{n}|{i}"]["p50_ms"] for i in range(len(tensors))]
        s = r.summary()
        rows.append(
            {
                "config": n,
                "neck": info["neck"],
                "model": info["model"],
                "map": s["map"],
                "map50": s["map50"],
                "ap_small": s["ap_small"],
                "ap_medium": s["ap_medium"],
                "ap_large": s["ap_large"],
                "neck_gflops": float(np.mean(neck_g)),
                "neck_mean_ms": float(np.mean(img_ms)),
                "neck_p50_ms": percentile(img_ms, 50),
                "neck_p90_ms": percentile(img_ms, 90),
                "predict_p50_ms": s["p50_ms"],
                "predict_p90_ms": s["p90_ms"],
                "threshold": info.get("threshold"),
                "budget": info.get("budget"),
            }
        )
        k_of = {name: k for k, name in enumerate(r.images)}  # per-image lists matched by file name
        for im in gt["images"]:
            k = k_of[im["file_name"]]
            per_image.append(
                {
                    "config": n,
                    "image": im["file_name"],
                    "objects": sum(1 for an in gt["annotations"] if an["image_id"] == im["id"]),
                    "neck_ratio": (float(stats[n]["ratio"][k]) if n in stats else None),
                    "neck_gflops": neck_g[k],
                    "neck_ms": img_ms[k],
                    "complexity": stats.get(n, {}).get("complexity", [None] * len(images))[k],
                    **{key: r.metrics["per_image"][im["id"]][key] for key in ("map", "map50")},
                }
            )
    allon = {row["model"]: row for row in rows if row["neck"] == "DFF all-on"}
    for row in rows:
        ref = allon.get(row["model"])
        row["neck_ratio"] = row["neck_gflops"] / ref["neck_gflops"] if ref and row["neck"] != "PAN" else None

    n_comp = sum(p.name.startswith("composite_") for p in images)
    n_calib = sum(p.name.startswith("composite_") for p in map(Path, calib))
    comp = f" and {n_comp} val composites (foreground {list(COMPOSITES['fg'])})" if n_comp else ""
    text = [
        f"# DFF neck benchmark\n\n{len(images) - n_comp} val tiles (320 px) of the held-out region{comp}; "
        f"{a.threads} threads, {a.repeats} interleaved timing rounds; thresholds calibrated on "
        f"{len(calib) - n_calib} training tiles" + (f" and {n_calib} training composites" if n_calib else "") + ".\n"
    ]
    text.append("## 1. Accuracy, executed neck FLOPs, latency\n")
    head = ["config", "mAP50-95", "mAP50", "AP_s", "AP_m", "AP_l", "neck GFLOPs", "ratio", "neck p50 ms"]
    head += ["neck p90 ms", "predict p50 ms", "predict p90 ms"]
    main_rows = [r for r in rows if not r["config"].startswith(("ablation", "lever"))]
    text.append(markdown_table(head, [_cells(r) for r in main_rows]))

    # --- terciles of ground-truth object count, and of each model's complexity estimate -----------------------
    ids = [im["id"] for im in gt["images"]]
    counts = {im["id"]: sum(1 for an in gt["annotations"] if an["image_id"] == im["id"]) for im in gt["images"]}
    by_count = terciles([counts[i] for i in ids])
    span = [f"{min(counts[ids[k]] for k in t)}-{max(counts[ids[k]] for k in t)} objects" for t in by_count]
    text.append("\n## 2. By image complexity\n")
    text.append("Terciles of the ground-truth object count; each cell: neck GFLOPs / neck p50 ms / mAP50-95 / the "
                "neck's complexity estimate (mean).\n")  # fmt: skip
    trows, erows = [], []
    for n in configs:
        if n.startswith(("ablation", "retrained", "lever")):
            continue
        cx = stats.get(n, {}).get("complexity")
        trows.append([n] + [tercile_cell(res[n], times, n, gt, ids, t, cx) for t in by_count])
        if cx:
            by_est = terciles(cx)
            erows.append([n] + [
                f"{min(cx[k] for k in t):.2f}-{max(cx[k] for k in t):.2f} ({np.mean([counts[ids[k]] for k in t]):.1f} "
                f"objects): {tercile_cell(res[n], times, n, gt, ids, t, None)}"
                for t in by_est
            ])  # fmt: skip
    text.append(markdown_table(["config"] + span, trows))
    if erows:
        text.append("\nTerciles of each DFF model's own complexity estimate (its range, the mean object count): neck "
                    "GFLOPs / neck p50 ms / mAP50-95.\n")  # fmt: skip
        text.append(markdown_table(["config", "low", "medium", "high"], erows))

    # --- ablation -----------------------------------------------------------------------------------
    if dffs and thresholds.get((dffs[0], 0.7)) is not None:
        text.append(f"\n## 3. Ablation ({dffs[0]}, threshold of budget 0.7, parts switched on at inference)\n")
        arows = []
        full = next(r for r in rows if r["config"] == f"DFF {dffs[0]} b=0.7")
        for label, _ in ABLATION:
            r = full if not _ else next(x for x in rows if x["config"] == f"ablation {label}")
            arows.append([label, f"{r['map']:.3f}", f"{r['map50']:.3f}", f"{r['neck_gflops']:.3f}",
                          f"{r['neck_ratio']:.2f}", f"{r['neck_p50_ms']:.1f}"])  # fmt: skip
        text.append(markdown_table(["neck", "mAP50-95", "mAP50", "neck GFLOPs", "ratio", "neck p50 ms"], arows))
    if a.retrained and thresholds.get((dffs[0], 0.7)) is not None:
        text.append(f"\n## 3b. Ablation, each part retrained without it (against {dffs[0]}; each at its own budget-0.7 "
                    "threshold)\n")  # fmt: skip
        empty = [k for k, i in enumerate(ids) if counts[i] == 0]
        crowded = by_count[-1]
        brows = []
        for label, key in [("full", f"DFF {dffs[0]} b=0.7")] + [
            (f"without {x}", f"retrained {x}") for x in a.retrained
        ]:
            r = next(x for x in rows if x["config"] == key)
            ratio = stats[key]["ratio"]
            e = f"{np.mean([ratio[k] for k in empty]):.2f}" if empty else "n/a"
            brows.append([label, r["model"], f"{r['map']:.3f}", f"{r['map50']:.3f}", f"{r['neck_gflops']:.3f}",
                          f"{np.mean(ratio):.2f}", e, f"{np.mean([ratio[k] for k in crowded]):.2f}",
                          f"{r['neck_p50_ms']:.1f}"])  # fmt: skip
        head = ["neck", "model", "mAP50-95", "mAP50", "neck GFLOPs", "ratio", "ratio, empty images",
                "ratio, most crowded third", "neck p50 ms"]  # fmt: skip
        text.append(markdown_table(head, brows))

    # --- synthetic scenes of graded complexity -------------------------------------------------------------
    if a.synth:
        text.append(synthetic_table(configs, dffs, budgets, a, imgsz))

    text.append(whole_model_table(res, gt, pans, dffs))
    text.append(pixel_gate_table(a))
    if dffs:
        text.append(lever_table(rows, dffs[0], lever_budgets(budgets)))
    if dffs and a.sizes:
        text.append(size_table(dffs[0], {b: thresholds.get((dffs[0], b)) for b in lever_budgets(budgets)}, a))

    # --- targets ------------------------------------------------------------------------------------------
    text.append("\n## Targets at budget 0.7\n")
    text += targets(rows, dffs)

    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "neck.csv", rows)
    write_csv(out / "neck_per_image.csv", per_image)
    hist = plot_histogram(per_image, out / "neck_flops_hist.png")
    curve = plot_budget_curve(rows, out / "neck_budget_curve.png")
    text.append(f"\nPer-image neck GFLOPs: `{hist.name}`; mAP50-95 against neck GFLOPs over budgets: `{curve.name}`; "
                "per-image rows: `neck_per_image.csv`.")  # fmt: skip
    report = "\n".join(text) + "\n"
    write_text(out / "neck.md", report)
    print(report)
    return 0


def terciles(values: list) -> list[list[int]]:
    """Indices of `values` in three groups of (near) equal size, lowest first (stable for ties)."""
    order = sorted(range(len(values)), key=lambda k: values[k])
    n = len(order)
    return [order[i * n // 3 : (i + 1) * n // 3] for i in range(3)]


def tercile_cell(result, times: dict, config: str, gt: dict, ids: list, ks: list[int], cx: list | None) -> str:
    """`neck GFLOPs / neck p50 ms / mAP50-95[ / estimate]` of the images at positions `ks` (ids `ids[k]`)."""
    g = np.mean([result.gflops_groups[k].get(NECK_GROUP, 0.0) for k in ks])
    ms = statistics.median(times[f"{config}|{k}"]["p50_ms"] for k in ks)
    m = subset_map(gt, result.detections, {ids[k] for k in ks})
    cell = f"{g:.3f} / {ms:.1f} / {'n/a' if m is None else f'{m:.3f}'}"
    return cell + (f" / {np.mean([cx[k] for k in ks]):.2f}" if cx else "")


def _cells(r: dict) -> list:
    def f(v, d=3, na="-"):
        return na if v is None else f"{v:.{d}f}"

    ap = [f(r[k], na="n/a") for k in ("map", "map50", "ap_small", "ap_medium", "ap_large")]
    return [r["config"], *ap,
            f(r["neck_gflops"]), f(r["neck_ratio"], 2), f(r["neck_p50_ms"], 1), f(r["neck_p90_ms"], 1),
            f(r["predict_p50_ms"], 1), f(r["predict_p90_ms"], 1)]  # fmt: skip


def targets(rows: list[dict], dffs: list[str]) -> list[str]:
    out = []
    allon = [r for r in rows if r["neck"] == "DFF all-on"]
    maps = ", ".join(f"{r['map']:.3f}" for r in allon)
    spread = f"all-on seeds: mAP50-95 {maps}"
    for name in dffs:
        on = next((r for r in allon if r["model"] == name), None)
        b7 = next((r for r in rows if r["model"] == name and r.get("neck") == "DFF budget 0.7"), None)
        if on is None or b7 is None:
            out.append(f"- {name}: no budget-0.7 row (budget out of reach)")
            continue
        flop_cut = 1 - b7["neck_ratio"]
        time_cut = 1 - b7["neck_mean_ms"] / on["neck_mean_ms"]  # mean time per image, as the ratio is mean FLOPs
        d_map = 100 * (b7["map"] - on["map"])
        out.append(
            f"- {name}: neck FLOPs {b7['neck_ratio']:.2f} of all-on (target <= 0.70: "
            f"{'met' if b7['neck_ratio'] <= 0.70 else 'MISSED'}); neck latency -{100 * time_cut:.0f}% for "
            f"-{100 * flop_cut:.0f}% FLOPs (target >= 80% of the FLOP cut: "
            f"{'met' if flop_cut > 0 and time_cut >= 0.8 * flop_cut else 'MISSED'}); mAP50-95 {d_map:+.1f} points vs "
            f"all-on (target within 0.5: {'met' if abs(d_map) <= 0.5 or d_map > 0 else 'MISSED'}; {spread})"
        )
    return out


def whole_model_table(res: dict, gt: dict, pans: list[str], dffs: list[str]) -> str:
    """Whole-model executed GFLOPs per image and mAP50-95, on the forest val tiles and on the val composites apart:
    each stock PAN model, and each DFF model all-on and at budget 0.7 (the shipped calibration's budget, on the
    same calibration images). Target: the DFF model at budget 0.7 spends no more than the stock model on the
    forest tiles and at most 85% of it on the composites, at a mAP50-95 no lower than the better stock seed's."""
    kinds = {"forest tiles": set(), "composites": set()}
    for im in gt["images"]:
        kinds["composites" if im["file_name"].startswith("composite_") else "forest tiles"].add(im["id"])
    kinds = {k: v for k, v in kinds.items() if v}
    names = [f"PAN {n}" for n in pans] + [f"DFF {n} {x}" for n in dffs for x in ("all-on", "b=0.7")]
    cells: dict[str, dict] = {}
    for n in (n for n in names if n in res):
        r = res[n]
        k_of = {name: k for k, name in enumerate(r.images)}
        cells[n] = {}
        for kind, ids in kinds.items():
            ks = [k_of[im["file_name"]] for im in gt["images"] if im["id"] in ids]
            cells[n][kind] = (float(np.mean([r.gflops[k] for k in ks])), subset_map(gt, r.detections, ids))
    if not cells:
        return ""
    rows = [[n] + [f"{g:.3f} / {'n/a' if m is None else f'{m:.3f}'}" for g, m in cells[n].values()] for n in cells]
    text = ["\n## Whole-model executed GFLOPs (per image) / mAP50-95, by image kind\n",
            markdown_table(["config"] + list(kinds), rows)]  # fmt: skip
    stock = cells.get(f"PAN {pans[0]}") if pans else None
    for n in dffs:
        dff = cells.get(f"DFF {n} b=0.7")
        if stock is None or dff is None:
            continue
        for kind, limit in (("forest tiles", 1.0), ("composites", 0.85)):
            if kind not in dff:
                continue
            ratio = dff[kind][0] / stock[kind][0]
            best = max((cells[f"PAN {p}"][kind][1] or 0.0) for p in pans if f"PAN {p}" in cells)
            m = dff[kind][1] or 0.0
            verdict = "met" if ratio <= limit and m >= best else "MISSED"
            text.append(f"- {n} at budget 0.7, {kind}: {ratio:.3f} of {pans[0]}'s GFLOPs (target <= {limit:.2f}), "
                        f"mAP50-95 {m:.3f} vs the better stock seed's {best:.3f}: {verdict}")  # fmt: skip
    return "\n".join(text) + "\n"


def lever_budgets(budgets: list[float]) -> list[float]:
    """The budgets of section 5: 0.7 (the shipped calibration's) and the tightest of `budgets` (0.5 by default)."""
    return sorted({0.7, min(budgets, default=0.7)}, reverse=True)


def lever_table(rows: list[dict], model: str, budgets=(0.7, 0.5)) -> str:
    """Section 5: does neck time follow its FLOPs? `model` at `budgets` as shipped and with each of
    `LEVERS`: mean neck FLOPs and mean neck time per image against all-on, and the time cut over the FLOP cut
    (target >= 0.8)."""
    on = next((r for r in rows if r["model"] == model and r["neck"] == "DFF all-on"), None)
    if on is None:
        return ""
    out = []
    for b in budgets:
        shipped = next((r for r in rows if r["model"] == model and r["neck"] == f"DFF budget {b:g}"), None)
        levers = [r for r in rows if r["model"] == model and r.get("budget") == b and r["neck"].startswith("lever")]
        for label, r in [("as shipped", shipped)] + [(r["neck"].removeprefix("lever: "), r) for r in levers]:
            if r is None:
                continue
            flop_cut = 1 - r["neck_gflops"] / on["neck_gflops"]
            time_cut = 1 - r["neck_mean_ms"] / on["neck_mean_ms"]
            follows = f"{time_cut / flop_cut:.2f}" if flop_cut > 0.01 else "n/a"
            out.append([f"{b:g}", label, f"{r['neck_gflops'] / on['neck_gflops']:.2f}", f"{r['neck_mean_ms']:.2f}",
                        f"-{100 * flop_cut:.0f}%", f"{-100 * time_cut:+.0f}%", follows, f"{r['map']:.3f}"])  # fmt: skip
    head = ["budget", "execution", "neck FLOPs / all-on", "neck ms (mean)", "FLOP cut", "time change",
            "time cut / FLOP cut (>= 0.8)", "mAP50-95"]  # fmt: skip
    return (
        f"\n## 5. Does time follow FLOPs? ({model}; all-on: {on['neck_mean_ms']:.2f} ms mean per image)\n\n"
        "The same weights and thresholds; at inference the gated maps run on the sparse engine below the YAML's "
        "`sparse_density` (as shipped), always dense and masked, with the gates decided per 2x2 or 4x4 pixel cell, "
        "or without pixel gates.\n\n" + markdown_table(head, out)
    )


def size_table(model: str, thresholds: dict, a) -> str:
    """Section 6: does time follow FLOPs at larger images? `model` all-on and at each budget's threshold (calibrated
    at 320 px) on `a.size_images` val composites built at each of `a.sizes`: mean neck FLOPs and mean neck time
    per image against all-on, timed interleaved."""
    import torch

    from sparseyolo.data.split import list_images
    from sparseyolo.nn import dff_necks
    from sparseyolo.yolo.api import YOLO
    from sparseyolo.yolo.budget import letterboxed

    configs = {"all-on": configure(YOLO(model), "all_on")}
    for b, thr in thresholds.items():
        if thr is not None:
            configs[f"budget {b:g}"] = configure(YOLO(model), "dynamic", thr)
    out = []
    for size in a.sizes:
        data = val_composites(a.size_images, size)
        tensors = [letterboxed(p, size) for p in list_images(data.parent / "images" / "val")]
        fns, gflops = {}, {}
        for name, y in configs.items():
            m, neck = y.model.eval(), dff_necks(y.model)[0]
            per = []
            for i, x in enumerate(tensors):
                fns[f"{name}|{i}"] = neck_callable(m, x)
                with torch.no_grad():
                    fns[f"{name}|{i}"]()
                per.append(float(neck.last_stats["gflops"][0]))
            gflops[name] = float(np.mean(per))
        times = latency(fns, repeats=a.repeats, threads=a.threads)
        ms = {n: float(np.mean([times[f"{n}|{i}"]["p50_ms"] for i in range(len(tensors))])) for n in configs}
        for name in configs:
            flop_cut, time_cut = 1 - gflops[name] / gflops["all-on"], 1 - ms[name] / ms["all-on"]
            follows = f"{time_cut / flop_cut:.2f}" if flop_cut > 0.01 else "n/a"
            out.append([f"{size}", name, f"{gflops[name]:.3f}", f"{gflops[name] / gflops['all-on']:.2f}",
                        f"{ms[name]:.1f}", f"{-100 * time_cut:+.0f}%", follows])  # fmt: skip
    head = ["image side", "neck", "neck GFLOPs (mean)", "FLOPs / all-on", "neck ms (mean)", "time change",
            "time cut / FLOP cut (>= 0.8)"]  # fmt: skip
    return (
        f"\n## 6. Time against FLOPs by image size ({model}, {a.size_images} val composites per size)\n\n"
        "The same composites' recipe (a quarter each at 0, 1, 3 and 10% foreground) built at each side; the "
        "thresholds are the budgets' at 320 px, so the FLOP share is what the policy decides at that size.\n\n"
        + markdown_table(head, out)
    )


def synthetic_table(configs: dict, dffs: list[str], budgets: list[float], a, imgsz: int) -> str:
    """Neck GFLOPs, ratio, complexity estimate and neck latency on synthetic scenes with 2, 8 and 32 objects."""
    import torch

    from sparseyolo.nn import dff_necks

    levels = [(2, 0.0), (8, 0.05), (32, 0.2)]
    scenes = {}
    for count, clutter in levels:
        xs = []
        for s in range(a.synth):
            img = synth_scene(imgsz, imgsz, count=count, clutter=clutter, size=(8, 40), seed=1000 * count + s).image
            xs.append(torch.from_numpy(img.copy()).permute(2, 0, 1).float()[None] / 255)
        scenes[count, clutter] = xs
    names = [n for n in configs if n.startswith(f"DFF {dffs[0]} ")]
    fns, rows_stats = {}, {}
    for n in names:
        m = configs[n][0].model.eval()
        neck = dff_necks(m)[0]
        for key, xs in scenes.items():
            g, r, cx = [], [], []
            for i, x in enumerate(xs):
                fn = neck_callable(m, x)
                with torch.no_grad():
                    fn()
                st = neck.last_stats
                g.append(float(st["gflops"][0]))
                r.append(float(st["ratio"][0]))
                cx.append(float(st["complexity"][0]))
                fns[f"{n}|{key}|{i}"] = fn
            rows_stats[n, key] = (np.mean(g), np.mean(r), np.mean(cx))
    times = latency(fns, repeats=a.repeats, threads=a.threads)
    head = ["config"] + [f"{c} objects, clutter {cl:g}: GFLOPs / ratio / est. / ms" for c, cl in levels]
    rows = []
    for n in names:
        cells = [n]
        for key, xs in scenes.items():
            g, r, cx = rows_stats[n, key]
            ms = statistics.median(times[f"{n}|{key}|{i}"]["p50_ms"] for i in range(len(xs)))
            cells.append(f"{g:.3f} / {r:.2f} / {cx:.2f} / {ms:.1f}")
        rows.append(cells)
    return (
        f"\n## Synthetic scenes of graded complexity ({a.synth} per level, {imgsz} px; FLOPs and latency only)\n\n"
        + markdown_table(head, rows)
    )


def pixel_gate_table(a, size: int = 160, c: int = 64) -> str:
    """One fusion block at a `size x size` P3 map (a 1280-px image), width `c`: dense vs run at gated pixels only
    (sparse engine), for gates that keep 5-100% of the pixels in 8-px blobs (objects, not salt and pepper)."""
    import torch
    import torch.nn.functional as F

    from sparseyolo.nn.dff import FusionBlock

    torch.manual_seed(0)
    blk = FusionBlock(c).eval()
    x = torch.randn(1, c, size, size)
    fns, share = {"dense": lambda: blk.run_dense(x)}, {}
    for d in (0.05, 0.1, 0.2, 0.35, 0.5):
        g = torch.rand(1, 1, size // 8, size // 8, generator=torch.Generator().manual_seed(int(d * 100)))
        m = F.interpolate(g, size=(size, size), mode="nearest")[:, 0] < d
        share[d] = float(m.float().mean())
        fns[f"gated {d}"] = lambda m=m: blk.run_at(x, m)
    times = latency(fns, repeats=a.repeats, threads=a.threads)
    dense = times["dense"]["p50_ms"]
    rows = [["dense (every pixel)", "1.00", f"{dense:.1f}", "1.00"]]
    for d, sh in share.items():
        t = times[f"gated {d}"]["p50_ms"]
        rows.append([f"pixel gate open on {sh:.0%}", f"{sh:.2f}", f"{t:.1f}", f"{t / dense:.2f}"])
    return (
        f"\n## 4. A pixel-gated fusion block on the sparse engine (P3 of a 1280-px image: {size}x{size}, "
        f"{c} channels, batch 1)\n\n" + markdown_table(["block", "gated share", "p50 ms", "time / dense"], rows)
    )


def plot_histogram(per_image: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    configs = [c for c in dict.fromkeys(r["config"] for r in per_image) if not c.startswith(("ablation", "lever"))]
    for c in configs:
        ax.hist([r["neck_gflops"] for r in per_image if r["config"] == c], bins=20, alpha=0.5, label=c)
    ax.set_xlabel("executed neck GFLOPs per image")
    ax.set_ylabel("images")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    return save_figure(fig, path)


def plot_budget_curve(rows: list[dict], path: Path) -> Path:
    """mAP50-95 against mean neck GFLOPs: each DFF model over its budgets (all-on at the right), PAN models as
    points."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(r["model"] for r in rows if r["neck"].startswith("DFF")):
        pts = sorted((r["neck_gflops"], r["map"]) for r in rows if r["model"] == model and r["neck"].startswith("DFF"))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"DFF {model}")
    for r in rows:
        if r["neck"] == "PAN":
            ax.plot(r["neck_gflops"], r["map"], "s", label=f"PAN {r['model']}")
        elif r["neck"].startswith("retrained"):
            ax.plot(r["neck_gflops"], r["map"], "x", label=r["neck"])
    ax.set_xlabel("executed neck GFLOPs per image (mean)")
    ax.set_ylabel("mAP50-95")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
