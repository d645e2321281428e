"""Orthomosaics: sparse references window by window vs the dense reference window by window, SAHI and dense at 640.

`sparseyolo bench mosaic [--size 16384] [--tile 4096] [--fg 0.01] [--window 4096] [--models A,B] [--dense M]
[--methods windows,sahi,640] [--workers 1,2] [--inputs 4] [--threads 2] [--out results/bench-mosaic]`

A composite mosaic (`sparseyolo.mosaic.samples.build_mosaic`: real crowns on real ground, `fg` of the area in
boxes, a tiled GeoTIFF with a CRS, cached under `--data`) is run by

- each sparse reference in `--models` and the dense reference `--dense` through `predict_mosaic` (window by window,
  `--window`, default overlap), one process;
- the dense reference with SAHI (640-px slices, overlap 0.2, plus SAHI's full-image pass) and downscaled to 640
  (`sparseyolo.eval.compare.Runner`), both on the whole raster read into memory (what those methods need);

each in a fresh process (`--one`, below), so that its peak resident memory is its own: wall time of the call (the
model loaded and warmed up before, one call: a large mosaic takes minutes; the one harness's `time_call`), the
process's peak RSS (`ru_maxrss`: imports, model and raster included) and COCO AP against the mosaic's ground truth
(`--conf`, default 0.001 for AP; the same run is the timed one). Then `--workers`: the first sparse model on
`--inputs` copies of the mosaic with `workers=N` (a local Dask cluster of N single-thread workers; wall time end to
end, cluster start and model loading included), against N=1.

Writes `mosaic.md` and `mosaic.csv` under `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_MODELS = "yolov8n-sparse-aerial,yolov8n-sparse-p3-aerial"
DENSE = "yolov8n-aerial"


def _gt(tif: Path) -> dict:
    d = json.loads(tif.with_name(tif.stem + ".gt.json").read_text())
    return {k: d[k] for k in ("images", "annotations", "categories")}


def _peak_mib() -> dict:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_mib": round(own, 1), "peak_children_mib": round(kids, 1)}


def run_one(spec: dict) -> dict:
    """One method in this process: `{"seconds", "peak_mib", "peak_children_mib", "rows"}` (COCO result rows)."""
    import numpy as np

    from sparseyolo.yolo.integration import enable

    enable()  # first: offline defaults before Ultralytics loads, then registration
    from sparseyolo.bench.common import time_call
    from sparseyolo.eval.coco import to_coco_results

    method, tif, conf = spec["method"], Path(spec["raster"]), spec["conf"]
    if method == "windows":
        from sparseyolo.mosaic.run import predict_mosaic

        workers = spec.get("workers", 0)
        model = spec["model"]
        if not workers:  # load and warm the model before the timed call
            from sparseyolo.mosaic.detector import YOLODetector

            det = YOLODetector(model, conf=conf)
            det(np.zeros((64, 64, 3), np.uint8))
            model = det.yolo
        out = Path(spec["out"])
        kw = dict(window=spec["window"], conf=conf, progress=False, force=True, workers=workers)
        seconds, res = time_call(lambda: predict_mosaic(model, spec["sources"] or tif, out, **kw))
        bad = [r.error for r in res if r.status != "done"]
        if bad:
            raise RuntimeError(f"mosaic run failed: {bad}")
        anns = json.loads((out / f"{tif.stem}.coco.json").read_text())["annotations"]
        rows = [{"image_id": 1, "category_id": a["category_id"], "bbox": a["bbox"], "score": a["score"]} for a in anns]
    else:
        import rasterio

        from sparseyolo.eval.compare import Runner
        from sparseyolo.yolo.api import YOLO

        runner = Runner(YOLO(spec["model"]), method)
        with rasterio.open(tif) as ds:
            image = np.ascontiguousarray(ds.read().transpose(1, 2, 0))
        runner(image[:64, :64], conf)  # creates the predictor (and SAHI's wrapper)
        seconds, det = time_call(lambda: runner(image, conf))
        rows = to_coco_results(1, det.boxes, det.scores, det.classes)
    return {"seconds": seconds, **_peak_mib(), "rows": rows}


def _child(spec: dict, workdir: Path) -> dict:
    """`run_one(spec)` in a fresh Python process; its result."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{spec['name']}.json"
    cmd = [sys.executable, "-m", "sparseyolo.bench.mosaic", "--one", json.dumps(spec), "--result", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['name']} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sparseyolo bench mosaic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=16384, help="mosaic side in px (default 16384)")
    ap.add_argument("--tile", type=int, default=4096, help="composite frames of about this side (default 4096)")
    ap.add_argument("--fg", type=float, default=0.01, help="share of the area in boxes (default 0.01)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window", type=int, default=4096, help="mosaic window (default 4096)")
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"sparse references (default {DEFAULT_MODELS})")
    ap.add_argument("--dense", default=DENSE, help=f"dense reference (default {DENSE})")
    ap.add_argument("--methods", default="windows,sahi,640", help="dense methods: windows,sahi,640 (default all)")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare ('' to skip; default 1,2)")
    ap.add_argument("--inputs", type=int, default=4, help="mosaics in the workers comparison (default 4)")
    ap.add_argument("--conf", type=float, default=0.001, help="confidence threshold (default 0.001, for AP)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the one-process runs (default 2)")
    ap.add_argument("--data", type=Path, default=None, help="where the mosaic is built (default: the data cache)")
    ap.add_argument("--out", type=Path, default=Path("results/bench-mosaic"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:  # a child: one method (with its threads), its result as JSON
        from sparseyolo.threads import threads

        with threads(json.loads(a.one)["threads"]):
            Path(a.result).write_text(json.dumps(run_one(json.loads(a.one))))
        return 0
    if a.size < 192 or a.tile < 192 or a.window < 32 or a.threads < 1 or a.inputs < 1:
        ap.error("--size and --tile must be >= 192, --window >= 32, --threads and --inputs >= 1")
    methods = [m for m in a.methods.split(",") if m]
    unknown = sorted(set(methods) - {"windows", "sahi", "640"})
    if unknown:
        ap.error(f"unknown --methods {unknown}; expected windows, sahi, 640")
    try:
        workers = [int(w) for w in a.workers.split(",") if w]
    except ValueError:
        ap.error(f"--workers must be comma-separated integers, got {a.workers!r}")
    from sparseyolo.bench.common import markdown_table, system_info, write_csv, write_text
    from sparseyolo.data.registry import cache_dir
    from sparseyolo.eval.coco import coco_metrics
    from sparseyolo.mosaic.samples import build_mosaic

    data = a.data or cache_dir() / "mosaics"
    t0 = time.perf_counter()
    tif = build_mosaic(data, size=a.size, tile=min(a.tile, a.size), fg=a.fg, seed=a.seed, progress=True)
    print(f"mosaic {tif} ({time.perf_counter() - t0:.0f} s)")
    gt = _gt(tif)
    work = a.out / "runs"
    base = {"raster": str(tif), "conf": a.conf, "threads": a.threads, "window": a.window, "sources": None}
    plan = [(m, "windows") for m in a.models.split(",") if m] + [(a.dense, m) for m in methods]
    rows = []
    for model, method in plan:
        name = f"{model}-{method}"
        spec = {**base, "name": name, "model": model, "method": method, "out": str(work / name)}
        print(f"running {model} · {method} ...", flush=True)
        r = _child(spec, work)
        m = coco_metrics(gt, r["rows"], per_image=False, max_det=max(1, len(r["rows"])))
        rows.append(
            {
                "model": model,
                "method": "mosaic windows" if method == "windows" else method,
                "workers": 0,
                "seconds": round(r["seconds"], 2),
                "peak_mib": r["peak_mib"],
                "map": m["map"],
                "map50": m["map50"],
                "detections": len(r["rows"]),
            }
        )
        print(rows[-1], flush=True)
    if workers:
        srcs = data / f"inputs-{tif.stem}-x{a.inputs}"
        srcs.mkdir(parents=True, exist_ok=True)
        for k in range(a.inputs):
            link = srcs / f"{tif.stem}-{k}.tif"
            if not link.exists():
                os.link(tif, link)
        model = a.models.split(",")[0] or a.dense
        for n in workers:
            name = f"{model}-workers{n}"
            spec = {
                **base,
                "name": name,
                "model": model,
                "method": "windows",
                "out": str(work / name),
                "sources": str(srcs),
                "workers": n,
                "raster": str(srcs / f"{tif.stem}-0.tif"),
            }
            print(f"running {model} · {a.inputs} inputs · workers={n} ...", flush=True)
            r = _child(spec, work)
            rows.append(
                {
                    "model": model,
                    "method": f"{a.inputs} inputs, local Dask",
                    "workers": n,
                    "seconds": round(r["seconds"], 2),
                    "peak_mib": r["peak_mib"],
                    "peak_children_mib": r["peak_children_mib"],
                    "detections": len(r["rows"]),
                }
            )
            print(rows[-1], flush=True)

    def f(v, d=3):
        return "-" if v is None else f"{v:.{d}f}" if isinstance(v, float) else str(v)

    headers = ["model", "method", "workers", "wall s", "peak MiB", "mAP50-95", "mAP50", "detections"]
    keys = ["model", "method", "workers", "seconds", "peak_mib", "map", "map50", "detections"]
    table = markdown_table(
        headers, [[f(r.get(k), 2 if k in ("seconds", "peak_mib") else 3) for k in keys] for r in rows]
    )
    info = system_info()
    head = (
        f"mosaic {tif.name}: {a.size}x{a.size}, fg {a.fg} ({len(gt['annotations'])} objects), window {a.window}, "
        f"conf {a.conf}, {a.threads} threads; {info.get('cpu', '')} {info.get('date (UTC)', '')}\n\n"
    )
    text = (
        head + table + "\n\nwall s: one call after the model is loaded and warmed up (workers rows: end to end, "
        "cluster start and model loading included); peak MiB: the process's peak RSS (workers rows: the client "
        "process; the workers' own peaks are in the CSV)\n"
    )
    print("\n" + text)
    write_text(a.out / "mosaic.md", text)
    write_csv(a.out / "mosaic.csv", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
