"""Argument checks shared by the functional ops and the modules (internal; every error names the bad value).

`as_tuple` turns an int or D ints into D ints; `check_input`, `check_ndim` and `check_weight` validate what an
op receives. Wrong types raise `TypeError`; wrong values, shapes, dimensionality, dtypes or devices raise
`ValueError`.
"""

from __future__ import annotations

import operator

from torch import Tensor

from sparseyolo.sparse.tensor import SparseConvTensor


def as_tuple(value, ndim: int, name: str, minimum: int = 0) -> tuple[int, ...]:
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


def check_input(x, op: str) -> None:
    """`TypeError` unless `x` is a `SparseConvTensor`."""
    if not isinstance(x, SparseConvTensor):
        raise TypeError(
            f"{op} expects a SparseConvTensor, got {type(x).__name__}; build one with "
            f"SparseConvTensor(features, indices, spatial_shape, batch_size) or .from_dense(x)"
        )


def check_ndim(x, ndim: int, op: str) -> None:
    """`TypeError` unless `x` is a `SparseConvTensor`; `ValueError` unless it has `ndim` spatial dims."""
    check_input(x, op)
    if x.ndim != ndim:
        raise ValueError(f"{op} is {ndim}D but the tensor is {x.ndim}D")


def check_weight(x: SparseConvTensor, weight: Tensor, groups: int, transposed: bool, op: str):
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
    if weight.device != x.features.device:
        raise ValueError(
            f"{op}: weight is on {weight.device} but features are on {x.features.device}; "
            f"move the module (or weight) with .to(features.device)"
        )
    return tuple(weight.shape[2:]), c_in, c_out
