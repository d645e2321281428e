"""The sparse-conv benchmark's run: spconv and the LiDAR scan loaded, the GEMM reference, every 2D and 3D case
(`cases`) in turn -> `Result`."""

from __future__ import annotations

import gc
import itertools
import os
import time

from sparseyolo.bench import common as C
from sparseyolo.bench.sparse_conv.cases import Case, Config, Result, run_case_2d, run_case_3d


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
