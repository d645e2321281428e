"""Helpers for the sparse-engine tests: random sparse inputs and an independent dense oracle.

Nothing here calls the engine's own dense conversion (`to_dense`/`from_dense`): the oracle builds its dense
maps with `index_put` so that an engine bug cannot hide in both sides of a comparison.

Random tensors are drawn on the CPU (seeded) and then moved to the requested device, so every device sees the
same values; derived tensors follow their inputs' device.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparseyolo.sparse import SparseConvTensor

# The CUDA cases (the `device` fixture's "cuda", CUDA-only tests): skipped, with this line in the summary, without one.
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: CUDA oracle suite skipped")

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}

# Small shapes per dimensionality (the oracle grid uses these unless a case overrides them).
SHAPES = {1: (17,), 2: (9, 11), 3: (5, 6, 7)}


def tup(v, d):
    return (v,) * d if isinstance(v, int) else tuple(v)


def random_sites(shape, batch, density=0.3, seed=0, min_per_batch=1):
    """int32 `(N, 1 + D)` unique sites, batch index first, sorted; each batch entry gets >= min_per_batch."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand((batch, *shape), generator=g) < density
    for b in range(batch):  # make sure no batch entry is empty (unless asked)
        flat = mask[b].reshape(-1)
        if int(flat.sum()) < min_per_batch:
            flat[torch.randperm(flat.numel(), generator=g)[:min_per_batch]] = True
    return mask.nonzero().to(torch.int32)


def random_sparse(shape, batch, channels, density=0.3, seed=0, dtype=torch.float64, requires_grad=False, device="cpu"):
    """A random `SparseConvTensor` on `device`; its features are a leaf (optionally requiring grad)."""
    idx = random_sites(shape, batch, density, seed)
    g = torch.Generator().manual_seed(seed + 1000)
    feats = torch.randn(idx.shape[0], channels, generator=g, dtype=dtype)
    return SparseConvTensor(feats.to(device).requires_grad_(requires_grad), idx.to(device), shape, batch)


def densify(features, indices, shape, batch, fill=0.0):
    """Dense `(B, C, *shape)` with `features` at `indices` and `fill` elsewhere (differentiable)."""
    c = features.shape[1]
    out = features.new_full((batch, *shape, c), fill)
    out = out.index_put(tuple(indices.to(torch.int64).unbind(1)), features)
    return out.movedim(-1, 1)


def at_sites(dense, indices):
    """Rows `(N, C)` of a dense `(B, C, *spatial)` map at `indices (N, 1 + D)`."""
    return dense.movedim(1, -1)[tuple(indices.to(torch.int64).unbind(1))]


def occupancy(indices, shape, batch, dtype=torch.float64):
    """Dense `(B, 1, *shape)` 0/1 mask of the sites."""
    ones = torch.ones(indices.shape[0], 1, dtype=dtype, device=indices.device)
    return densify(ones, indices, shape, batch)


def mask_sites(mask):
    """Sites `(N, 1 + D)` int64 (sorted) where a dense `(B, 1, *spatial)` mask is non-zero."""
    return mask[:, 0].nonzero()


def sorted_rows(indices):
    """Rows of an index tensor in lexicographic order (int64), for order-independent set comparison."""
    idx = indices.to(torch.int64)
    if idx.shape[0] == 0:
        return idx
    order = torch.arange(idx.shape[0], device=idx.device)
    for col in reversed(range(idx.shape[1])):  # stable LSD sort
        order = order[torch.sort(idx[order, col], stable=True).indices]
    return idx[order]


def assert_same_sites(got, expected):
    got, expected = sorted_rows(got), sorted_rows(expected)
    assert got.shape == expected.shape, f"{got.shape[0]} output sites, oracle has {expected.shape[0]}"
    assert torch.equal(got, expected), "output site set differs from the dense oracle"


def assert_unique_rows(indices):
    assert torch.unique(indices.to(torch.int64), dim=0).shape[0] == indices.shape[0], "duplicate sites"


def cotangent(n, c, seed, dtype=torch.float64, device="cpu"):
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


def seed_of(*args) -> int:
    """A deterministic seed for a parameter set (str hashes are salted per process; crc32 is not)."""
    import zlib

    return zlib.crc32(repr(args).encode()) % 10_000
