"""Input validation: each bad input raises with a message that says what is wrong; duplicate merging."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sparseyolo.sparse as sp
import sparseyolo.sparse.functional as SF
from sparseyolo.sparse import SparseConvTensor

IDX = torch.tensor([[0, 0, 1], [0, 2, 3], [1, 4, 0]], dtype=torch.int32)
FEATS = torch.randn(3, 3)


def make(features=None, indices=None, shape=(5, 6), batch=2, **kw):
    return SparseConvTensor(
        FEATS if features is None else features, IDX if indices is None else indices, shape, batch, **kw
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(indices=IDX.float()), r"indices must be int32 \(N, 3\).*got torch.float32"),
        (dict(indices=IDX.long()), r"indices must be int32 \(N, 3\).*got torch.int64"),
        (dict(features=FEATS.to(torch.int32)), r"features must be a float tensor \(N, C\), got torch.int32"),
        (dict(features=FEATS[:, 0]), r"features must be a float tensor \(N, C\).*shape \(3,\)"),
        (dict(indices=IDX[:, 1:]), r"indices must be int32 \(N, 3\).*shape \(3, 2\)"),
        (dict(indices=torch.cat([IDX, IDX[:, :1]], 1)), r"indices must be int32 \(N, 3\).*shape \(3, 4\)"),
        (dict(features=FEATS[:2]), "features has 2 rows but indices has 3"),
        (dict(shape=(5, 3)), r"coordinate 1 spans \[0, 3\] but must lie in \[0, 2\]"),
        (dict(shape=(4, 6)), r"coordinate 0 spans \[0, 4\] but must lie in \[0, 3\]"),
        (
            dict(indices=torch.tensor([[0, -1, 0], [0, 1, 1], [0, 2, 2]], dtype=torch.int32)),
            r"coordinate 0 spans \[-1, 2\]",
        ),
        (
            dict(indices=torch.tensor([[-1, 0, 0], [0, 1, 1], [0, 2, 2]], dtype=torch.int32)),
            r"batch index spans \[-1, 0\]",
        ),
        (dict(batch=1), r"batch index spans \[0, 1\] but must lie in \[0, 0\]"),
        (dict(batch=0), "batch_size must be a positive int, got 0"),
        (dict(batch=True), "batch_size must be a positive int"),
        (dict(shape=(5, 0)), "spatial_shape must hold 1 to 3 positive sizes"),
        (dict(shape=(5, 6, 7, 8)), "spatial_shape must hold 1 to 3 positive sizes"),
        (dict(shape="ab"), "spatial_shape must be a sequence of ints"),
        (dict(duplicates="first"), "duplicates must be 'error', 'sum', 'mean' or 'max', got 'first'"),
    ],
)
def test_tensor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_non_tensor_inputs():
    with pytest.raises(TypeError, match="features and indices must be tensors"):
        SparseConvTensor(FEATS.tolist(), IDX, (5, 6), 2)
    with pytest.raises(TypeError, match="expects a SparseConvTensor, got Tensor"):
        SF.subm_conv(FEATS, torch.randn(4, 3, 3, 3))
    with pytest.raises(TypeError, match="SubMConv2d expects a SparseConvTensor"):
        sp.SubMConv2d(3, 4, 3)(FEATS)


@pytest.mark.parametrize("shape", [(5, 6), (4096, 4096, 4096)])
def test_duplicates_rejected_on_grid_and_hash_paths(shape):
    D = len(shape)
    idx = torch.tensor([[0] + [1] * D, [1] + [1] * D, [0] + [2] * D, [0] + [1] * D], dtype=torch.int32)
    x = SparseConvTensor(torch.randn(3, 2), idx[:3], shape, 2)  # same coords, other batch entry: fine
    assert x.coordinate_index([2] * D).mode == ("grid" if D == 2 else "hash")
    with pytest.raises(ValueError, match="indices contain duplicate coordinates"):
        SparseConvTensor(torch.randn(4, 2), idx, shape, 2)


@pytest.mark.parametrize("how", ["sum", "mean", "max"])
def test_duplicates_merge_matches_manual(how):
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 3, (40, 3), generator=g, dtype=torch.int32)
    idx[:, 0] = torch.randint(0, 2, (40,), generator=g, dtype=torch.int32)
    feats = torch.randn(40, 4, generator=g, dtype=torch.float64, requires_grad=True)
    x = SparseConvTensor(feats, idx, (3, 3), 2, duplicates=how)
    groups: dict = {}
    for row, coord in enumerate(idx.tolist()):
        groups.setdefault(tuple(coord), []).append(row)
    expected_coords = sorted(groups)
    assert x.indices.tolist() == [list(c) for c in expected_coords], "merged rows must be sorted by coordinate"
    assert x.indices.dtype == torch.int32
    reduce = {"sum": lambda t: t.sum(0), "mean": lambda t: t.mean(0), "max": lambda t: t.max(0).values}[how]
    expected = torch.stack([reduce(feats[groups[c]]) for c in expected_coords])
    torch.testing.assert_close(x.features, expected, rtol=1e-12, atol=1e-12)
    x.features.sum().backward()  # merging is differentiable
    assert feats.grad is not None
    if how == "sum":
        assert torch.equal(feats.grad, torch.ones_like(feats))
    if how == "mean":
        counts = torch.tensor([len(groups[tuple(c)]) for c in idx.tolist()], dtype=torch.float64)
        torch.testing.assert_close(feats.grad, (1 / counts).unsqueeze(1).expand(-1, 4))
    # the merged tensor is usable: a conv runs and the lookup saw no duplicates
    sp.SubMConv2d(4, 2, 3).double()(x)


def test_conv_argument_errors():
    x = make()
    with pytest.raises(ValueError, match="weight expects 4 input channels, the tensor has 3"):
        SF.subm_conv(x, torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="weight expects 4 input channels, the tensor has 3"):
        sp.SparseConv2d(4, 2, 3)(x)
    with pytest.raises(ValueError, match="weight expects 6 input channels, the tensor has 3"):
        SF.sparse_conv_transpose(x, torch.randn(6, 2, 3, 3))
    with pytest.raises(ValueError, match="features are torch.float32 but weight is torch.float64"):
        SF.sparse_conv(x, torch.randn(2, 3, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="features are torch.float32 but weight is torch.float64"):
        sp.SubMConv2d(3, 2, 3).double()(x)
    with pytest.raises(ValueError, match=r"weight must have 4 dims for a 2D tensor, got shape \(2, 3, 3\)"):
        SF.subm_conv(x, torch.randn(2, 3, 3))
    with pytest.raises(ValueError, match=r"channels \(3, 1\) are not divisible by groups=2"):
        SF.subm_conv(x, torch.randn(3, 1, 3, 3), groups=2)
    with pytest.raises(ValueError, match="SubMConv3d is 3D but the tensor is 2D"):
        sp.SubMConv3d(3, 2, 3)(x)
    with pytest.raises(ValueError, match="does not fit spatial_shape"):
        sp.SparseConv2d(3, 2, 7)(x)
    with pytest.raises(ValueError, match="supports dilation 1 only"):
        SF.sparse_avg_pool(x, 2, dilation=2)
    with pytest.raises(ValueError, match="mode must be 'max' or 'avg'"):
        SF.global_pool(x, "sum")
    # pools report the same mistakes as convs, with the same exception types
    with pytest.raises(ValueError, match="SparseMaxPool3d is 3D but the tensor is 2D"):
        sp.SparseMaxPool3d(2)(x)
    with pytest.raises(ValueError, match="SparseAvgPool1d is 1D but the tensor is 2D"):
        sp.SparseAvgPool1d(2)(x)
    with pytest.raises(TypeError, match="SparseMaxPool2d expects a SparseConvTensor, got Tensor"):
        sp.SparseMaxPool2d(2)(FEATS)
    with pytest.raises(TypeError, match="sparse_avg_pool expects a SparseConvTensor, got Tensor"):
        SF.sparse_avg_pool(FEATS, 2)


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: sp.SparseConv2d(3, 2, 0), r"kernel_size must be an int or 2 ints, each >= 1, got (0|\(0, 0\))"),
        (lambda: sp.SparseConv2d(3, 2, (3, 3, 3)), r"kernel_size must be an int or 2 ints"),
        (lambda: sp.SparseConv2d(3, 2, 3, stride=0), r"stride must be an int or 2 ints, each >= 1"),
        (lambda: sp.SparseConv2d(3, 2, 3, padding=-1), r"padding must be an int or 2 ints, each >= 0"),
        (lambda: sp.SparseConv2d(3, 2, 3, dilation=(1, 0)), r"dilation must be an int or 2 ints, each >= 1"),
        (lambda: sp.SubMConv2d(3, 2, 3, stride=2), r"keeps the input sites: stride must be 1"),
        (lambda: sp.SparseConv2d(3, 2, 3, groups=2), "must both be divisible by groups=2"),
        (lambda: sp.SparseConv2d(0, 2, 3), "channels must be positive"),
        (lambda: sp.SparseInverseConv2d(3, 2, 3, indice_key=None), "needs the indice_key"),
        (lambda: sp.SparseMaxPool2d(0), r"kernel_size must be an int or 2 ints, each >= 1"),
        (lambda: sp.SparseAvgPool2d(2, stride=0), r"stride must be an int or 2 ints, each >= 1"),
    ],
)
def test_bad_module_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_functional_bad_stride():
    with pytest.raises(ValueError, match=r"stride must be an int or 2 ints, each >= 1, got \(0, 1\)"):
        SF.sparse_conv(make(), torch.randn(2, 3, 3, 3), stride=(0, 1))
    with pytest.raises(ValueError, match="transposed conv output shape would be"):
        SF.sparse_conv_transpose(make(), torch.randn(3, 2, 1, 1), padding=3)


def test_inverse_conv_key_errors():
    x = make()
    with pytest.raises(KeyError, match="no strided SparseConv registered indice_key='nope'"):
        sp.SparseInverseConv2d(3, 2, 3, indice_key="nope")(x)
    # documented as ValueError; still a KeyError for code written against earlier versions
    with pytest.raises(ValueError, match="no strided SparseConv registered indice_key='nope'") as raised:
        sp.SparseInverseConv2d(3, 2, 3, indice_key="nope")(x)
    assert isinstance(raised.value, KeyError) and isinstance(raised.value, SF.IndiceKeyError)
    assert str(raised.value).startswith("sparse_inverse_conv: no strided SparseConv")  # not KeyError's repr
    y = sp.SparseConv2d(3, 4, 3, stride=2, padding=1, indice_key="down")(x)
    sub = sp.SubMConv2d(4, 4, 3, indice_key="sub")(y)
    with pytest.raises(KeyError, match="keys of strided convs seen: \\['down'\\]"):
        sp.SparseInverseConv2d(4, 3, 3, indice_key="sub")(sub)  # a SubM key is not invertible
    with pytest.raises(ValueError, match="not on the output sites of the conv with indice_key='down'"):
        sp.SparseInverseConv2d(3, 3, 3, indice_key="down")(x)
    with pytest.raises(ValueError, match=r"kernel \(2, 2\) differs from the keyed conv's \(3, 3\)"):
        sp.SparseInverseConv2d(4, 3, 2, indice_key="down")(y)
    z = sp.SparseInverseConv2d(4, 3, 3, indice_key="down")(sub)  # a SubM chain keeps the sites: fine
    assert torch.equal(z.indices, x.indices)


def test_replace_feature_and_from_dense_errors():
    x = make()
    with pytest.raises(ValueError, match=r"replace_feature needs features of shape \(3, C\), got \(2, 3\)"):
        x.replace_feature(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(2, 5, 6\)"):
        SparseConvTensor.from_dense(torch.randn(2, 3, 5, 6), torch.ones(2, 5, 6))
    with pytest.raises(ValueError, match="from_dense expects a float tensor"):
        SparseConvTensor.from_dense(torch.ones(2, 3, 5, 6, dtype=torch.int64))


# Regression (found by this suite, fixed in 912de2c): entries went through int(), so (2.7, 3) became (2, 3),
# stride (1.9, 2.5) became (1, 2) and the string '35' became (3, 5), all silently.
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kernel_size=(2.7, 3)), "kernel_size must be an int or 2 ints"),
        (dict(kernel_size=3, stride=(1.9, 2.5)), "stride must be an int or 2 ints"),
        (dict(kernel_size=3, stride=2.0), "stride must be an int or 2 ints"),
        (dict(kernel_size="35"), "kernel_size must be an int or 2 ints"),
        (dict(kernel_size="3x3"), "kernel_size must be an int or 2 ints"),
        (dict(kernel_size=3, padding=True), "padding must be an int or 2 ints"),
    ],
)
def test_non_integral_sizes_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sp.SparseConv2d(3, 2, **kwargs)


def test_bias_dtype_mismatch_rejected():
    with pytest.raises(ValueError, match="bias"):
        SF.subm_conv(make(), torch.randn(4, 3, 3, 3), torch.randn(4, dtype=torch.float64))


@pytest.mark.parametrize("bias_shape", [(1, 4), (5,)])
def test_bias_shape_mismatch_rejected(bias_shape):
    with pytest.raises(ValueError, match="bias"):
        SF.sparse_conv(make(), torch.randn(4, 3, 3, 3), torch.randn(bias_shape), stride=2)


def test_transpose_output_padding_must_be_smaller_than_stride_or_dilation():
    w = torch.randn(3, 4, 3, 3)
    with pytest.raises(ValueError, match="output_padding"):
        SF.sparse_conv_transpose(make(), w, stride=2, output_padding=2)


def test_pool_padding_at_most_half_the_kernel():
    with pytest.raises(ValueError, match="padding"):
        SF.sparse_max_pool(make(), 3, stride=2, padding=2)


def test_numpy_batch_size_accepted():
    x = SparseConvTensor(
        torch.randn(2, 3), torch.tensor([[0, 1, 1], [1, 2, 2]], dtype=torch.int32), (4, 4), np.int64(2)
    )
    assert x.batch_size == 2
