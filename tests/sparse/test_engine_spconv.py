"""Cross-check against spconv 2.3.8 (CPU, single thread) with the same weights.

spconv keeps weights as `(C_out, *kernel, C_in)`; ours are PyTorch's `(C_out, C_in, *kernel)`.
"""

from __future__ import annotations

import pytest
import torch
from engine_utils import random_sparse, sorted_rows
from torch.testing import assert_close

import sparseyolo.sparse as sp


@pytest.fixture
def spconv():
    try:
        import spconv.pytorch as spc
    except Exception as error:  # not installed, or its native library fails to load
        pytest.skip(f"spconv unavailable: {error}")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield spc
    torch.set_num_threads(before)


def to_spconv_weight(w):
    return w.permute(0, *range(2, w.dim()), 1).contiguous()


def spconv_input(spc, x):
    return spc.SparseConvTensor(x.features, x.indices, list(x.spatial_shape), x.batch_size)


def by_site(indices, features):
    return {tuple(r): f for r, f in zip(indices.tolist(), features)}


@pytest.mark.parametrize("D,shape,kernel", [(2, (40, 50), 3), (2, (40, 50), (3, 5)), (3, (12, 14, 16), 3)])
def test_subm_conv_matches_spconv(spconv, D, shape, kernel):
    torch.manual_seed(0)
    x = random_sparse(shape, 2, 8, density=0.2, seed=1, dtype=torch.float32)
    ours = getattr(sp, f"SubMConv{D}d")(8, 16, kernel)
    ref = getattr(spconv, f"SubMConv{D}d")(8, 16, kernel, bias=True, indice_key="s")
    with torch.no_grad():
        ref.weight.copy_(to_spconv_weight(ours.weight))
        ref.bias.copy_(ours.bias)
    with torch.no_grad():
        y = ours(x)
        r = ref(spconv_input(spconv, x))
    assert torch.equal(sorted_rows(r.indices), sorted_rows(y.indices))
    got, want = by_site(y.indices, y.features), by_site(r.indices, r.features)
    keys = sorted(got)
    assert_close(torch.stack([got[k] for k in keys]), torch.stack([want[k] for k in keys]), rtol=1e-4, atol=1e-4)


def test_strided_conv_matches_spconv(spconv):
    torch.manual_seed(0)
    x = random_sparse((40, 50), 2, 8, density=0.2, seed=2, dtype=torch.float32)
    ours = sp.SparseConv2d(8, 16, 3, stride=2, padding=1)
    ref = spconv.SparseConv2d(8, 16, 3, stride=2, padding=1, bias=True)
    with torch.no_grad():
        ref.weight.copy_(to_spconv_weight(ours.weight))
        ref.bias.copy_(ours.bias)
        y = ours(x)
        r = ref(spconv_input(spconv, x))
    assert tuple(r.spatial_shape) == y.spatial_shape
    assert torch.equal(sorted_rows(r.indices), sorted_rows(y.indices))
    got, want = by_site(y.indices, y.features), by_site(r.indices, r.features)
    keys = sorted(got)
    assert_close(torch.stack([got[k] for k in keys]), torch.stack([want[k] for k in keys]), rtol=1e-4, atol=1e-4)
