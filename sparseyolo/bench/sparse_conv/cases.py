"""The sparse-conv benchmark's cases: inputs, the variants timed per case, one 2D or 3D case, and the `Result`
of a run (the run itself: `run`).

A case is one conv on one input (2D: a 3x3 conv on a random site mask; 3D: a 3x3x3 SubM conv on a voxelized
LiDAR scan). Each timed variant carries a `Kind` (engine, map built or cached, pass, threads); the report reads
what a variant means from its kind, never from its name.
"""

from __future__ import annotations

import itertools
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from sparseyolo.bench import common as C

TARGETS = [(0.01, 100.0, ">="), (0.05, 40.0, ">="), (0.10, 16.0, ">="), (0.25, 4.0, ">="), (0.50, 1.0, ">")]
TARGET_CASE = ("subm3", 16, 32, "uniform")

OPS = {"subm3": "3x3 submanifold", "s2p1": "3x3 stride 2, padding 1"}
REL_TOL = 1e-4  # max |ours - reference| / max |reference| accepted as correct


@dataclass(frozen=True)
class Kind:
    """What a timed variant is. `name` is its label in tables and CSV ("ours built", "spconv cached 1t", ...)."""

    engine: str  # "ours" | "dense" | "spconv"
    map: str  # "built" (in the call) | "cached" | "" (dense: no map)
    pass_: str = "fwd"  # "fwd" | "fwd+bwd" (input and weight gradients)
    threads: int | None = None  # spconv only: it is timed at two thread counts

    @property
    def backward(self) -> bool:
        return self.pass_ == "fwd+bwd"

    @property
    def name(self) -> str:
        if self.engine == "spconv":
            return f"spconv {self.map} {self.threads}t"
        if self.engine == "dense" or self.backward:
            return f"{self.engine} {self.pass_}"
        return f"{self.engine} {self.map}"


OURS_BUILT = Kind("ours", "built")
OURS_CACHED = Kind("ours", "cached")
OURS_FB = Kind("ours", "cached", "fwd+bwd")
DENSE_FWD = Kind("dense", "")
DENSE_FB = Kind("dense", "", "fwd+bwd")
# Interleaving order within a round: sparse variants and dense samples alternate; spconv comes last.
RUN_ORDER = (OURS_BUILT, DENSE_FWD, OURS_CACHED, OURS_FB, DENSE_FB)


def spconv_kind(map_: str, threads: int) -> Kind:
    return Kind("spconv", map_, "fwd", threads)


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
    variants: dict = field(default_factory=dict)  # kind name -> summary dict (with its "kind")
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
        "kind": v.kind,
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
        built = spconv_kind("built", t)
        variants.append(C.Variant(built.name, adapter.built, measure_memory=t == cfg.threads, kind=built, **kw))
        if adapter.subm:
            cached = spconv_kind("cached", t)
            variants.append(C.Variant(cached.name, adapter.cached, kind=cached, **kw))
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


# --- timed variants ---------------------------------------------------------------------------------


def _ours_variants(cfg: Config, s, conv, weight, out_sites: int, cout: int) -> list[C.Variant]:
    """Ours for `conv(x, w)` on the sparse input `s`: map built in the call (a fresh tensor each call), map
    cached (`s` again after the warm-up call), forward + backward with the map cached."""
    import torch

    from sparseyolo.sparse import SparseConvTensor

    def built():
        with torch.no_grad():
            fresh = SparseConvTensor(s.features, s.indices, s.spatial_shape, s.batch_size, check=False)
            return conv(fresh, weight)

    def cached():
        with torch.no_grad():
            return conv(s, weight)

    feat_rg = s.features.clone().requires_grad_()
    w_rg = weight.clone().requires_grad_()
    s_fb = s.replace_feature(feat_rg)  # shares the map cache with s
    grad_out = torch.ones(out_sites, cout)

    def fwd_bwd():
        feat_rg.grad = None
        w_rg.grad = None
        out = conv(s_fb, w_rg).features
        out.backward(grad_out)
        return out.detach()

    kw = dict(threads=cfg.threads, max_samples=cfg.repeat, budget_s=cfg.budget_s)
    return [
        C.Variant(OURS_BUILT.name, built, measure_memory=True, kind=OURS_BUILT, **kw),
        C.Variant(OURS_CACHED.name, cached, kind=OURS_CACHED, **kw),
        C.Variant(OURS_FB.name, fwd_bwd, measure_memory=True, kind=OURS_FB, **kw),
    ]


def _dense_fwd(x_dense, weight, dense_conv):
    import torch

    def fwd():
        with torch.no_grad():
            return dense_conv(x_dense, weight)

    return fwd


def _dense_fwd_bwd(x_dense, weight, dense_conv, out_shape):
    import torch

    xd_rg = x_dense.clone().requires_grad_()
    wd_rg = weight.clone().requires_grad_()
    grad_out = torch.ones(out_shape)

    def fwd_bwd():
        xd_rg.grad = None
        wd_rg.grad = None
        dense_conv(xd_rg, wd_rg).backward(grad_out)

    return fwd_bwd


def _in_run_order(variants: list[C.Variant]) -> list[C.Variant]:
    rank = {kind: i for i, kind in enumerate(RUN_ORDER)}
    return sorted(variants, key=lambda v: rank.get(v.kind, len(rank)))  # stable: spconv keeps its order


def _check_ours(case: Case, ours, dense_out, sp_variants) -> None:
    """Ours (map cached) vs the dense output at ours' output sites (when there is one); then spconv vs ours."""
    import torch

    if dense_out is not None:
        idx = ours.indices.to(torch.int64)
        case.check_ours = _rel_err(ours.features, dense_out[0][(slice(None), *idx[:, 1:].unbind(1))].t())
    if case.section == "2d" and ours.features.shape[0] != case.out_sites:
        case.notes.append(f"ours has {ours.features.shape[0]} output sites, expected {case.out_sites}")
        case.check_ours = float("inf")
    _check_against(case, sp_variants, ours)


# --- the cases --------------------------------------------------------------------------------------


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
    """One 2D case. Dense times do not depend on the sites: they are pooled per group in `dense` (one warm-up
    and memory probe per group, one sample per case); `dense_plan["fb"]` False skips the dense fwd+bwd sample."""
    import functools

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
    shape = (size, size)
    sites, dense_macs = int(indices.shape[0]), out_hw**2 * 9 * cin * cout
    case = Case("2d", op, cin, cout, distribution, density, shape, sites, out_sites, pairs, dense_macs)
    s = SparseConvTensor(features, indices, shape, 1)
    stride = 1 if op == "subm3" else 2

    def conv(x, w):
        return Fs.subm_conv(x, w) if op == "subm3" else Fs.sparse_conv(x, w, stride=2, padding=1)

    variants = _ours_variants(cfg, s, conv, weight, out_sites, cout)
    x_dense = s.dense().contiguous()
    dense_conv = functools.partial(F.conv2d, stride=stride, padding=1)
    dense_fwd = _dense_fwd(x_dense, weight, dense_conv)
    dense_fb = _dense_fwd_bwd(x_dense, weight, dense_conv, (1, cout, out_hw, out_hw))
    state = dense.setdefault(case.group, {"fwd": [], "fb": [], "fwd_mb": None, "fb_mb": None, "warm": False})
    if not state["warm"]:
        C.set_threads(cfg.threads)
        _, state["fwd_mb"] = memory.measure(dense_fwd)
        _, state["fb_mb"] = memory.measure(dense_fb)
        state["warm"] = True
    one = dict(threads=cfg.threads, max_samples=1, warmup=False, extend=False)
    variants.append(C.Variant(DENSE_FWD.name, dense_fwd, kind=DENSE_FWD, **one))
    if dense_plan.get("fb", True):
        variants.append(C.Variant(DENSE_FB.name, dense_fb, kind=DENSE_FB, **one))
    sp_variants, notes = _spconv_variants(cfg, spconv, op, 2, weight, features, indices, shape, cfg.budget_s * 0.6)
    case.notes += notes
    variants = _in_run_order(variants + sp_variants)
    C.run_interleaved(variants, min_samples=cfg.min_repeat, memory=memory, restore_threads=cfg.threads)

    by_kind = {v.kind: v for v in variants}
    state["fwd"] += by_kind[DENSE_FWD].samples
    if DENSE_FB in by_kind:
        state["fb"] += by_kind[DENSE_FB].samples
    for v in variants:
        if v.kind.engine != "dense":  # dense is reported pooled over the group
            case.variants[v.name] = _summary(v)
        if v.error:
            case.notes.append(f"{v.name} failed: {v.error}")
    ours, dense_out = by_kind[OURS_CACHED].last, by_kind[DENSE_FWD].last
    if ours is not None and dense_out is not None:
        _check_ours(case, ours, dense_out, sp_variants)
    return case


def run_case_3d(cfg: Config, coords, spatial_shape, voxel_size: float, source: str, spconv, memory: C.PeakRSS) -> Case:
    """One 3D case: 3x3x3 SubM on voxelized LiDAR; dense conv3d only while the grid has at most
    `cfg.dense3d_max_cells` cells."""
    import functools

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
    n = int(indices.shape[0])
    pairs = count_pairs_subm(indices, spatial_shape)
    source_name, dense_macs = f"LiDAR {voxel_size:g} m", cells * 27 * cin * cout
    case = Case("3d", "subm3", cin, cout, source_name, n / cells, tuple(spatial_shape), n, n, pairs, dense_macs)
    case.notes.append(f"3D source: {source}")
    s = SparseConvTensor(features, indices, spatial_shape, 1)
    variants = _ours_variants(cfg, s, Fs.subm_conv, weight, n, cout)
    if cells <= cfg.dense3d_max_cells:
        dense_fwd = _dense_fwd(s.dense().contiguous(), weight, functools.partial(F.conv3d, padding=1))
        kw = dict(threads=cfg.threads, max_samples=cfg.repeat, budget_s=cfg.budget_s * 2, extend=False)
        variants.append(C.Variant(DENSE_FWD.name, dense_fwd, measure_memory=True, kind=DENSE_FWD, **kw))
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
    case.notes += notes
    variants = _in_run_order(variants + sp_variants)
    C.run_interleaved(variants, min_samples=cfg.min_repeat, memory=memory, restore_threads=cfg.threads)
    for v in variants:
        case.variants[v.name] = _summary(v)
        if v.error:
            case.notes.append(f"{v.name} failed: {v.error}")
    by_kind = {v.kind: v for v in variants}
    ours, dense_v = by_kind[OURS_CACHED].last, by_kind.get(DENSE_FWD)
    if ours is not None:
        _check_ours(case, ours, dense_v.last if dense_v else None, sp_variants)
    return case


# --- the run's result (`run.run`) -------------------------------------------------------------------


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
