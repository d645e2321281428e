"""float64 `torch.autograd.gradcheck` of every op on tiny inputs, w.r.t. features, weight and bias, on both engine
paths."""

from __future__ import annotations

import pytest
import torch
from engine_utils import random_sites
from torch.autograd import gradcheck

import sparseyolo.sparse.functional as SF
from sparseyolo.sparse import SparseConvTensor

# Every test here runs on both engine paths (compiled kernels and pure PyTorch): see conftest.py.
pytestmark = pytest.mark.usefixtures("engine_path")

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """gradcheck makes hundreds of tiny calls; on a shared 2-core machine an OpenMP region per tiny call
    costs milliseconds of spinning, so run single-threaded (threaded paths are covered by the oracle grid)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _inputs(shape, batch, cin, seed):
    idx = random_sites(shape, batch, 0.4, seed)
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(idx.shape[0], cin, generator=g, dtype=F64, requires_grad=True)
    return idx, feats, g


def _param(*shape, g):
    return torch.randn(*shape, generator=g, dtype=F64, requires_grad=True)


CONV_OPS = [
    # name, shape, kernel, extra kwargs, groups
    ("subm", (4, 5), (3, 3), dict(dilation=1), 1),
    ("subm", (6,), (2,), dict(dilation=2), 2),
    ("subm", (3, 3, 4), (3, 1, 2), dict(), 1),
    ("conv", (5, 5), (3, 3), dict(stride=2, padding=1), 1),
    ("conv", (4, 3, 3), (2, 2, 2), dict(stride=(2, 1, 2), dilation=1), 2),
    ("conv", (7,), (3,), dict(stride=3, padding=2, dilation=2), 1),
    ("transpose", (3, 4), (3, 2), dict(stride=2, padding=1, output_padding=1), 1),
    ("transpose", (5,), (3,), dict(stride=1, padding=0, dilation=2), 2),
    ("transpose", (2, 3, 2), (2, 2, 2), dict(stride=2), 1),
]


@pytest.mark.parametrize("op,shape,kernel,kwargs,groups", CONV_OPS)
def test_gradcheck_conv(op, shape, kernel, kwargs, groups):
    cin, cout = 2, 4
    idx, feats, g = _inputs(shape, 2, cin, seed=len(shape) * 10 + len(kwargs))
    if op == "transpose":
        weight = _param(cin, cout // groups, *kernel, g=g)
        fn = SF.sparse_conv_transpose
    else:
        weight = _param(cout, cin // groups, *kernel, g=g)
        fn = SF.subm_conv if op == "subm" else SF.sparse_conv
    bias = _param(cout, g=g)

    x0 = SparseConvTensor(feats.detach(), idx, shape, 2)  # maps are built once, then reused from the cache

    def f(feats, weight, bias):
        x = x0.replace_feature(feats)
        return fn(x, weight, bias, groups=groups, **kwargs).features

    assert gradcheck(f, (feats, weight, bias), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "shape,kernel,stride,padding,groups",
    [((5, 6), (3, 3), 2, 1, 1), ((7,), (3,), 2, 0, 2), ((3, 4, 3), (2, 2, 2), 2, 0, 1)],
)
def test_gradcheck_inverse_conv(shape, kernel, stride, padding, groups):
    """The whole strided conv -> inverse conv chain (inverse's input features, both weights, biases)."""
    cin, cmid, cout = 2, 2, 4
    idx, feats, g = _inputs(shape, 2, cin, seed=7)
    w1, b1 = _param(cmid, cin, *kernel, g=g), _param(cmid, g=g)
    w2, b2 = _param(cmid, cout // groups, *kernel, g=g), _param(cout, g=g)

    x0 = SparseConvTensor(feats.detach(), idx, shape, 2)

    def f(feats, w1, b1, w2, b2):
        x = x0.replace_feature(feats)
        y = SF.sparse_conv(x, w1, b1, stride=stride, padding=padding, indice_key="k")
        z = SF.sparse_inverse_conv(y, w2, b2, indice_key="k", groups=groups)
        assert torch.equal(z.indices, idx)
        return z.features

    assert gradcheck(f, (feats, w1, b1, w2, b2), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize(
    "shape,kernel,stride,padding", [((5, 6), 3, 2, 1), ((7,), 2, None, 0), ((3, 4, 3), (2, 2, 1), (1, 2, 1), 0)]
)
def test_gradcheck_pool(mode, shape, kernel, stride, padding):
    idx, feats, _ = _inputs(shape, 2, 3, seed=11)
    pool = SF.sparse_max_pool if mode == "max" else SF.sparse_avg_pool

    x0 = SparseConvTensor(feats.detach(), idx, shape, 2)

    def f(feats):
        return pool(x0.replace_feature(feats), kernel, stride, padding).features

    assert gradcheck(f, (feats,), eps=1e-6, atol=1e-7)


def test_gradcheck_global_pools_and_dense_conversion():
    idx, feats, _ = _inputs((4, 5), 3, 2, seed=13)

    x0 = SparseConvTensor(feats.detach(), idx, (4, 5), 3)

    def f(feats):
        x = x0.replace_feature(feats)
        return SF.global_max_pool(x), SF.global_avg_pool(x), x.dense(), x.dense(channels_first=False)

    assert gradcheck(f, (feats,), eps=1e-6, atol=1e-7)

    dense = torch.randn(2, 3, 4, 5, dtype=F64, requires_grad=True)
    mask = torch.rand(2, 4, 5, generator=torch.Generator().manual_seed(0)) < 0.5
    assert gradcheck(lambda d: SparseConvTensor.from_dense(d, mask).features, (dense,), eps=1e-6, atol=1e-7)
