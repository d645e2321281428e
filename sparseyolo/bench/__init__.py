"""`sparseyolo bench NAME [options]`: benchmarks that print a table and write markdown, CSV and a plot.

Each benchmark is a module (or a package) with `main(argv: list[str]) -> int` and a docstring whose first
line describes it. Modules are imported only when their benchmark is run, so `sparseyolo bench --help` stays
fast and a benchmark whose module (or optional dependency) is missing does not break the others.

One timing harness serves every benchmark, in `sparseyolo.bench.common`: `latency` (p50/p90 of callables timed
interleaved) and, underneath it, `Variant` + `run_interleaved` (sample budgets, memory probes); also thread
control, peak-memory probes, the GEMM reference, tables and CSV/markdown files.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line description)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "sparse-conv": (
        "sparseyolo.bench.sparse_conv",
        "sparse conv engine vs dense F.conv2d/conv3d and spconv: time, speed-up, GFLOP/s, memory",
    ),
    "stem": ("sparseyolo.bench.stem", "hybrid sparse YOLOv8 stem vs the dense stem"),
    "crossover": (
        "sparseyolo.bench.crossover",
        "occupancy above which sparse blocks run dense (sparse-P3+P4 YOLOv8n per candidate); --save stores it",
    ),
    "aerial": ("sparseyolo.bench.aerial", "reference detectors on the held-out aerial scene: where the time goes"),
    "neck": ("sparseyolo.bench.neck", "DFF neck vs stock PAN: accuracy, executed neck FLOPs, latency, budgets"),
    "neck-spread": (
        "sparseyolo.bench.neck_spread",
        "DFF neck: per-image decisions on forest tiles and composites (empty to crowded), against the spread targets",
    ),
    "finder": (
        "sparseyolo.bench.finder",
        "where sparse models look: mask recall, active share, finder cost, blank frames, against the targets",
    ),
    "mosaic": (
        "sparseyolo.bench.mosaic",
        "orthomosaic window by window: sparse vs dense windows, SAHI, dense at 640; memory, AP; 1 vs 2 workers",
    ),
}


def usage() -> str:
    width = max(len(name) for name in BENCHMARKS)
    lines = [
        "usage: sparseyolo bench NAME [options]   (`sparseyolo bench NAME --help` for its options)",
        "",
        "benchmarks:",
    ]
    lines += [f"  {name:<{width}}  {description}" for name, (_, description) in BENCHMARKS.items()]
    return "\n".join(lines)


def load(name: str):
    """The module of benchmark `name`. Raises `KeyError` for an unknown name, `ImportError` when missing."""
    if name not in BENCHMARKS:
        raise KeyError(name)
    module_name = BENCHMARKS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            raise ImportError(
                f"benchmark {name!r} is not available: module {module_name} is not part of this installation"
            ) from None
        raise


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help", "list"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    try:
        module = load(name)
    except KeyError:
        print(f"sparseyolo bench: unknown benchmark {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    except ImportError as error:
        print(f"sparseyolo bench: {error}", file=sys.stderr)
        return 2
    from sparseyolo.threads import threads

    with threads(None):  # a benchmark sets its --threads: the caller's count is back after it
        return int(module.main(rest) or 0)
