"""Sparse ops vs dense PyTorch on the densified input: values, output site sets, and all gradients.

Parameter sets are a hand-picked covering list (not the full product): kernels 1, 2, 3, 5 and non-square,
stride 1/2/3, padding 0/1/2, dilation 1/2, groups 1/2/depthwise (with channel multiplier 2), batch 1/3, 1D-3D.
Gradients are compared against autograd through the dense oracle, with the loss taken only at output sites.
Every case runs on both engine paths, compiled kernels and pure PyTorch (the `engine_path` fixture), and on each
device (the `device` fixture: CPU, and CUDA when present; the oracle then runs on CUDA too).
"""

from __future__ import annotations

import pytest
import torch
from engine_utils import (
    AVG_POOL,
    CONV,
    CONV_T,
    MAX_POOL,
    SHAPES,
    assert_same_sites,
    assert_unique_rows,
    at_sites,
    cotangent,
    densify,
    mask_sites,
    occupancy,
    random_sparse,
    seed_of,
    tup,
)
from torch.testing import assert_close

import sparseyolo.sparse as sp
import sparseyolo.sparse.functional as SF
from sparseyolo.sparse import (
    SparseConv1d,
    SparseConv2d,
    SparseConv3d,
    SparseConvTensor,
    SparseInverseConv1d,
    SparseInverseConv2d,
    SparseInverseConv3d,
)

# Every test here runs on both engine paths (compiled kernels and pure PyTorch): see conftest.py.
pytestmark = pytest.mark.usefixtures("engine_path")

F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def params(shape, cout, seed, device):
    """Weight of `shape` and bias `(cout,)`, leaves on `device`."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=F64)
    b = torch.randn(cout, generator=g, dtype=F64)
    return w.to(device).requires_grad_(True), b.to(device).requires_grad_(True)


def ones_kernel(kernel, device):
    return torch.ones(1, 1, *kernel, dtype=F64, device=device)


def backprop_and_compare(sparse_out, dense_out, seed, pairs):
    """loss = sum(out * cotangent) on both sides; then compare each (sparse leaf, dense leaf) grad."""
    assert_close(sparse_out, dense_out, **TOL)
    cot = cotangent(*sparse_out.shape, seed, device=sparse_out.device)
    (sparse_out * cot).sum().backward()
    (dense_out * cot).sum().backward()
    for name, (s, d) in pairs.items():
        assert s.grad is not None, f"no gradient for {name}"
        assert_close(s.grad, d.grad, **TOL, msg=lambda m, name=name: f"grad of {name}: {m}")


# --- submanifold conv -------------------------------------------------------------------------------

# D, kernel, dilation, C_in, C_out, groups, batch
SUBM_CASES = [
    (1, 3, 1, 3, 4, 1, 1),
    (1, 5, 2, 4, 6, 2, 3),
    (1, 2, 1, 3, 6, 3, 1),  # even kernel, depthwise x2
    (2, 1, 1, 3, 5, 1, 1),
    (2, 3, 1, 4, 4, 4, 3),  # depthwise
    (2, 3, 2, 4, 6, 2, 1),
    (2, 5, 1, 2, 3, 1, 1),
    (2, (3, 1), 1, 3, 4, 1, 3),
    (2, (2, 3), 2, 3, 6, 3, 1),  # even non-square, dilated, depthwise x2
    (2, 2, 1, 2, 2, 1, 1),
    (2, (5, 3), (1, 2), 2, 2, 1, 1),
    (3, 3, 1, 2, 3, 1, 1),
    (3, 2, 2, 4, 4, 2, 3),
    (3, (3, 1, 2), 1, 3, 6, 3, 1),
    (3, 1, 1, 4, 2, 2, 1),
    (3, 5, 1, 1, 2, 1, 1),
]


@pytest.mark.parametrize("D,kernel,dilation,cin,cout,groups,batch", SUBM_CASES)
def test_subm_conv_vs_dense(D, kernel, dilation, cin, cout, groups, batch, device):
    shape, kernel, dilation = SHAPES[D], tup(kernel, D), tup(dilation, D)
    seed = seed_of(D, kernel, dilation, cin, cout, groups, batch)
    x = random_sparse(shape, batch, cin, seed=seed, requires_grad=True, device=device)
    w, b = params((cout, cin // groups, *kernel), cout, seed, device)
    y = SF.subm_conv(x, w, b, dilation=dilation, groups=groups)
    assert torch.equal(y.indices, x.indices) and y.spatial_shape == shape

    f_d, w_d, b_d = leaf(x.features), leaf(w), leaf(b)
    padding = [k // 2 * d for k, d in zip(kernel, dilation)]
    dense = CONV[D](densify(f_d, x.indices, shape, batch), w_d, b_d, padding=padding, dilation=dilation, groups=groups)
    # even kernels: the dense map is larger by `dilation`; the sites' own coordinates index it.
    backprop_and_compare(
        y.features,
        at_sites(dense, x.indices),
        seed,
        {"features": (x.features, f_d), "weight": (w, w_d), "bias": (b, b_d)},
    )


# --- regular (strided) conv -------------------------------------------------------------------------

# D, kernel, stride, padding, dilation, C_in, C_out, groups, batch
CONV_CASES = [
    (1, 3, 2, 1, 1, 3, 4, 1, 1),
    (1, 5, 3, 2, 2, 4, 6, 2, 3),
    (1, 2, 1, 0, 1, 3, 6, 3, 1),
    (2, 1, 2, 0, 1, 3, 5, 1, 1),
    (2, 1, 1, 1, 1, 2, 2, 1, 1),  # padding ring never holds sites
    (2, 3, 1, 0, 1, 4, 4, 4, 3),
    (2, 3, 2, 1, 1, 4, 8, 2, 1),
    (2, 3, 3, 2, 2, 2, 3, 1, 3),
    (2, 5, 2, 2, 1, 3, 6, 3, 1),
    (2, (3, 1), (2, 1), (1, 0), 1, 3, 4, 1, 3),
    (2, (2, 3), (1, 2), (0, 2), (2, 1), 3, 6, 3, 1),
    (2, 2, 2, 0, 1, 2, 2, 1, 1),
    (2, 3, 1, 2, 2, 2, 4, 2, 1),
    (3, 3, 2, 1, 1, 2, 3, 1, 1),
    (3, 2, 2, 0, 1, 4, 4, 2, 3),
    (3, 3, 1, 1, 2, 3, 6, 3, 1),
    (3, (3, 1, 2), (1, 2, 3), (1, 0, 1), 1, 2, 2, 1, 1),
    (3, 5, 3, 2, 1, 1, 2, 1, 1),
    (3, 1, 3, 0, 1, 2, 4, 1, 3),
]


@pytest.mark.parametrize("D,kernel,stride,padding,dilation,cin,cout,groups,batch", CONV_CASES)
def test_sparse_conv_vs_dense(D, kernel, stride, padding, dilation, cin, cout, groups, batch, device):
    shape, kernel = SHAPES[D], tup(kernel, D)
    seed = seed_of(D, kernel, stride, padding, dilation, cin, cout, groups, batch)
    x = random_sparse(shape, batch, cin, seed=seed, requires_grad=True, device=device)
    w, b = params((cout, cin // groups, *kernel), cout, seed, device)
    y = SF.sparse_conv(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)

    conv = CONV[D]
    reach = conv(
        occupancy(x.indices, shape, batch),
        ones_kernel(kernel, device),
        stride=stride,
        padding=padding,
        dilation=dilation,
    )
    assert y.spatial_shape == tuple(reach.shape[2:])
    assert_unique_rows(y.indices)
    assert_same_sites(y.indices, mask_sites(reach > 0))

    f_d, w_d, b_d = leaf(x.features), leaf(w), leaf(b)
    dense = conv(
        densify(f_d, x.indices, shape, batch),
        w_d,
        b_d,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
    )
    backprop_and_compare(
        y.features,
        at_sites(dense, y.indices),
        seed,
        {"features": (x.features, f_d), "weight": (w, w_d), "bias": (b, b_d)},
    )


# --- transposed conv --------------------------------------------------------------------------------

# D, kernel, stride, padding, output_padding, dilation, C_in, C_out, groups, batch
TRANSPOSE_CASES = [
    (1, 3, 2, 1, 1, 1, 3, 4, 1, 1),
    (1, 2, 3, 0, 2, 1, 4, 6, 2, 3),
    (1, 5, 1, 2, 0, 2, 3, 6, 3, 1),
    (2, 1, 2, 0, 1, 1, 3, 5, 1, 1),
    (2, 3, 1, 1, 0, 1, 4, 4, 4, 3),
    (2, 3, 2, 1, 1, 1, 4, 8, 2, 1),
    (2, 2, 2, 0, 0, 1, 2, 3, 1, 3),
    (2, 3, 3, 2, 2, 2, 2, 2, 1, 1),
    (2, (3, 1), (2, 1), (1, 0), (1, 0), 1, 3, 4, 1, 3),
    (2, (2, 3), (1, 2), (0, 2), (1, 1), (2, 1), 3, 6, 3, 1),
    (2, 5, 2, 2, 0, 1, 2, 2, 2, 1),
    (3, 3, 2, 1, 1, 1, 2, 3, 1, 1),
    (3, 2, 2, 0, 0, 1, 4, 4, 2, 3),
    (3, (3, 1, 2), (1, 2, 3), (1, 0, 1), 0, 1, 2, 2, 1, 1),
    (3, 3, 1, 2, 0, 2, 3, 6, 3, 1),
]


@pytest.mark.parametrize("D,kernel,stride,padding,output_padding,dilation,cin,cout,groups,batch", TRANSPOSE_CASES)
def test_sparse_conv_transpose_vs_dense(
    D, kernel, stride, padding, output_padding, dilation, cin, cout, groups, batch, device
):
    shape, kernel = SHAPES[D], tup(kernel, D)
    seed = seed_of(D, kernel, stride, padding, output_padding, dilation, cin, cout, groups, batch)
    x = random_sparse(shape, batch, cin, seed=seed, requires_grad=True, device=device)
    w, b = params((cin, cout // groups, *kernel), cout, seed, device)
    y = SF.sparse_conv_transpose(
        x, w, b, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups
    )

    conv_t = CONV_T[D]
    reach = conv_t(
        occupancy(x.indices, shape, batch),
        ones_kernel(kernel, device),
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
    )
    assert y.spatial_shape == tuple(reach.shape[2:])
    assert_unique_rows(y.indices)
    assert_same_sites(y.indices, mask_sites(reach > 0))

    f_d, w_d, b_d = leaf(x.features), leaf(w), leaf(b)
    dense = conv_t(
        densify(f_d, x.indices, shape, batch),
        w_d,
        b_d,
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        groups=groups,
        dilation=dilation,
    )
    backprop_and_compare(
        y.features,
        at_sites(dense, y.indices),
        seed,
        {"features": (x.features, f_d), "weight": (w, w_d), "bias": (b, b_d)},
    )


# --- inverse conv -----------------------------------------------------------------------------------

INVERSE = {
    1: (SparseConv1d, SparseInverseConv1d),
    2: (SparseConv2d, SparseInverseConv2d),
    3: (SparseConv3d, SparseInverseConv3d),
}

# D, kernel, stride, padding, dilation, C_x, C_mid, C_out, inverse groups, batch
INVERSE_CASES = [
    (1, 3, 2, 1, 1, 2, 3, 4, 1, 1),
    (1, 5, 3, 2, 2, 2, 4, 6, 2, 3),
    (2, 3, 2, 1, 1, 3, 4, 4, 4, 1),  # depthwise inverse
    (2, 2, 2, 0, 1, 2, 3, 2, 1, 3),
    (2, (3, 1), (2, 1), (1, 0), 1, 2, 3, 6, 3, 1),  # depthwise x2
    (2, 3, 3, 2, 2, 2, 2, 3, 1, 1),
    (2, 3, 1, 1, 1, 2, 2, 2, 1, 1),
    (2, 5, 3, 0, 1, 2, 2, 2, 1, 1),  # stride leaves a remainder: needs output_padding in the oracle
    (3, 3, 2, 1, 1, 2, 3, 2, 1, 1),
    (3, 2, 2, 0, 1, 2, 4, 4, 2, 3),
    (3, (3, 1, 2), (1, 2, 2), (1, 0, 1), (1, 1, 2), 1, 2, 2, 1, 1),
    (2, 1, 2, 0, 1, 2, 3, 2, 1, 1),  # sites at odd coordinates feed no output: inverse gives the bias there
    (1, 2, 3, 0, 1, 2, 2, 2, 1, 3),  # idem, stride > kernel
]


@pytest.mark.parametrize("D,kernel,stride,padding,dilation,cx,cmid,cout,groups,batch", INVERSE_CASES)
def test_inverse_conv_vs_dense(D, kernel, stride, padding, dilation, cx, cmid, cout, groups, batch, device):
    """x -> SparseConv(key) -> SparseInverseConv(key): back on x's sites; whole chain and its grads."""
    shape, kernel = SHAPES[D], tup(kernel, D)
    stride, padding, dilation = tup(stride, D), tup(padding, D), tup(dilation, D)
    seed = seed_of(D, kernel, stride, padding, dilation, cx, cmid, cout, groups, batch)
    torch.manual_seed(seed)
    conv_cls, inv_cls = INVERSE[D]
    conv = conv_cls(cx, cmid, kernel, stride, padding, dilation, indice_key="down").double()
    inv = inv_cls(cmid, cout, kernel, indice_key="down", groups=groups).double()
    with torch.no_grad():  # make the bias matter
        inv.bias.normal_()
    conv, inv = conv.to(device), inv.to(device)
    x = random_sparse(shape, batch, cx, seed=seed, requires_grad=True, device=device)
    y = conv(x)
    z = inv(y)
    assert torch.equal(z.indices, x.indices) and z.spatial_shape == shape and z.batch_size == batch

    f_d = leaf(x.features)
    cw, cb, iw, ib = (leaf(p) for p in (conv.weight, conv.bias, inv.weight, inv.bias))
    y_dense = CONV[D](densify(f_d, x.indices, shape, batch), cw, cb, stride=stride, padding=padding, dilation=dilation)
    assert tuple(y_dense.shape[2:]) == y.spatial_shape
    y_dense = y_dense * occupancy(y.indices, y.spatial_shape, batch)  # the sparse chain has only y's sites
    base = [
        (o - 1) * s - 2 * p + d * (k - 1) + 1
        for o, s, p, d, k in zip(y.spatial_shape, stride, padding, dilation, kernel)
    ]
    output_padding = [s - b for s, b in zip(shape, base)]
    z_dense = CONV_T[D](
        y_dense, iw, ib, stride=stride, padding=padding, output_padding=output_padding, groups=groups, dilation=dilation
    )
    assert tuple(z_dense.shape[2:]) == shape
    backprop_and_compare(
        z.features,
        at_sites(z_dense, x.indices),
        seed,
        {
            "features": (x.features, f_d),
            "conv.weight": (conv.weight, cw),
            "conv.bias": (conv.bias, cb),
            "inv.weight": (inv.weight, iw),
            "inv.bias": (inv.bias, ib),
        },
    )


# --- pooling ----------------------------------------------------------------------------------------

# D, kernel, stride (None = kernel), padding, dilation, channels, batch
POOL_CASES = [
    (1, 3, 2, 1, 1, 3, 1),
    (1, 2, None, 0, 1, 2, 3),
    (1, 5, 3, 2, 2, 2, 1),
    (2, 2, None, 0, 1, 3, 1),
    (2, 3, 2, 1, 1, 2, 3),
    (2, 3, 1, 1, 2, 2, 1),
    (2, (3, 1), (2, 1), (1, 0), 1, 2, 1),
    (2, 5, 3, 2, 1, 2, 1),
    (2, 1, 2, 0, 1, 2, 1),
    (3, 2, 2, 0, 1, 2, 1),
    (3, 3, 2, 1, 2, 2, 3),
    (3, (1, 2, 3), (1, 2, 3), (0, 1, 1), 1, 2, 1),
]


def _pool_reach(x, kernel, stride, padding, dilation, shape, batch, D):
    return CONV[D](
        occupancy(x.indices, shape, batch),
        ones_kernel(kernel, x.indices.device),
        stride=stride,
        padding=padding,
        dilation=dilation,
    )


@pytest.mark.parametrize("D,kernel,stride,padding,dilation,channels,batch", POOL_CASES)
def test_max_pool_vs_dense(D, kernel, stride, padding, dilation, channels, batch, device):
    shape, kernel = SHAPES[D], tup(kernel, D)
    stride_ = kernel if stride is None else stride
    seed = seed_of(D, kernel, stride, padding, dilation, channels, batch, "max")
    x = random_sparse(shape, batch, channels, seed=seed, requires_grad=True, device=device)
    y = SF.sparse_max_pool(x, kernel, stride, padding, dilation)
    reach = _pool_reach(x, kernel, stride_, padding, dilation, shape, batch, D)
    assert y.spatial_shape == tuple(reach.shape[2:])
    assert_same_sites(y.indices, mask_sites(reach > 0))

    f_d = leaf(x.features)
    dense = MAX_POOL[D](densify(f_d, x.indices, shape, batch, fill=float("-inf")), kernel, stride_, padding, dilation)
    backprop_and_compare(y.features, at_sites(dense, y.indices), seed, {"features": (x.features, f_d)})


@pytest.mark.parametrize("D,kernel,stride,padding,dilation,channels,batch", [c for c in POOL_CASES if c[4] == 1])
def test_avg_pool_vs_dense(D, kernel, stride, padding, dilation, channels, batch, device):
    shape, kernel = SHAPES[D], tup(kernel, D)
    stride_ = kernel if stride is None else stride
    seed = seed_of(D, kernel, stride, padding, channels, batch, "avg")
    x = random_sparse(shape, batch, channels, seed=seed, requires_grad=True, device=device)
    y = SF.sparse_avg_pool(x, kernel, stride, padding)
    reach = _pool_reach(x, kernel, stride_, padding, 1, shape, batch, D)
    assert y.spatial_shape == tuple(reach.shape[2:])
    assert_same_sites(y.indices, mask_sites(reach > 0))

    f_d = leaf(x.features)
    dense = AVG_POOL[D](densify(f_d, x.indices, shape, batch), kernel, stride_, padding, count_include_pad=True)
    backprop_and_compare(y.features, at_sites(dense, y.indices), seed, {"features": (x.features, f_d)})


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_global_pool_per_batch_entry(mode, device):
    g = torch.Generator().manual_seed(3)
    idx = torch.tensor([[0, 1, 2], [0, 4, 4], [2, 0, 0], [2, 3, 1], [2, 5, 5], [0, 0, 7]], dtype=torch.int32)
    idx = idx.to(device)
    feats = torch.randn(6, 4, generator=g, dtype=F64).to(device).requires_grad_(True)
    x = SparseConvTensor(feats, idx, (6, 8), 4)  # entries 1 and 3 have no sites
    out = SF.global_max_pool(x) if mode == "max" else SF.global_avg_pool(x)
    f_d = leaf(feats)
    rows = []
    for b in range(4):
        sel = f_d[idx[:, 0] == b]
        if sel.shape[0] == 0:
            rows.append(torch.zeros(4, dtype=F64, device=device))
        else:
            rows.append(sel.max(0).values if mode == "max" else sel.mean(0))
    ref = torch.stack(rows)
    assert out.shape == (4, 4)
    backprop_and_compare(out, ref, 5, {"features": (feats, f_d)})


# Wider channels and more sites: exercise the compiled kernels' channel blocking (64/32/16/8/4/1 outputs,
# inputs in blocks of 4 plus a remainder) and weight-gradient chunking (> 2048 pairs per offset).
@pytest.mark.parametrize(
    "op,cin,cout,groups",
    [
        ("subm", 70, 64, 1),
        ("conv", 19, 96, 1),
        ("subm", 48, 48, 3),  # 16 per group
        ("conv", 12, 80, 2),  # 40 per group: blocks of 8
        ("transpose", 7, 37, 1),
    ],
)
def test_wide_channels_vs_dense(op, cin, cout, groups, device):
    shape, batch = (80, 96), 1
    seed = seed_of(op, cin, cout, groups)
    x = random_sparse(shape, batch, cin, density=0.6, seed=seed, requires_grad=True, device=device)
    assert x.num_active > 4000  # ~0.6 * N > 2048 pairs for every SubM offset
    f_d = leaf(x.features)
    w, b = params((cin, cout // groups, 3, 3) if op == "transpose" else (cout, cin // groups, 3, 3), cout, seed, device)
    w_d, b_d = leaf(w), leaf(b)
    dense_x = densify(f_d, x.indices, shape, batch)
    if op == "subm":
        y = SF.subm_conv(x, w, b, groups=groups)
        dense = CONV[2](dense_x, w_d, b_d, padding=1, groups=groups)
    elif op == "conv":
        y = SF.sparse_conv(x, w, b, stride=2, padding=1, groups=groups)
        dense = CONV[2](dense_x, w_d, b_d, stride=2, padding=1, groups=groups)
    else:
        y = SF.sparse_conv_transpose(x, w, b, stride=2, padding=1, groups=groups)
        dense = CONV_T[2](dense_x, w_d, b_d, stride=2, padding=1, groups=groups)
    assert y.spatial_shape == tuple(dense.shape[2:])
    backprop_and_compare(
        y.features,
        at_sites(dense, y.indices),
        seed,
        {"features": (x.features, f_d), "weight": (w, w_d), "bias": (b, b_d)},
    )


@pytest.mark.parametrize("op", ["subm", "conv", "transpose", "max", "avg"])
def test_empty_batch_entries_in_the_middle(op, device):
    """batch_size 4 with sites only in entries 0 and 2: nothing leaks into or out of the empty entries."""
    shape = (9, 11)
    x0 = random_sparse(shape, 4, 3, seed=21, device=device)
    keep = (x0.indices[:, 0] == 0) | (x0.indices[:, 0] == 2)
    x = SparseConvTensor(x0.features[keep].clone().requires_grad_(True), x0.indices[keep], shape, 4)
    f_d = leaf(x.features)
    dense_x = densify(f_d, x.indices, shape, 4, fill=float("-inf") if op == "max" else 0.0)
    w = torch.randn(4, 3, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(0)).to(device)
    if op == "subm":
        y, dense = SF.subm_conv(x, w), CONV[2](dense_x, w, padding=1)
    elif op == "conv":
        y, dense = SF.sparse_conv(x, w, stride=2), CONV[2](dense_x, w, stride=2)
    elif op == "transpose":
        wt = w.transpose(0, 1).contiguous()
        y, dense = SF.sparse_conv_transpose(x, wt, stride=2), CONV_T[2](dense_x, wt, stride=2)
    elif op == "max":
        y, dense = SF.sparse_max_pool(x, 3, 2, 1), MAX_POOL[2](dense_x, 3, 2, 1)
    else:
        y, dense = SF.sparse_avg_pool(x, 3, 2, 1), AVG_POOL[2](dense_x, 3, 2, 1)
    assert y.batch_size == 4
    assert set(y.indices[:, 0].tolist()) == {0, 2}
    backprop_and_compare(y.features, at_sites(dense, y.indices), 3, {"features": (x.features, f_d)})


def test_two_level_unet_with_keyed_inverse_convs(device):
    """x -> down(k1) -> SubM -> down(k2) -> inv(k2) -> inv(k1): each inverse returns to the right sites."""
    torch.manual_seed(0)
    shape, batch = (16, 18), 2
    down1 = SparseConv2d(3, 4, 3, 2, 1, indice_key="k1").to(device, F64)
    sub = sp.SubMConv2d(4, 4, 3, indice_key="s1").to(device, F64)
    down2 = SparseConv2d(4, 5, 2, 2, 0, indice_key="k2").to(device, F64)
    up2 = SparseInverseConv2d(5, 4, 2, indice_key="k2").to(device, F64)
    up1 = SparseInverseConv2d(4, 2, 3, indice_key="k1").to(device, F64)
    x = random_sparse(shape, batch, 3, seed=4, requires_grad=True, device=device)
    y1 = sub(down1(x))
    y2 = down2(y1)
    z1 = up2(y2)
    z0 = up1(sp.SparseReLU()(z1))
    assert torch.equal(z1.indices, y1.indices) and z1.spatial_shape == y1.spatial_shape
    assert torch.equal(z0.indices, x.indices) and z0.spatial_shape == shape

    f_d = leaf(x.features)

    def on(t, indices, shape_):
        return t * occupancy(indices, shape_, batch)

    d1 = on(
        CONV[2](densify(f_d, x.indices, shape, batch), down1.weight, down1.bias, stride=2, padding=1),
        y1.indices,
        y1.spatial_shape,
    )
    d1 = on(CONV[2](d1, sub.weight, sub.bias, padding=1), y1.indices, y1.spatial_shape)
    d2 = on(CONV[2](d1, down2.weight, down2.bias, stride=2), y2.indices, y2.spatial_shape)
    e1 = CONV_T[2](d2, up2.weight, up2.bias, stride=2, output_padding=[0, 1])  # the uncovered column: bias only
    assert tuple(e1.shape[2:]) == y1.spatial_shape
    assert_close(z1.features, at_sites(e1, y1.indices), **TOL)
    e1 = torch.relu(on(e1, y1.indices, y1.spatial_shape))
    e0 = CONV_T[2](e1, up1.weight, up1.bias, stride=2, padding=1, output_padding=[1, 1])
    assert tuple(e0.shape[2:]) == shape
    backprop_and_compare(z0.features, at_sites(e0, x.indices), 9, {"features": (x.features, f_d)})
