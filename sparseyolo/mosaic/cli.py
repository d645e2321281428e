"""`sparseyolo mosaic model=M source=FILE_OR_DIR out=DIR [key=value ...]`: detections over whole rasters."""

from __future__ import annotations

import sys

HELP = """usage: sparseyolo mosaic model=M source=FILE_OR_DIR out=DIR [key=value ...]

Detect objects in rasters of any size (GeoTIFF; PNG/JPEG in pixel coordinates) window by window and write, per
input, OUT/<name>.geojson (boxes in the raster's CRS), .csv and .coco.json (pixels), .quicklook.jpg, .done.json.
A rerun skips finished inputs. A bad input fails alone; the exit status is 1 when any input failed.

  model=M           shipped reference name (yolov8n-sparse-p3-aerial, yolov8n-aerial, ...), model YAML or .pt
  source=PATH       a raster or a folder of rasters (.tif .tiff .png .jpg .jpeg)
  out=DIR           output folder
  window=4096       side of the windows read (rounded down to the model's stride)
  overlap=256       pixels shared by neighbouring windows: at least the largest object (default 2 x max_object)
  max_object=128    the largest object in pixels (sets the default overlap)
  conf=0.25 iou=0.7 as in predict
  bands=1,2,3       band numbers to use as RGB (rasters of 1 or 4+ bands)
  pixel=False       True: accept GeoTIFFs without a CRS (pixel coordinates)
  workers=0         0: this process; N: a local Dask cluster of N single-thread workers
  scheduler=ADDR    a running Dask scheduler (tcp://host:8786) instead
  threads=N         torch threads per process; retries=2 (cluster: reruns of a failing window task)
  device=cpu  force=False  progress=True
"""

KEYS = {
    "model": str,
    "source": str,
    "out": str,
    "window": int,
    "overlap": int,
    "max_object": int,
    "conf": float,
    "iou": float,
    "bands": str,
    "pixel": bool,
    "workers": int,
    "scheduler": str,
    "threads": int,
    "retries": int,
    "device": str,
    "force": bool,
    "progress": bool,
}
REQUIRED = ("model", "source", "out")


def _value(key: str, text: str):
    kind = KEYS[key]
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}= must be True or False, got {text!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{key}= must be an integer, got {text!r}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{key}= must be a number, got {text!r}") from None
    return text


def parse(argv: list[str]) -> dict:
    """`key=value` arguments checked against `KEYS` (a `ValueError` naming the bad one and the keys there are)."""
    args = {}
    for a in argv:
        key, sep, text = a.partition("=")
        key = key.lstrip("-").replace("-", "_")
        if not sep:
            raise ValueError(f"argument {a!r} is not key=value (e.g. model=yolov8n-aerial)")
        if key not in KEYS:
            from difflib import get_close_matches

            near = get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean {near[0]}=?)" if near else ""
            raise ValueError(f"unknown argument {key!r}{hint}; arguments: {', '.join(KEYS)}")
        args[key] = _value(key, text)
    missing = [k for k in REQUIRED if k not in args]
    if missing:
        raise ValueError(
            f"missing {', '.join(k + '=' for k in missing)}: sparseyolo mosaic model=M source=PATH out=DIR"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(HELP)
        return 0 if argv else 2
    try:
        args = parse(argv)
    except ValueError as e:
        print(f"sparseyolo mosaic: {e}", file=sys.stderr)
        return 2
    from sparseyolo.mosaic.run import predict_mosaic

    model, source, out = args.pop("model"), args.pop("source"), args.pop("out")
    try:
        results = predict_mosaic(model, source, out, **args)
    except (FileNotFoundError, FileExistsError, ValueError, TypeError, ConnectionError) as e:
        print(f"sparseyolo mosaic: {e}", file=sys.stderr)
        return 2
    failed = 0
    for r in results:
        if r.status == "failed":
            failed += 1
            print(f"FAILED   {r.error}", file=sys.stderr)
        elif r.status == "skipped":
            print(f"skipped  {r.path} (already done with these settings; force=True reruns it)")
        else:
            print(
                f"done     {r.path}: {r.detections} detections, {r.windows} windows, {r.seconds:.1f} s -> "
                f"{r.outputs.get('geojson')}"
            )
    print(f"{len(results) - failed} of {len(results)} inputs done or skipped; {failed} failed")
    return 1 if failed else 0
