"""Crossover density: the occupancy above which sparse blocks should run their dense path (`--save` stores it).

Model: YOLOv8n converted to the sparse P3+P4 paths (`nonzero` sparsify, random weights with non-trivial BatchNorm
statistics; the blocks of `sparseyolo bench stem`). Scenes: synthetic textured rectangles on black covering
1..50% of the pixels, and a fully active image. For every candidate crossover c, every sparse block runs its
dense masked path when its input occupancy is above c (the rule of `SparseBlock.switch_dense`); the whole model
is timed per scene and candidate, interleaved, with the dense model as a reference. The chosen crossover
minimises the summed slow-down against the best candidate of each scene (within 2%: the larger c).
`--save` stores it for this machine's device type (`sparseyolo.nn.crossover`), where every sparse block reads it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CANDIDATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
TIE = 1.02  # candidates within 2% of the least slow-down are ties (timing noise): the largest c wins


def parse_args(argv):
    from sparseyolo.bench.stem import SIZES

    ap = argparse.ArgumentParser(prog="sparseyolo bench crossover", description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1080p", help=f"one of {', '.join(SIZES)} (default 1080p)")
    ap.add_argument("--fg", default="1,5,10,20,35,50", help="synthetic foreground percentages (a full scene is added)")
    ap.add_argument("--candidates", default=",".join(f"{c:g}" for c in CANDIDATES), help="crossovers to try, in [0, 1]")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per variant (>= 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save", action="store_true", help="store the chosen crossover for this machine")
    ap.add_argument("--out", default="results/bench-crossover", help="directory for crossover.md and crossover.csv")
    ap.add_argument("--quick", action="store_true", help="tiny size, 2 scenes, 3 candidates, 1 repeat (smoke test)")
    a = ap.parse_args(argv)
    if a.quick:
        a.size, a.fg, a.candidates, a.repeats = "tiny", "5", "0,0.5,1", 1
    if a.size not in SIZES:
        ap.error(f"unknown size {a.size!r}; expected {', '.join(SIZES)}")
    if a.repeats < 1 or a.threads < 1:
        ap.error("--repeats and --threads must be >= 1")
    try:
        a.fg = [float(f) for f in a.fg.split(",") if f.strip()]
        a.candidates = sorted({float(c) for c in a.candidates.split(",") if c.strip()})
    except ValueError as error:
        ap.error(f"--fg and --candidates take comma-separated numbers: {error}")
    if not a.candidates or any(not 0.0 <= c <= 1.0 for c in a.candidates):
        ap.error(f"--candidates must lie in [0, 1] (occupancy), got {a.candidates}")
    if any(not 0.0 < f < 100.0 for f in a.fg):
        ap.error(f"--fg percentages must lie in (0, 100), got {a.fg}")
    return a


def choose(times: dict[str, dict[float, float]]) -> tuple[float, dict[float, float]]:
    """`(crossover, summed slow-down per candidate)` from `scene -> candidate -> p50 ms`."""
    candidates = sorted(next(iter(times.values())))
    cost = {c: sum(t[c] / min(t.values()) for t in times.values()) for c in candidates}
    best = min(cost.values())
    return max(c for c in candidates if cost[c] <= best * TIE), cost


def main(argv: list[str] | None = None) -> int:
    from sparseyolo.bench.common import (
        format_table,
        latency,
        markdown_table,
        set_threads,
        system_info,
        write_csv,
        write_text,
    )
    from sparseyolo.bench.stem import SIZES, build_models, full_scene, occupancy, synthetic_scene
    from sparseyolo.nn import set_crossover
    from sparseyolo.nn.crossover import save_crossover

    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    set_threads(a.threads)
    h, w = SIZES[a.size]
    dense, _, _, model = build_models()
    scenes = [(f"synthetic {f:g}%", synthetic_scene(h, w, f / 100)) for f in a.fg] + [("full 100%", full_scene(h, w))]
    rows, times = [], {}
    for name, img in scenes:
        occ = occupancy(model, img)

        def run(c, img=img):
            set_crossover(model, c)
            return model(img)

        fns = {f"c={c:g}": (lambda c=c: run(c)) for c in a.candidates}
        fns["dense model"] = lambda img=img: dense(img)
        res = latency(fns, repeats=a.repeats, warmup=1)
        times[name] = {c: res[f"c={c:g}"]["p50_ms"] for c in a.candidates}
        row = {"scene": name, "pixels_%": 100 * occ["pixels"], "p3_%": 100 * occ["p3"]}
        row.update({f"c={c:g} ms": times[name][c] for c in a.candidates})
        row["dense model ms"] = res["dense model"]["p50_ms"]
        rows.append(row)
        print(f"[{name}] " + ", ".join(f"{k} {v['p50_ms']:.0f} ms" for k, v in res.items()), flush=True)
    set_crossover(model, None)
    crossover, cost = choose(times)
    headers = ["scene", "active px %", "P3 occupancy %", *(f"c={c:g}" for c in a.candidates), "dense model"]
    table = [
        [r["scene"], f"{r['pixels_%']:.1f}", f"{r['p3_%']:.1f}"]
        + [f"{r[f'c={c:g} ms']:.0f}" for c in a.candidates]
        + [f"{r['dense model ms']:.0f}"]
        for r in rows
    ]
    cost_row = ["summed slow-down", "", ""] + [f"{cost[c]:.2f}" for c in a.candidates] + [""]
    print(f"\np50 ms of the sparse-P3+P4 YOLOv8n at {w}x{h} per candidate crossover c (dense path above c)")
    print(format_table(headers, [*table, cost_row]))
    print(f"\nchosen crossover: {crossover:g}")
    command = " ".join(["sparseyolo", "bench", "crossover", *argv])
    out = Path(a.out)
    md = [
        "# sparseyolo bench crossover",
        "",
        *(f"- {k}: {v}" for k, v in system_info().items()),
        f"- threads: {a.threads}, repeats: {a.repeats}, size {w}x{h}, command: `{command}`",
        "",
        "p50 ms of the sparse-P3+P4 YOLOv8n per candidate crossover c (every sparse block runs dense above c)",
        "",
        markdown_table(headers, [*table, cost_row]),
        "",
        f"Chosen crossover: **{crossover:g}** (least summed slow-down against each scene's best candidate).",
        "",
    ]
    write_text(out / "crossover.md", "\n".join(md))
    write_csv(out / "crossover.csv", rows)
    print(f"wrote {out / 'crossover.md'} and {out / 'crossover.csv'}")
    if a.save:
        import torch

        path = save_crossover(crossover, "cpu", size=f"{w}x{h}", threads=a.threads, command=command)
        print(f"stored crossover {crossover:g} for {torch.device('cpu').type} in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
