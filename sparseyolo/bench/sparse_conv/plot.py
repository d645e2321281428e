"""The sparse-conv benchmark's figure: speed-up vs density per conv/channels panel (sparse_conv.png)."""

from __future__ import annotations

import math
from pathlib import Path

from sparseyolo.bench import common as C
from sparseyolo.bench.sparse_conv.cases import (
    OPS,
    OURS_BUILT,
    OURS_CACHED,
    OURS_FB,
    TARGET_CASE,
    TARGETS,
    Result,
    spconv_kind,
)
from sparseyolo.bench.sparse_conv.report import dense_times, med


def plot(result: Result, path: Path) -> Path | None:
    """Speed-up vs density (log-log) per conv/channels panel; issue targets on the SubM 16->32 panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    cases = [c for c in result.cases if c.section == "2d"]
    if not cases:
        return None
    groups = sorted({(c.op, c.cin, c.cout) for c in cases}, key=lambda g: (list(OPS).index(g[0]), g[1] * g[2]))
    ncols = 2
    nrows = math.ceil(len(groups) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 4.6 * nrows), squeeze=False)
    styles = {
        OURS_BUILT: ("tab:blue", "-"),
        OURS_CACHED: ("tab:green", "--"),
        OURS_FB: ("tab:purple", ":"),
        spconv_kind("built", 1): ("tab:gray", "-"),
        spconv_kind("cached", 1): ("tab:gray", "--"),
    }
    markers = {"uniform": "o", "clustered": "s"}
    for ax, (op, cin, cout) in zip(axes.flat, groups, strict=False):
        for kind, (color, ls) in styles.items():
            for dist, marker in markers.items():
                pts = []
                mine = [c for c in cases if (c.op, c.cin, c.cout, c.distribution) == (op, cin, cout, dist)]
                for c in sorted(mine, key=lambda c: c.density):
                    dfwd, dfb = dense_times(result, c)
                    sp = C.ratio(dfb if kind.backward else dfwd, med(c, kind))
                    if sp:
                        pts.append((c.density * 100, sp))
                if pts:
                    xs, ys = zip(*pts, strict=False)
                    ax.plot(
                        xs,
                        ys,
                        color=color,
                        linestyle=ls,
                        marker=marker,
                        markersize=4,
                        alpha=1.0 if dist == "uniform" else 0.6,
                        label=f"{kind.name} ({dist})",
                    )
        if (op, cin, cout, "uniform") == TARGET_CASE:
            tx = [d * 100 for d, _, _ in TARGETS]
            ty = [t for _, t, _ in TARGETS]
            ax.scatter(tx, ty, marker="*", s=140, color="red", zorder=5, label="target (ours built, uniform)")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = sorted(
            {c.density * 100 for c in cases}
            | ({d * 100 for d, _, _ in TARGETS} if (op, cin, cout, "uniform") == TARGET_CASE else set())
        )
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("active sites (%)")
        ax.set_ylabel("speed-up vs dense (x)")
        ax.set_title(f"{OPS[op]}, {cin}->{cout}, {result.config.size}x{result.config.size}")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=False))
    for ax in axes.flat:
        h, lab = ax.get_legend_handles_labels()
        seen.update(zip(lab, h, strict=False))
    fig.legend(seen.values(), seen.keys(), loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(
        f"sparseyolo sparse conv vs dense F.conv2d, {result.config.threads} thread(s) "
        "(fwd+bwd vs dense fwd+bwd; spconv at 1 thread)"
    )
    fig.tight_layout(rect=(0, 0.12 if nrows == 1 else 0.08, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
