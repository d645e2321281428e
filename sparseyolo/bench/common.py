"""Helpers shared by the benchmarks: thread control, interleaved timing, peak-memory probes, GEMM
reference speed, and plain-text / markdown / CSV tables.

Timing on a shared machine is noisy, so variants are timed *interleaved* (round-robin: one call of each
variant per round) and summarised by the median; see :func:`run_interleaved`.
"""

from __future__ import annotations

import contextlib
import csv
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sparseyolo.threads as _threads
from sparseyolo.memory import PeakRSS

# --- threads ----------------------------------------------------------------------------------------


# one implementation for every layer (`sparseyolo.threads`), named here for the benchmarks
set_threads = _threads.set_threads
threads = _threads.threads

# --- statistics and formatting ----------------------------------------------------------------------


def median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def fmt_ms(seconds: float | None) -> str:
    """Seconds -> milliseconds with ~3 significant digits ("-" when missing)."""
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    if ms < 10:
        return f"{ms:.2f}"
    if ms < 100:
        return f"{ms:.1f}"
    return f"{ms:.0f}"


def fmt_x(ratio: float | None) -> str:
    """A speed-up factor, e.g. "12.3x" ("-" when missing)."""
    if ratio is None:
        return "-"
    if ratio < 10:
        return f"{ratio:.2f}x"
    if ratio < 100:
        return f"{ratio:.1f}x"
    return f"{ratio:.0f}x"


def fmt_num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


# --- timing -----------------------------------------------------------------------------------------


@dataclass
class Variant:
    """One thing to time: `fn()` called with `threads` intra-op threads.

    max_samples: stop after this many timed calls; budget_s: or once `min_samples` calls have taken this
    long in total. extend: a cheap variant (its `max_samples` calls took < budget_s / 3) goes on to at most
    3 x max_samples calls: more samples where they cost nothing. warmup: untimed calls first (True = 1;
    with `measure_memory`, the first of them is the memory probe).
    After the run: `samples` (seconds), `last` (the last return value), `peak_mb`, `error`.
    """

    name: str
    fn: Callable[[], Any]
    threads: int
    max_samples: int = 5
    budget_s: float = 1.0
    warmup: bool | int = True
    measure_memory: bool = False
    extend: bool = True
    kind: Any = None  # what the caller needs to know about the variant (the harness ignores it)
    samples: list[float] = field(default_factory=list)
    last: Any = None
    peak_mb: float | None = None
    error: str | None = None

    @property
    def median(self) -> float | None:
        return median(self.samples)

    @property
    def min(self) -> float | None:
        return min(self.samples) if self.samples else None


def time_call(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run_interleaved(
    variants: Sequence[Variant],
    min_samples: int = 2,
    memory: PeakRSS | None = None,
    restore_threads: int | None = None,
    raise_errors: bool = False,
) -> None:
    """Time `variants` round-robin (one call of each still-active variant per round) until each has
    `max_samples` samples or has spent its `budget_s` with at least `min_samples`. A variant that raises is
    marked with `error` and dropped, and the others go on (`raise_errors=True`: the exception propagates).
    Warm-up calls come first, in the given order. A variant with `max_samples=0` is only warmed up."""
    for v in variants:
        set_threads(v.threads)
        try:
            for i in range(int(v.warmup)):
                if i == 0 and v.measure_memory and memory is not None and memory.available:
                    v.last, v.peak_mb = memory.measure(v.fn)
                else:
                    v.last = v.fn()
        except Exception as error:  # reported per variant, e.g. an optional engine failing
            if raise_errors:
                raise
            v.error = f"{type(error).__name__}: {error}"[:300]
    active = [v for v in variants if v.error is None and v.max_samples > 0]
    while active:
        for v in list(active):
            set_threads(v.threads)
            try:
                dt, v.last = time_call(v.fn)
            except Exception as error:
                if raise_errors:
                    raise
                v.error = f"{type(error).__name__}: {error}"[:300]
                active.remove(v)
                continue
            v.samples.append(dt)
            n, spent = len(v.samples), sum(v.samples)
            enough = n >= min(min_samples, v.max_samples) and spent >= v.budget_s
            if n >= v.max_samples and v.extend:
                enough = enough or n >= 3 * v.max_samples or spent >= v.budget_s / 3
            elif n >= v.max_samples:
                enough = True
            if enough:
                active.remove(v)
    if restore_threads is not None:
        set_threads(restore_threads)


# --- progress ---------------------------------------------------------------------------------------


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, desc: str, unit: str = "it", enabled: bool = True):
    """A tqdm progress bar on stderr (redrawn at most every 2 s), or a silent stand-in with the same `update`,
    `set_postfix_str` and `close` when disabled or when tqdm (an optional dependency) is not installed."""
    if not enabled:
        return _NoProgress()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoProgress()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=2.0)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q`-th percentile (0-100) with linear interpolation between order statistics (as numpy's default)."""
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency(
    fns: dict[str, Callable[[], Any]],
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    no_grad: bool = True,
) -> dict[str, dict]:
    """Batch latency of each callable, timed interleaved: `warmup` untimed calls of each (in order), then
    `repeats` rounds of one call of each, so that load changes on a shared machine hit all of them alike.

    Args:
        fns: name -> callable without arguments (e.g. `lambda: model(x)`).
        repeats: timed calls of each (0: warm-up only; the results then have no times).
        threads: intra-op threads for the calls (default: the current setting).
        no_grad: run under `torch.no_grad()` (inference latency).
    Returns:
        name -> `{"p50_ms", "p90_ms", "n"}` (medians and 90th percentiles in ms; None without samples).
        An exception of a callable propagates.
    """
    import torch

    if repeats < 0 or warmup < 0:
        raise ValueError(f"repeats and warmup must be >= 0, got {repeats} and {warmup}")
    n_threads = torch.get_num_threads() if threads is None else threads
    variants = [
        Variant(name, fn, n_threads, max_samples=repeats, budget_s=0.0, warmup=warmup, extend=False)
        for name, fn in fns.items()
    ]
    before = torch.get_num_threads()
    with torch.no_grad() if no_grad else contextlib.nullcontext():
        run_interleaved(variants, min_samples=repeats, restore_threads=before, raise_errors=True)
    out = {}
    for v in variants:
        p50, p90 = percentile(v.samples, 50), percentile(v.samples, 90)
        out[v.name] = {
            "p50_ms": None if p50 is None else 1e3 * p50,
            "p90_ms": None if p90 is None else 1e3 * p90,
            "n": len(v.samples),
        }
    return out


# --- machine reference ------------------------------------------------------------------------------


def gemm_gflops(shapes: Sequence[tuple[int, int, int]], repeat: int = 5) -> dict[tuple, list[float]]:
    """GFLOP/s samples of fp32 `torch.mm` for each `(m, k, n)` shape (`2*m*k*n` flops per product),
    interleaved over shapes, one warm-up each."""
    import torch

    g = torch.Generator().manual_seed(0)
    operands = {s: (torch.randn(s[0], s[1], generator=g), torch.randn(s[1], s[2], generator=g)) for s in shapes}
    for a, b in operands.values():
        torch.mm(a, b)
    results: dict = {s: [] for s in shapes}
    for _ in range(repeat):
        for s, (a, b) in operands.items():
            dt, _ = time_call(lambda a=a, b=b: torch.mm(a, b))
            results[s].append(2.0 * s[0] * s[1] * s[2] / dt / 1e9)
    return results


def system_info() -> dict[str, str]:
    """Versions, CPU and git commit, for the report header."""
    import torch

    info = {
        "date (UTC)": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "logical cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
    }
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
        )
        if commit.returncode == 0:
            changes = " (+ uncommitted changes)" if dirty.stdout.strip() else ""
            info["git commit"] = commit.stdout.strip() + changes
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        info["load average (1/5/15 min) now"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        pass
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# --- varied scenes (the DFF benchmarks) -----------------------------------------------------------------


VAL_COMPOSITES_SEED = 1  # the training composites (`yolo.recipe.COMPOSITES`) use seed 0 and training crowns


def val_composites(images: int, imgsz: int = 320) -> Path:
    """The val composites the DFF benchmarks add to the forest val tiles; returns their `data.yaml`: `images`
    frames of `imgsz` px, held-out crowns on held-out ground, a quarter each at the training composites' foreground
    shares (empty to crowded; `yolo.recipe.COMPOSITES`), built once and cached."""
    from sparseyolo.data.composite import build_composite_dataset
    from sparseyolo.yolo.recipe import COMPOSITES

    fg = list(COMPOSITES["fg"])
    return build_composite_dataset(size=(imgsz, imgsz), fg=fg, images=images, split="val", seed=VAL_COMPOSITES_SEED)


# --- tables and files -------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """Plain aligned text. `align`: one char per column, "l" or "r" (default: first column left)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def line(row):
        parts = (c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align, strict=False))
        return "  ".join(parts).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(headers) - 1)

    def esc(value) -> str:
        return str(value).replace("|", "\\|")

    out = [
        "| " + " | ".join(esc(h) for h in headers) + " |",
        "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|",
    ]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Rows of dicts -> CSV with the union of keys as columns (first-seen order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return path


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
