"""`conv2d_at_sites` (a dense image's conv evaluated at chosen output sites) vs dense `F.conv2d`.

Oracle: `conv2d(x * mask, w, stride, padding, dilation)` read at the sites. The compiled kernel (no gradients)
and the PyTorch path (gradients, or the extension disabled) are both checked, forward and gradients, on the
CPU and on CUDA when present (the `device` fixture).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from engine_utils import at_sites
from torch.testing import assert_close

import sparseyolo.sparse.functional as SF
from sparseyolo.sparse import _ext

CASES = [  # (B, C, H, W, O, k, stride, padding, dilation)
    (1, 3, 13, 17, 16, 3, 2, 1, 1),
    (2, 3, 12, 9, 8, 3, 1, 1, 1),
    (1, 4, 11, 14, 5, 5, 2, 2, 1),
    (2, 1, 10, 10, 32, 3, 3, 0, 2),
    (1, 3, 9, 8, 12, 1, 1, 0, 1),
    (1, 2, 8, 9, 6, 2, 2, 0, 1),
    (1, 24, 10, 12, 16, 3, 1, 1, 1),  # wider than AT_SITES_KERNEL_MAX_CHANNELS: the gather-GEMM path
    (2, 20, 9, 11, 8, 3, 2, 1, 2),
]


def _inputs(B, C, H, W, O, k, seed, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    w = torch.randn(O, C, k, k, generator=g, dtype=dtype)
    mask = torch.rand(B, H, W, generator=g) < 0.4
    return x.to(device), w.to(device), mask.to(device)


def _sites(B, Ho, Wo, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed + 7)
    return (torch.rand(B, Ho, Wo, generator=g) < 0.5).nonzero().to(device, torch.int32)


@pytest.mark.usefixtures("engine_path")  # compiled kernels and pure PyTorch (conftest.py)
@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("B,C,H,W,O,k,s,p,d", CASES)
def test_forward_vs_dense(B, C, H, W, O, k, s, p, d, use_mask, device):
    x, w, mask = _inputs(B, C, H, W, O, k, seed=B * 100 + k, device=device)
    dense = F.conv2d(x * mask[:, None] if use_mask else x, w, stride=s, padding=p, dilation=d)
    sites = _sites(B, *dense.shape[-2:], seed=k, device=device)
    with torch.no_grad():
        got = SF.conv2d_at_sites(x, w, sites, s, p, d, mask=mask if use_mask else None)
    assert got.shape == (sites.shape[0], O)
    assert_close(got, at_sites(dense, sites), rtol=1e-10, atol=1e-10)
    # float32 through the same path
    with torch.no_grad():
        got32 = SF.conv2d_at_sites(x.float(), w.float(), sites, s, p, d, mask=mask if use_mask else None)
    assert_close(got32, at_sites(dense, sites).float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("use_mask", [False, True])
def test_channels_last_input_vs_dense(use_mask):
    # a channels-last map (what a block run at a few pixels passes) is read without a copy: same numbers
    x, w, mask = _inputs(1, 24, 10, 12, 16, 3, seed=3)
    sites = _sites(1, 10, 12, seed=3)
    dense = F.conv2d(x * mask[:, None] if use_mask else x, w, padding=1)
    with torch.no_grad():
        xl = x.to(memory_format=torch.channels_last)
        got = SF.conv2d_at_sites(xl, w, sites, 1, 1, mask=mask if use_mask else None)
    assert_close(got, at_sites(dense, sites), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("B,C,H,W,O,k,s,p,d", CASES[:4] + CASES[-1:])
def test_gradients_vs_dense(B, C, H, W, O, k, s, p, d, device):
    x, w, mask = _inputs(B, C, H, W, O, k, seed=3, device=device)
    x1, w1 = x.clone().requires_grad_(), w.clone().requires_grad_()
    x2, w2 = x.clone().requires_grad_(), w.clone().requires_grad_()
    dense = F.conv2d(x2 * mask[:, None], w2, stride=s, padding=p, dilation=d)
    sites = _sites(B, *dense.shape[-2:], seed=5, device=device)
    got = SF.conv2d_at_sites(x1, w1, sites, s, p, d, mask=mask)
    cot = torch.randn(got.shape, dtype=got.dtype, generator=torch.Generator().manual_seed(9)).to(device)
    (got * cot).sum().backward()
    (at_sites(dense, sites) * cot).sum().backward()
    assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-10)
    assert_close(w1.grad, w2.grad, rtol=1e-10, atol=1e-10)


def test_gradcheck_tiny():
    x, w, mask = _inputs(1, 2, 5, 6, 3, 3, seed=11)
    sites = _sites(1, 3, 3, seed=1)
    x.requires_grad_(), w.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: SF.conv2d_at_sites(a, b, sites, 2, 1, 1, mask=mask), (x, w))


def test_zero_sites_give_an_empty_result():
    x, w, _ = _inputs(1, 3, 8, 8, 16, 3, seed=0)
    empty = torch.zeros(0, 3, dtype=torch.int32)
    for ctx in (torch.no_grad(), _ext.disabled()):
        with ctx:
            out = SF.conv2d_at_sites(x, w, empty, 2, 1)
        assert out.shape == (0, 16) and out.dtype == x.dtype


def test_bad_input_is_named():
    x, w, mask = _inputs(1, 3, 8, 8, 4, 3, seed=0)
    sites = torch.zeros(1, 3, dtype=torch.int32)
    with pytest.raises(ValueError, match="x must be a float tensor"):
        SF.conv2d_at_sites(x[0], w, sites)
    with pytest.raises(ValueError, match="weight must be"):
        SF.conv2d_at_sites(x, w[:, :2], sites)
    with pytest.raises(ValueError, match="weight must be"):
        SF.conv2d_at_sites(x, w.float(), sites)
    with pytest.raises(ValueError, match="sites must be int32"):
        SF.conv2d_at_sites(x, w, sites.long())
    with pytest.raises(ValueError, match="mask must be bool"):
        SF.conv2d_at_sites(x, w, sites, mask=mask.float())
    with pytest.raises(ValueError, match="batch indices must lie in"):
        SF.conv2d_at_sites(x, w, torch.tensor([[1, 0, 0]], dtype=torch.int32))
    with pytest.raises(ValueError, match="stride must be"):
        SF.conv2d_at_sites(x, w, sites, stride=0)
