"""`sparseyolo bench stem`'s report: the issue's targets and their check (`target_rows`), the plots
(stem.png, e2e.png), the tables and the files written (`report`). The measuring and the variants are in `bench.stem`."""

from __future__ import annotations

import sys
from pathlib import Path

GROUPS = (
    ("stem 0-4", range(0, 5)),
    ("backbone 5-9", range(5, 10)),
    ("neck 10-21", range(10, 22)),
    ("head 22", range(22, 23)),
)
HYBRID_STEM, DENSE_STEM = "hybrid stem (sparse 0-4)", "dense stem (0-4)"
SPARSE_STEM_MODEL, SPARSE_P3_MODEL = "sparse full-res model", "sparse-P3 full-res model"
SPARSE_P34_MODEL = "sparse-P3+P4 full-res model"
DENSE_MODEL, DENSE_640 = "dense full-res model", "dense model at 640"
P3_TARGETS = {"1920x1088": 2.0, "3840x2176": 3.0}  # sparse-P3 model vs dense full res, 5% foreground
P3_MEMORY_TARGET = 2.0  # dense / sparse-P3 peak memory at 5% foreground
FULL_SCENE_SLACK = 1.05  # at 100% active: sparse model latency <= 1.05x the dense model's
TARGET_SIZE = "3840x2176"  # 2160p padded to stride 32
STEM_TARGETS = {"speed-up": 5.0, "memory ratio": 4.0}  # hybrid vs dense stem, foreground <= 10%
E2E_TARGET = (5.0, 0.90)  # at 5% foreground: >= 90% of the latency bound set by the sparse layers


def target_rows(rows: list[dict]) -> list[list[str]]:
    """The issue's targets, each `[check, scene, target, measured, result]`, from rows of the same run.

    Stem: hybrid vs dense layers 0-4 at 3840x2176, synthetic foreground <= 10%: speed-up >= 5x, peak memory
    ratio >= 4x. End to end at 5% foreground: the bound is the dense model's speed-up if layers 0-4 cost
    nothing, `T_dense / (T_dense - T_dense_stem)` (both measured in this run); the figure is the sparse
    model's speed-up `T_dense / T_sparse` as a fraction of that bound (>= 90%). The FLOP bound
    `F_dense / (F_dense - F_stem)` is shown for reference.
    """

    def find(part, size, scene, variant):
        for r in rows:
            if (r["part"], r["size"], r["scene"], r["variant"]) == (part, size, scene, variant):
                return r
        return None

    def verdict(value, target):
        return "-" if value is None else ("PASS" if value >= target else "FAIL")

    out = []
    for r in rows:
        if r["part"] != "stem" or r["size"] != TARGET_SIZE or "speedup" not in r:
            continue
        if not r["scene"].startswith("synthetic") or float(r["scene"].split()[1].rstrip("%")) > 10:
            continue
        for name, value in (("speed-up", r.get("speedup")), ("memory ratio", r.get("mem_ratio"))):
            target = STEM_TARGETS[name]
            shown = "not measured" if value is None else f"{value:.2f}x"
            out.append([f"stem {name}", r["scene"], f">= {target:g}x", shown, verdict(value, target)])
    fg, fraction_target = E2E_TARGET
    scene = f"synthetic {fg:g}%"
    stem = find("stem", TARGET_SIZE, scene, "dense stem (0-4)")
    dense = find("end-to-end", TARGET_SIZE, scene, "dense full-res model")
    sparse = find("end-to-end", TARGET_SIZE, scene, "sparse full-res model")
    if stem and dense and sparse and stem["p50_ms"] and dense["p50_ms"] and sparse["p50_ms"]:
        t_stem, t_dense, t_sparse = stem["p50_ms"], dense["p50_ms"], sparse["p50_ms"]
        bound = t_dense / max(t_dense - t_stem, 1e-9)
        achieved = t_dense / t_sparse
        flop_bound = dense["gflops"] / max(dense["gflops"] - stem["gflops"], 1e-9)
        out.append(["end-to-end latency bound", scene, "(info)", f"{bound:.2f}x (FLOP bound {flop_bound:.2f}x)", ""])
        out.append(["end-to-end speed-up", scene, "(info)", f"{achieved:.2f}x", ""])
        fraction = achieved / bound
        out.append(
            [
                "end-to-end share of bound",
                scene,
                f">= {fraction_target:.0%}",
                f"{fraction:.0%}",
                verdict(fraction, fraction_target),
            ]
        )
    for size, target in P3_TARGETS.items():  # the sparse P3 path(s) against the dense full-res model
        for variant in (SPARSE_P3_MODEL, SPARSE_P34_MODEL):
            row = find("end-to-end", size, scene, variant)
            if row is None:
                continue
            name = variant.replace(" full-res model", "")
            for check, key, goal in (("speed-up", "speedup", target), ("memory ratio", "mem_ratio", P3_MEMORY_TARGET)):
                value = row.get(key)
                shown = "not measured" if value is None else f"{value:.2f}x"
                out.append([f"{name} {check} {size}", scene, f">= {goal:g}x", shown, verdict(value, goal)])
        dense = find("end-to-end", size, "full 100%", DENSE_MODEL)
        for variant in (SPARSE_STEM_MODEL, SPARSE_P3_MODEL, SPARSE_P34_MODEL):
            full = find("end-to-end", size, "full 100%", variant)
            if full and dense and full["p50_ms"] and dense["p50_ms"]:
                ratio = full["p50_ms"] / dense["p50_ms"]
                ok = "PASS" if ratio <= FULL_SCENE_SLACK else "FAIL"
                check = f"{variant.replace(' full-res model', '')} / dense at 100% {size}"
                out.append([check, "full 100%", f"<= {FULL_SCENE_SLACK:.2f}x", f"{ratio:.2f}x", ok])
    return out


# --- plot ---------------------------------------------------------------------------------------------


def _plot_vs_active(rows, lines: dict, path: Path, titles: tuple[str, str], suptitle: str, xscale: str) -> Path:
    """p50 latency and peak memory vs active pixels: one line per variant in `lines` (variant -> (colour,
    label)) and size over the synthetic and full scenes; the aerial scene as a star of the variant's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12.5, 4.6))
    styles = ["-", "--", ":", "-."]
    for si, size in enumerate(dict.fromkeys(r["size"] for r in rows)):
        for variant, (colour, label) in lines.items():
            pts = [r for r in rows if r["size"] == size and r["variant"] == variant]
            syn = sorted((r["active_%"], r) for r in pts if not r["scene"].startswith("aerial"))
            real = [r for r in pts if r["scene"].startswith("aerial")]
            for ax, key in ((ax_t, "p50_ms"), (ax_m, "peak_mb")):
                xs = [a for a, r in syn if r.get(key) is not None]
                ys = [r[key] for _, r in syn if r.get(key) is not None]
                if xs:
                    ax.plot(xs, ys, styles[si % len(styles)], color=colour, marker="o", label=f"{label}, {size}")
                for r in real:
                    if r.get(key) is not None:
                        ax.plot([r["active_%"]], [r[key]], "*", color=colour, markersize=12)
    ax_t.set(xlabel="active pixels (%)", ylabel="p50 latency (ms, log)", yscale="log", xscale=xscale, title=titles[0])
    ax_m.set(xlabel="active pixels (%)", ylabel="peak RSS growth (MiB)", xscale=xscale, title=titles[1])
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
    ax_t.plot([], [], "*", color="black", markersize=12, label="real aerial scene (deepforest)")
    ax_t.legend(fontsize=7)
    fig.suptitle(suptitle)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(rows: list[dict], path: Path) -> Path | None:
    """Layers 0-4: hybrid vs dense stem (see `_plot_vs_active`). None when there is nothing to draw."""
    stem = [r for r in rows if r["part"] == "stem" and r.get("p50_ms")]
    if not stem:
        return None
    lines = {HYBRID_STEM: ("tab:blue", "hybrid stem"), DENSE_STEM: ("tab:gray", "dense stem")}
    titles = ("layers 0-4 latency, batch 1", "layers 0-4 peak memory")
    suptitle = "sparseyolo bench stem: hybrid sparse stem vs dense stem (YOLOv8n layers 0-4)"
    return _plot_vs_active(stem, lines, path, titles, suptitle, "linear")


def plot_e2e(rows: list[dict], path: Path) -> Path | None:
    """Whole models at full resolution (see `_plot_vs_active`). None when there is nothing to draw."""
    e2e = [r for r in rows if r["part"] == "end-to-end" and r.get("p50_ms") and r["variant"] != DENSE_640]
    if not e2e:
        return None
    lines = {SPARSE_STEM_MODEL: "tab:blue", SPARSE_P3_MODEL: "tab:red", SPARSE_P34_MODEL: "tab:purple"}
    lines = {v: (c, v) for v, c in {**lines, DENSE_MODEL: "tab:gray"}.items()}
    titles = ("whole model, batch 1", "whole model peak memory")
    suptitle = "sparseyolo bench stem: end to end, sparse stem / sparse P3 path / dense (YOLOv8n, full resolution)"
    return _plot_vs_active(e2e, lines, path, titles, suptitle, "log")


# --- the report -----------------------------------------------------------------------------------------

HEADERS = ["part", "size", "scene", "active %", "variant", "p50 ms", "p90 ms", "peak MiB", "GFLOPs", "speed-up"]
HEADERS += ["mem ratio"]


def _fmt(v, d=1):
    return "-" if v is None else f"{v:.{d}f}"


def tables(rows: list[dict]) -> dict[str, tuple[list, list]]:
    """The report's tables as (headers, rows): "main", "gflops" (end to end, per layer group), "targets"."""
    main = [
        [
            r["part"],
            r["size"],
            r["scene"],
            _fmt(r["active_%"]),
            r["variant"],
            _fmt(r["p50_ms"]),
            _fmt(r["p90_ms"]),
            _fmt(r.get("peak_mb"), 0),
            _fmt(r["gflops"], 2),
            _fmt(r.get("speedup"), 2) + "x" if r.get("speedup") else "",
            _fmt(r.get("mem_ratio"), 1) + "x" if r.get("mem_ratio") else "",
        ]
        for r in rows
    ]
    g_headers = ["size", "scene", "variant"] + [f"GFLOPs {n}" for n, _ in GROUPS] + ["P3 / P4 occupancy %"]
    g_rows = [
        [r["size"], r["scene"], r["variant"]]
        + [_fmt(r.get(f"gflops {n}"), 2) for n, _ in GROUPS]
        + [f"{_fmt(r['p3_occ_%'])} / {_fmt(r['p4_occ_%'])}" if "p3_occ_%" in r else ""]
        for r in rows
        if r["part"] == "end-to-end"
    ]
    t_headers = ["check", "scene", "target", "measured", "result"]
    return {"main": (HEADERS, main), "gflops": (g_headers, g_rows), "targets": (t_headers, target_rows(rows))}


def report(rows: list[dict], a, argv: list[str] | None) -> None:
    """Print the tables; write stem.md, stem.csv and (unless --no-plot) stem.png to `a.out`."""
    from sparseyolo.bench.common import format_table, markdown_table, system_info, write_csv, write_text

    t = tables(rows)
    print(format_table(*t["main"], align="lllrlrrrrrr"))
    if t["gflops"][1]:
        print("\nexecuted GFLOPs per layer group (dense: FlopCounterMode; sparse layers 0-4: analytic)")
        print(format_table(*t["gflops"]))
    if t["targets"][1]:
        print(f"\ntarget check at {TARGET_SIZE} (issue targets; p50 latencies and peaks of this run)")
        print(format_table(*t["targets"]))
    out = Path(a.out)
    md = [
        "# sparseyolo bench stem",
        "",
        *(f"- {k}: {v}" for k, v in system_info().items()),
        f"- threads: {a.threads}, repeats: {a.repeats}, command: `sparseyolo bench stem {' '.join(argv or [])}`",
        "",
        markdown_table(*t["main"]),
        "",
    ]
    if t["gflops"][1]:
        md += ["## Executed GFLOPs per layer group", "", markdown_table(*t["gflops"]), ""]
    if t["targets"][1]:
        md += [f"## Target check at {TARGET_SIZE}", "", markdown_table(*t["targets"]), ""]
    png = png_e2e = None
    if not a.no_plot:
        try:
            png = plot(rows, out / "stem.png")
            png_e2e = plot_e2e(rows, out / "e2e.png")
        except ImportError as error:  # matplotlib is optional (the `bench` extra)
            print(f"no plot: {error}", file=sys.stderr)
    if png:
        md += [f"![stem latency and memory]({png.name})", ""]
    if png_e2e:
        md += [f"![end-to-end latency and memory]({png_e2e.name})", ""]
    write_text(out / "stem.md", "\n".join(md))
    write_csv(out / "stem.csv", rows)
    plots = [str(p) for p in (png, png_e2e) if p]
    print(f"\nwrote {out / 'stem.md'}, {out / 'stem.csv'}" + (f" and {', '.join(plots)}" if plots else ""))
