"""`sparseyolo bench sparse-conv` command line: options -> `Config`, the run, the report files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sparseyolo.bench import common as C
from sparseyolo.bench.sparse_conv.cases import Config, Result, quick_config
from sparseyolo.bench.sparse_conv.plot import plot
from sparseyolo.bench.sparse_conv.report import csv_rows, legend, report_markdown, report_text
from sparseyolo.bench.sparse_conv.run import run


def _densities(text: str) -> tuple[float, ...]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"densities must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("no densities given")
    if any(v > 1 for v in values):  # percentages
        values = [v / 100 for v in values]
    if any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"densities must lie in (0, 1] or (0, 100] %, got {text!r}")
    return tuple(values)


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    from sparseyolo.bench import sparse_conv as package  # its docstring describes the benchmark

    p = argparse.ArgumentParser(prog="sparseyolo bench sparse-conv", description=package.__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (fast, for tests); timings meaningless")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="timed calls per variant and case (default 5; a variant stops earlier after 3 "
        "calls once it has used ~0.6 s, and cheap variants take up to 3x more)",
    )
    p.add_argument("--out", type=Path, default=Path("results/bench"), help="output directory (default results/bench/)")
    p.add_argument(
        "--densities",
        type=_densities,
        default=None,
        help="comma-separated densities, fractions or percent (default 1,5,10,25,50)",
    )
    p.add_argument("--size", type=int, default=None, help="2D map side (default 1024)")
    p.add_argument("--no-spconv", action="store_true", help="do not time spconv even when installed")
    p.add_argument("--no-spconv-1thread", action="store_true", help="skip the extra 1-thread spconv timings")
    p.add_argument("--only", choices=("2d", "3d"), default=None, help="run only the 2D or only the 3D part")
    p.add_argument("--voxel-sizes", type=_floats, default=None, help="3D voxel sizes in metres (default 1,2)")
    p.add_argument("--lidar", default=None, help="a .las/.laz file for 3D (default: laspy's autzen_trim.laz)")
    p.add_argument("--no-plot", action="store_true", help="do not draw sparse_conv.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--seed", type=int, default=0)
    return p


def config_from_args(args) -> Config:
    cfg = quick_config() if args.quick else Config()
    if args.threads < 1:
        raise SystemExit("--threads must be >= 1")
    cfg.threads = args.threads
    if args.repeat is not None:
        if args.repeat < 1:
            raise SystemExit("--repeat must be >= 1")
        cfg.repeat = args.repeat
    cfg.out = args.out
    if args.densities:
        cfg.densities = args.densities
    if args.size:
        cfg.size = args.size
    cfg.spconv = not args.no_spconv
    cfg.spconv_1thread = not args.no_spconv_1thread
    cfg.only = args.only
    if args.voxel_sizes:
        cfg.voxel_sizes = args.voxel_sizes
    cfg.lidar = args.lidar
    cfg.plot = not args.no_plot
    cfg.progress = not args.no_progress
    cfg.seed = args.seed
    return cfg


def write_outputs(result: Result, argv: list[str]) -> dict[str, Path]:
    out = Path(result.config.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": C.write_csv(out / "sparse_conv.csv", csv_rows(result))}
    png = None
    if result.config.plot:
        try:
            png = plot(result, out / "sparse_conv.png")
        except Exception as error:  # a plotting problem must not lose the measurements
            result.notes.append(f"plot failed: {type(error).__name__}: {error}")
    if png:
        paths["png"] = png
    markdown = report_markdown(result, argv, png.name if png else None)
    paths["md"] = C.write_text(out / "sparse_conv.md", markdown)
    return paths


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    cfg = config_from_args(args)
    result = run(cfg)
    paths = write_outputs(result, argv)
    print(report_text(result))
    print("\n" + "\n".join(legend(result)))
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0
