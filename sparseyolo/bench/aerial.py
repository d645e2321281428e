"""Reference detectors on the held-out aerial scene: model-forward latency of the whole model and of layers 0-4.

`sparseyolo bench aerial [--repeats 7] [--threads 2] [--targets 0.25,0.10] [--out results/bench-aerial]`

The shipped `yolov8n-aerial` (dense) and `yolov8n-sparse-aerial` (sparse stem; one row per inference `target`)
on the whole 1249x1035 held-out scene at native scale (zero-padded to 1280x1056): the forward of the whole
model, of layers 0-4 (the part the sparse stem replaces) and of the sparsifier alone, timed interleaved by the
one harness (`common.latency`), plus the bound a free stem would give: `T_dense / (T_dense - T_dense_0-4)`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DENSE, SPARSE = "yolov8n-aerial", "yolov8n-sparse-aerial"


def scene_tensor():
    """The held-out scene at native scale as `Tensor[1, 3, 1056, 1280]` in [0, 1], zero-padded to a multiple of 32."""
    import torch

    from sparseyolo.data.aerial import VAL_SCENES, load_scene

    img, _ = load_scene(VAL_SCENES[0])
    h, w = img.shape[:2]
    x = torch.zeros(1, 3, -(-h // 32) * 32, -(-w // 32) * 32)  # native scale, padded to the stride
    x[0, :, :h, :w] = torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255
    return x


def callables(model, x) -> dict:
    m = model.model.eval()

    def stem():
        y = x
        for layer in m.model[:5]:
            y = layer(y)
        return y

    out = {"whole": lambda: m(x), "layers 0-4": stem}
    sparsify = getattr(m.model[0], "sparsify", None)
    if sparsify is not None:
        out["sparsifier"] = lambda: sparsify(x)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sparseyolo bench aerial", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--targets", default="0.25,0.10", help="inference targets of the sparse model")
    ap.add_argument("--out", type=Path, default=Path("results/bench-aerial"))
    a = ap.parse_args(argv)
    if a.repeats < 1 or a.threads < 1:
        ap.error("--repeats and --threads must be >= 1")
    try:
        targets = [float(t) for t in a.targets.split(",") if t]
    except ValueError:
        ap.error(f"--targets must be comma-separated fractions, got {a.targets!r}")
    from sparseyolo.yolo.integration import enable

    enable()  # first: offline defaults before Ultralytics loads, then registration
    from sparseyolo.bench.common import latency, markdown_table, write_text
    from sparseyolo.yolo.api import YOLO

    x = scene_tensor()
    fns = {(DENSE, k): f for k, f in callables(YOLO(DENSE), x).items()}
    for t in targets:
        for k, f in callables(YOLO(SPARSE, sparsify={"target": t}), x).items():
            fns[(f"{SPARSE} target {t:g}", k)] = f
    res = latency({f"{m}|{k}": f for (m, k), f in fns.items()}, repeats=a.repeats, threads=a.threads)
    rows = [[*key.split("|"), f"{v['p50_ms']:.1f}", f"{v['p90_ms']:.1f}"] for key, v in res.items()]
    dense_whole, dense_stem = res[f"{DENSE}|whole"]["p50_ms"], res[f"{DENSE}|layers 0-4"]["p50_ms"]
    text = markdown_table(["model", "part", "p50 ms", "p90 ms"], rows)
    text += f"\n\nfree-stem bound: {dense_whole:.0f} / ({dense_whole:.0f} - {dense_stem:.0f}) = "
    text += f"{dense_whole / (dense_whole - dense_stem):.2f}x; "
    text += "; ".join(
        f"{m} whole: {dense_whole / res[f'{m}|whole']['p50_ms']:.2f}x"
        for m in dict.fromkeys(k.split("|")[0] for k in res)
        if m != DENSE
    )
    print(f"input {tuple(x.shape)}, {a.threads} threads, {a.repeats} interleaved rounds\n\n{text}")
    write_text(a.out / "aerial.md", text + "\n")
    return 0
