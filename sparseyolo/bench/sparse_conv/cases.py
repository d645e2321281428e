"""The sparse-conv benchmark's definitions: targets, `Kind`, `Config`, the inputs and pair counts, `Case` and
`Result` (the run that fills them: `runner`).

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
