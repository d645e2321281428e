"""Sparse modules: gradients reach every parameter, Sequential with dense row-wise modules, cache sharing,
weights loaded from `nn.ConvNd`/`nn.ConvTransposeNd`, dense conversion, and import isolation."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from engine_utils import CONV, SHAPES, at_sites, densify, random_sparse
from torch import nn
from torch.testing import assert_close

import sparseyolo.sparse as sp
from sparseyolo.sparse import SparseConvTensor, SparseSequential

F64 = torch.float64


def cls(name, D):
    return getattr(sp, f"{name}{D}d")


def module_cases():
    cases = []
    for D in (1, 2, 3):
        cases += [
            (f"SubMConv{D}d", D, lambda D=D: cls("SubMConv", D)(3, 4, 3)),
            (f"SubMConv{D}d-groups", D, lambda D=D: cls("SubMConv", D)(3, 6, 2, dilation=2, groups=3)),
            (f"SparseConv{D}d", D, lambda D=D: cls("SparseConv", D)(3, 4, 3, stride=2, padding=1)),
            (
                f"SparseConvTranspose{D}d",
                D,
                lambda D=D: cls("SparseConvTranspose", D)(3, 4, 3, stride=2, padding=1, output_padding=1),
            ),
            (
                f"SparseInverseConv{D}d",
                D,
                lambda D=D: SparseSequential(
                    cls("SparseConv", D)(3, 4, 3, stride=2, indice_key="k"),
                    cls("SparseInverseConv", D)(4, 2, 3, indice_key="k"),
                ),
            ),
            (
                f"pools{D}d",
                D,
                lambda D=D: SparseSequential(
                    cls("SubMConv", D)(3, 4, 3), cls("SparseMaxPool", D)(2), cls("SparseAvgPool", D)(3, 1, 1)
                ),
            ),
        ]
    cases += [
        ("SparseBatchNorm", 2, lambda: SparseSequential(sp.SubMConv2d(3, 4, 3), sp.SparseBatchNorm(4))),
        (
            "activations",
            2,
            lambda: SparseSequential(
                sp.SubMConv2d(3, 4, 3), sp.SparseReLU(), sp.SparseSiLU(), sp.SparseLeakyReLU(0.1), sp.SparseIdentity()
            ),
        ),
        ("global-max", 2, lambda: SparseSequential(sp.SubMConv2d(3, 4, 3), sp.SparseGlobalMaxPool())),
        ("global-avg", 2, lambda: SparseSequential(sp.SubMConv2d(3, 4, 3), sp.SparseGlobalAvgPool())),
        ("ToDense", 2, lambda: SparseSequential(sp.SparseConv2d(3, 4, 3), sp.ToDense())),
    ]
    return cases


@pytest.mark.parametrize("name,D,build", module_cases(), ids=[c[0] for c in module_cases()])
def test_every_parameter_gets_a_gradient(name, D, build):
    torch.manual_seed(0)
    model = build().train()
    x = random_sparse(SHAPES[D], 2, 3, seed=D, dtype=torch.float32, requires_grad=True)
    out = model(x)
    out = out.features if isinstance(out, SparseConvTensor) else out
    (out * torch.randn_like(out)).sum().backward()
    params = list(model.named_parameters())
    assert params, "model has no parameters"
    for pname, p in params:
        assert p.grad is not None, f"{name}: {pname} has no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} gradient is not finite"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} gradient is all zero"
    assert x.features.grad is not None and x.features.grad.abs().sum() > 0
    repr(model)  # extra_repr works


def test_bias_false_has_no_bias():
    m = sp.SparseConv2d(3, 4, 3, bias=False)
    assert m.bias is None and [n for n, _ in m.named_parameters()] == ["weight"]
    x = random_sparse((9, 11), 1, 3, dtype=torch.float32)
    y = m(x)
    assert_close(y.features, at_sites(CONV[2](densify(x.features, x.indices, (9, 11), 1), m.weight), y.indices))


@pytest.mark.parametrize("train", [True, False])
def test_sequential_with_dense_rowwise_modules(train):
    torch.manual_seed(0)
    conv = sp.SubMConv2d(3, 4, 3)
    bn_dense, bn_sparse = nn.BatchNorm1d(4), sp.SparseBatchNorm(4)
    with torch.no_grad():
        for bn in (bn_dense, bn_sparse):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    net = SparseSequential(conv, bn_dense, nn.ReLU(), bn_sparse, sp.SparseSiLU(), nn.Linear(4, 5))
    net.train(train)
    ref_bns = [nn.BatchNorm1d(4) for _ in range(2)]
    for ref, bn in zip(ref_bns, (bn_dense, bn_sparse)):
        ref.load_state_dict(bn.state_dict())
        ref.train(train)
    x = random_sparse((9, 11), 2, 3, dtype=torch.float32)
    y = net(x)
    h = conv(x).features
    h = nn.functional.silu(ref_bns[1](torch.relu(ref_bns[0](h))))
    expected = net[5](h)
    assert torch.equal(y.indices, x.indices) and y.spatial_shape == x.spatial_shape
    assert_close(y.features, expected)
    for ref, bn in zip(ref_bns, (bn_dense, bn_sparse)):  # running statistics updated identically
        assert_close(bn.running_mean, ref.running_mean)
        assert_close(bn.running_var, ref.running_var)


def test_replace_feature_and_subm_chain_share_the_kernel_map_cache():
    x = random_sparse((9, 11), 2, 3, dtype=torch.float32)
    a, b = sp.SubMConv2d(3, 3, 3), sp.SubMConv2d(3, 3, 3)
    y = a(x)
    n_maps, n_indexes = len(x._store.maps), len(x._store.indexes)
    assert n_maps >= 1
    x2 = x.replace_feature(x.features * 2)
    assert x2._store is x._store and x2.indices is x.indices
    assert_close(b(x2).features, 2 * b(x).features - b.bias)  # linear in the features, on the shared map
    assert len(x._store.maps) == n_maps, "SubM conv on replace_feature() output rebuilt its map"
    z = sp.SparseReLU()(y)
    b(z)
    b(b(y))
    assert len(x._store.maps) == n_maps, "SubM conv on a SubM output (same sites) rebuilt its map"
    assert len(x._store.indexes) == n_indexes
    # the cached map is the right one: the second conv still matches the dense oracle
    w = b.weight
    dense = CONV[2](densify(y.features, x.indices, (9, 11), 2), w, b.bias, padding=1)
    assert_close(b(y).features, at_sites(dense, x.indices))
    sp.SubMConv2d(3, 3, 5)(y)
    assert len(x._store.maps) == n_maps + 1, "a different kernel must add exactly one map"
    sp.SubMConv2d(3, 3, 5)(x2)
    assert len(x._store.maps) == n_maps + 1


@pytest.mark.parametrize("D", [1, 2, 3])
def test_load_state_dict_from_dense_conv(D):
    torch.manual_seed(D)
    x = random_sparse(SHAPES[D], 2, 4, dtype=torch.float32, seed=D)
    dense_in = densify(x.features, x.indices, SHAPES[D], 2)
    conv_nd = getattr(nn, f"Conv{D}d")
    convt_nd = getattr(nn, f"ConvTranspose{D}d")
    pairs = [
        (conv_nd(4, 6, 3, stride=2, padding=1, groups=2), cls("SparseConv", D)(4, 6, 3, stride=2, padding=1, groups=2)),
        (conv_nd(4, 4, 3, padding=2, dilation=2, groups=4), cls("SubMConv", D)(4, 4, 3, dilation=2, groups=4)),
        (
            convt_nd(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
            cls("SparseConvTranspose", D)(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
        ),
    ]
    for dense_m, sparse_m in pairs:
        state = dense_m.state_dict()
        assert {k: v.shape for k, v in sparse_m.state_dict().items()} == {k: v.shape for k, v in state.items()}
        sparse_m.load_state_dict(state)
        y = sparse_m(x)
        ref = dense_m(dense_in)
        assert y.spatial_shape == tuple(ref.shape[2:]) or sparse_m.subm
        assert_close(y.features, at_sites(ref, y.indices), rtol=1e-5, atol=1e-5)


def test_from_dense_with_and_without_mask():
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(2, 3, 5, 6, generator=g)
    keep = torch.rand(2, 5, 6, generator=g) < 0.4
    keep[0, 1, 1] = True
    dense = dense * keep.unsqueeze(1)
    dense[0, :, 1, 1] = 0.0  # a masked-in site whose features are all zero
    nonzero = keep.clone()
    nonzero[0, 1, 1] = False
    mask = keep
    x = SparseConvTensor.from_dense(dense)
    assert torch.equal(x.indices, nonzero.nonzero().to(torch.int32))
    assert x.indices.dtype == torch.int32 and x.spatial_shape == (5, 6) and x.batch_size == 2
    assert torch.equal(x.features, dense.movedim(1, -1)[nonzero])
    xm = SparseConvTensor.from_dense(dense, mask)
    assert torch.equal(xm.indices, mask.nonzero().to(torch.int32))
    assert xm.num_active == x.num_active + 1
    assert torch.equal(xm.features, dense.movedim(1, -1)[mask])
    xl = SparseConvTensor.from_dense(dense.movedim(1, -1), mask, channels_first=False)
    assert torch.equal(xl.indices, xm.indices) and torch.equal(xl.features, xm.features)
    # conv on a from_dense tensor works (its coordinates are valid and unique)
    sp.SubMConv2d(3, 2, 3)(xm)


@pytest.mark.parametrize("D", [1, 2, 3])
def test_dense_round_trip(D, device):
    x = random_sparse(SHAPES[D], 3, 2, seed=D, device=device)
    perm = torch.randperm(x.num_active, generator=torch.Generator().manual_seed(0)).to(device)
    shuffled = SparseConvTensor(x.features[perm], x.indices[perm], x.spatial_shape, 3)  # unsorted rows
    d = shuffled.dense()
    assert tuple(d.shape) == (3, 2, *SHAPES[D]) and d.device == x.features.device
    assert torch.equal(d, densify(x.features, x.indices, SHAPES[D], 3))
    assert torch.equal(shuffled.dense(channels_first=False), d.movedim(1, -1))
    mask = torch.zeros(3, *SHAPES[D], dtype=torch.bool, device=device)
    mask[tuple(x.indices.long().unbind(1))] = True
    back = SparseConvTensor.from_dense(d, mask)
    assert torch.equal(back.indices, x.indices) and torch.equal(back.features, x.features)  # x is sorted
    assert torch.equal(back.dense(), d)
    assert torch.equal(sp.ToDense()(shuffled), d)


def test_import_does_not_pull_in_ultralytics():
    code = "import sys, sparseyolo.sparse; assert 'ultralytics' not in sys.modules, 'ultralytics imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_import_needs_torch_only():
    """`sparseyolo.sparse` (and the benchmark dispatcher) import none of the optional dependencies (tqdm is not
    checked: torch itself imports it, through torch.hub, whenever it is installed)."""
    code = (
        "import sys, sparseyolo.sparse, sparseyolo.sparse.functional, sparseyolo.bench; "
        "bad = sorted(m for m in ('matplotlib', 'ultralytics', 'spconv') if m in sys.modules); "
        "assert not bad, f'imported: {bad}'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_subm_ignores_padding_and_accepts_spconv_kwargs():
    torch.manual_seed(0)
    x = random_sparse((9, 11), 2, 3, dtype=torch.float32)
    plain = sp.SubMConv2d(3, 4, 3)
    padded = sp.SubMConv2d(3, 4, 3, padding=5, algo=None, fp32_accum=None, name="block1.conv")
    padded.load_state_dict(plain.state_dict())
    y, z = plain(x), padded(x)
    assert torch.equal(y.indices, z.indices) and torch.equal(y.features, z.features)
    assert z.spatial_shape == x.spatial_shape
