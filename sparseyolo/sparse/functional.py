"""Functional sparse ops: convolutions (submanifold, strided, transposed, inverse), pooling, conversion.

Every conv is gather -> GEMM -> scatter-add over the pairs of a cached `KernelMap`, in a custom autograd
Function whose backward reuses the same map (no dense fallback). Weights use PyTorch's layouts:
conv `(C_out, C_in // groups, *kernel)`, transposed/inverse conv `(C_in, C_out // groups, *kernel)`.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
from torch import Tensor

from sparseyolo.sparse import _ext
from sparseyolo.sparse import kmap as km
from sparseyolo.sparse.tensor import SparseConvTensor, new_coordinate_id

# --- argument handling ------------------------------------------------------------------------------


def _tuple(value, ndim: int, name: str, minimum: int = 0) -> tuple[int, ...]:
    """An int or `ndim` ints (no floats, bools or strings) -> `ndim` ints, each >= minimum."""

    def as_int(v) -> int:
        if isinstance(v, (bool, str, bytes)):
            raise TypeError
        return operator.index(v)

    try:
        try:
            items = (as_int(value),) * ndim
        except TypeError:
            if isinstance(value, (str, bytes)):
                raise
            items = tuple(as_int(v) for v in value)
    except TypeError:
        raise ValueError(f"{name} must be an int or {ndim} ints, got {value!r}") from None
    if len(items) != ndim or any(v < minimum for v in items):
        raise ValueError(f"{name} must be an int or {ndim} ints, each >= {minimum}, got {value!r}")
    return items


def _check_input(x, op: str) -> None:
    if not isinstance(x, SparseConvTensor):
        raise TypeError(
            f"{op} expects a SparseConvTensor, got {type(x).__name__}; build one with "
            f"SparseConvTensor(features, indices, spatial_shape, batch_size) or .from_dense(x)"
        )


def _check_weight(x: SparseConvTensor, weight: Tensor, groups: int, transposed: bool, op: str):
    """Returns (kernel_size, c_in, c_out) after checking `weight` against `x`."""
    D = x.ndim
    if weight.dim() != 2 + D:
        raise ValueError(f"{op}: weight must have {2 + D} dims for a {D}D tensor, got shape {tuple(weight.shape)}")
    if groups < 1:
        raise ValueError(f"{op}: groups must be >= 1, got {groups}")
    if transposed:
        c_in, c_out = weight.shape[0], weight.shape[1] * groups
        per_group_ok = c_in % groups == 0
    else:
        c_out, c_in = weight.shape[0], weight.shape[1] * groups
        per_group_ok = c_out % groups == 0
    if not per_group_ok:
        raise ValueError(f"{op}: channels {tuple(weight.shape[:2])} are not divisible by groups={groups}")
    channels = x.features.shape[1]
    if channels != c_in:
        raise ValueError(f"{op}: weight expects {c_in} input channels, the tensor has {channels}")
    if weight.dtype != x.features.dtype:
        raise ValueError(f"{op}: features are {x.features.dtype} but weight is {weight.dtype}; cast one")
    return tuple(weight.shape[2:]), c_in, c_out


def _kernel_major(weight: Tensor, groups: int, transposed: bool) -> Tensor:
    """PyTorch-layout weight -> `(K, G, C_in/G, C_out/G)`, differentiable."""
    K = math.prod(weight.shape[2:])
    if transposed:  # (C_in, C_out/G, *k)
        w = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], K)
        return w.permute(3, 0, 1, 2).contiguous()
    w = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], K)  # (G, C_out/G, C_in/G, K)
    return w.permute(3, 0, 2, 1).contiguous()


# --- the conv kernel --------------------------------------------------------------------------------

_EXT_DTYPES = (torch.float32, torch.float64)  # the compiled kernels' types; others take the PyTorch path


def _grouped_mm(x: Tensor, w: Tensor) -> Tensor:
    """`x (n, G*I) @ blockdiag(w (G, I, O))` -> `(n, G*O)`."""
    G, I, O = w.shape
    if G == 1:
        return x @ w[0]
    n = x.shape[0]
    if I == 1:  # depthwise: a broadcast product
        return (x.view(n, G, 1) * w.view(1, G, O)).view(n, G * O)
    return torch.bmm(x.view(n, G, I).transpose(0, 1), w).transpose(0, 1).reshape(n, G * O)


_WEIGHT_GRAD_ROWS = 2048  # rows per partial product of `_grouped_weight_grad`


def _grouped_weight_grad(x: Tensor, g: Tensor, G: int) -> Tensor:
    """Sum over rows of `x_n^T g_n` per group: `(n, G*I), (n, G*O)` -> `(G, I, O)`.

    The rows are reduced in fixed chunks whose partial products are added in chunk order: one GEMM over all
    rows lets the BLAS split the reduction by thread count, which changes the last bits with the threads.
    """
    n = x.shape[0]
    I, O = x.shape[1] // G, g.shape[1] // G
    out = x.new_zeros(G, I, O)
    for start in range(0, n, _WEIGHT_GRAD_ROWS):
        xs, gs = x[start : start + _WEIGHT_GRAD_ROWS], g[start : start + _WEIGHT_GRAD_ROWS]
        m = xs.shape[0]
        out += torch.bmm(xs.reshape(m, G, I).permute(1, 2, 0), gs.reshape(m, G, O).transpose(0, 1))
    return out


def _apply_map(features: Tensor, weight: Tensor, kmap: km.KernelMap) -> Tensor:
    """out[o] = sum over pairs (i, o, k) of features[i] @ weight[k]; weight `(K, G, I, O)` contiguous."""
    ext = _ext.load() if features.dtype in _EXT_DTYPES else None
    if ext is not None:
        return ext.gather_conv(features, weight, kmap.table)
    c_out = weight.shape[1] * weight.shape[3]
    if kmap.identity is not None:
        out = _grouped_mm(features, weight[kmap.identity])
    else:
        out = features.new_zeros(kmap.n_out, c_out)
    for k in range(kmap.kernel_volume):
        rows_in, rows_out = kmap.pairs(k)
        if rows_in.numel():
            out.index_add_(0, rows_out, _grouped_mm(features.index_select(0, rows_in), weight[k]))
    return out


def _weight_grad(features: Tensor, grad_out: Tensor, weight: Tensor, kmap: km.KernelMap) -> Tensor:
    """d loss / d weight `(K, G, I, O)` for `_apply_map`."""
    K, G, I, O = weight.shape
    ext = _ext.load() if features.dtype in _EXT_DTYPES else None
    if ext is not None:
        in_rows, out_rows = kmap.in_rows, kmap.out_rows
        bounds = torch.tensor(kmap.bounds, dtype=torch.int64)
        identity = -1 if kmap.identity is None else kmap.identity
        return ext.gather_conv_weight_grad(features, grad_out, in_rows, out_rows, bounds, identity, G, I, O)
    grad_weight = torch.zeros_like(weight)
    if kmap.identity is not None:
        grad_weight[kmap.identity] = _grouped_weight_grad(features, grad_out, G)
    for k in range(K):
        rows_in, rows_out = kmap.pairs(k)
        if rows_in.numel():
            grad_weight[k] = _grouped_weight_grad(
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
        return _apply_map(features, weight, kmap)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        features, weight = ctx.saved_tensors
        kmap: km.KernelMap = ctx.kmap
        grad_out = grad_out.contiguous()
        grad_features = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_features = _apply_map(grad_out, weight.transpose(2, 3).contiguous(), kmap.transposed())
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_grad(features, grad_out, weight, kmap)
        return grad_features, grad_weight, None


# --- kernel-map retrieval (cached in the tensor's MapStore) ----------------------------------------


@dataclass
class ConvEntry:
    """A cached conv map with the coordinates on both sides (what `indice_key` refers to)."""

    kmap: km.KernelMap
    kind: str
    in_indices: Tensor
    in_shape: tuple
    in_id: int
    out_indices: Tensor
    out_shape: tuple
    out_id: int
    kernel_size: tuple
    stride: tuple
    padding: tuple
    dilation: tuple


def _register_key(x: SparseConvTensor, indice_key, entry: ConvEntry) -> None:
    if indice_key is not None:
        x._store.keyed[indice_key] = entry


def _subm_entry(x: SparseConvTensor, kernel_size, dilation) -> ConvEntry:
    key = ("subm", x._coord_id, kernel_size, dilation)
    entry = x._store.maps.get(key)
    if entry is None:
        index = x.coordinate_index(km.subm_margin(kernel_size, dilation))
        kmap = km.subm_map(index, x.indices, kernel_size, dilation)
        ones = (1,) * x.ndim
        entry = ConvEntry(
            kmap,
            "subm",
            x.indices,
            x.spatial_shape,
            x._coord_id,
            x.indices,
            x.spatial_shape,
            x._coord_id,
            kernel_size,
            ones,
            tuple(k // 2 * d for k, d in zip(kernel_size, dilation)),
            dilation,
        )
        x._store.maps[key] = entry
    return entry


def _conv_entry(x: SparseConvTensor, kernel_size, stride, padding, dilation) -> ConvEntry:
    key = ("conv", x._coord_id, kernel_size, stride, padding, dilation)
    entry = x._store.maps.get(key)
    if entry is None:
        out_indices, out_shape = km.conv_out_indices(
            x.indices, x.spatial_shape, x.batch_size, kernel_size, stride, padding, dilation
        )
        if any(s <= 0 for s in out_shape):
            raise ValueError(
                f"kernel {kernel_size} (dilation {dilation}, padding {padding}) does not fit "
                f"spatial_shape {x.spatial_shape}: output shape would be {out_shape}"
            )
        margin = km.conv_margin(x.spatial_shape, out_shape, kernel_size, stride, padding, dilation)
        kmap = km.conv_map(
            x.coordinate_index(margin), out_indices, kernel_size, stride, padding, dilation, x.num_active
        )
        entry = ConvEntry(
            kmap,
            "conv",
            x.indices,
            x.spatial_shape,
            x._coord_id,
            out_indices,
            out_shape,
            new_coordinate_id(),
            kernel_size,
            stride,
            padding,
            dilation,
        )
        x._store.maps[key] = entry
    return entry


def _conv_transpose_entry(x: SparseConvTensor, kernel_size, stride, padding, dilation, output_padding):
    key = ("convT", x._coord_id, kernel_size, stride, padding, dilation, output_padding)
    entry = x._store.maps.get(key)
    if entry is None:
        out_shape = km.conv_transpose_output_shape(
            x.spatial_shape, kernel_size, stride, padding, dilation, output_padding
        )
        if any(s <= 0 for s in out_shape):
            raise ValueError(f"transposed conv output shape would be {out_shape}; reduce padding {padding}")
        out_indices = km.conv_transpose_out_indices(
            x.indices, x.batch_size, out_shape, kernel_size, stride, padding, dilation
        )
        out_id = new_coordinate_id()
        margin = km.conv_transpose_margin(x.spatial_shape, out_shape, kernel_size, stride, padding, dilation)
        out_index = x._store.index(out_id, out_indices, out_shape, x.batch_size, margin)
        kmap = km.conv_transpose_map(
            out_index, x.indices, kernel_size, stride, padding, dilation, int(out_indices.shape[0])
        )
        entry = ConvEntry(
            kmap,
            "convT",
            x.indices,
            x.spatial_shape,
            x._coord_id,
            out_indices,
            out_shape,
            out_id,
            kernel_size,
            stride,
            padding,
            dilation,
        )
        x._store.maps[key] = entry
    return entry


def _run_conv(
    x: SparseConvTensor,
    weight: Tensor,
    bias,
    groups,
    transposed,
    entry: ConvEntry,
    op: str,
    out_indices=None,
    out_shape=None,
    out_id=None,
    kmap=None,
) -> SparseConvTensor:
    c_out = weight.shape[1] * groups if transposed else weight.shape[0]
    if bias is not None and (
        not isinstance(bias, Tensor) or tuple(bias.shape) != (c_out,) or bias.dtype != weight.dtype
    ):
        got = f"{bias.dtype} {tuple(bias.shape)}" if isinstance(bias, Tensor) else type(bias).__name__
        raise ValueError(f"{op}: bias must be a {weight.dtype} tensor of shape ({c_out},), got {got}")
    w = _kernel_major(weight, groups, transposed)
    kmap = kmap or entry.kmap
    if kmap.kernel_volume != w.shape[0]:
        raise ValueError(f"{op}: weight has {w.shape[0]} kernel offsets, the map has {kmap.kernel_volume}")
    out = SparseConvFunction.apply(x.features, w, kmap)
    if bias is not None:
        out = out + bias
    return x.derive(
        out,
        entry.out_indices if out_indices is None else out_indices,
        entry.out_shape if out_shape is None else out_shape,
        entry.out_id if out_id is None else out_id,
    )


# --- public functional API --------------------------------------------------------------------------


def subm_conv(
    x: SparseConvTensor, weight: Tensor, bias: Tensor | None = None, dilation=1, groups: int = 1, indice_key=None
) -> SparseConvTensor:
    """Submanifold conv: output sites = input sites; offset `k` reads `site + (k - kernel // 2) * dilation`.

    Equals dense `conv{D}d(x.dense(), weight, padding=kernel // 2 * dilation, dilation=dilation)` read at
    the input sites. weight `(C_out, C_in // groups, *kernel)`.
    """
    _check_input(x, "subm_conv")
    kernel_size, _, _ = _check_weight(x, weight, groups, False, "subm_conv")
    dilation = _tuple(dilation, x.ndim, "dilation", 1)
    entry = _subm_entry(x, kernel_size, dilation)
    _register_key(x, indice_key, entry)
    return _run_conv(x, weight, bias, groups, False, entry, "subm_conv")


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
    _check_input(x, "sparse_conv")
    kernel_size, _, _ = _check_weight(x, weight, groups, False, "sparse_conv")
    stride = _tuple(stride, x.ndim, "stride", 1)
    padding = _tuple(padding, x.ndim, "padding", 0)
    dilation = _tuple(dilation, x.ndim, "dilation", 1)
    entry = _conv_entry(x, kernel_size, stride, padding, dilation)
    _register_key(x, indice_key, entry)
    return _run_conv(x, weight, bias, groups, False, entry, "sparse_conv")


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
    _check_input(x, "sparse_conv_transpose")
    kernel_size, _, _ = _check_weight(x, weight, groups, True, "sparse_conv_transpose")
    stride = _tuple(stride, x.ndim, "stride", 1)
    padding = _tuple(padding, x.ndim, "padding", 0)
    dilation = _tuple(dilation, x.ndim, "dilation", 1)
    output_padding = _tuple(output_padding, x.ndim, "output_padding", 0)
    if any(op >= max(s, d) for op, s, d in zip(output_padding, stride, dilation)):
        raise ValueError(
            f"sparse_conv_transpose: output_padding {output_padding} must be smaller than stride "
            f"{stride} or dilation {dilation} (as torch.nn.functional.conv_transpose)"
        )
    entry = _conv_transpose_entry(x, kernel_size, stride, padding, dilation, output_padding)
    _register_key(x, indice_key, entry)
    return _run_conv(x, weight, bias, groups, True, entry, "sparse_conv_transpose")


def sparse_inverse_conv(
    x: SparseConvTensor, weight: Tensor, bias: Tensor | None = None, indice_key=None, groups: int = 1
) -> SparseConvTensor:
    """Inverse of the strided `sparse_conv` that registered `indice_key`: back to its input sites.

    Uses that conv's map transposed; equals dense `conv_transpose{D}d` with its stride/padding/dilation,
    read at the original input sites. weight `(C_in, C_out // groups, *kernel)`.
    """
    _check_input(x, "sparse_inverse_conv")
    kernel_size, _, _ = _check_weight(x, weight, groups, True, "sparse_inverse_conv")
    entry = x._store.keyed.get(indice_key)
    if entry is None or entry.kind != "conv":
        known = sorted(k for k, e in x._store.keyed.items() if e.kind == "conv")
        raise KeyError(
            f"sparse_inverse_conv: no strided SparseConv registered indice_key={indice_key!r} for "
            f"this tensor's coordinates (keys of strided convs seen: {known})"
        )
    if entry.out_id != x._coord_id:
        raise ValueError(
            f"sparse_inverse_conv: the input is not on the output sites of the conv with "
            f"indice_key={indice_key!r}; apply it to that conv's output (or a SubM chain of it)"
        )
    if tuple(kernel_size) != tuple(entry.kernel_size):
        raise ValueError(f"sparse_inverse_conv: kernel {kernel_size} differs from the keyed conv's {entry.kernel_size}")
    return _run_conv(
        x,
        weight,
        bias,
        groups,
        True,
        entry,
        "sparse_inverse_conv",
        out_indices=entry.in_indices,
        out_shape=entry.in_shape,
        out_id=entry.in_id,
        kmap=entry.kmap.transposed(),
    )


def _pool(
    x: SparseConvTensor, kernel_size, stride, padding, dilation, mode: str, op: str, indice_key=None
) -> SparseConvTensor:
    _check_input(x, op)
    kernel_size = _tuple(kernel_size, x.ndim, "kernel_size", 1)
    stride = kernel_size if stride is None else _tuple(stride, x.ndim, "stride", 1)
    padding = _tuple(padding, x.ndim, "padding", 0)
    dilation = _tuple(dilation, x.ndim, "dilation", 1)
    if any(2 * p > d * (k - 1) + 1 for p, k, d in zip(padding, kernel_size, dilation)):
        raise ValueError(
            f"{op}: padding {padding} must be at most half the effective kernel "
            f"{tuple(d * (k - 1) + 1 for k, d in zip(kernel_size, dilation))} (as torch pooling)"
        )
    entry = _conv_entry(x, kernel_size, stride, padding, dilation)
    _register_key(x, indice_key, entry)
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
    """Sum of the active inputs of each window / kernel volume: dense `avg_pool{D}d` (inactive = 0,
    `count_include_pad=True`) read at the output sites."""
    if any(d != 1 for d in _tuple(dilation, x.ndim, "dilation", 1)):
        raise ValueError("sparse_avg_pool supports dilation 1 only (as torch avg_pool)")
    return _pool(x, kernel_size, stride, padding, dilation, "avg", "sparse_avg_pool", indice_key)


def global_pool(x: SparseConvTensor, mode: str = "max") -> Tensor:
    """Per batch entry max or mean over active sites -> dense `(B, C)`; entries without sites give 0."""
    _check_input(x, "global_pool")
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
    _check_input(x, "to_dense")
    channels = x.features.shape[1]
    out = x.features.new_zeros((x.batch_size, *x.spatial_shape, channels))
    out.index_put_(tuple(x.indices.to(torch.int64).unbind(1)), x.features)  # in place: no second dense copy
    return out.movedim(-1, 1) if channels_first else out


def from_dense(x: Tensor, mask: Tensor | None = None, channels_first: bool = True) -> SparseConvTensor:
    """Sparse tensor of the sites of dense `x (B, C, *spatial)` where `mask (B, *spatial)` is True (default:
    any channel non-zero). Features keep their gradient path to `x`."""
    if not isinstance(x, Tensor) or not 3 <= x.dim() <= 5 or not x.is_floating_point():
        got = f"{x.dtype} with shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"from_dense expects a float tensor (B, C, *spatial) with 1-3 spatial dims, got {got}")
    last = x.movedim(1, -1) if channels_first else x
    if mask is None:
        mask = (last != 0).any(dim=-1)
    elif not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(last.shape[:-1]):
        got = f"{mask.dtype} with shape {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor of shape {tuple(last.shape[:-1])}, got {got}")
    indices = mask.nonzero().to(torch.int32)
    features = last[mask]
    return SparseConvTensor(features, indices, tuple(last.shape[1:-1]), int(last.shape[0]), check=False)


def conv2d_at_sites(
    x: Tensor, weight: Tensor, sites: Tensor, stride: int = 1, padding: int = 0, dilation: int = 1, mask=None
) -> Tensor:
    """A 2D conv of a dense image evaluated only at given output sites (no input sparse tensor or kernel map).

    Equals `conv2d(x * mask, weight, stride=stride, padding=padding, dilation=dilation)` read at `sites`.
    Meant for a network's first layer: a dense image with few channels, output sites chosen by a mask.

    Args:
        x (Tensor[B, C, H, W], float): the dense input.
        weight (Tensor[O, C, k, k]): `nn.Conv2d` layout (square kernel, groups 1).
        sites (Tensor[N, 3], int32): output sites `(batch, y, x)` on the conv's output grid.
        mask (Tensor[B, H, W], bool, optional): input pixels that count; the others read as zero.
    Returns:
        Tensor[N, O]: one feature row per site. Differentiable in `x` and `weight`; without gradients the
        compiled kernel runs (float32/float64), otherwise an index-select -> GEMM path.
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
    if sites.numel() and (int(sites[:, 0].min()) < 0 or int(sites[:, 0].max()) >= B):
        raise ValueError(f"conv2d_at_sites: site batch indices must lie in [0, {B - 1}]")
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (B, H, W)):
        raise ValueError(f"conv2d_at_sites: mask must be bool ({B}, {H}, {W}), got {mask.dtype} {tuple(mask.shape)}")
    k = int(weight.shape[2])
    (s,), (p,), (d,) = _tuple(stride, 1, "stride", 1), _tuple(padding, 1, "padding"), _tuple(dilation, 1, "dilation", 1)
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    ext = _ext.load() if x.dtype in _EXT_DTYPES and not grad else None
    if ext is not None:
        sites = sites.contiguous()
        no_mask = torch.empty(0, dtype=torch.bool)
        w = weight.permute(2, 3, 1, 0).contiguous()  # (k, k, C, O)
        return ext.conv2d_at_sites(x.contiguous(), w, sites, no_mask if mask is None else mask.contiguous(), s, p, d)
    itype = torch.int32 if B * H * W < 2**31 else torch.int64  # flat pixel index type
    b, oy, ox = sites.to(itype).unbind(1)
    offs = torch.arange(k, dtype=itype) * d - p
    iy = (oy * s).unsqueeze(1) + offs  # (N, k)
    ix = (ox * s).unsqueeze(1) + offs
    vy, vx = (iy >= 0) & (iy < H), (ix >= 0) & (ix < W)
    row = (b * H).unsqueeze(1) + iy.clamp_(0, H - 1)  # (N, k)
    lin = (row * W).unsqueeze(2) + ix.clamp_(0, W - 1).unsqueeze(1)  # (N, ky, kx)
    lin = lin.view(-1, k * k).t().reshape(-1)  # offset-major: (k*k*N,)
    keep = (vy.unsqueeze(2) & vx.unsqueeze(1)).view(-1, k * k).t().reshape(-1)
    if mask is not None:
        keep &= mask.reshape(-1)[lin]
    xf = x.transpose(0, 1).reshape(C, B * H * W)  # a view for B == 1
    g = xf.index_select(1, lin) * keep.to(x.dtype)  # (C, k*k*N)
    a = g.view(C * k * k, sites.shape[0])  # rows ordered (c, ky, kx): Conv2d's weight layout, no copy
    return a.t() @ weight.reshape(weight.shape[0], -1).t()
