"""Where the sparse models look: their finders' mask recall and active share on held-out scenes, the finder's
cost, and a blank frame end to end, against the issue's targets.

`sparseyolo bench finder [--models yolov8n-sparse-aerial,...] [--dense yolov8n-aerial] [--size 3840x2160]
[--blank 8000] [--repeats 3] [--threads 2] [--out results/bench-finder]`

Sets (never trained or calibrated on): the held-out forest scene (1249x1035, 279 crowns); val composites of
`--size` at 1% and 4% foreground and one with no object (`build_composite_dataset(split="val", images=1,
seed=0)`: held-out crowns on validation ground); a blank grey frame (Ultralytics' letterbox grey) `--blank`
pixels a side. Models: every shipped reference whose sparse stem has a finder (default), or `--models`
(names or checkpoints).

Tables:
1. masks at each model's calibrated threshold: mask recall (share of objects with >= 90% of their box active)
   and active share, per set; the finder runs on each image padded to a multiple of 32, as at native `imgsz`.
2. the finder's trade-off: active share at recall 0.9 / 0.97 / 0.99 with the threshold chosen on that very set
   (an oracle: what a perfectly calibrated threshold would give; not a calibration);
3. time, interleaved (`common.latency`): the finder alone and the dense model's forward on the 1% composite
   (one tensor), and `predict` end to end on the blank frame, sparse vs dense (one round: the dense call takes
   tens of seconds at 8000 px);
4. the targets: recall >= 0.97 on the forest and the 1%/4% composites; active share <= 5% (1%), <= 12% (4%),
   <= 0.5% (blank); blank frame <= 5% of the dense time; finder <= 5% of the dense model's time.
Accuracy and end-to-end speed on the scenes are the demo's (`sparseyolo demo`, the sparse scenes section).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

RECALLS = (0.9, 0.97, 0.99)
TARGETS = {"recall": 0.97, "active 1%": 0.05, "active 4%": 0.12, "active blank": 0.005, "blank time": 0.05,
           "finder time": 0.05}  # fmt: skip


def finder_models(names: list[str] | None):
    """`{name: (YOLO, Sparsifier)}`: the given models, or every shipped reference with a finder."""
    from sparseyolo.yolo.api import YOLO
    from sparseyolo.yolo.finder import finder_sparsifiers
    from sparseyolo.yolo.reference import reference_files, shipped_names

    out = {}
    if names is None:
        names = [n for n in shipped_names() if "finder" in reference_files(n)[0].read_text()]
        if not names:
            raise ValueError("no shipped reference has a finder: pass --models (checkpoints with sparsify=finder)")
    for name in names:
        model = YOLO(name)
        out[name] = (model, finder_sparsifiers(model.model)[0])
    return out


def scene_sets(size: tuple[int, int], blank: int) -> dict:
    """`{set name: (images, boxes)}`: RGB uint8 arrays and xyxy pixel boxes (see the module doc)."""
    from sparseyolo.data.aerial import VAL_SCENES, load_scene
    from sparseyolo.data.composite import build_composite_dataset
    from sparseyolo.data.split import split_boxes

    img, boxes = load_scene(VAL_SCENES[0])
    sets = {"forest": ([img], [boxes])}
    w, h = size
    for fg, label in ((0.01, "1%"), (0.04, "4%"), (0.0, "empty")):
        data = build_composite_dataset(size=(w, h), fg=fg, images=1, split="val", seed=0)
        sets[f"{w}x{h} {label}"] = split_boxes(data, "val")
    sets[f"blank {blank}"] = ([np.full((blank, blank, 3), 114, np.uint8)], [np.zeros((0, 4), np.float32)])
    return sets


def mask_rows(models: dict, sets: dict) -> tuple[list[dict], list[dict]]:
    """Rows of tables 1 and 2 (see the module doc)."""
    from sparseyolo.nn.finder import recall_curve

    masks, curves = [], []
    for name, (_, sp) in models.items():
        f, margin = sp.finder, int(sp.dilate)
        for set_name, (images, boxes) in sets.items():
            at = recall_curve(f, images, boxes, margin=margin, thresholds=[float(f.threshold)])[0]
            masks.append({"model": name, "set": set_name, "recall": at["recall"], "active": at["active"],
                          "threshold": float(f.threshold), "margin": margin})  # fmt: skip
            if any(len(b) for b in boxes):
                row = {"model": name, "set": set_name}
                for p, r in zip(recall_curve(f, images, boxes, RECALLS, margin), RECALLS, strict=True):
                    row[f"active@{r:g}"] = p["active"]
                curves.append(row)
    return masks, curves


def time_rows(models: dict, dense_name: str, sets: dict, size, blank: int, repeats: int, n_threads: int) -> list:
    """Rows of table 3: p50 seconds per model and part (see the module doc)."""
    import torch

    from sparseyolo.bench.common import latency
    from sparseyolo.nn.finder import pad_to
    from sparseyolo.yolo.api import YOLO

    dense = YOLO(dense_name)
    w, h = size
    im = sets[f"{w}x{h} 1%"][0][0]
    x = pad_to(torch.from_numpy(np.require(im, np.uint8, ["C", "W"])).permute(2, 0, 1)[None].float() / 255)
    fns = {(dense_name, f"forward {w}x{h}"): lambda: dense.model(x)}
    for name, (_, sp) in models.items():
        fns[(name, f"finder {w}x{h}")] = lambda f=sp.finder: f(x)
    res = latency({f"{m}|{k}": f for (m, k), f in fns.items()}, repeats=repeats, threads=n_threads)
    frame = np.full((blank, blank, 3), 114, np.uint8)
    calls = {(dense_name, f"predict blank {blank}"): lambda: dense.predict(frame, imgsz=blank, verbose=False)}
    for name, (model, _) in models.items():
        calls[(name, f"predict blank {blank}")] = lambda m=model: m.predict(frame, imgsz=blank, verbose=False)
    res.update(latency({f"{m}|{k}": f for (m, k), f in calls.items()}, repeats=1, warmup=0, threads=n_threads))
    return [{"model": k.split("|")[0], "part": k.split("|")[1], "p50_s": v["p50_ms"] / 1e3} for k, v in res.items()]


def target_rows(masks: list[dict], times: list[dict], dense_name: str, size, blank: int) -> list[dict]:
    """Table 4: one row per model and target, with the measured value and whether it is met."""
    w, h = size
    t = {(r["model"], r["part"]): r["p50_s"] for r in times}
    out = []
    for name in dict.fromkeys(r["model"] for r in masks):
        m = {r["set"]: r for r in masks if r["model"] == name}
        checks = [(f"mask recall, {s}", m[s]["recall"], ">=", TARGETS["recall"])
                  for s in ("forest", f"{w}x{h} 1%", f"{w}x{h} 4%")]  # fmt: skip
        checks += [
            (f"active share, {w}x{h} 1%", m[f"{w}x{h} 1%"]["active"], "<=", TARGETS["active 1%"]),
            (f"active share, {w}x{h} 4%", m[f"{w}x{h} 4%"]["active"], "<=", TARGETS["active 4%"]),
            (f"active share, blank {blank}", m[f"blank {blank}"]["active"], "<=", TARGETS["active blank"]),
            (f"blank {blank} time / dense", t[(name, f"predict blank {blank}")]
             / t[(dense_name, f"predict blank {blank}")], "<=", TARGETS["blank time"]),
            (f"finder time / dense forward, {w}x{h}", t[(name, f"finder {w}x{h}")]
             / t[(dense_name, f"forward {w}x{h}")], "<=", TARGETS["finder time"]),
        ]  # fmt: skip
        for what, value, op, goal in checks:
            met = None if value is None else (value >= goal if op == ">=" else value <= goal)
            out.append({"model": name, "target": f"{what} {op} {goal:g}", "measured": value, "met": met})
    return out


def _size(text: str) -> tuple[int, int]:
    from sparseyolo.data.cli import image_size

    return image_size(text, 640, " (a composite's window)")


def fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sparseyolo bench finder", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated names or checkpoints (default: shipped models with a finder)")
    ap.add_argument("--dense", default="yolov8n-aerial", help="the dense model timed beside them")
    ap.add_argument("--size", type=_size, default=(3840, 2160), help="composite size WIDTHxHEIGHT (default 3840x2160)")
    ap.add_argument("--blank", type=int, default=8000, help="blank frame side in pixels (default 8000)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds of the finder and dense forward (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--out", type=Path, default=Path("results/bench-finder"))
    a = ap.parse_args(argv)
    if a.repeats < 1 or a.threads < 1 or a.blank < 32:
        ap.error("--repeats and --threads must be >= 1 and --blank >= 32")
    from sparseyolo.yolo.integration import enable

    enable()  # first: offline defaults before Ultralytics loads, then registration
    from sparseyolo.bench.common import markdown_table, write_csv, write_text

    try:
        models = finder_models(None if a.models is None else [m for m in a.models.split(",") if m])
    except (FileNotFoundError, ValueError) as e:
        print(f"sparseyolo bench finder: {e}")
        return 2
    sets = scene_sets(a.size, a.blank)
    masks, curves = mask_rows(models, sets)
    times = time_rows(models, a.dense, sets, a.size, a.blank, a.repeats, a.threads)
    targets = target_rows(masks, times, a.dense, a.size, a.blank)
    sections = [
        "masks at the calibrated threshold (recall: objects with >= 90% of their box active)",
        markdown_table(["model", "set", "mask recall", "active share", "threshold", "margin px"],
                       [[r["model"], r["set"], fmt(r["recall"]), fmt(r["active"]), f"{r['threshold']:.3g}",
                         r["margin"]] for r in masks]),  # fmt: skip
        "trade-off: active share at a recall, threshold chosen on the set itself (oracle)",
        markdown_table(["model", "set"] + [f"active @ recall {r:g}" for r in RECALLS],
                       [[r["model"], r["set"]] + [fmt(r[f"active@{x:g}"]) for x in RECALLS] for r in curves]),
        f"time ({a.threads} threads, p50 of {a.repeats} interleaved rounds; the blank predicts: one round)",
        markdown_table(["model", "part", "p50 s"], [[r["model"], r["part"], f"{r['p50_s']:.3f}"] for r in times]),
        "targets",
        markdown_table(["model", "target", "measured", "met"],
                       [[r["model"], r["target"], fmt(r["measured"]),
                         {True: "yes", False: "no", None: "n/a"}[r["met"]]] for r in targets]),
    ]  # fmt: skip
    text = "\n\n".join(sections)
    print(text)
    write_text(a.out / "finder.md", text + "\n")
    write_csv(a.out / "finder-masks.csv", masks)
    write_csv(a.out / "finder-tradeoff.csv", curves)
    write_csv(a.out / "finder-time.csv", times)
    write_csv(a.out / "finder-targets.csv", targets)
    print(f"\nwritten: {a.out}/finder.md and CSVs")
    return 0
