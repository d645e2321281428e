"""Functional sparse ops: convolutions (submanifold, strided, transposed, inverse), pooling, conversion.

Every conv is gather -> GEMM -> scatter-add over the pairs of a cached kernel map, in a custom autograd
Function whose backward reuses the same map (no dense fallback). Weights use PyTorch's layouts:
conv `(C_out, C_in // groups, *kernel)`, transposed/inverse conv `(C_in, C_out // groups, *kernel)`.

Each op checks its arguments (`args`), asks the map cache for its map (`cache`), runs the conv core (`core`)
and returns a tensor that shares the input's cache. Everything runs on the input's device; weights, biases and
masks must be on it too (`ValueError` otherwise).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparseyolo.sparse import cache, core
from sparseyolo.sparse.args import as_tuple, check_input, check_weight
from sparseyolo.sparse.cache import ConvEntry, IndiceKeyError
from sparseyolo.sparse.core import SparseConvFunction
from sparseyolo.sparse.tensor import SparseConvTensor

# widest input (channels) the compiled `conv2d_at_sites` kernel serves; wider inputs take the gather-GEMM path
AT_SITES_KERNEL_MAX_CHANNELS = 16

__all__ = [
    "subm_conv",
    "sparse_conv",
    "sparse_conv_transpose",
    "sparse_inverse_conv",
    "sparse_max_pool",
    "sparse_avg_pool",
    "global_pool",
    "global_max_pool",
    "global_avg_pool",
    "to_dense",
    "from_dense",
    "conv2d_at_sites",
    "ConvEntry",
    "IndiceKeyError",
    "SparseConvFunction",
]


def _conv(x: SparseConvTensor, weight, bias, groups, transposed, entry: ConvEntry, op: str) -> SparseConvTensor:
    """Run a conv over `entry`'s map and place the result on its output sites."""
    out = core.conv_features(x.features, weight, bias, groups, transposed, entry.kmap, op)
    return x.derive(out, entry.out_indices, entry.out_shape, entry.out_id)


# --- public functional API --------------------------------------------------------------------------


def subm_conv(
    x: SparseConvTensor, weight: Tensor, bias: Tensor | None = None, dilation=1, groups: int = 1, indice_key=None
) -> SparseConvTensor:
    """Submanifold conv: output sites = input sites; offset `k` reads `site + (k - kernel // 2) * dilation`.

    Equals dense `conv{D}d(x.dense(), weight, padding=kernel // 2 * dilation, dilation=dilation)` read at
    the input sites. weight `(C_out, C_in // groups, *kernel)`.
    """
    check_input(x, "subm_conv")
    kernel_size, _, _ = check_weight(x, weight, groups, False, "subm_conv")
    dilation = as_tuple(dilation, x.ndim, "dilation", 1)
    entry = cache.subm_entry(x, kernel_size, dilation)
    cache.register_key(x, indice_key, entry)
    return _conv(x, weight, bias, groups, False, entry, "subm_conv")


def sparse_conv(
    x: SparseConvTensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    indice_key=None,
) -> SparseConvTensor:
    """Regular sparse conv: an output site is active when its window holds an active input.

    Equals dense `conv{D}d(x.dense(), weight, stride=..., padding=..., dilation=...)` at the output sites.
    """
    check_input(x, "sparse_conv")
    kernel_size, _, _ = check_weight(x, weight, groups, False, "sparse_conv")
    stride = as_tuple(stride, x.ndim, "stride", 1)
    padding = as_tuple(padding, x.ndim, "padding", 0)
    dilation = as_tuple(dilation, x.ndim, "dilation", 1)
    entry = cache.conv_entry(x, kernel_size, stride, padding, dilation)
    cache.register_key(x, indice_key, entry)
    return _conv(x, weight, bias, groups, False, entry, "sparse_conv")


def sparse_conv_transpose(
    x: SparseConvTensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    output_padding=0,
    dilation=1,
    groups: int = 1,
    indice_key=None,
) -> SparseConvTensor:
    """Transposed sparse conv (input `i`, offset `k` writes `i * stride - padding + k * dilation`).

    Equals dense `conv_transpose{D}d` at the output sites. weight `(C_in, C_out // groups, *kernel)`.
    """
    check_input(x, "sparse_conv_transpose")
    kernel_size, _, _ = check_weight(x, weight, groups, True, "sparse_conv_transpose")
    stride = as_tuple(stride, x.ndim, "stride", 1)
    padding = as_tuple(padding, x.ndim, "padding", 0)
    dilation = as_tuple(dilation, x.ndim, "dilation", 1)
    output_padding = as_tuple(output_padding, x.ndim, "output_padding", 0)
    if any(op >= max(s, d) for op, s, d in zip(output_padding, stride, dilation)):
        raise ValueError(
            f"sparse_conv_transpose: output_padding {output_padding} must be smaller than stride "
            f"{stride} or dilation {dilation} (as torch.nn.functional.conv_transpose)"
        )
    entry = cache.conv_transpose_entry(x, kernel_size, stride, padding, dilation, output_padding)
    cache.register_key(x, indice_key, entry)
    return _conv(x, weight, bias, groups, True, entry, "sparse_conv_transpose")


def sparse_inverse_conv(
    x: SparseConvTensor, weight: Tensor, bias: Tensor | None = None, indice_key=None, groups: int = 1
) -> SparseConvTensor:
    """Inverse of the strided `sparse_conv` that registered `indice_key`: back to its input sites.

    Uses that conv's map transposed; equals dense `conv_transpose{D}d` with its stride/padding/dilation,
    read at the original input sites. weight `(C_in, C_out // groups, *kernel)`.
    """
    check_input(x, "sparse_inverse_conv")
    kernel_size, _, _ = check_weight(x, weight, groups, True, "sparse_inverse_conv")
    entry = cache.keyed_conv_entry(x, indice_key, "sparse_inverse_conv")
    if tuple(kernel_size) != tuple(entry.kernel_size):
        raise ValueError(f"sparse_inverse_conv: kernel {kernel_size} differs from the keyed conv's {entry.kernel_size}")
    return _conv(x, weight, bias, groups, True, entry.inverse(), "sparse_inverse_conv")


def _pool(
    x: SparseConvTensor, kernel_size, stride, padding, dilation, mode: str, op: str, indice_key=None
) -> SparseConvTensor:
    check_input(x, op)
    kernel_size = as_tuple(kernel_size, x.ndim, "kernel_size", 1)
    stride = kernel_size if stride is None else as_tuple(stride, x.ndim, "stride", 1)
    padding = as_tuple(padding, x.ndim, "padding", 0)
    dilation = as_tuple(dilation, x.ndim, "dilation", 1)
    if any(2 * p > d * (k - 1) + 1 for p, k, d in zip(padding, kernel_size, dilation)):
        raise ValueError(
            f"{op}: padding {padding} must be at most half the effective kernel "
            f"{tuple(d * (k - 1) + 1 for k, d in zip(kernel_size, dilation))} (as torch pooling)"
        )
    entry = cache.conv_entry(x, kernel_size, stride, padding, dilation)
    cache.register_key(x, indice_key, entry)
    kmap = entry.kmap
    values = x.features.index_select(0, kmap.in_rows)
    channels = x.features.shape[1]
    base = x.features.new_zeros(kmap.n_out, channels)
    if mode == "max":
        index = kmap.out_rows.unsqueeze(1).expand(-1, channels)
        out = base.scatter_reduce(0, index, values, "amax", include_self=False)
    else:
        out = base.index_add(0, kmap.out_rows, values) / kmap.kernel_volume
    return x.derive(out, entry.out_indices, entry.out_shape, entry.out_id)


def sparse_max_pool(
    x: SparseConvTensor, kernel_size, stride=None, padding=0, dilation=1, indice_key=None
) -> SparseConvTensor:
    """Max over the active inputs of each window (inactive sites are ignored, not read as 0).

    Output sites as `sparse_conv`; equals dense `max_pool{D}d` on a map filled with -inf off the sites.
    """
    return _pool(x, kernel_size, stride, padding, dilation, "max", "sparse_max_pool", indice_key)


def sparse_avg_pool(
    x: SparseConvTensor, kernel_size, stride=None, padding=0, dilation=1, indice_key=None
) -> SparseConvTensor:
    """Sum of the active inputs of each window / kernel volume.

    Output sites as `sparse_conv`; equals dense `avg_pool{D}d` (inactive = 0, `count_include_pad=True`) read at
    the output sites.
    """
    check_input(x, "sparse_avg_pool")
    if any(d != 1 for d in as_tuple(dilation, x.ndim, "dilation", 1)):
        raise ValueError("sparse_avg_pool supports dilation 1 only (as torch avg_pool)")
    return _pool(x, kernel_size, stride, padding, dilation, "avg", "sparse_avg_pool", indice_key)


def global_pool(x: SparseConvTensor, mode: str = "max") -> Tensor:
    """Per batch entry max or mean over active sites -> dense `(B, C)`; entries without sites give 0."""
    check_input(x, "global_pool")
    if mode not in ("max", "avg"):
        raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
    batch = x.indices[:, 0].to(torch.int64)
    channels = x.features.shape[1]
    base = x.features.new_zeros(x.batch_size, channels)
    index = batch.unsqueeze(1).expand(-1, channels)
    reduce = "amax" if mode == "max" else "mean"
    return base.scatter_reduce(0, index, x.features, reduce, include_self=False)


def global_max_pool(x: SparseConvTensor) -> Tensor:
    return global_pool(x, "max")


def global_avg_pool(x: SparseConvTensor) -> Tensor:
    return global_pool(x, "avg")


def to_dense(x: SparseConvTensor, channels_first: bool = True) -> Tensor:
    """Dense `(B, C, *spatial)` (or channels last) with zeros off the sites; differentiable."""
    check_input(x, "to_dense")
    return x.dense(channels_first)


def from_dense(x: Tensor, mask: Tensor | None = None, channels_first: bool = True) -> SparseConvTensor:
    """Sparse tensor of the sites of a dense `x (B, C, *spatial)`.

    The sites are where `mask (B, *spatial)` is True (default: where any channel is non-zero). Features keep
    their gradient path to `x`.
    """
    return SparseConvTensor.from_dense(x, mask, channels_first)


def conv2d_at_sites(
    x: Tensor, weight: Tensor, sites: Tensor, stride: int = 1, padding: int = 0, dilation: int = 1, mask=None
) -> Tensor:
    """A 2D conv of a dense image evaluated only at given output sites (no input sparse tensor or kernel map).

    Equals `conv2d(x * mask, weight, stride=stride, padding=padding, dilation=dilation)` read at `sites`.
    For a network's first layer (a dense image, output sites chosen by a mask) and for a block run at a few
    pixels of a dense feature map. `weight`, `sites` and `mask` must be on `x`'s device.

    Args:
        x (Tensor[B, C, H, W], float): the dense input.
        weight (Tensor[O, C, k, k]): `nn.Conv2d` layout (square kernel, groups 1).
        sites (Tensor[N, 3], int32): output sites `(batch, y, x)` on the conv's output grid.
        mask (Tensor[B, H, W], bool, optional): input pixels that count; the others read as zero.
    Returns:
        Tensor[N, O]: one feature row per site. Differentiable in `x` and `weight`. Without gradients and with
        at most `AT_SITES_KERNEL_MAX_CHANNELS` input channels the compiled per-site kernel runs (float32/float64
        on the CPU); otherwise the sites' taps are gathered as rows of channels-last `x` (no copy when `x` is
        channels-last) and multiplied by the weight in one GEMM.
    """
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        got = f"{x.dtype} with shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"conv2d_at_sites: x must be a float tensor (B, C, H, W), got {got}")
    B, C, H, W = x.shape
    if weight.dim() != 4 or weight.shape[1] != C or weight.shape[2] != weight.shape[3] or weight.dtype != x.dtype:
        raise ValueError(
            f"conv2d_at_sites: weight must be {x.dtype} (O, {C}, k, k), got {weight.dtype} {tuple(weight.shape)}"
        )
    if sites.dtype != torch.int32 or sites.dim() != 2 or sites.shape[1] != 3:
        raise ValueError(f"conv2d_at_sites: sites must be int32 (N, 3), got {sites.dtype} {tuple(sites.shape)}")
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (B, H, W)):
        raise ValueError(f"conv2d_at_sites: mask must be bool ({B}, {H}, {W}), got {mask.dtype} {tuple(mask.shape)}")
    for name, t in (("weight", weight), ("sites", sites), ("mask", mask)):
        if t is not None and t.device != x.device:
            raise ValueError(
                f"conv2d_at_sites: {name} is on {t.device} but x is on {x.device}; move it with .to(x.device)"
            )
    if sites.numel():
        low, high = torch.stack(torch.aminmax(sites[:, 0])).tolist()  # one sync
        if low < 0 or high >= B:
            raise ValueError(f"conv2d_at_sites: site batch indices must lie in [0, {B - 1}]")
    k = int(weight.shape[2])
    (s,), (p,), (d,) = (
        as_tuple(stride, 1, "stride", 1),
        as_tuple(padding, 1, "padding"),
        as_tuple(dilation, 1, "dilation", 1),
    )
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    # the compiled per-site kernel wins on few channels (a first layer); wider maps go through one GEMM
    ext = None if grad or C > AT_SITES_KERNEL_MAX_CHANNELS else core.compiled(x.dtype, x.device)
    if ext is not None:
        sites = sites.contiguous()
        no_mask = torch.empty(0, dtype=torch.bool, device=x.device)
        w = weight.permute(2, 3, 1, 0).contiguous()  # (k, k, C, O)
        return ext.conv2d_at_sites(x.contiguous(), w, sites, no_mask if mask is None else mask.contiguous(), s, p, d)
    # gather -> one GEMM: each site's k*k input pixels as channel rows of the channels-last image (a view when
    # `x` is channels-last), taps outside the image or the mask zeroed, times the weight as (k*k*C, O)
    itype = torch.int64  # flat pixel indices: `index_select` on the CPU is ~3x slower with int32 ones
    n = sites.shape[0]
    b, oy, ox = sites.to(itype).unbind(1)
    offs = torch.arange(k, dtype=itype, device=x.device) * d - p
    iy = (oy * s).unsqueeze(1) + offs  # (N, k)
    ix = (ox * s).unsqueeze(1) + offs
    vy, vx = (iy >= 0) & (iy < H), (ix >= 0) & (ix < W)
    row = (b * H).unsqueeze(1) + iy.clamp_(0, H - 1)  # (N, k)
    lin = ((row * W).unsqueeze(2) + ix.clamp_(0, W - 1).unsqueeze(1)).view(-1)  # (N * k * k,) site-major
    keep = (vy.unsqueeze(2) & vx.unsqueeze(1)).view(-1)
    if mask is not None:
        keep &= mask.reshape(-1)[lin]
    rows = x.permute(0, 2, 3, 1).reshape(B * H * W, C)  # (pixels, C)
    g = rows.index_select(0, lin)  # (N * k * k, C)
    if grad:
        g = g * keep.unsqueeze(1).to(x.dtype)
    else:
        off = (~keep).nonzero()[:, 0]  # taps in the padding (border sites) or off the mask: few
        if off.numel():
            g.index_fill_(0, off, 0.0)
    w = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], k * k * C)  # (O, k*k*C), taps (ky, kx, c)
    return g.view(n, k * k * C) @ w.t()
