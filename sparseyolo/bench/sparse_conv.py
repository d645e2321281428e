"""sparse conv engine vs dense F.conv2d/conv3d and spconv: time, speed-up, GFLOP/s, peak memory.

`sparseyolo bench sparse-conv [--quick] [--threads 2] [--repeat 5] [--out results/bench] ...`

2D: a 1024x1024 map, batch 1, channels 16->32 and 64->64, 3x3 submanifold conv ("subm3") and 3x3 stride-2
padding-1 conv ("s2p1"), active sites uniform or clustered (gaussian blobs, fixed seed) at 1..50%:

* ours, map built in the call: a fresh `SparseConvTensor` every call (coordinate lookup + kernel map);
* ours, map cached: the same tensor again after a warm-up call;
* ours, forward + backward (input and weight gradients), map cached;
* dense `F.conv2d` forward and forward + backward on the densified input;
* spconv (when installed), map built each call and (SubM only: spconv re-uses maps only for SubM layers
  sharing an `indice_key`) cached; at the benchmark's thread count (unverified: spconv's CPU scatter-add
  races with 2+ threads) and at 1 thread.

Useful MACs = kernel-map pairs x C_in x C_out (pairs counted independently of the engine); effective
GFLOP/s = 2 x useful MACs / time, shown beside the machine's fp32 GEMM GFLOP/s from the same run.
3D: a real airborne LiDAR scan voxelized at two voxel sizes, 3x3x3 SubM 16->16.
Forward timings run under `torch.no_grad()`. Writes sparse_conv.md / .csv / .png to `--out`.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
import os
import shlex
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from sparseyolo.bench import common as C

# Issue targets for SubM 3x3 16->32, uniform sites, map built in the call, vs dense F.conv2d forward.
TARGETS = [(0.01, 100.0, ">="), (0.05, 40.0, ">="), (0.10, 16.0, ">="), (0.25, 4.0, ">="), (0.50, 1.0, ">")]
TARGET_CASE = ("subm3", 16, 32, "uniform")

OPS = {"subm3": "3x3 submanifold", "s2p1": "3x3 stride 2, padding 1"}
REL_TOL = 1e-4  # max |ours - reference| / max |reference| accepted as correct


@dataclass
class Config:
    size: int = 1024
    channels: tuple = ((16, 32), (64, 64))
    ops: tuple = ("subm3", "s2p1")
    distributions: tuple = ("uniform", "clustered")
    densities: tuple = (0.01, 0.05, 0.10, 0.25, 0.50)
    threads: int = 2
    repeat: int = 5  # at most this many timed calls per variant and case
    min_repeat: int = 3  # at least this many, unless `repeat` is smaller
    budget_s: float = 0.6  # stop a variant after min_repeat calls once it has used this much time
    spconv: bool = True
    spconv_1thread: bool = True
    only: str | None = None  # "2d" | "3d" | None
    out: Path = Path("results/bench")
    voxel_sizes: tuple = (1.0, 2.0)
    channels3d: tuple = (16, 16)
    lidar: str | None = None
    dense3d_max_cells: int = 16_000_000
    gemm_square: int = 2048
    seed: int = 0
    quick: bool = False
    plot: bool = True
    progress: bool = True


def quick_config(**overrides) -> Config:
    """Tiny sizes for tests: 128x128 maps, two densities, one or two timed calls."""
    cfg = Config(
        size=128,
        densities=(0.05, 0.25),
        repeat=2,
        min_repeat=1,
        budget_s=0.02,
        voxel_sizes=(4.0, 8.0),
        dense3d_max_cells=2_000_000,
        gemm_square=256,
        quick=True,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


# --- inputs -----------------------------------------------------------------------------------------


def _seed(*parts) -> int:
    """A stable seed from the case parameters (Python's `hash` of strings changes between runs)."""
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


def site_mask(size: int, density: float, distribution: str, seed: int):
    """Bool `(1, size, size)` mask with exactly `round(density * size**2)` active sites.

    uniform: a random subset. clustered: the highest cells of a sum of 32 random gaussian bumps (sigma
    3-12% of the side), i.e. blobs/disks, ties broken by tiny noise; the same seed gives the same mask.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    cells = size * size
    n = max(1, min(cells, round(density * cells)))
    flat = torch.zeros(cells, dtype=torch.bool)
    if distribution == "uniform":
        flat[torch.randperm(cells, generator=g)[:n]] = True
    elif distribution == "clustered":
        axis = torch.arange(size, dtype=torch.float32)
        field_ = torch.zeros(size, size)
        for _ in range(32):
            cy, cx = (torch.rand(2, generator=g) * size).tolist()
            sigma = float(0.03 + 0.09 * torch.rand(1, generator=g)) * size
            amp = float(0.5 + 0.5 * torch.rand(1, generator=g))
            gy = torch.exp(-((axis - cy) ** 2) / (2 * sigma**2))
            gx = torch.exp(-((axis - cx) ** 2) / (2 * sigma**2))
            field_ += amp * gy[:, None] * gx[None, :]
        field_ += 1e-7 * torch.rand(size, size, generator=g)
        flat[torch.topk(field_.flatten(), n).indices] = True
    else:
        raise ValueError(f"distribution must be 'uniform' or 'clustered', got {distribution!r}")
    return flat.view(1, size, size)


def count_pairs_2d(mask, op: str) -> tuple[int, int]:
    """(kernel-map pairs, output sites) of a 3x3 subm / stride-2 padding-1 conv, from the dense mask."""
    import torch
    import torch.nn.functional as F

    m = mask.to(torch.float32).unsqueeze(1)
    ones = torch.ones(1, 1, 3, 3)
    if op == "subm3":
        counts = F.conv2d(m, ones, padding=1)
        return int((counts * m).double().sum()), int(mask.sum())
    counts = F.conv2d(m, ones, stride=2, padding=1)
    return int(counts.double().sum()), int((counts > 0).sum())


def count_pairs_subm(indices, spatial_shape, kernel: int = 3) -> int:
    """Pairs of a kernel^D submanifold conv: sorted-key lookup of every shifted site (engine-independent)."""
    import torch

    idx = indices.to(torch.int64)
    half = kernel // 2
    box = [int(s) + 2 * half for s in spatial_shape]
    strides = [math.prod(box[i + 1 :]) for i in range(len(box))]
    batch_stride = math.prod(box)
    keys = idx[:, 0] * batch_stride + ((idx[:, 1:] + half) * torch.tensor(strides)).sum(1)
    sorted_keys, _ = torch.sort(keys)
    n = sorted_keys.numel()
    total = 0
    for delta in itertools.product(range(-half, half + 1), repeat=len(spatial_shape)):
        shifted = keys + sum(d * s for d, s in zip(delta, strides, strict=False))
        pos = torch.searchsorted(sorted_keys, shifted).clamp_(max=n - 1)
        total += int((sorted_keys[pos] == shifted).sum())
    return total


# --- one case ---------------------------------------------------------------------------------------


@dataclass
class Case:
    section: str  # "2d" | "3d"
    op: str
    cin: int
    cout: int
    distribution: str
    density: float
    spatial_shape: tuple
    sites: int
    out_sites: int
    pairs: int
    dense_macs: int | None
    variants: dict = field(default_factory=dict)  # name -> summary dict
    check_ours: float | None = None  # max rel error of ours (cached) vs dense
    notes: list = field(default_factory=list)

    @property
    def useful_macs(self) -> int:
        return self.pairs * self.cin * self.cout

    @property
    def group(self) -> tuple:
        return (self.section, self.op, self.cin, self.cout, self.spatial_shape)


def _summary(v: C.Variant, **extra) -> dict:
    return {
        "median": v.median,
        "min": v.min,
        "n": len(v.samples),
        "samples": list(v.samples),
        "peak_mb": v.peak_mb,
        "error": v.error,
        "threads": v.threads,
        **extra,
    }


def _rel_err(got, ref) -> float:
    scale = float(ref.abs().max()) or 1.0
    return float((got - ref).abs().max()) / scale if got.numel() else 0.0


class SpconvAdapter:
    """spconv 2.x modules for one conv; weight layout (out, *kernel, in)."""

    def __init__(self, spconv, op: str, ndim: int, weight, features, indices, spatial_shape):
        import torch

        self.spconv = spconv
        cout, cin = weight.shape[:2]
        names = {("subm3", 2): "SubMConv2d", ("subm3", 3): "SubMConv3d", ("s2p1", 2): "SparseConv2d"}
        name = names[(op, ndim)]
        kwargs = {"indice_key": "bench"} if op == "subm3" else {"stride": 2, "padding": 1}
        self.module = getattr(spconv, name)(cin, cout, 3, bias=False, **kwargs)
        w = weight.permute(0, *range(2, 2 + ndim), 1).contiguous()
        if tuple(self.module.weight.shape) != tuple(w.shape):
            raise RuntimeError(
                f"unexpected spconv weight shape {tuple(self.module.weight.shape)}, expected {tuple(w.shape)}"
            )
        with torch.no_grad():
            self.module.weight.copy_(w)
        self.features = features.contiguous()
        self.indices = indices.contiguous()  # spconv reads raw memory: must be contiguous
        self.spatial_shape = list(spatial_shape)
        self.subm = op == "subm3"
        self._cached_input = None

    def fresh(self):
        return self.spconv.SparseConvTensor(self.features, self.indices, self.spatial_shape, 1)

    def built(self):
        import torch

        with torch.no_grad():
            return self.module(self.fresh())

    def cached(self):
        import torch

        with torch.no_grad():
            if self._cached_input is None:
                first = self.module(self.fresh())
                # the output shares the input's sites and carries indice_dict["bench"]
                self._cached_input = first.replace_feature(self.features)
            return self.module(self._cached_input)


def _spconv_variants(cfg: Config, spconv, op, ndim, weight, features, indices, spatial_shape, budget):
    """(variants, notes) for spconv at cfg.threads (unverified when > 1) and at 1 thread."""
    if spconv is None:
        return [], []
    try:
        adapter = SpconvAdapter(spconv, op, ndim, weight, features, indices, spatial_shape)
    except Exception as error:
        return [], [f"spconv set-up failed: {type(error).__name__}: {error}"[:300]]
    thread_counts = [cfg.threads] + ([1] if cfg.spconv_1thread and cfg.threads != 1 else [])
    variants = []
    for t in thread_counts:
        # multi-thread spconv is unverified (racy) and often slow: fewer samples
        kw = dict(threads=t, max_samples=cfg.repeat if t == 1 else min(cfg.repeat, 3), budget_s=budget, extend=t == 1)
        variants.append(C.Variant(f"spconv built {t}t", adapter.built, measure_memory=t == cfg.threads, **kw))
        if adapter.subm:
            variants.append(C.Variant(f"spconv cached {t}t", adapter.cached, **kw))
    return variants, []


def _by_coordinate(indices, features):
    """Features reordered by row-major coordinate key (engines may order output rows differently)."""
    import torch

    idx = indices.to(torch.int64)
    span = int(idx.max()) + 1 if idx.numel() else 1
    keys = torch.zeros(idx.shape[0], dtype=torch.int64)
    for col in range(idx.shape[1]):
        keys = keys * span + idx[:, col]
    order = torch.argsort(keys)
    return keys[order], features[order]


def _check_against(case: Case, variants: list[C.Variant], ours):
    """Max relative error of each spconv output against ours, matched by coordinate (inf: other sites)."""
    ours_keys, ours_features = _by_coordinate(ours.indices, ours.features)
    for v in variants:
        if v.last is None or v.error is not None:
            continue
        try:
            keys, features = _by_coordinate(v.last.indices, v.last.features)
            if keys.shape != ours_keys.shape or not bool((keys == ours_keys).all()):
                err = float("inf")
                case.notes.append(
                    f"{v.name}: {keys.numel()} output sites vs ours {ours_keys.numel()} (or different coordinates)"
                )
            else:
                err = _rel_err(features, ours_features)
        except Exception as error:  # not comparable = wrong output too
            err = float("inf")
            case.notes.append(f"{v.name}: output not comparable ({error})"[:200])
        case.variants[v.name]["check"] = err


def run_case_2d(
    cfg: Config,
    op: str,
    cin: int,
    cout: int,
    distribution: str,
    density: float,
    spconv,
    memory: C.PeakRSS,
    dense: dict,
    dense_plan: dict,
) -> Case:
    import torch
    import torch.nn.functional as F

    from sparseyolo.sparse import SparseConvTensor
    from sparseyolo.sparse import functional as Fs

    size = cfg.size
    seed = _seed(cfg.seed, distribution, density)
    mask = site_mask(size, density, distribution, seed)
    indices = mask.nonzero().to(torch.int32).contiguous()
    g = torch.Generator().manual_seed(seed + 1)
    features = torch.randn(indices.shape[0], cin, generator=g)
    weight = torch.randn(cout, cin, 3, 3, generator=g) / math.sqrt(9 * cin)
    pairs, out_sites = count_pairs_2d(mask, op)
    out_hw = size if op == "subm3" else (size + 2 - 3) // 2 + 1
    case = Case(
        "2d",
        op,
        cin,
        cout,
        distribution,
        density,
        (size, size),
        int(indices.shape[0]),
        out_sites,
        pairs,
        dense_macs=out_hw * out_hw * 9 * cin * cout,
    )
    s = SparseConvTensor(features, indices, (size, size), 1)
    stride, padding = (1, 1) if op == "subm3" else (2, 1)

    def conv(x, w):
        return Fs.subm_conv(x, w) if op == "subm3" else Fs.sparse_conv(x, w, stride=2, padding=1)

    def ours_built():
        with torch.no_grad():
            fresh = SparseConvTensor(s.features, s.indices, s.spatial_shape, s.batch_size, check=False)
            return conv(fresh, weight)

    def ours_cached():
        with torch.no_grad():
            return conv(s, weight)

    feat_rg = features.clone().requires_grad_()
    w_rg = weight.clone().requires_grad_()
    s_fb = s.replace_feature(feat_rg)  # shares the map cache with s
    grad_sparse = torch.ones(out_sites, cout)

    def ours_fb():
        feat_rg.grad = None
        w_rg.grad = None
        out = conv(s_fb, w_rg).features
        out.backward(grad_sparse)
        return out.detach()

    x_dense = s.dense().contiguous()

    def dense_fwd():
        with torch.no_grad():
            return F.conv2d(x_dense, weight, stride=stride, padding=padding)

    xd_rg = x_dense.clone().requires_grad_()
    wd_rg = weight.clone().requires_grad_()
    grad_dense = torch.ones(1, cout, out_hw, out_hw)

    def dense_fb():
        xd_rg.grad = None
        wd_rg.grad = None
        F.conv2d(xd_rg, wd_rg, stride=stride, padding=padding).backward(grad_dense)

    budget = cfg.budget_s
    kw = dict(threads=cfg.threads, max_samples=cfg.repeat, budget_s=budget)
    variants = [
        C.Variant("ours built", ours_built, measure_memory=True, **kw),
        C.Variant("ours cached", ours_cached, **kw),
        C.Variant("ours fwd+bwd", ours_fb, measure_memory=True, **kw),
    ]
    # Dense: the warm-up (and memory probe) once per group, then one sample per case (pooled per group).
    key = case.group
    state = dense.setdefault(key, {"fwd": [], "fb": [], "fwd_mb": None, "fb_mb": None, "warm": False})
    if not state["warm"]:
        C.set_threads(cfg.threads)
        _, state["fwd_mb"] = memory.measure(dense_fwd)
        _, state["fb_mb"] = memory.measure(dense_fb)
        state["warm"] = True
    variants.append(C.Variant("dense fwd", dense_fwd, threads=cfg.threads, max_samples=1, warmup=False, extend=False))
    if dense_plan.get("fb", True):
        variants.append(
            C.Variant("dense fwd+bwd", dense_fb, threads=cfg.threads, max_samples=1, warmup=False, extend=False)
        )
    sp_variants, notes = _spconv_variants(cfg, spconv, op, 2, weight, features, indices, (size, size), budget * 0.6)
    variants += sp_variants
    case.notes += notes
    # Interleave: sparse variants and the dense samples alternate within each round.
    order = [variants[0], variants[3]] + variants[1:3] + variants[4:]
    C.run_interleaved(order, min_samples=cfg.min_repeat, memory=memory, restore_threads=cfg.threads)

    by_name = {v.name: v for v in variants}
    state["fwd"] += by_name["dense fwd"].samples
    if "dense fwd+bwd" in by_name:
        state["fb"] += by_name["dense fwd+bwd"].samples
    for v in variants:
        if not v.name.startswith("dense"):
            case.variants[v.name] = _summary(v)
        if v.error:
            case.notes.append(f"{v.name} failed: {v.error}")
    # Correctness: ours (cached) vs dense at the output sites; spconv vs ours.
    ours = by_name["ours cached"].last
    ref = by_name["dense fwd"].last
    if ours is not None and ref is not None:
        idx = ours.indices.to(torch.int64)
        case.check_ours = _rel_err(ours.features, ref[0][:, idx[:, 1], idx[:, 2]].t())
        if ours.features.shape[0] != out_sites:
            case.notes.append(f"ours has {ours.features.shape[0]} output sites, expected {out_sites}")
            case.check_ours = float("inf")
        _check_against(case, sp_variants, ours)
    return case


def run_case_3d(cfg: Config, coords, spatial_shape, voxel_size: float, source: str, spconv, memory: C.PeakRSS) -> Case:
    import torch
    import torch.nn.functional as F

    from sparseyolo.sparse import SparseConvTensor
    from sparseyolo.sparse import functional as Fs

    cin, cout = cfg.channels3d
    coords = torch.as_tensor(coords, dtype=torch.int32)
    indices = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), coords], dim=1).contiguous()
    g = torch.Generator().manual_seed(_seed(cfg.seed, "3d", voxel_size))
    features = torch.randn(indices.shape[0], cin, generator=g)
    weight = torch.randn(cout, cin, 3, 3, 3, generator=g) / math.sqrt(27 * cin)
    cells = math.prod(spatial_shape)
    pairs = count_pairs_subm(indices, spatial_shape)
    n = int(indices.shape[0])
    case = Case(
        "3d",
        "subm3",
        cin,
        cout,
        f"LiDAR {voxel_size:g} m",
        n / cells,
        tuple(spatial_shape),
        n,
        n,
        pairs,
        dense_macs=cells * 27 * cin * cout,
    )
    case.notes.append(f"3D source: {source}")
    s = SparseConvTensor(features, indices, spatial_shape, 1)

    def ours_built():
        with torch.no_grad():
            fresh = SparseConvTensor(s.features, s.indices, s.spatial_shape, s.batch_size, check=False)
            return Fs.subm_conv(fresh, weight)

    def ours_cached():
        with torch.no_grad():
            return Fs.subm_conv(s, weight)

    feat_rg = features.clone().requires_grad_()
    w_rg = weight.clone().requires_grad_()
    s_fb = s.replace_feature(feat_rg)
    grad_sparse = torch.ones(n, cout)

    def ours_fb():
        feat_rg.grad = None
        w_rg.grad = None
        out = Fs.subm_conv(s_fb, w_rg).features
        out.backward(grad_sparse)
        return out.detach()

    kw = dict(threads=cfg.threads, max_samples=cfg.repeat, budget_s=cfg.budget_s)
    variants = [
        C.Variant("ours built", ours_built, measure_memory=True, **kw),
        C.Variant("ours cached", ours_cached, **kw),
        C.Variant("ours fwd+bwd", ours_fb, measure_memory=True, **kw),
    ]
    dense_v = None
    if cells <= cfg.dense3d_max_cells:
        x_dense = s.dense().contiguous()

        def dense_fwd():
            with torch.no_grad():
                return F.conv3d(x_dense, weight, padding=1)

        dense_v = C.Variant(
            "dense fwd",
            dense_fwd,
            threads=cfg.threads,
            max_samples=cfg.repeat,
            budget_s=cfg.budget_s * 2,
            measure_memory=True,
            extend=False,
        )
        variants.insert(1, dense_v)
    else:
        case.notes.append(
            f"dense conv3d n/a at {voxel_size:g} m: grid {spatial_shape} has "
            f"{cells / 1e6:.0f}M cells "
            f"(limit {cfg.dense3d_max_cells / 1e6:.0f}M; {cells * cin * 4 / 2**30:.1f} GiB per "
            f"{cin}-channel map)"
        )
    sp_variants, notes = _spconv_variants(
        cfg, spconv, "subm3", 3, weight, features, indices, spatial_shape, cfg.budget_s * 0.6
    )
    variants += sp_variants
    case.notes += notes
    C.run_interleaved(variants, min_samples=cfg.min_repeat, memory=memory, restore_threads=cfg.threads)
    for v in variants:
        case.variants[v.name] = _summary(v)
        if v.error:
            case.notes.append(f"{v.name} failed: {v.error}")
    ours = next(v for v in variants if v.name == "ours cached").last
    if ours is not None:
        if dense_v is not None and dense_v.last is not None:
            idx = ours.indices.to(torch.int64)
            case.check_ours = _rel_err(ours.features, dense_v.last[0][:, idx[:, 1], idx[:, 2], idx[:, 3]].t())
        _check_against(case, sp_variants, ours)
    return case


# --- the run ----------------------------------------------------------------------------------------


@dataclass
class Result:
    config: Config
    cases: list
    dense: dict  # group -> {"fwd": samples, "fb": samples, "fwd_mb", "fb_mb"}
    gemm: dict  # label -> GFLOP/s samples
    info: dict
    notes: list
    seconds: float
    engine: str


def _load_spconv(cfg: Config, notes: list):
    if not cfg.spconv:
        notes.append("spconv: disabled (--no-spconv)")
        return None
    try:
        import spconv
        import spconv.pytorch as spconv_pytorch
    except Exception as error:
        notes.append(f"spconv: not installed or not importable ({type(error).__name__}: {error}"[:200] + ")")
        return None
    notes.append(
        f"spconv {getattr(spconv, '__version__', '?')}: timed at {cfg.threads} thread(s)"
        + (" and at 1 thread" if cfg.spconv_1thread and cfg.threads != 1 else "")
        + "; forward only (its backward needs CUDA on this build, see below)"
    )
    _probe_spconv_backward(spconv_pytorch, notes)
    return spconv_pytorch


def _probe_spconv_backward(spconv, notes: list) -> None:
    import torch

    try:
        m = spconv.SubMConv2d(2, 2, 3, bias=False, indice_key="probe")
        idx = torch.tensor([[0, 1, 1], [0, 1, 2]], dtype=torch.int32)
        feats = torch.randn(2, 2, requires_grad=True)
        m(spconv.SparseConvTensor(feats, idx, [4, 4], 1)).features.sum().backward()
        notes.append("spconv backward: works on this build (not timed)")
    except Exception as error:
        notes.append(
            f"spconv backward: fails on this build ({type(error).__name__}: {str(error)[:120]}), "
            f"so spconv forward+backward is not measured"
        )


def _engine_backend() -> str:
    """Which kernels the engine uses (compiled extension or pure PyTorch), for the report; best effort."""
    try:
        from sparseyolo.sparse import _ext

        return "compiled C++ extension" if _ext.enabled() else "pure PyTorch"
    except Exception:
        return "unknown"


def _load_lidar(cfg: Config):
    """(points (P, 3) float64, description) of the scan used for 3D."""
    from sparseyolo.data.lidar import lidar_files, load_points

    if cfg.lidar:
        return load_points(cfg.lidar), str(cfg.lidar)
    # laspy's largest *.las (simple1_4.las) is a synthetic 226x100 height grid; prefer the real airborne scan.
    real = [p for p in lidar_files() if p.name == "autzen_trim.laz"]
    if real:
        return load_points(real[0]), f"{real[0].name} (laspy 2.7.0 test data, real airborne LiDAR)"
    return load_points(), "largest .las of laspy 2.7.0 test data"


def _gemm(cfg: Config, store: dict, repeat: int = 3) -> None:
    sq = cfg.gemm_square
    shapes = [(sq, sq, sq), (100_000, 144, 32)]
    with C.threads(cfg.threads):
        samples = C.gemm_gflops(shapes, repeat=repeat)
    for shape, values in samples.items():
        store.setdefault(f"{shape[0]}x{shape[1]} @ {shape[1]}x{shape[2]}", []).extend(values)


def run(cfg: Config) -> Result:
    import torch

    start = time.perf_counter()
    C.set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    notes: list[str] = []
    try:
        notes.append(
            "load average (1/5/15 min) at start: "
            + " ".join(f"{x:.2f}" for x in os.getloadavg())
            + f" on {os.cpu_count()} logical cores (other work on the machine inflates timings)"
        )
    except OSError:
        pass
    memory = C.PeakRSS(pin_allocator=False)  # pinning glibc's thresholds would slow the timed calls
    if not memory.available:
        notes.append(f"peak memory: not measured ({memory.reason})")
    spconv = _load_spconv(cfg, notes)
    engine = _engine_backend()
    gemm: dict = {}
    _gemm(cfg, gemm)
    cases: list[Case] = []
    dense: dict = {}

    plan_2d = []
    if cfg.only in (None, "2d"):
        for op, (cin, cout) in itertools.product(cfg.ops, cfg.channels):
            group = [(op, cin, cout, d, p) for d in cfg.distributions for p in cfg.densities]
            plan_2d.append(group)
    do_3d = cfg.only in (None, "3d")
    total = sum(len(g) for g in plan_2d) + (len(cfg.voxel_sizes) if do_3d else 0)
    from tqdm import tqdm

    bar = tqdm(total=total, desc="sparse-conv", unit="case", file=sys.stderr, disable=not cfg.progress, mininterval=2.0)
    for group in plan_2d:
        for i, (op, cin, cout, dist, density) in enumerate(group):
            bar.set_postfix_str(f"{op} {cin}->{cout} {dist} {density:.0%}")
            # dense fwd+bwd of the big 64->64 subm map costs seconds: sample it every third case
            expensive = op == "subm3" and cin * cout >= 64 * 64 and cfg.size >= 512
            plan = {"fb": (i % 3 == 0) or not expensive}
            cases.append(run_case_2d(cfg, op, cin, cout, dist, density, spconv, memory, dense, plan))
            bar.update(1)
        gc.collect()
        _gemm(cfg, gemm, repeat=2)  # GEMM reference interleaved with the benchmark
    if do_3d:
        try:
            from sparseyolo.data.lidar import voxelize

            points, source = _load_lidar(cfg)
        except Exception as error:
            notes.append(f"3D skipped: could not load the LiDAR scan ({type(error).__name__}: {error})"[:300])
            bar.update(len(cfg.voxel_sizes))
        else:
            notes.append(f"3D: {source}, {len(points)} points")
            for vs in cfg.voxel_sizes:
                bar.set_postfix_str(f"3d voxel {vs:g} m")
                coords, shape, _ = voxelize(points, vs)
                cases.append(run_case_3d(cfg, coords, shape, vs, source, spconv, memory))
                bar.update(1)
    bar.close()
    _gemm(cfg, gemm)
    return Result(cfg, cases, dense, gemm, C.system_info(), notes, time.perf_counter() - start, engine)


# --- derived numbers --------------------------------------------------------------------------------


def dense_times(result: Result, case: Case) -> tuple[float | None, float | None]:
    if case.section == "3d":
        v = case.variants.get("dense fwd")
        return (v["median"] if v else None), None
    state = result.dense.get(case.group, {})
    return C.median(state.get("fwd", [])), C.median(state.get("fb", []))


def med(case: Case, name: str) -> float | None:
    v = case.variants.get(name)
    return v["median"] if v and not v.get("error") else None


def gflops(macs: float, seconds: float | None, factor: float = 1.0) -> float | None:
    return None if not seconds else 2.0 * macs * factor / seconds / 1e9


def best_ratio(result: Result, case: Case, name: str) -> float | None:
    """Speed-up of the fastest call of `name` over the fastest dense forward of the group (noise floor)."""
    state = result.dense.get(case.group, {})
    v = case.variants.get(name)
    if not state.get("fwd") or not v or not v.get("samples"):
        return None
    return C.ratio(min(state["fwd"]), min(v["samples"]))


def target_rows(result: Result) -> list[tuple]:
    """(density, rule, target, measured speed-up or None, "PASS"/"FAIL"/"not measured", best-call speed-up)."""
    rows = []
    for density, target, rule in TARGETS:
        match = [
            c
            for c in result.cases
            if c.section == "2d"
            and math.isclose(c.density, density)
            and (c.op, c.cin, c.cout, c.distribution) == TARGET_CASE
        ]
        measured = best = None
        if match:
            measured = C.ratio(dense_times(result, match[0])[0], med(match[0], "ours built"))
            best = best_ratio(result, match[0], "ours built")
        if measured is None:
            status = "not measured"
        else:
            status = "PASS" if (measured >= target if rule == ">=" else measured > target) else "FAIL"
        rows.append((density, rule, target, measured, status, best))
    return rows


def _csv_rows(result: Result) -> list[dict]:
    rows = []
    cfg = result.config
    for case in result.cases:
        dense_fwd, dense_fb = dense_times(result, case)
        base = {
            "section": case.section,
            "op": case.op,
            "c_in": case.cin,
            "c_out": case.cout,
            "distribution": case.distribution,
            "density": f"{case.density:.6g}",
            "spatial_shape": "x".join(map(str, case.spatial_shape)),
            "sites": case.sites,
            "out_sites": case.out_sites,
            "pairs": case.pairs,
            "useful_gmac": f"{case.useful_macs / 1e9:.6g}",
            "dense_gmac": f"{case.dense_macs / 1e9:.6g}" if case.dense_macs else None,
        }
        entries = []
        for name, v in case.variants.items():
            backward = "fwd+bwd" in name
            entries.append((name, v, dense_fb if backward else dense_fwd, 3.0 if backward else 1.0))
        if case.section == "2d":
            state = result.dense.get(case.group, {})
            entries.append(
                (
                    "dense fwd",
                    {
                        "median": dense_fwd,
                        "min": min(state.get("fwd") or [0]) or None,
                        "n": len(state.get("fwd", [])),
                        "peak_mb": state.get("fwd_mb"),
                        "threads": cfg.threads,
                        "pooled": True,
                    },
                    dense_fwd,
                    None,
                )
            )
            entries.append(
                (
                    "dense fwd+bwd",
                    {
                        "median": dense_fb,
                        "min": min(state.get("fb") or [0]) or None,
                        "n": len(state.get("fb", [])),
                        "peak_mb": state.get("fb_mb"),
                        "threads": cfg.threads,
                        "pooled": True,
                    },
                    dense_fb,
                    None,
                )
            )
        for name, v, ref, factor in entries:
            t = v.get("median")
            is_dense = name.startswith("dense")
            if is_dense:
                macs = (case.dense_macs or 0) * (3.0 if "fwd+bwd" in name else 1.0)
            else:
                macs = case.useful_macs * factor
            cached = ("cached" in name or "fwd+bwd" in name) and not is_dense
            rows.append(
                {
                    **base,
                    "variant": name,
                    "engine": name.split()[0],
                    "map": "built in call" if "built" in name else ("cached" if cached else ""),
                    "pass": "fwd+bwd" if "fwd+bwd" in name else "fwd",
                    "threads": v.get("threads"),
                    "verified": "no (spconv CPU scatter race with >1 thread)"
                    if name.startswith("spconv") and v.get("threads", 1) > 1
                    else "",
                    "median_ms": None if t is None else f"{t * 1e3:.4g}",
                    "min_ms": None if v.get("min") is None else f"{v['min'] * 1e3:.4g}",
                    "samples": v.get("n"),
                    "dense_pooled_over_group": "yes" if v.get("pooled") else "",
                    "speedup_vs_dense": None if is_dense else _fmt_opt(C.ratio(ref, t), "{:.4g}"),
                    "effective_gflops": _fmt_opt(gflops(macs, t), "{:.4g}"),
                    "peak_rss_growth_mib": _fmt_opt(v.get("peak_mb"), "{:.1f}"),
                    "max_rel_err": _fmt_opt(case.check_ours if name == "ours cached" else v.get("check"), "{:.2e}"),
                    "error": v.get("error"),
                }
            )
    return rows


def _fmt_opt(value, spec: str):
    return None if value is None else spec.format(value)


# --- text output ------------------------------------------------------------------------------------


def _pair(a: float | None, b: float | None) -> str:
    if a is None and b is None:
        return "-"
    return f"{C.fmt_ms(a)}/{C.fmt_ms(b)}" if b is not None else C.fmt_ms(a)


def _spconv_cell(case: Case, t: int, cfg: Config) -> str:
    built, cached = case.variants.get(f"spconv built {t}t"), case.variants.get(f"spconv cached {t}t")
    if built is None:
        return "-"
    if built.get("error"):
        return "error"
    cell = _pair(built["median"], cached["median"] if cached and not cached.get("error") else None)
    wrong = any(v and v.get("check") is not None and v["check"] > REL_TOL for v in (built, cached))
    if t > 1:
        cell += "!" if wrong else "?"
    elif wrong:
        cell += "!"
    return cell


def _check_cell(case: Case) -> str:
    if case.check_ours is None:  # no dense reference: single-thread spconv is the oracle
        err = case.variants.get("spconv built 1t", {}).get("check")
        if err is None:
            return "n/a"
        return "ok (spconv 1t)" if err <= REL_TOL else f"DIFF {err:.0e} (spconv 1t)"
    return "ok" if case.check_ours <= REL_TOL else f"BAD {case.check_ours:.0e}"


def table_2d(result: Result) -> tuple[list, list, str]:
    cfg = result.config
    t1 = cfg.spconv_1thread and cfg.threads != 1
    headers = [
        "conv",
        "ch",
        "dist",
        "dens",
        "active",
        "GMAC",
        "built",
        "cached",
        "f+b",
        "dense",
        "dense f+b",
        "x built",
        "x cached",
        "x f+b",
        "GF/s",
        f"spconv {cfg.threads}t b/c",
    ]
    if t1:
        headers += ["spconv 1t b/c", "x spc1 b"]
    headers += ["MiB ours/dense", "check"]
    rows = []
    for case in (c for c in result.cases if c.section == "2d"):
        dfwd, dfb = dense_times(result, case)
        built, cached, fb = med(case, "ours built"), med(case, "ours cached"), med(case, "ours fwd+bwd")
        row = [
            case.op,
            f"{case.cin}->{case.cout}",
            case.distribution[:5],
            f"{case.density:.0%}",
            case.sites,
            f"{case.useful_macs / 1e9:.3f}",
            C.fmt_ms(built),
            C.fmt_ms(cached),
            C.fmt_ms(fb),
            C.fmt_ms(dfwd),
            C.fmt_ms(dfb),
            C.fmt_x(C.ratio(dfwd, built)),
            C.fmt_x(C.ratio(dfwd, cached)),
            C.fmt_x(C.ratio(dfb, fb)),
            C.fmt_num(gflops(case.useful_macs, cached), 1),
            _spconv_cell(case, cfg.threads, cfg),
        ]
        if t1:
            row += [_spconv_cell(case, 1, cfg), C.fmt_x(C.ratio(dfwd, med(case, "spconv built 1t")))]
        mem_ours = case.variants.get("ours built", {}).get("peak_mb")
        mem_dense = result.dense.get(case.group, {}).get("fwd_mb")
        row += [f"{C.fmt_num(mem_ours, 0)}/{C.fmt_num(mem_dense, 0)}", _check_cell(case)]
        rows.append(row)
    return headers, rows, "lllrrr" + "r" * (len(headers) - 6)


def table_3d(result: Result) -> tuple[list, list, str]:
    cfg = result.config
    t1 = cfg.spconv_1thread and cfg.threads != 1
    headers = [
        "voxels",
        "grid (Z,Y,X)",
        "active",
        "density",
        "GMAC",
        "built",
        "cached",
        "f+b",
        "dense",
        "x built",
        "x cached",
        "GF/s",
        f"spconv {cfg.threads}t b/c",
    ]
    if t1:
        headers += ["spconv 1t b/c"]
    headers += ["MiB ours/dense", "check"]
    rows = []
    for case in (c for c in result.cases if c.section == "3d"):
        dfwd, _ = dense_times(result, case)
        built, cached, fb = med(case, "ours built"), med(case, "ours cached"), med(case, "ours fwd+bwd")
        row = [
            case.distribution.replace("LiDAR ", ""),
            "x".join(map(str, case.spatial_shape)),
            case.sites,
            f"{case.density:.2e}",
            f"{case.useful_macs / 1e9:.3f}",
            C.fmt_ms(built),
            C.fmt_ms(cached),
            C.fmt_ms(fb),
            C.fmt_ms(dfwd) if dfwd else "n/a",
            C.fmt_x(C.ratio(dfwd, built)) if dfwd else "n/a",
            C.fmt_x(C.ratio(dfwd, cached)) if dfwd else "n/a",
            C.fmt_num(gflops(case.useful_macs, cached), 1),
            _spconv_cell(case, cfg.threads, cfg),
        ]
        if t1:
            row += [_spconv_cell(case, 1, cfg)]
        mem_ours = case.variants.get("ours built", {}).get("peak_mb")
        mem_dense = case.variants.get("dense fwd", {}).get("peak_mb")
        row += [f"{C.fmt_num(mem_ours, 0)}/{C.fmt_num(mem_dense, 0) if dfwd else 'n/a'}", _check_cell(case)]
        rows.append(row)
    return headers, rows, "ll" + "r" * (len(headers) - 2)


def gemm_lines(result: Result) -> list[str]:
    return [
        f"  {label}: {C.median(v):.1f} GFLOP/s (median of {len(v)}, range {min(v):.1f}-{max(v):.1f})"
        for label, v in result.gemm.items()
    ]


def target_lines(result: Result) -> list[str]:
    head = (
        "Target check: SubM 3x3 16->32, uniform sites, map built in the call, speed-up vs dense F.conv2d "
        f"forward ({result.config.size}x{result.config.size})"
    )
    rows = [(f"{d:.0%}", f"{rule} {t:g}x", C.fmt_x(m), s, C.fmt_x(b)) for d, rule, t, m, s, b in target_rows(result)]
    headers = ["density", "target", "measured (median)", "result", "best call vs best dense (info)"]
    return [head, C.format_table(headers, rows, "lrrlr")]


def legend(result: Result) -> list[str]:
    cfg = result.config
    return [
        "Columns: times in ms, median of interleaved calls (min 3 per variant unless --repeat is smaller); "
        "built = map built in the call (fresh SparseConvTensor each call), cached = map re-used, "
        "f+b = forward + backward (input and weight gradients, map cached); forward timings under no_grad.",
        f"dense/dense f+b = F.conv2d on the densified {cfg.size}x{cfg.size} input, median over all samples "
        "of the same conv/channels group (dense time does not depend on the sites; samples are taken in "
        "between the sparse cases). x built / x cached / x f+b = dense time / ours (f+b vs dense f+b).",
        "GMAC = useful multiply-adds (kernel-map pairs x C_in x C_out, pairs counted independently of the "
        "engine); GF/s = 2 x useful MACs / 'cached' time.",
        "spconv b/c = spconv map built each call / cached (SubM layers sharing an indice_key; spconv has no "
        f"map re-use for strided convs: '-'). '?' = {cfg.threads}-thread spconv result unverified (its CPU "
        "scatter-add races with >1 thread); '!' = a wrong output (vs ours) was seen in this run (last call "
        "checked).",
        "MiB ours/dense = peak resident-set growth during one call (Linux VmHWM reset via "
        "/proc/self/clear_refs after malloc_trim; inputs excluded; outputs, temporaries and the kernel map "
        "included; the allocator is left at its defaults, freed heap pages are trimmed before the probe): "
        "ours map built in the call vs dense forward.",
        f"check = ours (cached) vs dense at the output sites, max |diff| / max |dense| <= {REL_TOL:g} "
        "(3D without a dense reference: vs single-thread spconv).",
    ]


def report_text(result: Result) -> str:
    cfg = result.config
    lines = [
        f"sparseyolo bench sparse-conv: {cfg.threads} thread(s), engine: {result.engine}, "
        f"{'quick, ' if cfg.quick else ''}{result.seconds:.0f} s",
        "GEMM fp32 (same run):",
    ]
    lines += gemm_lines(result)
    if any(c.section == "2d" for c in result.cases):
        headers, rows, align = table_2d(result)
        lines += [
            "",
            f"2D {cfg.size}x{cfg.size}, batch 1 (subm3 = 3x3 submanifold, s2p1 = 3x3 stride 2 padding 1)",
            C.format_table(headers, rows, align),
        ]
    if any(c.section == "3d" for c in result.cases):
        headers, rows, align = table_3d(result)
        lines += [
            "",
            f"3D LiDAR, 3x3x3 SubM {cfg.channels3d[0]}->{cfg.channels3d[1]}",
            C.format_table(headers, rows, align),
        ]
    if any(c.section == "2d" for c in result.cases):
        lines += [""] + target_lines(result)
    lines += ["", "Notes:"] + [f"  - {n}" for n in result.notes + _case_notes(result)]
    return "\n".join(lines)


def _case_notes(result: Result) -> list[str]:
    seen, out = set(), []
    for case in result.cases:
        for n in case.notes:
            text = (
                n
                if n.startswith(("3D source", "dense conv3d"))
                else f"{case.section} {case.op} {case.cin}->{case.cout} {case.distribution} {case.density:.3g}: {n}"
            )
            if text not in seen and not n.startswith("3D source"):
                seen.add(text)
                out.append(text)
    wrong = [
        (c, name)
        for c in result.cases
        for name, v in c.variants.items()
        if name.startswith("spconv") and v.get("check") is not None and v["check"] > REL_TOL
    ]
    if wrong:
        out.append(
            "spconv wrong outputs seen: "
            + "; ".join(
                f"{c.section} {c.op} {c.cin}->{c.cout} {c.distribution} {c.density:.3g} {name} "
                f"(rel err {c.variants[name]['check']:.1e})"
                for c, name in wrong
            )
        )
    bad = [c for c in result.cases if c.check_ours is not None and c.check_ours > REL_TOL]
    if bad:
        out.append(
            "OURS DIFFERS FROM DENSE: "
            + "; ".join(
                f"{c.section} {c.op} {c.cin}->{c.cout} {c.distribution} {c.density:.3g} ({c.check_ours:.1e})"
                for c in bad
            )
        )
    return out


def report_markdown(result: Result, argv: list[str], plot_name: str | None) -> str:
    cfg = result.config
    out = [
        "# Sparse convolution benchmark (`sparseyolo bench sparse-conv`)",
        "",
        f"Command: `sparseyolo bench sparse-conv {shlex.join(argv)}`".replace("conv `", "conv`"),
        f"Run time: {result.seconds:.0f} s. Engine kernels: {result.engine}. Threads: {cfg.threads}.",
        "",
    ]
    out += [C.markdown_table(["", ""], list(result.info.items()), "ll"), "", "## GEMM reference (fp32, same run)", ""]
    out += [
        C.markdown_table(
            ["product", "GFLOP/s (median)", "range", "samples"],
            [(k, f"{C.median(v):.1f}", f"{min(v):.1f}-{max(v):.1f}", len(v)) for k, v in result.gemm.items()],
            "lrrr",
        ),
        "",
    ]
    if any(c.section == "2d" for c in result.cases):
        headers, rows, align = table_2d(result)
        out += [
            f"## 2D: {cfg.size}x{cfg.size}, batch 1",
            "",
            "subm3 = 3x3 submanifold conv, s2p1 = 3x3 conv stride 2 padding 1; sites uniform or "
            "clustered (gaussian blobs). Times in ms.",
            "",
            C.markdown_table(headers, rows, align),
            "",
        ]
        out += ["## Target check", ""]
        out += [
            C.markdown_table(
                ["density", "target", "measured (median)", "result", "best call vs best dense (info)"],
                [
                    (f"{d:.0%}", f"{rule} {t:g}x", C.fmt_x(m), s, C.fmt_x(b))
                    for d, rule, t, m, s, b in target_rows(result)
                ],
                "lrrlr",
            ),
            "",
            "SubM 3x3 16->32, uniform sites, map built in the call, vs dense `F.conv2d` forward.",
            "",
        ]
        if plot_name:
            out += [f"![speed-up vs density]({plot_name})", ""]
    if any(c.section == "3d" for c in result.cases):
        headers, rows, align = table_3d(result)
        out += [
            f"## 3D: LiDAR, 3x3x3 SubM {cfg.channels3d[0]}->{cfg.channels3d[1]}",
            "",
            C.markdown_table(headers, rows, align),
            "",
        ]
    out += ["## How to read this", ""] + [f"- {line}" for line in legend(result)] + [""]
    out += ["## Notes", ""] + [f"- {n}" for n in result.notes + _case_notes(result)] + [""]
    return "\n".join(out)


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
        "ours built": ("tab:blue", "-"),
        "ours cached": ("tab:green", "--"),
        "ours fwd+bwd": ("tab:purple", ":"),
        "spconv built 1t": ("tab:gray", "-"),
        "spconv cached 1t": ("tab:gray", "--"),
    }
    markers = {"uniform": "o", "clustered": "s"}
    for ax, (op, cin, cout) in zip(axes.flat, groups, strict=False):
        for name, (color, ls) in styles.items():
            for dist, marker in markers.items():
                pts = []
                mine = [c for c in cases if (c.op, c.cin, c.cout, c.distribution) == (op, cin, cout, dist)]
                for c in sorted(mine, key=lambda c: c.density):
                    dfwd, dfb = dense_times(result, c)
                    sp = C.ratio(dfb if "fwd+bwd" in name else dfwd, med(c, name))
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
                        label=f"{name} ({dist})",
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


# --- command line -----------------------------------------------------------------------------------


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
    p = argparse.ArgumentParser(prog="sparseyolo bench sparse-conv", description=__doc__.split("\n\n")[0])
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
    paths = {"csv": C.write_csv(out / "sparse_conv.csv", _csv_rows(result))}
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


if __name__ == "__main__":
    raise SystemExit(main())
