"""Does the DFF neck adapt? Its per-image decisions on varied images: the forest val tiles plus val composites.

`sparseyolo bench neck-spread [--models yolov8n-dff-aerial,...] [--budget 0.7] [--composites 64] [--threads 1]
[--out results/bench-neck-spread]`

Images: the 320-px val tiles of the held-out forest region and `--composites` 320-px val composites (held-out
crowns on real empty ground, a quarter each at 0, 1, 3 and 10% foreground: empty to crowded). Each model runs at
its default gate threshold, and with `--budget` also at the threshold calibrated for that budget on training
images of both kinds (the shipped DFF references' calibration set: 48 training tiles and the training composites;
never the evaluated images).

Per model and operating point: the spread of the per-image neck FLOPs over all-on (p10/p50/p90), the mean on
images with no object (target <= 0.40) and on the most crowded third by object count (target >= 0.80), the
neck's complexity estimate, and how many images ran each depth per level. A budget out of a model's reach is
reported as such and the other models still run. Writes `neck-spread.md`, `neck-spread.csv` (one row per image)
and `neck-spread.png` (per-image FLOPs against the object count) under `--out`.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from sparseyolo.bench.common import markdown_table, val_composites, write_csv, write_text
from sparseyolo.data.split import load_split

EMPTY_TARGET, CROWDED_TARGET = 0.40, 0.80


def varied_images(composites: int) -> tuple[list[tuple[Path, str, int]], list[str]]:
    """`(val images as (path, kind, objects), calibration images)`: the forest val tiles and `composites` val
    composites; the shipped DFF references' calibration set (training tiles and training composites)."""
    from sparseyolo.data.aerial import build_aerial_dataset
    from sparseyolo.yolo.recipe import COMPOSITES, Recipe, calibration_set

    def counted(data_yaml: Path, kind: str) -> list[tuple[Path, str, int]]:
        images, gt, _ = load_split(data_yaml, "val")
        per_image = Counter(a["image_id"] for a in gt["annotations"])
        return [(p, kind, per_image[i]) for i, p in enumerate(images, start=1)]

    recipe = Recipe(composites=COMPOSITES)
    val = counted(build_aerial_dataset(tile=recipe.tile, overlap=recipe.overlap), "forest")
    if composites:
        val += counted(val_composites(composites, recipe.imgsz), "composite")
    return val, calibration_set(recipe)[0]


def decisions(yolo, images, budget: float | None) -> list[dict]:
    """One row per image: the neck's last_stats after `predict` at the model's threshold (or at `budget`'s)."""
    import torch

    from sparseyolo.nn.dff import dff_necks

    yolo.predictor = None  # set up afresh from `yolo.model` as it is now (its threshold included)
    for n in dff_necks(yolo.model):
        n.last_stats = {}
    rows = []
    for path, kind, n in images:
        yolo.predict(str(path), imgsz=320, conf=0.25, verbose=False, **({"budget": budget} if budget else {}))
        ran = getattr(getattr(yolo.predictor, "model", None), "model", None)  # AutoBackend's model: may be a copy
        necks = dff_necks(yolo.model) + (dff_necks(ran) if isinstance(ran, torch.nn.Module) else [])
        s = next((n.last_stats for n in necks if n.last_stats), None)
        if s is None:
            raise RuntimeError(f"{path.name}: no DFF neck of the model recorded a forward; is it a DFF model?")
        depth = s["depth"][0].tolist()
        row = {"image": path.name, "kind": kind, "objects": n, "ratio": float(s["ratio"][0])}
        row["complexity"] = float(s["complexity"][0])
        rows.append({**row, **{f"depth P{i + 3}": d for i, d in enumerate(depth)}})
    return rows


def summary(rows: list[dict]) -> dict:
    r = np.array([x["ratio"] for x in rows])
    n = np.array([x["objects"] for x in rows])
    third = np.argsort(n, kind="stable")[-max(1, len(r) // 3) :]
    cx = np.array([x["complexity"] for x in rows])
    levels = [k for k in rows[0] if k.startswith("depth ")]
    depth = "; ".join(
        f"{k[6:]}: " + " ".join(f"{d}x{int(sum(x[k] == d for x in rows))}" for d in sorted({x[k] for x in rows}))
        for k in levels
    )
    return {
        "p10/p50/p90": "/".join(f"{np.percentile(r, q):.3f}" for q in (10, 50, 90)),
        "empty": float(r[n == 0].mean()) if (n == 0).any() else None,
        "crowded third": float(r[third].mean()),
        "crowded from": int(n[third].min()),
        "complexity p10/p90": f"{np.percentile(cx, 10):.3f}/{np.percentile(cx, 90):.3f}",
        "depth (level: depth x images)": depth,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sparseyolo bench neck-spread", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="yolov8n-dff-aerial", help="DFF models, comma-separated (names or .pt)")
    ap.add_argument("--budget", type=float, default=None, help="also run at this calibrated budget, in (0, 1]")
    ap.add_argument("--composites", type=int, default=64, help="val composites beside the forest tiles (0: none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("results/bench-neck-spread"))
    a = ap.parse_args(argv)
    if a.budget is not None and not 0.0 < a.budget <= 1.0:
        ap.error(f"--budget must be in (0, 1], got {a.budget}")
    if a.composites < 0:
        ap.error(f"--composites must be >= 0, got {a.composites}")
    names = [m for m in a.models.split(",") if m]
    if not names:
        ap.error("--models needs at least one DFF model")
    try:
        return run(names, a)
    except (FileNotFoundError, ValueError) as e:
        print(f"sparseyolo bench neck-spread: error: {e}")
        return 1


def run(names: list[str], a) -> int:
    from sparseyolo.nn.dff import dff_necks
    from sparseyolo.threads import set_threads
    from sparseyolo.yolo import YOLO
    from sparseyolo.yolo.budget import calibrate
    from sparseyolo.yolo.recipe import COMPOSITES

    models = {name: YOLO(name) for name in names}  # every model found before any work
    for name, yolo in models.items():
        if not dff_necks(yolo.model):
            raise ValueError(f"{name} has no DFF neck; pass DFF models (e.g. yolov8n-dff-aerial)")
    set_threads(a.threads)
    images, calib = varied_images(a.composites)
    table, csv_rows = [], []
    for name, yolo in models.items():
        points = [("threshold as shipped", None)]
        if a.budget is not None:
            points.append((f"budget {a.budget} (calibrated on varied training images)", a.budget))
        for label, budget in points:
            if budget is not None:  # after the as-shipped run: calibrating moves the neck's threshold
                try:
                    calibrate(yolo.model, calib, budget, imgsz=320, progress=False)
                except ValueError as e:  # out of reach for this model: say so, measure the others
                    print(f"{name}, {label}: {e}")
                    table.append([name, label, "out of reach", None, "-", "-", str(e).split(";")[0]])
                    continue
            rows = decisions(yolo, images, budget)
            s = summary(rows)
            crowded = f"{s['crowded third']:.3f} (>= {s['crowded from']})"
            table.append([name, label, s["p10/p50/p90"], s["empty"], crowded, s["complexity p10/p90"],
                          s["depth (level: depth x images)"]])  # fmt: skip
            csv_rows += [{"model": name, "point": label, **r} for r in rows]
            print(f"{name}, {label}: {s}")
    headers = ["model", "operating point", "neck FLOPs / all-on p10/p50/p90", "empty images (<= 0.40)",
               "crowded third (>= 0.80; from N objects)", "complexity p10/p90", "depth per level"]  # fmt: skip
    for r in table:
        r[3] = "n/a" if r[3] is None else f"{r[3]:.3f}"
    n_comp = sum(k == "composite" for _, k, _ in images)
    text = (
        f"# DFF neck: per-image decisions on varied images\n\n{len(images) - n_comp} forest val tiles and {n_comp} "
        f"val composites (320 px, foreground {list(COMPOSITES['fg'])}), batch 1, conf 0.25.\n\n"
        f"{markdown_table(headers, table)}\n"
    )
    write_text(a.out / "neck-spread.md", text)
    write_csv(a.out / "neck-spread.csv", csv_rows)
    plot_spread(csv_rows, a.out / "neck-spread.png")
    print(text)
    return 0


def plot_spread(rows: list[dict], path: Path) -> Path:
    """Per-image neck FLOPs over all-on against the object count, one panel per model and operating point (forest
    tiles and composites apart), with the two targets drawn in."""
    from sparseyolo.eval.report import pyplot, save_figure

    plt = pyplot()
    keys = list(dict.fromkeys((r["model"], r["point"]) for r in rows))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False, sharey=True)
    for ax, (model, point) in zip(axes[0], keys, strict=True):
        for kind, marker in (("forest", "o"), ("composite", "^")):
            pts = [(r["objects"], r["ratio"]) for r in rows if (r["model"], r["point"]) == (model, point)
                   and r["kind"] == kind]  # fmt: skip
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, marker=marker, alpha=0.7, label=kind)
        ax.axhline(EMPTY_TARGET, color="tab:red", lw=0.8, ls="--", label="empty: at most")
        ax.axhline(CROWDED_TARGET, color="tab:green", lw=0.8, ls="--", label="crowded third: at least")
        src = Path(str(model))
        name = f"{src.parent.parent.name}/{src.name}" if src.parent.name == "weights" else src.name  # run/x.pt
        ax.set_title(f"{name}\n{point}", fontsize=8)
        ax.set_xlabel("objects in the image")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("neck FLOPs / all-on")
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, path)
