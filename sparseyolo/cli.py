"""`sparseyolo` command line: `bench ...` for benchmarks, `train|val|predict|export|convert ...` for YOLO.

Sub-command implementations are imported on demand, so `sparseyolo bench` works without Ultralytics.
"""

from __future__ import annotations

import sys

USAGE = """usage: sparseyolo COMMAND [ARGS]

commands:
  demo [--train]              the main job: shipped reference detectors on held-out aerial data, side by side
  eval model=... data=...     COCO metrics, executed GFLOPs, latency and memory of models x inference methods
  data aerial|synth|fetch     build datasets (deepforest aerial tiles, synthetic scenes), fetch sample data
  mosaic model=... source=... out=...   rasters of any size (GeoTIFF) window by window -> GeoJSON/CSV/COCO
  bench NAME [options]        run a benchmark (`sparseyolo bench --help` lists them)
  train|val|predict|export    Ultralytics modes with SparseYOLO modules registered: key=value arguments
  convert                     turn the first stages of a dense YOLOv8 checkpoint into sparse blocks
  finder model=...            train a sparse model's foreground finder from boxes and calibrate it for recall
  calibrate model=... data=... budget=0.7   fit a DFF neck's gate threshold to a neck FLOP budget
"""

YOLO_COMMANDS = ("train", "val", "predict", "export", "convert", "finder", "calibrate")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "bench":
        from sparseyolo.bench import main as bench_main

        return bench_main(rest)
    if command == "demo":
        from sparseyolo.demo import main as demo_main

        return demo_main(rest)
    if command == "eval":
        from sparseyolo.eval.cli import main as eval_main

        return eval_main(rest)
    if command == "data":
        from sparseyolo.data.cli import main as data_main

        return data_main(rest)
    if command == "mosaic":
        from sparseyolo.mosaic.cli import main as mosaic_main

        return mosaic_main(rest)
    if command in YOLO_COMMANDS:
        from sparseyolo.yolo.cli import main as yolo_main

        return yolo_main(argv)
    print(f"sparseyolo: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
