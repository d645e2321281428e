"""A large clustered 2D input (>= 100k active sites on 1024 x 1024): SubM 3x3 16->32, strided conv, backward.

Results must be bit-identical with 1 and 2 threads and across repeated runs, and match the dense oracle.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from engine_utils import assert_unique_rows, at_sites, densify, occupancy
from torch.testing import assert_close

import sparseyolo.sparse.functional as SF
from sparseyolo.sparse import SparseConvTensor

SIZE = 1024


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(0)
    centres = rng.uniform(60, SIZE - 60, (48, 2))
    sigmas = rng.uniform(12, 40, 48)
    pts = np.concatenate([rng.normal(c, s, (5000, 2)) for c, s in zip(centres, sigmas)])
    pts = np.unique(np.clip(np.rint(pts), 0, SIZE - 1).astype(np.int32), axis=0)
    idx = torch.from_numpy(np.concatenate([np.zeros((len(pts), 1), np.int32), pts], axis=1))
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(idx.shape[0], 16, generator=g)
    w1 = torch.randn(32, 16, 3, 3, generator=g) * 0.1
    b1 = torch.randn(32, generator=g)
    w2 = torch.randn(32, 32, 3, 3, generator=g) * 0.05
    b2 = torch.randn(32, generator=g)
    assert idx.shape[0] >= 100_000
    return idx, feats, (w1, b1, w2, b2)


def run(idx, feats, params, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        f = feats.clone().requires_grad_(True)
        w1, b1, w2, b2 = (p.clone().requires_grad_(True) for p in params)
        x = SparseConvTensor(f, idx, (SIZE, SIZE), 1)  # fresh tensor: kernel maps are rebuilt every run
        y = SF.subm_conv(x, w1, b1)
        z = SF.sparse_conv(y, w2, b2, stride=2, padding=1)
        cot = torch.randn(z.features.shape, generator=torch.Generator().manual_seed(1))
        (z.features * cot).sum().backward()
        return dict(
            y=y.features.detach(),
            z=z.features.detach(),
            z_indices=z.indices,
            cot=cot,
            grad_f=f.grad,
            grad_w1=w1.grad,
            grad_b1=b1.grad,
            grad_w2=w2.grad,
            grad_b2=b2.grad,
        )
    finally:
        torch.set_num_threads(before)


def test_large_clustered_bit_identical_across_threads_and_runs(clustered, engine_path):
    idx, feats, params = clustered
    before = torch.get_num_threads()
    one = run(idx, feats, params, 1)
    two = run(idx, feats, params, 2)
    again = run(idx, feats, params, 2)
    assert torch.get_num_threads() == before
    for name in one:
        assert torch.equal(two[name], again[name]), f"{name}: two runs with 2 threads differ"
    for name in one:
        assert torch.equal(one[name], two[name]), f"{name}: 1 thread vs 2 threads differ"


def test_large_clustered_matches_dense(clustered):
    """Dense oracle on the same input (float32 tolerances)."""
    idx, feats, params = clustered
    got = run(idx, feats, params, torch.get_num_threads())
    f = feats.clone().requires_grad_(True)
    w1, b1, w2, b2 = (p.clone().requires_grad_(True) for p in params)
    dense_y = F.conv2d(densify(f, idx, (SIZE, SIZE), 1), w1, b1, padding=1)
    dense_y = dense_y * occupancy(idx, (SIZE, SIZE), 1, dtype=torch.float32)  # y lives on x's sites only
    assert_close(got["y"], at_sites(dense_y, idx), rtol=1e-4, atol=1e-4)
    reach = F.max_pool2d(occupancy(idx, (SIZE, SIZE), 1, dtype=torch.float32), 3, 2, 1)
    assert_unique_rows(got["z_indices"])
    assert got["z_indices"].shape[0] == int(reach.sum())  # same count; positions are checked by at_sites below
    dense_z = at_sites(F.conv2d(dense_y, w2, b2, stride=2, padding=1), got["z_indices"])
    assert bool((at_sites(reach, got["z_indices"]) == 1).all()), "an output site has no active input"
    assert_close(got["z"], dense_z, rtol=1e-4, atol=1e-4)
    (dense_z * got["cot"]).sum().backward()
    for name, p in (("grad_f", f), ("grad_w1", w1), ("grad_b1", b1), ("grad_w2", w2), ("grad_b2", b2)):
        scale = p.grad.abs().max().item()
        assert_close(got[name], p.grad, rtol=1e-4, atol=1e-4 * max(1.0, scale), msg=lambda m, n=name: f"{n}: {m}")
