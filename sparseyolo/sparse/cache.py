"""The kernel-map cache (internal): coordinate indexes and conv maps, shared by every tensor derived from one input.

A `SparseConvTensor` carries a `MapStore` and the identity of its coordinate set (`new_coordinate_id`; maps are
cached per identity, never per value). This module is the one place that reads them; the ops ask it for a
`ConvEntry` (a map with the coordinates on both sides):

* :func:`subm_entry`, :func:`conv_entry`, :func:`conv_transpose_entry`: found under a structural key
  `(kind, coordinate id, kernel, stride, padding, dilation[, output_padding])`, built on first use;
* :func:`register_key` / :func:`keyed_conv_entry`: spconv's `indice_key` (an inverse conv finds the strided
  conv it undoes).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from sparseyolo.sparse import kmap as km

if TYPE_CHECKING:
    from sparseyolo.sparse.tensor import SparseConvTensor

_coordinate_ids = itertools.count()


def new_coordinate_id() -> int:
    """A fresh identity for a coordinate set (maps are cached per identity, never per value)."""
    return next(_coordinate_ids)


class MapStore:
    """Cache shared by every tensor derived from the same input: coordinate indexes and kernel maps.

    indexes: `(coordinate id, margin) -> CoordinateIndex`
    maps: structural key `(kind, coordinate id, kernel, stride, padding, dilation, ...) -> entry`
    keyed: spconv `indice_key -> entry` of the conv that used it (inverse conv reads it back)
    """

    def __init__(self):
        self.indexes: dict = {}
        self.maps: dict = {}
        self.keyed: dict = {}

    def index(self, coord_id: int, indices: Tensor, spatial_shape, batch_size, margin) -> km.CoordinateIndex:
        margin = tuple(max(int(m), km.DEFAULT_MARGIN) for m in margin)
        key = (coord_id, margin)
        found = self.indexes.get(key)
        if found is None:
            found = self.indexes[key] = km.CoordinateIndex(indices, spatial_shape, batch_size, margin)
        return found


class IndiceKeyError(KeyError, ValueError):
    """An `indice_key` that names no usable map. A `ValueError` (as documented) and, for code written against
    earlier versions, a `KeyError`."""

    def __str__(self) -> str:  # the message as written, not KeyError's repr of it
        return str(self.args[0]) if self.args else ""


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

    def inverse(self) -> ConvEntry:
        """The same map transposed, from this entry's output sites back to its input sites (inverse conv)."""
        return ConvEntry(
            self.kmap.transposed(),
            "inverse",
            self.out_indices,
            self.out_shape,
            self.out_id,
            self.in_indices,
            self.in_shape,
            self.in_id,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
        )


def register_key(x: SparseConvTensor, indice_key, entry: ConvEntry) -> None:
    """Remember `entry` under spconv's `indice_key` (no-op for None)."""
    if indice_key is not None:
        x._store.keyed[indice_key] = entry


def keyed_conv_entry(x: SparseConvTensor, indice_key, op: str) -> ConvEntry:
    """The strided conv registered under `indice_key` whose output sites `x` is on (what an inverse conv undoes).

    Raises `IndiceKeyError` (a `ValueError`) when no strided conv used the key, `ValueError` when `x` is not
    on that conv's output sites.
    """
    entry = x._store.keyed.get(indice_key)
    if entry is None or entry.kind != "conv":
        known = sorted(k for k, e in x._store.keyed.items() if e.kind == "conv")
        raise IndiceKeyError(
            f"{op}: no strided SparseConv registered indice_key={indice_key!r} for "
            f"this tensor's coordinates (keys of strided convs seen: {known})"
        )
    if entry.out_id != x._coord_id:
        raise ValueError(
            f"{op}: the input is not on the output sites of the conv with "
            f"indice_key={indice_key!r}; apply it to that conv's output (or a SubM chain of it)"
        )
    return entry


def subm_entry(x: SparseConvTensor, kernel_size, dilation) -> ConvEntry:
    key = ("subm", x._coord_id, kernel_size, dilation)
    entry = x._store.maps.get(key)
    if entry is None:
        index = x.coordinate_index(km.subm_margin(kernel_size, dilation))
        kmap = km.subm_map(index, x.indices, kernel_size, dilation)
        padding = tuple(k // 2 * d for k, d in zip(kernel_size, dilation))
        entry = ConvEntry(kmap, "subm", *_side(x), *_side(x), kernel_size, (1,) * x.ndim, padding, tuple(dilation))
        x._store.maps[key] = entry
    return entry


def conv_entry(x: SparseConvTensor, kernel_size, stride, padding, dilation) -> ConvEntry:
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
        out = (out_indices, out_shape, new_coordinate_id())
        entry = ConvEntry(kmap, "conv", *_side(x), *out, kernel_size, stride, padding, dilation)
        x._store.maps[key] = entry
    return entry


def conv_transpose_entry(x: SparseConvTensor, kernel_size, stride, padding, dilation, output_padding) -> ConvEntry:
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
        out = (out_indices, out_shape, out_id)
        entry = ConvEntry(kmap, "convT", *_side(x), *out, kernel_size, stride, padding, dilation)
        x._store.maps[key] = entry
    return entry


def _side(x: SparseConvTensor) -> tuple:
    """`(indices, spatial_shape, coordinate id)` of `x`: one side of a `ConvEntry`."""
    return x.indices, x.spatial_shape, x._coord_id
