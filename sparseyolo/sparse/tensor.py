"""`SparseConvTensor`: active sites of a batch of D-dimensional feature maps (spconv-compatible)."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
from torch import Tensor

from sparseyolo.sparse.cache import MapStore, new_coordinate_id
from sparseyolo.sparse.kmap import DEFAULT_MARGIN, CoordinateIndex

__all__ = ["SparseConvTensor", "MapStore", "new_coordinate_id"]


class SparseConvTensor:
    """A batch of sparse D-dimensional feature maps: one feature row per active site.

    Args:
        features (Tensor[N, C], float): one row per active site.
        indices (Tensor[N, 1+D], int32): batch index first, then D coordinates; each row unique. On the
            features' device (any device: CPU runs the compiled kernels, others the PyTorch path).
        spatial_shape (Sequence[int]): D sizes of the (virtual) dense map.
        batch_size (int): number of maps in the batch.
        duplicates: what to do with repeated coordinates: "error" (default), or merge their features
            with "sum", "mean" or "max" (rows come out sorted by coordinate).
        check: validate dtypes, shapes, ranges and uniqueness (internal callers pass False).

    Sparse tensors are immutable: `replace_feature` returns a new tensor sharing coordinates and cache.
    """

    def __init__(
        self,
        features: Tensor,
        indices: Tensor,
        spatial_shape: Sequence[int],
        batch_size: int,
        *,
        duplicates: str = "error",
        check: bool = True,
        _store: MapStore | None = None,
        _coord_id: int | None = None,
    ):
        if check:
            features, indices, spatial_shape, batch_size = _validate(
                features, indices, spatial_shape, batch_size, duplicates
            )
        self.features = features
        self.indices = indices
        self.spatial_shape = tuple(int(s) for s in spatial_shape)
        self.batch_size = int(batch_size)
        self._store = _store if _store is not None else MapStore()
        self._coord_id = _coord_id if _coord_id is not None else new_coordinate_id()
        if check and duplicates == "error" and indices.shape[0] > 1:
            # Building the lookup once detects duplicates and is reused by the first conv.
            self.coordinate_index([DEFAULT_MARGIN] * self.ndim)

    # --- basic properties -------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        """Number of spatial dimensions D."""
        return len(self.spatial_shape)

    @property
    def num_active(self) -> int:
        return int(self.indices.shape[0])

    @property
    def density(self) -> float:
        """Active sites / all sites of the batch."""
        return self.num_active / max(1, self.batch_size * math.prod(self.spatial_shape))

    def __repr__(self) -> str:
        return (
            f"SparseConvTensor(active={self.num_active}, channels={self.features.shape[1]}, "
            f"spatial_shape={self.spatial_shape}, batch_size={self.batch_size}, "
            f"dtype={self.features.dtype})"
        )

    # --- derivation -------------------------------------------------------------------------------
    def replace_feature(self, features: Tensor) -> SparseConvTensor:
        """Same sites, new features `(N, C')`; shares coordinates and the kernel-map cache."""
        if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[0] != self.num_active:
            got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"replace_feature needs features of shape ({self.num_active}, C), got {got}")
        _check_same_device(features, self.indices)
        return SparseConvTensor(
            features,
            self.indices,
            self.spatial_shape,
            self.batch_size,
            check=False,
            _store=self._store,
            _coord_id=self._coord_id,
        )

    def derive(self, features: Tensor, indices: Tensor, spatial_shape, coord_id: int) -> SparseConvTensor:
        """A tensor on other coordinates that shares this tensor's cache (conv outputs)."""
        return SparseConvTensor(
            features, indices, spatial_shape, self.batch_size, check=False, _store=self._store, _coord_id=coord_id
        )

    def coordinate_index(self, margin) -> CoordinateIndex:
        return self._store.index(self._coord_id, self.indices, self.spatial_shape, self.batch_size, margin)

    @property
    def indice_dict(self) -> dict:
        """Kernel maps registered under an `indice_key` (spconv name)."""
        return self._store.keyed

    # --- dense conversion -------------------------------------------------------------------------
    def dense(self, channels_first: bool = True) -> Tensor:
        """Dense `(B, C, *spatial)` (or `(B, *spatial, C)`), zeros at inactive sites; differentiable."""
        out = self.features.new_zeros((self.batch_size, *self.spatial_shape, self.features.shape[1]))
        out.index_put_(tuple(self.indices.to(torch.int64).unbind(1)), self.features)  # in place: no second copy
        return out.movedim(-1, 1) if channels_first else out

    @classmethod
    def from_dense(cls, x: Tensor, mask: Tensor | None = None, channels_first: bool = True) -> SparseConvTensor:
        """Active sites of a dense `(B, C, *spatial)` map.

        The sites are where `mask (B, *spatial)` is True, or where any channel is non-zero when no mask is given.
        Differentiable with respect to `x`.
        """
        if not isinstance(x, Tensor) or not 3 <= x.dim() <= 5 or not x.is_floating_point():
            got = f"{x.dtype} with shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"from_dense expects a float tensor (B, C, *spatial) with 1-3 spatial dims, got {got}")
        last = x.movedim(1, -1) if channels_first else x
        if mask is None:
            mask = (last != 0).any(dim=-1)
        elif not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(last.shape[:-1]):
            got = f"{mask.dtype} with shape {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"mask must be a bool tensor of shape {tuple(last.shape[:-1])}, got {got}")
        elif mask.device != x.device:
            raise ValueError(
                f"from_dense: mask is on {mask.device} but x is on {x.device}; move it with mask.to(x.device)"
            )
        indices = mask.nonzero().to(torch.int32)
        return SparseConvTensor(last[mask], indices, tuple(last.shape[1:-1]), int(last.shape[0]), check=False)


def _validate(features, indices, spatial_shape, batch_size, duplicates):
    if not isinstance(features, Tensor) or not isinstance(indices, Tensor):
        raise TypeError(
            f"features and indices must be tensors, got {type(features).__name__} and {type(indices).__name__}"
        )
    try:
        spatial_shape = tuple(int(s) for s in spatial_shape)
    except (TypeError, ValueError):
        raise ValueError(f"spatial_shape must be a sequence of ints, got {spatial_shape!r}") from None
    ndim = len(spatial_shape)
    if not 1 <= ndim <= 3 or any(s <= 0 for s in spatial_shape):
        raise ValueError(f"spatial_shape must hold 1 to 3 positive sizes, got {spatial_shape}")
    try:
        if isinstance(batch_size, bool):
            raise TypeError
        batch_size = operator.index(batch_size)
    except TypeError:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}") from None
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if features.dim() != 2 or not features.is_floating_point():
        raise ValueError(
            f"features must be a float tensor (N, C), got {features.dtype} with shape {tuple(features.shape)}"
        )
    if indices.dtype != torch.int32 or indices.dim() != 2 or indices.shape[1] != 1 + ndim:
        raise ValueError(
            f"indices must be int32 (N, {1 + ndim}) with the batch index first for a "
            f"{ndim}D spatial_shape, got {indices.dtype} with shape {tuple(indices.shape)}"
        )
    if features.shape[0] != indices.shape[0]:
        raise ValueError(f"features has {features.shape[0]} rows but indices has {indices.shape[0]}")
    _check_same_device(features, indices)
    if indices.shape[0]:
        low, high = torch.stack([indices.min(dim=0).values, indices.max(dim=0).values]).tolist()  # one sync
        bounds = (batch_size, *spatial_shape)
        for axis, (lo, hi, size) in enumerate(zip(low, high, bounds)):
            if lo < 0 or hi >= size:
                name = "batch index" if axis == 0 else f"coordinate {axis - 1}"
                raise ValueError(
                    f"indices out of range: {name} spans [{lo}, {hi}] but must lie in "
                    f"[0, {size - 1}] (batch_size/spatial_shape = {bounds})"
                )
    indices = indices.contiguous()
    if duplicates != "error":
        features, indices = _merge_duplicates(features, indices, spatial_shape, batch_size, duplicates)
    return features, indices, spatial_shape, batch_size


def _check_same_device(features: Tensor, indices: Tensor) -> None:
    if features.device != indices.device:
        raise ValueError(
            f"features are on {features.device} but indices are on {indices.device}; both must be on one "
            f"device: move one with .to(...) (e.g. indices.to(features.device))"
        )


def _merge_duplicates(features, indices, spatial_shape, batch_size, how):
    if how not in ("sum", "mean", "max"):
        raise ValueError(f"duplicates must be 'error', 'sum', 'mean' or 'max', got {how!r}")
    box = (batch_size, *spatial_shape)
    idx = indices.to(torch.int64)
    keys = idx[:, 0] * math.prod(box[1:])
    for axis in range(1, len(box)):  # row-major keys of `box`, column by column: CUDA has no int64 matmul
        keys.add_(idx[:, axis], alpha=math.prod(box[axis + 1 :]))
    unique_keys, inverse = torch.unique(keys, return_inverse=True)
    rows = torch.arange(indices.shape[0], device=indices.device)
    first = torch.full((unique_keys.numel(),), indices.shape[0], dtype=torch.int64, device=indices.device)
    first.scatter_reduce_(0, inverse, rows, "amin")
    reduce = {"sum": "sum", "mean": "mean", "max": "amax"}[how]
    merged = features.new_zeros(unique_keys.numel(), features.shape[1])
    index = inverse.unsqueeze(1).expand_as(features)
    merged = merged.scatter_reduce(0, index, features, reduce, include_self=False)
    return merged, indices[first].contiguous()
