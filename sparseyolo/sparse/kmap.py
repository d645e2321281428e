"""Kernel maps ("rulebooks"): for every kernel offset, the (input row, output row) pairs of a sparse conv.

Coordinates are turned into int64 *keys* by linearising `(batch, *coords)` inside a padded box. Because the
box has margins on every side, a spatial displacement is one constant added to the key, so all neighbours
of all sites are found with one broadcast add and one lookup. The lookup is either

* a dense **index grid** (row number per cell, -1 elsewhere) when the padded box is small enough, or
* a **sorted key table** searched with `torch.searchsorted` (hash/sort path) for large, mostly empty boxes
  (big 3D scenes), chosen by :func:`use_grid`.

Every map lists its pairs offset by offset (k-major). Within one offset both the input rows and the output
rows are distinct, so the per-offset scatter-add has no write conflicts: results do not depend on the
number of threads.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

# A dense grid is used while it has at most this many cells, or at most GRID_CELLS_PER_SITE per site.
GRID_MAX_CELLS = 1 << 28
GRID_MIN_CELLS = 1 << 22
GRID_CELLS_PER_SITE = 64
DEFAULT_MARGIN = 2


def use_grid(cells: int, n_sites: int) -> bool:
    """Whether a dense index grid (rather than the sorted-key table) should serve a lookup."""
    return cells <= GRID_MAX_CELLS and (cells <= GRID_MIN_CELLS or cells <= GRID_CELLS_PER_SITE * n_sites)


def _row_major_strides(shape: tuple[int, ...]) -> list[int]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return strides[::-1]


class CoordinateIndex:
    """Row lookup for one coordinate set, inside a box padded by `margin` cells on each spatial side.

    Args:
        indices (Tensor[N, 1+D], int): batch index first.
        spatial_shape: D sizes; batch_size: number of batch entries.
        margin: D non-negative ints; coordinates in `[-margin, size + margin)` can be queried.
        force: "grid" or "hash" to override the automatic choice (tests and benchmarks).

    Raises `ValueError` when two rows share a coordinate.
    """

    def __init__(self, indices: Tensor, spatial_shape, batch_size: int, margin, force: str | None = None):
        self.margin = tuple(int(m) for m in margin)
        self.padded = tuple(int(s) + 2 * m for s, m in zip(spatial_shape, self.margin))
        box = (int(batch_size), *self.padded)
        self.cells = math.prod(box)
        strides = _row_major_strides(box)
        self.batch_stride = strides[0]
        self.spatial_strides = torch.tensor(strides[1:], dtype=torch.int64)
        self.shift = sum(m * s for m, s in zip(self.margin, strides[1:]))
        self.n = int(indices.shape[0])
        keys = self.encode(indices)
        mode = force or ("grid" if use_grid(self.cells, self.n) else "hash")
        if mode not in ("grid", "hash"):
            raise ValueError(f"force must be 'grid', 'hash' or None, got {force!r}")
        self.mode = mode
        rows = torch.arange(self.n, dtype=torch.int32)
        if mode == "grid":
            self.grid = torch.full((self.cells,), -1, dtype=torch.int32)
            self.grid[keys] = rows
            winners = self.grid[keys]
            duplicated = bool((winners != rows).any()) if self.n else False
        else:
            self.sorted_keys, order = torch.sort(keys)
            self.sorted_rows = order
            duplicated = bool((self.sorted_keys[1:] == self.sorted_keys[:-1]).any()) if self.n > 1 else False
        if duplicated:
            raise ValueError(
                "indices contain duplicate coordinates; merge them first (SparseConvTensor(..., "
                "duplicates='sum'|'mean'|'max')) or remove them"
            )

    def encode(self, indices: Tensor, displacement: Tensor | None = None) -> Tensor:
        """Keys `(N,)` int64 of `(batch, *coords)` rows (coords may lie in the margins)."""
        idx = indices.to(torch.int64)
        coords = idx[:, 1:]
        if displacement is not None:
            coords = coords + displacement
        return idx[:, 0] * self.batch_stride + coords @ self.spatial_strides + self.shift

    def offset_key(self, delta) -> int:
        """Key difference produced by a spatial displacement `delta` (D ints)."""
        return int(sum(int(d) * int(s) for d, s in zip(delta, self.spatial_strides.tolist())))

    def find(self, keys: Tensor) -> Tensor:
        """Row of each key (any shape), -1 where no site sits. Keys must lie inside the padded box."""
        if self.mode == "grid":
            return self.grid[keys.reshape(-1)].reshape(keys.shape).to(torch.int64)
        flat = keys.reshape(-1)
        if self.n == 0:
            return torch.full(keys.shape, -1, dtype=torch.int64)
        pos = torch.searchsorted(self.sorted_keys, flat).clamp_(max=self.n - 1)
        hit = self.sorted_keys[pos] == flat
        rows = torch.where(hit, self.sorted_rows[pos], torch.full_like(pos, -1))
        return rows.reshape(keys.shape)


@dataclass
class KernelMap:
    """Pairs of one sparse convolution, grouped by kernel offset.

    in_rows, out_rows (Tensor[P], int64): pair rows, offset-major; `bounds[k]:bounds[k+1]` is offset k.
    identity (int | None): a submanifold centre offset whose pairs are all rows (i -> i); kept out of
        the pair lists and computed as one dense product.
    kernel_volume: number of offsets K; n_in, n_out: rows of the input and output features.
    """

    in_rows: Tensor
    out_rows: Tensor
    bounds: list[int]
    kernel_volume: int
    n_in: int
    n_out: int
    identity: int | None = None
    _transposed: KernelMap | None = field(default=None, repr=False)

    def pairs(self, k: int) -> tuple[Tensor, Tensor]:
        s, e = self.bounds[k], self.bounds[k + 1]
        return self.in_rows[s:e], self.out_rows[s:e]

    @property
    def num_pairs(self) -> int:
        """All (input, output) products, the identity offset included."""
        return int(self.in_rows.numel()) + (self.n_in if self.identity is not None else 0)

    def transposed(self) -> KernelMap:
        """The same pairs with inputs and outputs swapped (inverse conv, backward)."""
        if self._transposed is None:
            self._transposed = KernelMap(
                self.out_rows, self.in_rows, self.bounds, self.kernel_volume, self.n_out, self.n_in, self.identity
            )
        return self._transposed


def kernel_offsets(kernel_size) -> list[tuple[int, ...]]:
    """All offsets of a kernel in the row-major order of `weight[..., *offset]` (PyTorch layout)."""
    return list(itertools.product(*[range(int(k)) for k in kernel_size]))


def _pairs_from_lookup(found: Tensor, src_rows: Tensor | None, kernel_volume: int, skip: int | None,
                       n_in: int, n_out: int, found_is_input: bool) -> KernelMap:
    """Turn a `(K, M)` table of looked-up rows (-1 = none) into an offset-major `KernelMap`.

    found_is_input: the table holds input rows per output row (output-stationary lookup); otherwise it
    holds output rows per input row (input-stationary lookup).
    """
    if skip is not None:
        found = found.clone()
        found[skip] = -1
    valid = found >= 0
    counts = valid.sum(dim=1).tolist()
    k_idx, col = valid.nonzero(as_tuple=True)
    del k_idx
    looked_up = found[valid]
    other = col if src_rows is None else src_rows[col]
    bounds = [0, *itertools.accumulate(counts)]
    if found_is_input:
        return KernelMap(looked_up, other, bounds, kernel_volume, n_in, n_out, skip)
    return KernelMap(other, looked_up, bounds, kernel_volume, n_in, n_out, skip)


def subm_map(index: CoordinateIndex, indices: Tensor, kernel_size, dilation) -> KernelMap:
    """Submanifold map: output sites = input sites; offset k reads input `site + (k - k//2) * dilation`.

    `index` must have margins covering the kernel reach (see :func:`subm_margin`).
    """
    offsets = kernel_offsets(kernel_size)
    half = [k // 2 for k in kernel_size]
    deltas = [[(o - h) * d for o, h, d in zip(off, half, dilation)] for off in offsets]
    centre = offsets.index(tuple(half)) if all(k % 2 == 1 for k in kernel_size) else None
    base = index.encode(indices)
    step = torch.tensor([index.offset_key(d) for d in deltas], dtype=torch.int64)
    found = index.find(base.unsqueeze(0) + step.unsqueeze(1))
    n = int(indices.shape[0])
    return _pairs_from_lookup(found, None, len(offsets), centre, n, n, found_is_input=True)


def subm_margin(kernel_size, dilation) -> tuple[int, ...]:
    return tuple(max(k // 2, k - 1 - k // 2) * d for k, d in zip(kernel_size, dilation))


def conv_output_shape(spatial_shape, kernel_size, stride, padding, dilation) -> tuple[int, ...]:
    return tuple(
        (s + 2 * p - d * (k - 1) - 1) // st + 1
        for s, k, st, p, d in zip(spatial_shape, kernel_size, stride, padding, dilation)
    )


def conv_transpose_output_shape(spatial_shape, kernel_size, stride, padding, dilation, output_padding):
    return tuple(
        (s - 1) * st - 2 * p + d * (k - 1) + op + 1
        for s, k, st, p, d, op in zip(spatial_shape, kernel_size, stride, padding, dilation, output_padding)
    )


def _separable_candidates(coords: Tensor, kernel_size, fn):
    """Per axis and per kernel tap: candidate coordinate and validity, each `(N,)`. `fn(axis, x, tap)`."""
    return [[fn(a, coords[:, a], t) for t in range(int(kernel_size[a]))] for a in range(coords.shape[1])]


def _unique_output_sites(indices: Tensor, per_axis, out_shape, batch_size: int) -> Tensor:
    """Unique `(batch, *coords)` rows (int32, sorted by key) reached by any offset's valid candidate."""
    batch = indices[:, 0].to(torch.int64)
    box = (int(batch_size), *out_shape)
    strides = _row_major_strides(box)
    cells = math.prod(box)
    keys = []
    for taps in itertools.product(*[range(len(p)) for p in per_axis]):
        key = batch * strides[0]
        ok = None
        for a, t in enumerate(taps):
            value, valid = per_axis[a][t]
            key = key + value * strides[a + 1]
            ok = valid if ok is None else ok & valid
        keys.append(key[ok])
    keys = torch.cat(keys) if keys else torch.empty(0, dtype=torch.int64)
    if use_grid(cells, max(int(keys.numel()), 1)):
        occupied = torch.zeros(cells, dtype=torch.bool)
        occupied[keys] = True
        keys = occupied.nonzero().squeeze(1)
    else:
        keys = torch.unique(keys)
    cols = []
    rest = keys
    for s in strides:
        cols.append(torch.div(rest, s, rounding_mode="floor"))
        rest = rest - cols[-1] * s
    return torch.stack(cols, dim=1).to(torch.int32) if cols else keys.view(0, 1)


def conv_out_indices(indices: Tensor, spatial_shape, batch_size, kernel_size, stride, padding, dilation):
    """Output sites of a regular (strided) conv: every output whose window holds an input site.

    Returns `(out_indices[M, 1+D] int32, out_shape)`.
    """
    out_shape = conv_output_shape(spatial_shape, kernel_size, stride, padding, dilation)
    coords = indices[:, 1:].to(torch.int64)

    def candidate(a, x, t):
        shifted = x + padding[a] - t * dilation[a]
        value = torch.div(shifted, stride[a], rounding_mode="floor")
        valid = (shifted >= 0) & (shifted - value * stride[a] == 0) & (value < out_shape[a])
        return value, valid

    per_axis = _separable_candidates(coords, kernel_size, candidate)
    return _unique_output_sites(indices, per_axis, out_shape, batch_size), out_shape


def conv_map(index: CoordinateIndex, out_indices: Tensor, kernel_size, stride, padding, dilation,
             n_in: int) -> KernelMap:
    """Regular conv map, output-stationary: output `o`, offset `k` reads input `o * stride - padding + k * dilation`.

    `index` (of the input sites) must cover that reach (see :func:`conv_margin`).
    """
    offsets = kernel_offsets(kernel_size)
    corner = out_indices[:, 1:].to(torch.int64) * torch.tensor(stride) - torch.tensor(padding)
    base = index.encode(torch.cat([out_indices[:, :1].to(torch.int64), corner], dim=1))
    step = torch.tensor(
        [index.offset_key([o * d for o, d in zip(off, dilation)]) for off in offsets], dtype=torch.int64
    )
    found = index.find(base.unsqueeze(0) + step.unsqueeze(1))
    return _pairs_from_lookup(found, None, len(offsets), None, n_in, int(out_indices.shape[0]), True)


def conv_margin(spatial_shape, out_shape, kernel_size, stride, padding, dilation) -> tuple[int, ...]:
    return tuple(
        max(p, (o - 1) * st - p + (k - 1) * d - (s - 1), 0)
        for s, o, k, st, p, d in zip(spatial_shape, out_shape, kernel_size, stride, padding, dilation)
    )


def conv_transpose_out_indices(indices: Tensor, batch_size, out_shape, kernel_size, stride, padding, dilation):
    """Output sites of a transposed conv: input `i`, offset `k` writes output `i * stride - padding + k * dilation`."""
    coords = indices[:, 1:].to(torch.int64)

    def candidate(a, x, t):
        value = x * stride[a] - padding[a] + t * dilation[a]
        return value, (value >= 0) & (value < out_shape[a])

    per_axis = _separable_candidates(coords, kernel_size, candidate)
    return _unique_output_sites(indices, per_axis, out_shape, batch_size)


def conv_transpose_map(out_index: CoordinateIndex, in_indices: Tensor, kernel_size, stride, padding,
                       dilation, n_out: int) -> KernelMap:
    """Transposed conv map, input-stationary lookup of output rows (see `conv_transpose_out_indices`)."""
    offsets = kernel_offsets(kernel_size)
    corner = in_indices[:, 1:].to(torch.int64) * torch.tensor(stride) - torch.tensor(padding)
    base = out_index.encode(torch.cat([in_indices[:, :1].to(torch.int64), corner], dim=1))
    step = torch.tensor(
        [out_index.offset_key([o * d for o, d in zip(off, dilation)]) for off in offsets], dtype=torch.int64
    )
    found = out_index.find(base.unsqueeze(0) + step.unsqueeze(1))
    return _pairs_from_lookup(found, None, len(offsets), None, int(in_indices.shape[0]), n_out, False)


def conv_transpose_margin(spatial_shape, out_shape, kernel_size, stride, padding, dilation):
    return tuple(
        max(p, (s - 1) * st - p + (k - 1) * d - (o - 1), 0)
        for s, o, k, st, p, d in zip(spatial_shape, out_shape, kernel_size, stride, padding, dilation)
    )
