"""`sparseyolo data ...` (also `python -m sparseyolo.data ...`): fetch sample data, build the aerial, the
synthetic and the composite YOLO datasets.

    sparseyolo data fetch
    sparseyolo data aerial --out DIR [--tile 640] [--overlap 0.2] [--min-visible 0.5] [--val-scenes A,B] [--force]
    sparseyolo data synth --out DIR [--images 8] [--size 1920x1080] [--fg 0.05] [--object-size 8-48] [--count N]
                          [--clutter 0.0] [--seed 0] [--val-fraction 0.25] [--force]
    sparseyolo data composite --out DIR [--size 3840x2160] [--fg 0.01] [--images 2] [--split val] [--seed 0] [--force]
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

PROG = "sparseyolo data"
ERRORS = (ValueError, OSError, RuntimeError)  # OSError: FileExistsError, FileNotFoundError, PermissionError, ...


def image_size(text: str, minimum: int = 1, why: str = "") -> tuple[int, int]:
    """`WIDTHxHEIGHT` -> `(width, height)`, each side at least `minimum` (`why`: the reason, for the error); an
    argparse `type` (an `ArgumentTypeError` on bad text)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1920x1080, got {text!r}") from None
    if minimum <= 1 and (w < 1 or h < 1):
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    if w < minimum or h < minimum:
        raise argparse.ArgumentTypeError(f"image size must be at least {minimum}x{minimum}{why}, got {text!r}")
    return w, h


def _object_size(text: str) -> tuple[int, int]:
    """`MIN-MAX` or `SIDE` (pixels) -> `(min, max)`."""
    try:
        parts = [int(v) for v in text.split("-")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected MIN-MAX or SIDE in pixels, e.g. 8-48, got {text!r}")
    return parts[0], parts[-1]


def _fractions(text: str) -> float | list[float]:
    """`F` or `F1,F2,...` -> a float or a list of floats."""
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction or comma-separated fractions, got {text!r}") from None
    return vals[0] if len(vals) == 1 else vals


def _val_scenes(text: str) -> list[str]:
    """Comma-separated scene names; a unique part of a name is enough (`541000` or `OSBS`)."""
    from sparseyolo.data.aerial import SCENES

    out = []
    for token in (t.strip() for t in text.split(",") if t.strip()):
        hits = [s for s in SCENES if token == s] or [s for s in SCENES if token in s]
        if len(hits) != 1:
            why = "matches several scenes" if hits else "matches no scene"
            raise argparse.ArgumentTypeError(f"{token!r} {why}; scenes: {', '.join(SCENES)}")
        out.append(hits[0])
    if not out:
        raise argparse.ArgumentTypeError(f"expected comma-separated scene names, got {text!r}")
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description="Sample data and datasets for SparseYOLO.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="{fetch,aerial,synth,composite}")

    sub.add_parser("fetch", help="download the sample data (deepforest aerial scenes, laspy LiDAR scans) once")

    a = sub.add_parser(
        "aerial",
        help="tile the deepforest aerial scenes into a YOLO dataset (whole scenes held out for validation)",
        description="Tile the deepforest aerial scenes into a YOLO dataset: train tiles, val tiles of the held-out "
        "scenes, and the held-out scenes whole at native resolution (images/full, full.yaml).",
    )
    a.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    a.add_argument("--tile", type=int, default=640, metavar="PX", help="tile side in pixels (default 640)")
    a.add_argument(
        "--overlap", type=float, default=0.2, metavar="F", help="fractional tile overlap in [0, 1) (default 0.2)"
    )
    a.add_argument(
        "--min-visible",
        type=float,
        default=0.5,
        metavar="F",
        help="keep a box cut by a tile border when at least this fraction of it is inside (default 0.5)",
    )
    a.add_argument(
        "--val-scenes",
        type=_val_scenes,
        default=None,
        metavar="A,B",
        help="held-out scenes, comma-separated; a unique part of a name is enough "
        "(default: the 1249x1035 Yellowstone scene, 2019_YELL_2_541000_4977000_image_crop)",
    )
    a.add_argument("--force", action="store_true", help="replace an existing build with other parameters")

    s = sub.add_parser(
        "synth",
        help="synthetic scenes (textured objects on black, controlled foreground) as a YOLO dataset",
        description="Synthetic scenes as a YOLO dataset: textured rectangles and ellipses on an exactly black "
        "background covering --fg of the pixels (or --count objects each), plus unlabelled --clutter.",
    )
    s.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    s.add_argument(
        "--images", type=int, default=8, metavar="N", help="number of images, train and val together (default 8)"
    )
    s.add_argument(
        "--size", type=image_size, default=(1920, 1080), metavar="WxH", help="WIDTHxHEIGHT (default 1920x1080)"
    )
    s.add_argument(
        "--fg", type=float, default=0.05, metavar="F", help="foreground fraction of the pixels in [0, 1) (default 0.05)"
    )
    s.add_argument(
        "--object-size",
        type=_object_size,
        default=(8, 48),
        metavar="MIN-MAX",
        help="object sides MIN-MAX in pixels (default 8-48)",
    )
    s.add_argument(
        "--count", type=int, default=None, metavar="N", help="exactly this many objects per image (overrides --fg)"
    )
    s.add_argument(
        "--clutter",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of the pixels with unlabelled distractors (default 0)",
    )
    s.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    s.add_argument(
        "--val-fraction",
        type=float,
        default=0.25,
        metavar="F",
        help="share of the images for validation (default 0.25)",
    )
    s.add_argument("--force", action="store_true", help="replace an existing build with other parameters")

    c = sub.add_parser(
        "composite",
        help="sparse scenes from real pixels: real tree crowns pasted on real object-free ground, as a YOLO dataset",
        description="Composite frames as a YOLO dataset: ground quilted from object-free meadow windows of the "
        "training scenes, real crowns pasted until their boxes cover --fg of the frame; val: crowns of the held-out "
        "scene on held-out ground, train: crowns of the training scenes on training ground.",
    )
    c.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    c.add_argument(
        "--size", type=image_size, default=(3840, 2160), metavar="WxH", help="WIDTHxHEIGHT (default 3840x2160)"
    )
    c.add_argument(
        "--fg",
        type=_fractions,
        default=0.01,
        metavar="F[,F...]",
        help="share of the frame covered by boxes, in [0, 0.2]; a list is cycled over the images (default 0.01)",
    )
    c.add_argument("--images", type=int, default=2, metavar="N", help="images per split (default 2)")
    c.add_argument(
        "--split", choices=("train", "val", "both"), default="val", help="which split(s) to build (default val)"
    )
    c.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    c.add_argument("--force", action="store_true", help="replace an existing build with other parameters")
    return ap


def _fetch() -> int:
    from sparseyolo.data.aerial import aerial_files
    from sparseyolo.data.lidar import lidar_files

    files = lidar_files()
    print(f"LiDAR samples: {len(files)} files in {files[0].parent}")
    files = aerial_files()
    print(f"aerial samples: {len(files)} files in {files[0].parent}")
    return 0


def _built(kind: str, out: Path, build, summary) -> Path:
    """Run `build()` (a builder returning its `data.yaml`) into `out`; when it reused an existing build with the
    same parameters (the builder then prints nothing), say so with the build's `summary(manifest dict)`."""
    manifest = out / "build.json"
    before = manifest.stat().st_mtime_ns if manifest.is_file() else None
    yaml = build()
    manifest = yaml.parent / "build.json"
    if before is not None and manifest.stat().st_mtime_ns == before:
        print(f"{kind} dataset in {yaml.parent} (existing build with the same parameters, reused)")
        print(summary(json.loads(manifest.read_text())))
    print(f"data: {yaml}")
    return yaml


def _aerial(args: argparse.Namespace) -> int:
    from sparseyolo.data.aerial import VAL_SCENES, BuildReport, build_aerial_dataset

    yaml = _built(
        "aerial",
        args.out,
        partial(
            build_aerial_dataset,
            args.out,
            tile=args.tile,
            overlap=args.overlap,
            val_scenes=args.val_scenes or VAL_SCENES,
            min_visible=args.min_visible,
            force=args.force,
            verbose=True,
        ),
        lambda d: BuildReport(**d).summary(),
    )
    full = yaml.parent / "full.yaml"
    if full.is_file():
        print(f"whole validation scenes: {full}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from sparseyolo.data.synth import build_synth_dataset, summary

    width, height = args.size
    build = partial(
        build_synth_dataset,
        args.out,
        n_images=args.images,
        height=height,
        width=width,
        fg=args.fg,
        size=args.object_size,
        count=args.count,
        clutter=args.clutter,
        seed=args.seed,
        val_fraction=args.val_fraction,
        force=args.force,
        verbose=True,
    )
    _built("synthetic", args.out, build, summary)
    return 0


def _composite(args: argparse.Namespace) -> int:
    from sparseyolo.data.composite import build_composite_dataset, summary

    build = partial(
        build_composite_dataset,
        args.out,
        size=args.size,
        fg=args.fg,
        images=args.images,
        split=args.split,
        seed=args.seed,
        force=args.force,
        verbose=True,
    )
    _built("composite", args.out, build, summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run `sparseyolo data ...`; returns the exit code (0 ok, 1 failed, 2 bad usage), never raises on bad input."""
    ap = build_parser()
    try:
        args = ap.parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as e:  # argparse printed the usage and `sparseyolo data: error: ...` (or the help)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        if args.command == "fetch":
            return _fetch()
        if args.command == "aerial":
            return _aerial(args)
        if args.command == "composite":
            return _composite(args)
        return _synth(args)
    except ERRORS as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
