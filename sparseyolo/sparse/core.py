"""The conv core (internal): gather -> GEMM -> scatter-add over the pairs of a `KernelMap`, with autograd.

One entry point, :func:`conv_features`: feature rows in, feature rows out, for any conv kind (the kind is in
the map). Its backward reuses the same map (input gradient: the transposed map; weight gradient: the same
pairs). The compiled kernels (`_ext`) run for float32/float64 CPU tensors; every other case (other dtypes,
CUDA or any other device, a build without the extension) takes the pure-PyTorch path, which is the reference.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sparseyolo.sparse import _ext
from sparseyolo.sparse import kmap as km
from sparseyolo.threads import threads

EXT_DTYPES = (torch.float32, torch.float64)  # the compiled kernels' types; others take the PyTorch path
WEIGHT_GRAD_ROWS = 2048  # rows per partial product of `grouped_weight_grad`


def compiled(dtype: torch.dtype, device: torch.device):
    """The compiled module when it is available and serves `dtype` on `device` (CPU only), else None."""
    return _ext.for_device(device) if dtype in EXT_DTYPES else None


def kernel_major(weight: Tensor, groups: int, transposed: bool) -> Tensor:
    """PyTorch-layout weight -> `(K, G, C_in/G, C_out/G)`, differentiable."""
    K = math.prod(weight.shape[2:])
    if transposed:  # (C_in, C_out/G, *k)
        w = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], K)
        return w.permute(3, 0, 1, 2).contiguous()
    w = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], K)  # (G, C_out/G, C_in/G, K)
    return w.permute(3, 0, 2, 1).contiguous()


def grouped_mm(x: Tensor, w: Tensor) -> Tensor:
    """`x (n, G*I) @ blockdiag(w (G, I, O))` -> `(n, G*O)`."""
    G, I, O = w.shape
    if G == 1:
        return x @ w[0]
    n = x.shape[0]
    if I == 1:  # depthwise: a broadcast product
        return (x.view(n, G, 1) * w.view(1, G, O)).view(n, G * O)
    return torch.bmm(x.view(n, G, I).transpose(0, 1), w).transpose(0, 1).reshape(n, G * O)


def grouped_weight_grad(x: Tensor, g: Tensor, G: int) -> Tensor:
    """Sum over rows of `x_n^T g_n` per group: `(n, G*I), (n, G*O)` -> `(G, I, O)`.

    The rows are reduced in fixed chunks whose partial products are added in chunk order, each product on one
    thread: a GEMM lets the BLAS split its reduction by thread count (MKL does so from ~1000 rows on AVX-512),
    which changes the last bits with the threads. (The pure-PyTorch path is the reference; the compiled kernels
    are the fast path.)
    """
    n = x.shape[0]
    I, O = x.shape[1] // G, g.shape[1] // G
    out = x.new_zeros(G, I, O)
    with threads(1):
        for start in range(0, n, WEIGHT_GRAD_ROWS):
            xs, gs = x[start : start + WEIGHT_GRAD_ROWS], g[start : start + WEIGHT_GRAD_ROWS]
            m = xs.shape[0]
            out += torch.bmm(xs.reshape(m, G, I).permute(1, 2, 0), gs.reshape(m, G, O).transpose(0, 1))
    return out


def apply_map(features: Tensor, weight: Tensor, kmap: km.KernelMap) -> Tensor:
    """out[o] = sum over pairs (i, o, k) of features[i] @ weight[k]; weight `(K, G, I, O)` contiguous."""
    ext = compiled(features.dtype, features.device)
    if ext is not None:
        return ext.gather_conv(features, weight, kmap.table)
    c_out = weight.shape[1] * weight.shape[3]
    if kmap.identity is not None:
        out = grouped_mm(features, weight[kmap.identity])
    else:
        out = features.new_zeros(kmap.n_out, c_out)
    for k in range(kmap.kernel_volume):
        rows_in, rows_out = kmap.pairs(k)
        if rows_in.numel():
            out.index_add_(0, rows_out, grouped_mm(features.index_select(0, rows_in), weight[k]))
    return out


def weight_grad(features: Tensor, grad_out: Tensor, weight: Tensor, kmap: km.KernelMap) -> Tensor:
    """d loss / d weight `(K, G, I, O)` for `apply_map`."""
    K, G, I, O = weight.shape
    ext = compiled(features.dtype, features.device)
    if ext is not None:
        in_rows, out_rows = kmap.in_rows, kmap.out_rows
        bounds = torch.tensor(kmap.bounds, dtype=torch.int64, device=features.device)
        identity = -1 if kmap.identity is None else kmap.identity
        return ext.gather_conv_weight_grad(features, grad_out, in_rows, out_rows, bounds, identity, G, I, O)
    grad_weight = torch.zeros_like(weight)
    if kmap.identity is not None:
        grad_weight[kmap.identity] = grouped_weight_grad(features, grad_out, G)
    for k in range(K):
        rows_in, rows_out = kmap.pairs(k)
        if rows_in.numel():
            grad_weight[k] = grouped_weight_grad(
                features.index_select(0, rows_in), grad_out.index_select(0, rows_out), G
            )
    return grad_weight


class SparseConvFunction(torch.autograd.Function):
    """Autograd for gather-GEMM-scatter over a kernel map. weight `(K, G, C_in/G, C_out/G)`."""

    @staticmethod
    def forward(ctx, features: Tensor, weight: Tensor, kmap: km.KernelMap) -> Tensor:
        features = features.contiguous()
        weight = weight.contiguous()
        ctx.save_for_backward(features, weight)
        ctx.kmap = kmap
        return apply_map(features, weight, kmap)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        features, weight = ctx.saved_tensors
        kmap: km.KernelMap = ctx.kmap
        grad_out = grad_out.contiguous()
        grad_features = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_features = apply_map(grad_out, weight.transpose(2, 3).contiguous(), kmap.transposed())
        if ctx.needs_input_grad[1]:
            grad_weight = weight_grad(features, grad_out, weight, kmap)
        return grad_features, grad_weight, None


def conv_features(
    features: Tensor, weight: Tensor, bias: Tensor | None, groups: int, transposed: bool, kmap: km.KernelMap, op: str
) -> Tensor:
    """Output feature rows `(kmap.n_out, C_out)` of a conv over `kmap`; differentiable in all tensors.

    Args:
        features (Tensor[N, C_in], float): the input rows the map refers to.
        weight: PyTorch layout, conv `(C_out, C_in // groups, *kernel)` or, when `transposed`, transposed/inverse
            conv `(C_in, C_out // groups, *kernel)`; checked against the input by `args.check_weight` beforehand.
        bias (Tensor[C_out], optional): same dtype as `weight`, on the features' device.
        op: the public op's name, for error messages.
    """
    c_out = weight.shape[1] * groups if transposed else weight.shape[0]
    if bias is not None and (
        not isinstance(bias, Tensor) or tuple(bias.shape) != (c_out,) or bias.dtype != weight.dtype
    ):
        got = f"{bias.dtype} {tuple(bias.shape)}" if isinstance(bias, Tensor) else type(bias).__name__
        raise ValueError(f"{op}: bias must be a {weight.dtype} tensor of shape ({c_out},), got {got}")
    if bias is not None and bias.device != features.device:
        raise ValueError(
            f"{op}: bias is on {bias.device} but features are on {features.device}; "
            f"move the module (or bias) with .to(features.device)"
        )
    w = kernel_major(weight, groups, transposed)
    if kmap.kernel_volume != w.shape[0]:
        raise ValueError(f"{op}: weight has {w.shape[0]} kernel offsets, the map has {kmap.kernel_volume}")
    out = SparseConvFunction.apply(features, w, kmap)
    return out if bias is None else out + bias
