"""The sparse-conv benchmark's run: the variants timed per case (ours, dense, spconv), one 2D or 3D case, and
the whole run (`run(cfg) -> Result`). The definitions it fills are in `cases`."""

from __future__ import annotations

import gc
import itertools
import math
import os
import time

from sparseyolo.bench import common as C
from sparseyolo.bench.sparse_conv.cases import (
    DENSE_FB,
    DENSE_FWD,
    OURS_BUILT,
    OURS_CACHED,
    OURS_FB,
    RUN_ORDER,
    Case,
    Config,
    Result,
    _seed,
    count_pairs_2d,
    count_pairs_subm,
    site_mask,
    spconv_kind,
)


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
    case = Case(
        "2d",
        op,
        cin,
        cout,
        distribution,
        density,
        shape,
        int(indices.shape[0]),
        out_sites,
        pairs,
        out_hw**2 * 9 * cin * cout,
    )
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
        cells * 27 * cin * cout,
    )
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


# --- the run ----------------------------------------------------------------------------------------


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
    bar = C.progress(total, "sparse-conv", unit="case", enabled=cfg.progress)
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
