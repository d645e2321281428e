"""`sparseyolo train|val|predict|export|convert|finder|calibrate key=value`: Ultralytics modes, SparseYOLO added.

Every Ultralytics argument passes through unchanged (`imgsz=640 epochs=3 device=cpu ...`); unknown keys are
reported with Ultralytics' own suggestions. Offline by default (see `sparseyolo.yolo.integration`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from sparseyolo.cliargs import flag

MODES = ("train", "val", "predict", "export", "convert", "finder", "calibrate")

HELP = """usage: sparseyolo MODE [key=value ...]

modes:
  train     model=yolov8n-sparse.yaml data=data.yaml epochs=1 imgsz=640 ...
  val       model=runs/detect/train/weights/best.pt data=data.yaml
  predict   model=best.pt source=image.jpg
  export    model=best.pt format=onnx [stem=dense]   (stem=dense: export sparse stems as dense layers)
  convert   model=dense.pt out=sparse.pt [stages=5 sparsify=nonzero keep=1.0 p3=True]
            (p3=True: also the stride-8 path past the stem, as yolov8-sparse-p3.yaml; p4=True: and the
            stride-16 path; sparsify=finder: a foreground finder, margin sized to the sparse layers)
  finder    model=sparse.pt [out=... recall=0.99 train=True steps=6000 data=data.yaml composites=True]
            (train the foreground finder from boxes, calibrate it to `recall`; train=False: calibrate only)
  calibrate model=best.pt data=data.yaml budget=0.7 [imgsz=640 out=calibrated.pt]
            (DFF neck: the gate threshold whose mean executed neck FLOPs on the images is within budget)
DFF necks: predict/val budget=0.7 (needs a calibration); predict target_fps=15 preset=cpu|gpu|edge;
  train dff_warmup=0.3 dff_finetune=0.15
  dff_t_start=1.0 dff_t_end=0.2 dff_budget=0.6 dff_eff_weight=2.0 (curriculum)
sparse blocks: predict/val crossover=0.5 (occupancy above which they run dense; default: `sparseyolo bench
  crossover --save`'s stored value)
sparse stem settings (train/val/predict/export): sparsify=nonzero|threshold|gradient|learned
  sparsify_threshold=0.1 sparsify_keep=0.25 sparsify_dilate=2 sparsify_max_active=200000
All Ultralytics arguments pass through (see `yolo cfg`). Model YAMLs shipped: {cfgs}
"""


def _parse(args: list[str]) -> dict:
    from ultralytics.cfg import merge_equals_args, parse_key_value_pair

    out = {}
    for a in merge_equals_args(args):
        if "=" not in a:
            raise SyntaxError(f"argument {a!r} is not key=value")
        try:
            k, v = parse_key_value_pair(a)
        except AssertionError as e:
            raise SyntaxError(str(e)) from e
        out[k] = v
    return out


def unknown_keys(overrides: dict) -> list[str]:
    """One message per key that is not an Ultralytics argument, with the closest valid keys."""
    from difflib import get_close_matches

    from ultralytics.cfg import _handle_deprecation
    from ultralytics.utils import DEFAULT_CFG_DICT

    _handle_deprecation(overrides)
    valid = set(DEFAULT_CFG_DICT) | {"augmentations", "save_dir"}
    out = []
    for k in overrides:
        if k not in valid:
            close = get_close_matches(k, sorted(valid), n=3)
            out.append(f"unknown argument {k!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        from sparseyolo.yolo.cfg import list_cfgs

        print(HELP.format(cfgs=", ".join(list_cfgs())))
        return 0 if argv else 2
    mode, rest = argv[0], argv[1:]
    if mode not in MODES:
        print(f"sparseyolo: unknown mode {mode!r}; expected one of {', '.join(MODES)}", file=sys.stderr)
        return 2
    if any(a in ("-h", "--help", "help") for a in rest):
        from sparseyolo.yolo.cfg import list_cfgs

        print(HELP.format(cfgs=", ".join(list_cfgs())))
        return 0
    from sparseyolo.yolo.integration import enable

    enable()  # first: offline defaults before Ultralytics loads, then registration
    try:
        overrides = _parse(rest)
    except SyntaxError as e:
        print(f"sparseyolo {mode}: {e}", file=sys.stderr)
        return 2
    if mode == "convert":
        from sparseyolo.yolo.convert import cli_main

        return cli_main(overrides)
    if mode == "finder":
        return finder_main(overrides)
    if mode == "calibrate":
        return calibrate_main(overrides)
    return run_mode(mode, overrides)


def run_mode(mode: str, overrides: dict) -> int:
    from ultralytics.utils import ASSETS

    from sparseyolo.yolo import YOLO

    stem = overrides.pop("stem", None) if mode == "export" else None
    sparsify = {}
    for key in list(overrides):
        if key == "sparsify":
            sparsify["method"] = overrides.pop(key)
        elif key.startswith("sparsify_"):
            sparsify[key[len("sparsify_") :]] = overrides.pop(key)
    if stem not in (None, "dense", "sparse"):
        print(f"sparseyolo export: stem must be 'dense' or 'sparse', got {stem!r}", file=sys.stderr)
        return 2
    dff = {k: overrides.pop(k) for k in list(overrides) if k.startswith("dff_")} if mode == "train" else {}
    for key in ("budget", "crossover") + (("target_fps", "preset") if mode == "predict" else ()):
        if mode in ("predict", "val") and key in overrides:
            dff[key] = overrides.pop(key)
    bad = unknown_keys(overrides)
    if bad:
        print(f"sparseyolo {mode}: " + "; ".join(bad), file=sys.stderr)
        return 2
    model_name = overrides.pop("model", None) or "yolov8n-sparse.yaml"
    overrides.pop("mode", None)
    if mode == "predict" and "source" not in overrides:
        overrides["source"] = str(ASSETS)
    try:
        model = YOLO(model_name, task=overrides.pop("task", None), sparsify=sparsify or None)
        if mode == "export":
            from sparseyolo.yolo.export import export

            out = export(model, stem=stem or "dense", **overrides)
            print(out)
            return 0
        getattr(model, mode)(**overrides, **dff)
    except (FileNotFoundError, ValueError, RuntimeError, TypeError, SyntaxError) as e:
        print(f"sparseyolo {mode}: error: {e}", file=sys.stderr)
        return 1
    return 0


def calibrate_main(overrides: dict) -> int:
    """`sparseyolo calibrate model=... data=... budget=0.7 [imgsz=640 out=...]`: calibrate and save."""
    allowed = {"model", "data", "source", "budget", "imgsz", "out"}
    bad = sorted(set(overrides) - allowed)
    if bad:
        print(f"sparseyolo calibrate: unknown argument(s) {bad}; expected {sorted(allowed)}", file=sys.stderr)
        return 2
    source = overrides.get("source") or overrides.get("data")
    if "model" not in overrides or source is None or "budget" not in overrides:
        print("sparseyolo calibrate: needs model=..., data=... (or source=...) and budget=...", file=sys.stderr)
        return 2
    from sparseyolo.yolo import YOLO

    name = str(overrides["model"])
    try:
        model = YOLO(name)
        report = model.calibrate(source, budget=float(overrides["budget"]), imgsz=int(overrides.get("imgsz", 640)))
        out = Path(overrides.get("out") or Path("runs/calibrate") / f"{Path(name).stem}-budget{report['budget']}.pt")
        out.parent.mkdir(parents=True, exist_ok=True)
        model.save(str(out))
    except (FileNotFoundError, ValueError, RuntimeError, TypeError) as e:
        print(f"sparseyolo calibrate: error: {e}", file=sys.stderr)
        return 1
    print(f"threshold -> mean neck FLOP ratio on {report['images']} images (imgsz {report['imgsz']}):")
    for t, r in zip(report["thresholds"], report["curve"], strict=True):
        mark = "  <- chosen" if abs(t - report["threshold"]) < 1e-9 else ""
        print(f"  {t:.3f}  {r:.3f}{mark}")
    print(f"budget {report['budget']}: threshold {report['threshold']:.3f}, ratio {report['ratio']:.3f}; saved {out}")
    return 0


FINDER_KEYS = ("model", "out", "recall", "train", "steps", "data", "composites", "seed", "threads")


def finder_main(overrides: dict) -> int:
    """`sparseyolo finder model=M [out=PATH recall=0.99 train=True steps=6000 data=YAML composites=True seed=0
    threads=2]`: train the foreground finder of M (a model with `sparsify=finder`, e.g. from `sparseyolo convert
    ... sparsify=finder`) from boxes and calibrate it to `recall` (`train=False`: calibrate only), then save it
    to `out` (default `runs/finder/<model>-finder.pt`); prints the report."""
    import json

    from sparseyolo.threads import threads
    from sparseyolo.yolo import YOLO
    from sparseyolo.yolo.finder import COMPOSITES

    def fail(msg: str, code: int = 2) -> int:
        print(f"sparseyolo finder: {msg}", file=sys.stderr)
        return code

    bad = sorted(set(overrides) - set(FINDER_KEYS))
    if bad:
        return fail(f"unknown argument(s) {bad}; expected {', '.join(FINDER_KEYS)}")
    if "model" not in overrides:
        return fail("model= is required: a checkpoint or YAML with sparsify=finder (`sparseyolo convert model=dense.pt "
                    "sparsify=finder p3=True p4=True` makes one from a dense model)")  # fmt: skip
    try:
        flags = {key: flag(overrides, key, True) for key in ("train", "composites")}
    except ValueError as e:
        return fail(str(e))
    try:
        recall = float(overrides.get("recall", 0.99))
        steps, seed, n_threads = (int(overrides.get(k, d)) for k, d in (("steps", 6000), ("seed", 0), ("threads", 2)))
    except (TypeError, ValueError) as e:
        return fail(f"recall must be a number and steps/seed/threads integers: {e}")
    if not 0.0 < recall <= 1.0 or steps < 1 or n_threads < 1:
        return fail(f"recall must be in (0, 1], steps and threads >= 1; got recall={recall}, steps={steps}, "
                    f"threads={n_threads}")  # fmt: skip
    name = str(overrides["model"])
    out = Path(str(overrides.get("out") or Path("runs/finder") / f"{Path(name).stem}-finder.pt"))
    composites = COMPOSITES if flags["composites"] else None
    try:
        with threads(n_threads):
            model = YOLO(name)
            if flags["train"]:
                report = model.train_finder(recall=recall, data=overrides.get("data"), composites=composites,
                                            steps=steps, seed=seed)  # fmt: skip
            else:
                report = model.calibrate_recall(recall, data=overrides.get("data"), composites=composites)
        out.parent.mkdir(parents=True, exist_ok=True)
        model.save(str(out))
    except (FileNotFoundError, ValueError, RuntimeError, TypeError) as e:
        return fail(f"error: {e}", 1)
    cal = report.get("calibration", report)
    print(json.dumps(report, indent=1, default=str))
    print(f"sparseyolo finder: threshold {cal['threshold']:.4g}: recall {cal['recall']:.3f}, active share "
          f"{cal['active']:.3f} on {cal['images']} calibration images (margin {cal['margin']} px)")  # fmt: skip
    print(f"saved {out}")
    return 0
