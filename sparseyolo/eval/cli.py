"""`sparseyolo eval model=A[,B...] data=data.yaml [split=val methods=native,640,sahi repeats=3 out=runs/eval]`."""

from __future__ import annotations

import sys
from pathlib import Path

from sparseyolo.cliargs import flag

HELP = """usage: sparseyolo eval model=NAME_OR_PATH[,...] data=DATA [key=value ...]

  model=    shipped reference names (yolov8n-aerial, yolov8n-sparse-aerial, ...), .pt checkpoints or YAMLs
  data=     a YOLO data.yaml (ground truth from its label files) or an images folder with labels/ beside it
  split=    val (default) or any split key of data.yaml (e.g. the aerial dataset's full.yaml `val` = whole scene)
  methods=  native,640,sahi (default: native): native resolution, downscaled to 640, SAHI slices
  repeats=  timing rounds (default 3; 0: no timing)
  memory=   True|False: peak-memory probe per model and method (default True)
  out=      report folder (default runs/eval): eval.{md,csv,json}, per image eval_per_image.{csv,json}
  save_masks= True|False: write each sparse model's mask over its image to OUT/masks/ (default False)

Models with a sparse stem report their mask recall (the share of ground-truth objects with at least 90% of
their box active in the mask that ran) and the active share of the images' pixels, per dataset and per image.
"""

KEYS = ("model", "data", "split", "methods", "repeats", "memory", "out", "save_masks")


def main(argv: list[str]) -> int:
    if not argv or any(a in ("-h", "--help", "help") for a in argv):
        print(HELP)
        return 0 if argv else 2
    args = {}
    for a in argv:
        if "=" not in a:
            print(f"sparseyolo eval: argument {a!r} is not key=value\n\n{HELP}", file=sys.stderr)
            return 2
        k, v = a.split("=", 1)
        if k not in KEYS:
            print(f"sparseyolo eval: unknown argument {k!r}; expected {', '.join(KEYS)}", file=sys.stderr)
            return 2
        args[k] = v
    if "model" not in args or "data" not in args:
        print("sparseyolo eval: model= and data= are required", file=sys.stderr)
        return 2
    try:
        return run(args)
    except (FileNotFoundError, ValueError, RuntimeError, TypeError) as e:
        print(f"sparseyolo eval: error: {e}", file=sys.stderr)
        return 1


def run(args: dict) -> int:
    from sparseyolo.yolo.integration import enable

    enable()  # first: offline defaults before Ultralytics loads, then registration
    from sparseyolo.data.split import load_split
    from sparseyolo.eval.compare import METHODS, evaluate
    from sparseyolo.eval.report import rows_table, write_rows
    from sparseyolo.yolo.api import YOLO

    methods = [m for m in args.get("methods", "native").split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"unknown method(s) {bad}; expected some of {', '.join(METHODS)}")
    try:
        repeats = int(args.get("repeats", 3))
    except ValueError as e:
        raise ValueError(f"repeats must be an integer >= 0, got {args['repeats']!r}") from e
    if repeats < 0:
        raise ValueError(f"repeats must be >= 0, got {repeats}")
    memory = flag(args, "memory", True)
    save_masks = flag(args, "save_masks", False)
    images, gt, names = load_split(args["data"], args.get("split", "val"))
    models = {}
    for m in [m for m in args["model"].split(",") if m]:
        y = YOLO(m)
        models[Path(m).stem if m.endswith((".pt", ".yaml", ".yml")) else m] = y
    out = Path(args.get("out", "runs/eval"))
    plan = [(n, me) for n in models for me in methods]
    results = evaluate(models, images, gt, plan, repeats, memory, save_masks=out / "masks" if save_masks else None)
    rows = [r.summary() for r in results]
    write_rows(rows, out / "eval")
    write_rows([row for r in results for row in r.per_image(gt)], out / "eval_per_image")
    (out / "eval.md").write_text(rows_table(rows) + "\n")
    print(rows_table(rows, markdown=False))
    print(
        f"\n{len(images)} images, {len(gt['annotations'])} objects; written to {out}/eval.{{md,csv,json}} and "
        f"per image to {out}/eval_per_image.{{csv,json}}" + (f"; masks in {out}/masks" if save_masks else "")
    )
    return 0
