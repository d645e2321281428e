"""Hybrid sparse YOLOv8 stem vs the dense stem, and end to end with the sparse P3 path: batch-1 latency p50/p90,
peak memory, executed FLOPs.

Scenes: synthetic (textured rectangles on a black background, foreground 1/5/10/25% of the pixels) and a real
NEON aerial scene from deepforest (its tree-crown boxes, dilated 2 px, as the foreground mask: what a trained
`learned` sparsifier aims for; pixels outside are zeroed). Sizes: 1920x1088 and 3840x2176 (1080p/2160p padded
to stride 32, as Ultralytics letterboxes them).

Models: YOLOv8n (Ultralytics' own layers, random weights with non-trivial BatchNorm statistics) and its sparse
conversions (`sparseyolo.yolo.convert`, `nonzero` sparsify; identical weights): the sparse stem (layers 0-4) and
the sparse P3 path (`p3=True`: also the P3 fusion 13-15, the P3 head, and the stride-2 convs 5 and 16).
(a) hybrid stem = sparse layers 0-4 (densified at P3); (b) dense layers 0-4 at full resolution.
End to end: sparse-stem model, sparse-P3 model, dense model (all full resolution), dense model at 640
(letterboxed 640x384); also on a fully active image ("full 100%"), where the dense switch must keep the sparse
models within 5% of the dense one. Sparse blocks switch to their dense path above the machine's crossover
density (`sparseyolo.nn.crossover`), as in use.

FLOPs: dense layers counted with `torch.utils.flop_counter.FlopCounterMode`; sparse layers analytically from
the active-site sets (2 * kernel-map pairs * C_in * C_out / groups per conv; pairs counted on the masks).
Latency: `sparseyolo.bench.common.latency` (interleaved calls, p50/p90). Peak memory: growth of the resident set
during one call (`sparseyolo.bench.common.PeakRSS`), measured in a child process per size (the probe changes
the allocator's settings for the whole process, which would distort timings). The targets, tables, plots and files
of the report: `sparseyolo.bench.stem_report`.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from sparseyolo.bench.stem_report import (  # the variants' names: the report reads them too
    DENSE_640,
    DENSE_MODEL,
    DENSE_STEM,
    GROUPS,
    HYBRID_STEM,
    SPARSE_P3_MODEL,
    SPARSE_P34_MODEL,
    SPARSE_STEM_MODEL,
    report,
)

E2E_VARIANTS = (SPARSE_STEM_MODEL, SPARSE_P3_MODEL, SPARSE_P34_MODEL, DENSE_MODEL, DENSE_640)
SIZES = {"1080p": (1088, 1920), "2160p": (2176, 3840), "small": (544, 960), "tiny": (256, 448)}


# --- scenes -------------------------------------------------------------------------------------------


def synthetic_scene(h: int, w: int, fg: float, seed: int = 0):
    """`float32 (1, 3, h, w)` in [0, 1]: textured rectangles (8-96 px) on black until `fg` of pixels are covered."""
    import torch

    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), bool)
    target = fg * h * w
    img = np.zeros((3, h, w), np.float32)
    while mask.sum() < target:
        bh, bw = (int(v) for v in rng.integers(8, 97, 2))
        y, x = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
        colour = rng.uniform(0.2, 1.0, (3, 1, 1)).astype(np.float32)
        img[:, y : y + bh, x : x + bw] = colour * rng.uniform(0.7, 1.0, (1, bh, bw)).astype(np.float32)
        mask[y : y + bh, x : x + bw] = True
    return torch.from_numpy(img)[None]


def full_scene(h: int, w: int, seed: int = 0):
    """`float32 (1, 3, h, w)` with every pixel active (uniform noise in [0.05, 1])."""
    import torch

    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 0.95 + 0.05


def aerial_scene(h: int, w: int, dilate: int = 2):
    """The large deepforest NEON scene, cropped to the aspect ratio, resized to (h, w), zeroed off the boxes."""
    import torch
    import torch.nn.functional as F

    from sparseyolo.data.aerial import SCENES, load_scene

    img, boxes = load_scene(SCENES[0])
    H, W = img.shape[:2]
    ch = min(H, int(W * h / w))
    img = img[:ch]
    t = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None] / 255  # a writable copy
    t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    sy, sx = h / ch, w / W
    mask = torch.zeros(h, w, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        if y0 >= ch:
            continue
        ya, yb = max(0, int(y0 * sy) - dilate), min(h, int(math.ceil(min(y1, ch) * sy)) + dilate)
        xa, xb = max(0, int(x0 * sx) - dilate), min(w, int(math.ceil(x1 * sx)) + dilate)
        mask[ya:yb, xa:xb] = True
    return (t * mask).clamp_min(0) + 0.0 * t, mask  # pixels off the mask are exactly zero


# --- models -------------------------------------------------------------------------------------------


def build_models(seed: int = 0):
    """`(dense, sparse stem, sparse P3, sparse P3+P4)` YOLOv8n models with the same random weights, eval mode,
    fused."""
    import torch

    from sparseyolo.yolo.integration import enable

    enable()  # first: offline defaults before Ultralytics loads, then registration
    from sparseyolo.yolo.convert import convert

    from ultralytics.nn.tasks import DetectionModel  # isort: skip

    torch.manual_seed(seed)
    dense = DetectionModel("yolov8n.yaml", nc=80, verbose=False)
    for m in dense.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    sparse = convert(dense, stages=5, method="nonzero")
    p3 = convert(dense, stages=5, method="nonzero", p3=True)
    p34 = convert(dense, stages=5, method="nonzero", p3=True, p4=True)
    # as Ultralytics predicts: dense Conv+BN fused (sparse blocks fold their BN themselves in inference)
    return tuple(m.eval().fuse(verbose=False) for m in (dense, sparse, p3, p34))


def occupancy(model, img) -> dict[str, float]:
    """Occupancy (active sites / all sites) of a sparse-P3 model on `img`, run sparse: the stem's pixels, the
    stride-8 sites (layer 4's output, also the P3 fusion's), and the stride-16 sites its layer 5 produces."""
    import torch
    import torch.nn.functional as F

    from sparseyolo.nn import set_crossover, site_mask

    seen = {}
    hook = model.model[4].register_forward_hook(lambda m, a, o: seen.__setitem__("p3", o))
    set_crossover(model, 1.0)
    try:
        with torch.no_grad():
            model(img)
    finally:
        hook.remove()
        set_crossover(model, None)
    mask = site_mask(seen["p3"]).float()[:, None]
    p4 = F.max_pool2d(mask, 3, 2, 1)  # a 3x3 stride-2 conv's output sites
    pixels = float(model.model[0].sparsify(img)[0].float().mean())
    return {"pixels": pixels, "p3": float(mask.mean()), "p4": float(p4.mean())}


def run_layers(model, x, layers=None):
    """Ultralytics' `_predict_once` over `layers` (default all); returns the last output."""
    y = []
    for m in model.model:
        if layers is not None and m.i not in layers:
            break
        if m.f != -1:
            x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
        x = m(x)
        y.append(x if m.i in model.save else None)
    return x


def flops_by_layer(model, x, upto: int | None = None) -> dict[int, float]:
    """Executed FLOPs per layer (`sparseyolo.eval.flops`: FlopCounterMode for dense layers, analytic for sparse)."""
    from sparseyolo.eval.flops import executed_flops

    return executed_flops(model, x, upto=upto)["layers"]


def sparse_flops(model, image) -> dict[int, float]:
    """Executed FLOPs of the sparse layers 0-4 (`sparseyolo.eval.flops`: analytic, at the active sites)."""
    from sparseyolo.eval.flops import executed_flops

    return executed_flops(model, image, upto=5)["layers"]


def group_sum(per_layer: dict[int, float]) -> dict[str, float]:
    return {name: sum(per_layer.get(i) or 0.0 for i in rng) for name, rng in GROUPS if any(i in per_layer for i in rng)}


# --- measuring -----------------------------------------------------------------------------------------


def probe_memory(probes, memory) -> None:
    """Peak RSS growth of one call of each probe `(row, fn)` (after one untimed call), into `row["peak_mb"]`."""
    import torch

    with torch.no_grad():
        for row, fn in probes:
            fn()
            _, row["peak_mb"] = memory.measure(fn)


def memory_in_subprocess(argv: list[str], sizes: list[str], rows: list[dict]) -> None:
    """Peak memory, measured by a child process per size (`--memory-only`).

    The probe (`PeakRSS`) pins glibc's mmap threshold for the whole process, from the start, so that freed
    buffers are returned to the OS and counted again; that makes large allocations page-fault afresh, which
    would distort the timings, so timing and memory never share a process."""
    import json
    import subprocess

    keep, skip = [], False
    for x in argv:  # drop --sizes (and its value) and --quick: the child gets one size, explicit settings
        if skip:
            skip = False
        elif x == "--sizes":
            skip = True
        elif not x.startswith("--sizes=") and x != "--quick":
            keep.append(x)
    for size in sizes:
        cmd = [sys.executable, "-m", "sparseyolo.bench.stem", *keep, "--sizes", size, "--memory-only"]
        if "--quick" in argv:
            cmd += ["--fg", "5,25", "--e2e-scenes", "5"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("MEMORY ")]
        if proc.returncode != 0 or not lines:
            print(f"memory probe for {size} failed: {proc.stderr[-500:]}", file=sys.stderr)
            continue
        peaks = {tuple(k.split("|")): v for k, v in json.loads(lines[-1][7:]).items()}
        for r in rows:
            key = (r["part"], r["size"], r["scene"], r["variant"])
            if key in peaks:
                r["peak_mb"] = peaks[key]


def add_memory_ratios(rows: list[dict]) -> None:
    """`mem_ratio` = dense peak / sparse peak, matched by (size, scene): the hybrid stem against the dense stem,
    and each full-resolution sparse model against the dense full-res model."""
    ref = {"stem": DENSE_STEM, "end-to-end": DENSE_MODEL}
    dense = {(r["part"], r["size"], r["scene"]): r for r in rows if r["variant"] == ref.get(r["part"])}
    for r in rows:
        if r["variant"] not in (HYBRID_STEM, SPARSE_STEM_MODEL, SPARSE_P3_MODEL, SPARSE_P34_MODEL) or not r.get(
            "peak_mb"
        ):
            continue
        match = dense.get((r["part"], r["size"], r["scene"]))
        if match is not None and match.get("peak_mb"):
            r["mem_ratio"] = match["peak_mb"] / r["peak_mb"]


# --- the run --------------------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="sparseyolo bench stem", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1080p,2160p", help="comma list of 1080p, 2160p, small, tiny")
    ap.add_argument("--fg", default="1,5,10,25", help="synthetic foreground percentages")
    ap.add_argument("--no-aerial", action="store_true", help="skip the real deepforest scene")
    ap.add_argument("--no-e2e", action="store_true", help="skip end-to-end models")
    ap.add_argument(
        "--e2e-scenes",
        default="1,5,10,25,aerial,full",
        help="scenes for end to end: fg percentages, aerial, full (every pixel active)",
    )
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per variant (>= 1, default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls per variant first (at least 1 is made)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/bench-stem", help="directory for stem.md and stem.csv")
    ap.add_argument("--quick", action="store_true", help="small size, fg 5/25, 2 repeats (smoke test)")
    ap.add_argument("--no-plot", action="store_true", help="do not draw stem.png")
    ap.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.sizes, a.fg, a.repeats, a.e2e_scenes = "small", "5,25", 2, "5"
    if a.repeats < 1:
        ap.error(f"--repeats must be >= 1 (timed calls per variant), got {a.repeats}")
    if a.warmup < 0:
        ap.error(f"--warmup must be >= 0, got {a.warmup}")
    if a.threads < 1:
        ap.error(f"--threads must be >= 1, got {a.threads}")
    a.sizes = [s.strip() for s in a.sizes.split(",") if s.strip()]
    unknown = [s for s in a.sizes if s not in SIZES]
    if unknown:
        ap.error(f"unknown size {unknown[0]!r}; expected {', '.join(SIZES)}")
    try:
        a.fg = [float(f) for f in a.fg.split(",") if f.strip()]
        a.e2e_scenes = [s if s in ("aerial", "full") else float(s) for s in a.e2e_scenes.split(",") if s.strip()]
    except ValueError as error:
        ap.error(f"--fg and --e2e-scenes take comma-separated percentages (and 'aerial'): {error}")
    return a


def scenes(h: int, w: int, which, aerial: bool = True) -> list[tuple[str, object]]:
    """`(name, image)` for foreground percentages and "aerial" (skipped, with a message, when unavailable)."""
    out = []
    for f in which:
        if f == "aerial":
            if not aerial:
                continue
            try:
                img, _ = aerial_scene(h, w)
            except Exception as e:  # no network and nothing cached
                print(f"skipping the aerial scene: {e}", file=sys.stderr)
                continue
            out.append(("aerial (deepforest)", img))
        elif f == "full":
            out.append(("full 100%", full_scene(h, w)))
        else:
            out.append((f"synthetic {float(f):g}%", synthetic_scene(h, w, float(f) / 100)))
    return out


def _timing(fns: dict, a) -> dict[str, dict]:
    """Interleaved p50/p90 of `fns` (at least one warm-up call each); the memory-only child makes the warm-up
    calls but no timed ones."""
    from sparseyolo.bench.common import latency

    return latency(fns, repeats=0 if a.memory_only else a.repeats, warmup=max(1, a.warmup))


def stem_rows(dense, sparse, size: str, a) -> tuple[list[dict], list]:
    """Hybrid vs dense layers 0-4 on every scene of one size: rows, and `(row, fn)` memory probes."""
    h, w = SIZES[size]
    rows, probes = [], []
    for scene, img in scenes(h, w, [*a.fg, "aerial"], aerial=not a.no_aerial):
        active = float((img.abs().sum(1) > 0).float().mean())
        fns = {
            HYBRID_STEM: lambda img=img: run_layers(sparse, img, range(5)),
            DENSE_STEM: lambda img=img: run_layers(dense, img, range(5)),
        }
        flops = {
            HYBRID_STEM: sum(sparse_flops(sparse, img).values()),
            DENSE_STEM: sum(flops_by_layer(dense, img, upto=5).values()),
        }
        res = _timing(fns, a)
        for name, fn in fns.items():
            row = {"part": "stem", "size": f"{w}x{h}", "scene": scene, "active_%": 100 * active, "variant": name}
            rows.append({**row, **res[name], "gflops": flops[name] / 1e9})
            probes.append((rows[-1], fn))
        hybrid, dstem = res[HYBRID_STEM], res[DENSE_STEM]
        if hybrid["p50_ms"]:
            rows[-2]["speedup"] = dstem["p50_ms"] / hybrid["p50_ms"]
        if not a.memory_only:
            print(f"[{size} {scene}] hybrid {hybrid['p50_ms']:.1f} ms / dense {dstem['p50_ms']:.1f} ms", flush=True)
    return rows, probes


def e2e_rows(dense, sparse, size: str, a, p3=None, p34=None) -> tuple[list[dict], list]:
    """Whole models on the end-to-end scenes of one size: sparse stem, sparse P3 path, sparse P3+P4 paths and dense
    at full resolution, dense at 640; `speedup` and `mem_ratio` (added later) are against the dense full-res
    model."""
    import torch

    h, w = SIZES[size]
    rows, probes = [], []
    for scene, img in scenes(h, w, a.e2e_scenes, aerial=not a.no_aerial):
        active = float((img.abs().sum(1) > 0).float().mean())
        small = torch.nn.functional.interpolate(
            img, size=(int(round(640 * h / w / 32)) * 32, 640), mode="bilinear", align_corners=False
        )
        variants = dict(zip(E2E_VARIANTS, ((sparse, img), (p3, img), (p34, img), (dense, img), (dense, small))))
        variants = {k: v for k, v in variants.items() if v[0] is not None}
        res = _timing({name: (lambda model=model, x=x: model(x)) for name, (model, x) in variants.items()}, a)
        for name, (model, x) in variants.items():
            per = flops_by_layer(model, x)
            groups = group_sum(per)
            rows.append(
                {
                    "part": "end-to-end",
                    "size": f"{x.shape[-1]}x{x.shape[-2]}",
                    "scene": scene,
                    "active_%": 100 * active,
                    "variant": name,
                    **res[name],
                    "gflops": sum(groups.values()) / 1e9,
                    **{f"gflops {k}": v / 1e9 for k, v in groups.items()},
                }
            )
            probes.append((rows[-1], lambda model=model, x=x: model(x)))
            if not a.memory_only:
                print(f"[{size} {scene}] {name}: {res[name]['p50_ms']:.0f} ms", flush=True)
        if p3 is not None:
            occ = occupancy(p3, img)
            for r in rows[-len(variants) :]:
                if r["variant"] in (SPARSE_P3_MODEL, SPARSE_P34_MODEL):
                    r.update({"p3_occ_%": 100 * occ["p3"], "p4_occ_%": 100 * occ["p4"]})
        t_dense = res[DENSE_MODEL]["p50_ms"]
        for r in rows[-len(variants) :]:
            if r["variant"] != DENSE_MODEL and t_dense and r["p50_ms"]:
                r["speedup"] = t_dense / r["p50_ms"]
    return rows, probes


def main(argv: list[str] | None = None) -> int:
    from sparseyolo.bench.common import PeakRSS, set_threads

    a = parse_args(list(sys.argv[1:] if argv is None else argv))
    memory = PeakRSS() if a.memory_only else None  # first: pins the allocator settings before any tensor exists
    set_threads(a.threads)
    dense, sparse, p3, p34 = build_models()
    rows, probes = [], []
    for size in a.sizes:
        r, p = stem_rows(dense, sparse, size, a)
        rows, probes = rows + r, probes + p
        if not a.no_e2e:
            r, p = e2e_rows(dense, sparse, size, a, p3, p34)
            rows, probes = rows + r, probes + p
    if a.memory_only:
        import json

        probe_memory(probes, memory)
        peaks = {"|".join((r["part"], r["size"], r["scene"], r["variant"])): r.get("peak_mb") for r in rows}
        print("MEMORY " + json.dumps(peaks))
        return 0
    memory_in_subprocess(list(sys.argv[1:] if argv is None else argv), a.sizes, rows)
    add_memory_ratios(rows)
    report(rows, a, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
