"""Zero active sites: every op returns an empty tensor of the right shape, `.dense()` is zeros, backward works."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparseyolo.sparse as sp
import sparseyolo.sparse.functional as SF
from sparseyolo.sparse import SparseConvTensor

SHAPES = {1: (9,), 2: (7, 8), 3: (4, 5, 6)}


def empty(D, channels=3, batch=2, force_grad=True):
    feats = torch.zeros(0, channels, requires_grad=force_grad)
    return SparseConvTensor(feats, torch.zeros(0, 1 + D, dtype=torch.int32), SHAPES[D], batch)


def cls(name, D):
    return getattr(sp, f"{name}{D}d")


def check_empty(y, channels, spatial_shape, batch=2):
    assert isinstance(y, SparseConvTensor)
    assert tuple(y.features.shape) == (0, channels)
    assert tuple(y.indices.shape) == (0, 1 + len(spatial_shape)) and y.indices.dtype == torch.int32
    assert y.spatial_shape == tuple(spatial_shape) and y.batch_size == batch
    dense = y.dense()
    assert tuple(dense.shape) == (batch, channels, *spatial_shape) and not dense.any()
    assert tuple(y.dense(channels_first=False).shape) == (batch, *spatial_shape, channels)


def backward_ok(x, y, module):
    loss = y.features.sum() + y.dense().sum()
    loss.backward()
    assert x.features.grad is not None and x.features.grad.shape == x.features.shape
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert not p.grad.any(), f"{name} gradient is not zero"


@pytest.mark.parametrize("D", [1, 2, 3])
@pytest.mark.parametrize("kind", ["subm", "conv", "transpose"])
def test_empty_convs(D, kind):
    x = empty(D)
    if kind == "subm":
        m = cls("SubMConv", D)(3, 4, 3)
        expected = SHAPES[D]
    elif kind == "conv":
        m = cls("SparseConv", D)(3, 4, 3, stride=2, padding=1)
        expected = tuple((s + 2 - 2 - 1) // 2 + 1 for s in SHAPES[D])
    else:
        m = cls("SparseConvTranspose", D)(3, 4, 3, stride=2, padding=1, output_padding=1)
        expected = tuple((s - 1) * 2 - 2 + 2 + 1 + 1 for s in SHAPES[D])
    y = m(x)
    check_empty(y, 4, expected)
    backward_ok(x, y, m)


@pytest.mark.parametrize("D", [1, 2, 3])
def test_empty_inverse_conv(D):
    x = empty(D)
    down = cls("SparseConv", D)(3, 4, 3, stride=2, padding=1, indice_key="d")
    up = cls("SparseInverseConv", D)(4, 5, 3, indice_key="d")
    y = down(x)
    z = up(y)
    check_empty(z, 5, SHAPES[D])
    backward_ok(x, z, nn.ModuleList([down, up]))


@pytest.mark.parametrize("D", [1, 2, 3])
@pytest.mark.parametrize("mode", ["Max", "Avg"])
def test_empty_pools(D, mode):
    x = empty(D)
    y = cls(f"Sparse{mode}Pool", D)(2)(x)
    check_empty(y, 3, tuple(s // 2 for s in SHAPES[D]))
    backward_ok(x, y, nn.Module())


@pytest.mark.parametrize("pool", [sp.SparseGlobalMaxPool, sp.SparseGlobalAvgPool])
def test_empty_global_pools(pool):
    x = empty(2)
    out = pool()(x)
    assert tuple(out.shape) == (2, 3) and not out.any()
    out.sum().backward()
    assert x.features.grad is not None and x.features.grad.shape == (0, 3)


def test_empty_sequential_with_norms_and_hash_path():
    """A full block on an empty tensor, in train mode (batch norm has no statistics to take), and an empty
    tensor in a box big enough for the hash path."""
    net = sp.SparseSequential(
        sp.SubMConv2d(3, 4, 3),
        sp.SparseBatchNorm(4),
        nn.BatchNorm1d(4),
        nn.ReLU(),
        sp.SparseConv2d(4, 4, 3, 2, 1),
        sp.SparseSiLU(),
        sp.SparseReLU(),
    )
    net.train()
    x = empty(2)
    y = net(x)
    check_empty(y, 4, (4, 4))
    assert net[1].running_mean.eq(0).all()  # untouched
    backward_ok(x, y, nn.ModuleList([net[0], net[4]]))

    big = SparseConvTensor(torch.zeros(0, 2), torch.zeros(0, 4, dtype=torch.int32), (4096, 4096, 512), 1)
    y = SF.subm_conv(big, torch.randn(3, 2, 3, 3, 3))
    assert tuple(y.features.shape) == (0, 3) and y.spatial_shape == (4096, 4096, 512)
    z = SF.sparse_conv(y, torch.randn(3, 3, 2, 2, 2), stride=2)
    assert tuple(z.features.shape) == (0, 3) and z.spatial_shape == (2048, 2048, 256)


def test_from_dense_all_zero():
    x = SparseConvTensor.from_dense(torch.zeros(2, 3, 5, 6))
    check_empty(x, 3, (5, 6))
