"""Tables and figures of an evaluation: markdown/CSV/JSON rows and matplotlib plots (PNG).

An AP of None (a size range without ground truth) prints as `n/a` in tables and CSV and is `null` in JSON."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

COLUMNS = (
    ("model", "model", None),
    ("method", "method", None),
    ("map", "mAP50-95", 3),
    ("map50", "mAP50", 3),
    ("ap_small", "AP_small", 3),
    ("ap_medium", "AP_medium", 3),
    ("ap_large", "AP_large", 3),
    ("active", "active", 2),
    ("mask_recall", "mask recall", 2),
    ("boxes_025", "boxes@0.25/img", 0),
    ("gflops", "GFLOPs/img", 1),
    ("p50_ms", "p50 ms", 0),
    ("p90_ms", "p90 ms", 0),
    ("peak_mib", "peak MiB", 0),
)


AP_KEYS = ("map", "map50", "map75", "ap_small", "ap_medium", "ap_large")
NA = "n/a"


def fmt(v, digits, na: str = "-"):
    """`v` with `digits` decimals (None: no rounding); `na` for None."""
    if v is None:
        return na
    if digits is None:
        return str(v)
    return f"{v:.{digits}f}"


def rows_table(rows: list[dict], markdown: bool = True) -> str:
    """A markdown (or aligned plain-text) table of summary rows (`Result.summary()`), then a line stating the
    detection limits they were scored with (`limits_note`). AP columns show `n/a` where a row has no ground truth
    in that range; other columns are left out when empty and show `-` for None."""
    cols = [c for c in COLUMNS if any(r.get(c[0]) is not None or (c[0] in AP_KEYS and c[0] in r) for r in rows)]
    head = [c[1] for c in cols]
    body = [[fmt(r.get(k), d, NA if k in AP_KEYS else "-") for k, _, d in cols] for r in rows]
    note = limits_note(rows)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body] + ([f"\n{note}"] if note else []))
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    out += ["  ".join(v.ljust(w) for v, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(out + ([note] if note else []))


def limits_note(rows: list[dict]) -> str:
    """One line with the detection limits of `rows` (the `Result.summary()` fields) and the most detections one
    image had; "" when the rows carry none. Names the rows where a limit was reached."""
    rows = [r for r in rows if r.get("max_det") is not None]
    if not rows:
        return ""

    def values(key):
        return "/".join(str(v) for v in dict.fromkeys(r.get(key) for r in rows))

    most_image = max(r.get("most_detections") or 0 for r in rows)
    most_call = max(r.get("most_per_call") or 0 for r in rows)
    note = (
        f"limits: max_det {values('max_det')} per image/slice, COCO maxDets {values('coco_max_dets')}, "
        f"NMS candidates {values('max_nms')}; most detections on one image: {most_image}, in one call: {most_call}"
    )
    hit = [label(r) for r in rows if r.get("limit_reached")]
    return note + (f"; LIMIT REACHED (AP is a lower bound): {', '.join(hit)}" if hit else "; no limit reached")


def write_rows(rows: list[dict], stem: Path) -> None:
    """`<stem>.csv` (None as `n/a`) and `<stem>.json` (None as `null`) of summary rows."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, restval=NA)
        w.writeheader()
        w.writerows([{k: NA if v is None else v for k, v in r.items()} for r in rows])
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=1))


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (figures are only written to files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Lay out, write (a `.jpg` path as JPEG: ~10x smaller than PNG for photos) and close `fig`."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    jpeg = Path(path).suffix.lower() in (".jpg", ".jpeg")
    fig.savefig(path, dpi=dpi, **({"pil_kwargs": {"quality": 85}} if jpeg else {}))
    plt.close(fig)
    return path


def label(r: dict) -> str:
    return f"{r['model']} · {r['method']}"


def plot_accuracy_vs_flops(rows: list[dict], path: Path, metric: str = "map50") -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in rows:
        if r.get("gflops") is None or r.get(metric) is None:
            continue
        ax.scatter(r["gflops"], r[metric], s=60)
        ax.annotate(label(r), (r["gflops"], r[metric]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.margins(x=0.3, y=0.15)  # room for the labels
    ax.set_xlabel("executed GFLOPs per image")
    ax.set_ylabel(metric)
    ax.set_title("Accuracy vs executed compute (full-resolution val scene)")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_latency(rows: list[dict], path: Path) -> Path | None:
    """Horizontal p50 bars with p90 whiskers; None (nothing drawn) when no row was timed."""
    rows = [r for r in rows if r.get("p50_ms") is not None]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, max(2.0, 0.8 + 0.45 * len(rows))))
    y = np.arange(len(rows))
    p50 = [r["p50_ms"] for r in rows]
    p90 = [r["p90_ms"] for r in rows]
    ax.barh(y, p50, color="tab:blue", label="p50")
    ax.errorbar(p50, y, xerr=[np.zeros(len(rows)), np.subtract(p90, p50)], fmt="none", ecolor="black", label="p90")
    ax.set_yticks(y, [label(r) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("batch-1 latency per image, ms (2 CPU threads)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_per_image_flops(per_image: dict[str, list[float]], path: Path, title: str) -> Path:
    """Bars of executed GFLOPs per image, one series per model (e.g. dense vs sparse on the val tiles)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(per_image)
    n = max(len(v) for v in per_image.values())
    width = 0.8 / max(len(names), 1)
    for j, name in enumerate(names):
        ax.bar(np.arange(len(per_image[name])) + j * width, per_image[name], width, label=name)
    ax.set_xlabel("image")
    ax.set_ylabel("executed GFLOPs")
    ax.set_xticks(np.arange(n) + width * (len(names) - 1) / 2, [str(i) for i in range(n)], fontsize=7)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(names), frameon=False)
    return save_figure(fig, path)


def plot_boxes_grid(image: np.ndarray, gt_boxes: np.ndarray, panels: list[tuple[str, np.ndarray]], path: Path) -> Path:
    """The image with ground truth, then one panel per method with its boxes (xyxy pixels)."""
    from matplotlib.patches import Rectangle

    plt = pyplot()
    items = [("ground truth", gt_boxes)] + panels
    cols = min(3, len(items))
    rows = int(np.ceil(len(items) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, boxes) in zip(axes.flat, items, strict=False):
        ax.imshow(image)
        color = "yellow" if title == "ground truth" else "red"
        for b in np.asarray(boxes).reshape(-1, 4):
            ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, lw=0.7, ec=color))
        ax.set_title(f"{title} ({len(np.asarray(boxes).reshape(-1, 4))} boxes)", fontsize=9)
    return save_figure(fig, path, dpi=110)
