"""Kernel maps ("rulebooks"): for every kernel offset, the (input row, output row) pairs of a sparse conv.

Coordinates are turned into int64 *keys* by linearising `(batch, *coords)` inside a padded box. Because the
box has margins on every side, a spatial displacement is one constant added to the key, so all neighbours
of all sites are found with one broadcast add and one lookup. The lookup is either

* a dense **index grid** (row number per cell, -1 elsewhere) when the padded box is small enough, or
* for large, mostly empty boxes (big 3D scenes) the "hash" mode: an open-addressing **hash table** (compiled
  kernels) or a **sorted key table** searched with `torch.searchsorted` (pure-PyTorch path),

chosen by :func:`use_grid`.

Every map lists its pairs offset by offset (k-major). Within one offset both the input rows and the output
rows are distinct, so the per-offset scatter-add has no write conflicts: results do not depend on the
number of threads.

Tables, keys and lookups live on the device of the coordinates; the compiled kernels serve CPU coordinates
only (`_ext.for_device`), any other device takes the PyTorch path.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from sparseyolo.sparse import _ext

# A dense grid is used while it has at most this many cells, or at most GRID_CELLS_PER_SITE per site.
GRID_MAX_CELLS = 1 << 28
GRID_MIN_CELLS = 1 << 22
GRID_CELLS_PER_SITE = 64
DEFAULT_MARGIN = 2
MAX_KEY_CELLS = 1 << 62  # keys are int64 (products below stay exact)
MAX_MARKED_TAPS = 64  # widest kernel axis the compiled output-site marker takes (`kMaxTaps` in csrc)


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
        if self.cells >= MAX_KEY_CELLS:
            raise ValueError(
                f"the coordinate box {box} (batch, padded spatial shape) has {self.cells} cells, more "
                f"than 64-bit keys can address (< 2**62); use a smaller spatial_shape"
            )
        strides = _row_major_strides(box)
        self.key_strides = strides  # [batch, *spatial] strides of the key linearisation
        self.shift = sum(m * s for m, s in zip(self.margin, strides[1:]))
        self.n = int(indices.shape[0])
        self.source = indices  # the rows indexed (not copied); `keys` are theirs
        self.keys = keys = self.encode(indices)
        mode = force or ("grid" if use_grid(self.cells, self.n) else "hash")
        if mode not in ("grid", "hash"):
            raise ValueError(f"force must be 'grid', 'hash' or None, got {force!r}")
        self.mode = mode
        self.hash_table = None  # compiled hash mode: (module, slots, slot rows)
        ext = _ext.for_device(indices.device)
        if mode == "grid" and ext is not None:
            self.grid, duplicated = ext.grid_build(keys, self.cells)
        elif mode == "grid":
            self.grid = torch.full((self.cells,), -1, dtype=torch.int32, device=keys.device)
            rows = torch.arange(self.n, dtype=torch.int32, device=keys.device)
            self.grid[keys] = rows
            winners = self.grid[keys]
            duplicated = bool((winners != rows).any()) if self.n else False
        elif ext is not None:  # the table keeps its module: lookups work even if the extension is disabled later
            slots, slot_rows, duplicated = ext.hash_build(keys)
            self.hash_table = (ext, slots, slot_rows)
        else:
            self.sorted_keys, order = torch.sort(keys)
            self.sorted_rows = order.to(torch.int32)
            duplicated = bool((self.sorted_keys[1:] == self.sorted_keys[:-1]).any()) if self.n > 1 else False
        if duplicated:
            raise ValueError(
                "indices contain duplicate coordinates; merge them first (SparseConvTensor(..., "
                "duplicates='sum'|'mean'|'max')) or remove them"
            )

    def encode(self, indices: Tensor) -> Tensor:
        """Keys `(N,)` int64 of `(batch, *coords)` rows `(N, 1+D)` (coords may lie in the margins)."""
        ext = _ext.for_device(indices.device)
        if ext is not None and indices.dtype == torch.int32 and indices.dim() == 2:
            return ext.encode_keys(indices, self.key_strides, self.shift)
        idx = indices.to(torch.int64)
        keys = idx[:, 0] * self.key_strides[0]
        for axis, stride in enumerate(self.key_strides[1:], start=1):  # column by column: CUDA has no int64 matmul
            keys.add_(idx[:, axis], alpha=stride)
        return keys.add_(self.shift)

    def offset_key(self, delta) -> int:
        """Key difference produced by a spatial displacement `delta` (D ints)."""
        return sum(int(d) * s for d, s in zip(delta, self.key_strides[1:]))

    def find(self, keys: Tensor) -> Tensor:
        """Row (int32) of each key (any shape), -1 where no site sits. Keys must lie inside the padded box."""
        if self.mode == "grid":
            return self.grid[keys.reshape(-1)].reshape(keys.shape)
        flat = keys.reshape(-1)
        if self.hash_table is not None:
            ext, slots, slot_rows = self.hash_table
            zero = torch.zeros(1, dtype=torch.int64, device=flat.device)
            return ext.hash_lookup(slots, slot_rows, flat, zero).reshape(keys.shape)
        if self.n == 0:
            return torch.full(keys.shape, -1, dtype=torch.int32, device=keys.device)
        pos = torch.searchsorted(self.sorted_keys, flat).clamp_(max=self.n - 1)
        hit = self.sorted_keys[pos] == flat
        rows = torch.where(hit, self.sorted_rows[pos], torch.full_like(pos, -1))
        return rows.reshape(keys.shape).to(torch.int32)

    def lookup(self, base: Tensor, step: Tensor) -> Tensor:
        """Table `(K, N)` int32 of the rows at keys `base[n] + step[k]` (-1 where empty)."""
        ext = _ext.for_device(base.device)
        if self.mode == "grid" and ext is not None and base.numel():
            return ext.grid_lookup(self.grid, base, step)
        if self.hash_table is not None:
            ext, slots, slot_rows = self.hash_table
            return ext.hash_lookup(slots, slot_rows, base, step)
        return self.find(base.unsqueeze(0) + step.unsqueeze(1))


class KernelMap:
    """Pairs of one sparse convolution as a gather table.

    table (Tensor[K, n_out], int32): the input row feeding output row `o` through kernel offset `k`
        (offsets in the row-major order of `weight[..., *offset]`), -1 where none.
    n_in: rows of the input features.
    identity (int | None): an offset whose column is `arange(n)` (submanifold centre); the PyTorch path
        computes it as one dense product.

    Derived lazily and cached: offset-major pair lists (`pairs`), the transposed map.
    """

    def __init__(self, table: Tensor, n_in: int, identity: int | None = None):
        self.table = table
        self.n_in = int(n_in)
        self.identity = identity
        self._pair_lists = None
        self._transposed = None
        self._num_pairs = None

    @property
    def kernel_volume(self) -> int:
        return int(self.table.shape[0])

    @property
    def n_out(self) -> int:
        return int(self.table.shape[1])

    def _pairs_all(self):
        if self._pair_lists is None:
            ext = _ext.for_device(self.table.device)
            if ext is not None:
                skip = -1 if self.identity is None else self.identity
                in_rows, out_rows, counts = ext.table_pairs(self.table.contiguous(), skip)
                counts = counts.tolist()
            else:
                table = self.table
                if self.identity is not None:
                    table = table.clone()
                    table[self.identity] = -1
                valid = table >= 0
                counts = valid.sum(dim=1).tolist()  # the offsets' pair counts: host ints, to slice by
                _, out_rows = valid.nonzero(as_tuple=True)
                in_rows = table[valid].to(torch.int64)
            self._pair_lists = (in_rows, out_rows, [0, *itertools.accumulate(counts)])
        return self._pair_lists

    @property
    def in_rows(self) -> Tensor:
        """All pairs' input rows `(P,)` int64, offset-major (identity offset excluded)."""
        return self._pairs_all()[0]

    @property
    def out_rows(self) -> Tensor:
        return self._pairs_all()[1]

    @property
    def bounds(self) -> list[int]:
        """Offset `k`'s pairs are `in_rows[bounds[k]:bounds[k + 1]]`."""
        return self._pairs_all()[2]

    def pairs(self, k: int) -> tuple[Tensor, Tensor]:
        """(input rows, output rows) of offset `k` (empty for the identity offset)."""
        in_rows, out_rows, bounds = self._pairs_all()
        return in_rows[bounds[k] : bounds[k + 1]], out_rows[bounds[k] : bounds[k + 1]]

    @property
    def num_pairs(self) -> int:
        """All (input, output) products, the identity offset included (useful MACs = pairs * C_in * C_out / G)."""
        if self._num_pairs is None:
            self._num_pairs = int((self.table >= 0).sum())
        return self._num_pairs

    def transposed(self) -> KernelMap:
        """The same pairs with inputs and outputs swapped (inverse conv, input gradients)."""
        if self._transposed is None:
            self._transposed = KernelMap(invert_table(self.table, self.n_in), self.n_out, self.identity)
            self._transposed._transposed = self
        return self._transposed


def invert_table(table: Tensor, n_rows: int) -> Tensor:
    """`(K, N)` table of rows in `[0, n_rows)` -> `(K, n_rows)` table with `inv[k, table[k, o]] = o`."""
    ext = _ext.for_device(table.device)
    if ext is not None and table.dtype == torch.int32:
        return ext.invert_table(table.contiguous(), n_rows)
    inv = torch.full((table.shape[0], n_rows), -1, dtype=torch.int32, device=table.device)
    k, o = (table >= 0).nonzero(as_tuple=True)
    inv[k, table[k, o].to(torch.int64)] = o.to(torch.int32)
    return inv


def kernel_offsets(kernel_size) -> list[tuple[int, ...]]:
    """All offsets of a kernel in the row-major order of `weight[..., *offset]` (PyTorch layout)."""
    return list(itertools.product(*[range(int(k)) for k in kernel_size]))


def subm_map(index: CoordinateIndex, indices: Tensor, kernel_size, dilation) -> KernelMap:
    """Submanifold map: output sites = input sites; offset k reads input `site + (k - k//2) * dilation`.

    `index` must have margins covering the kernel reach (see :func:`subm_margin`).
    """
    offsets = kernel_offsets(kernel_size)
    half = [k // 2 for k in kernel_size]
    deltas = [[(o - h) * d for o, h, d in zip(off, half, dilation)] for off in offsets]
    centre = offsets.index(tuple(half)) if all(k % 2 == 1 for k in kernel_size) else None
    base = index.keys if indices is index.source else index.encode(indices)
    step = torch.tensor([index.offset_key(d) for d in deltas], dtype=torch.int64, device=base.device)
    return KernelMap(index.lookup(base, step), int(indices.shape[0]), centre)


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


def _decode(keys: Tensor, box) -> Tensor:
    """Row-major keys of `box = (B, *shape)` -> `(M, 1+D)` int32 coordinates."""
    cols, rest = [], keys
    for s in _row_major_strides(box):
        cols.append(torch.div(rest, s, rounding_mode="floor"))
        rest = rest - cols[-1] * s
    return torch.stack(cols, dim=1).to(torch.int32)


def _output_sites(
    indices: Tensor, batch_size: int, out_shape, kernel_size, stride, padding, dilation, transposed: bool
) -> Tensor:
    """Unique `(batch, *coords)` output rows (int32, sorted) of a regular or transposed conv."""
    box = (int(batch_size), *out_shape)
    cells = math.prod(box)
    if cells >= MAX_KEY_CELLS:
        raise ValueError(f"the output box {box} has {cells} cells, more than 64-bit keys can address")
    ext = _ext.for_device(indices.device)
    if ext is not None and use_grid(cells, max(int(indices.shape[0]), 1)) and max(kernel_size) <= MAX_MARKED_TAPS:
        occupied = ext.mark_output_sites(
            indices.contiguous(),
            list(out_shape),
            list(kernel_size),
            list(stride),
            list(padding),
            list(dilation),
            int(batch_size),
            transposed,
        )
        return _decode(occupied.nonzero().squeeze(1), box)
    coords = indices[:, 1:].to(torch.int64)

    def candidate(a, x, t):
        if transposed:
            value = x * stride[a] - padding[a] + t * dilation[a]
            return value, (value >= 0) & (value < out_shape[a])
        shifted = x + padding[a] - t * dilation[a]
        value = torch.div(shifted, stride[a], rounding_mode="floor")
        return value, (shifted >= 0) & (shifted - value * stride[a] == 0) & (value < out_shape[a])

    per_axis = _separable_candidates(coords, kernel_size, candidate)
    batch = indices[:, 0].to(torch.int64)
    strides = _row_major_strides(box)
    offsets = list(itertools.product(*[range(len(p)) for p in per_axis]))  # one tap per axis
    keys = torch.empty((len(offsets), batch.shape[0]), dtype=torch.int64, device=batch.device)  # (K, N)
    oks = torch.ones((len(offsets), batch.shape[0]), dtype=torch.bool, device=batch.device)
    for key, ok, taps in zip(keys, oks, offsets):  # rows, filled in place
        torch.mul(batch, strides[0], out=key)
        for a, t in enumerate(taps):
            value, valid = per_axis[a][t]
            key.add_(value, alpha=strides[a + 1])
            ok &= valid
    keys = keys.masked_select(oks)  # one select (one device sync) for all taps
    if use_grid(cells, max(int(keys.numel()), 1)):
        occupied = torch.zeros(cells, dtype=torch.bool, device=keys.device)
        occupied[keys] = True
        keys = occupied.nonzero().squeeze(1)
    else:
        keys = torch.unique(keys)
    return _decode(keys, box)


def conv_out_indices(indices: Tensor, spatial_shape, batch_size, kernel_size, stride, padding, dilation):
    """Output sites of a regular (strided) conv: every output whose window holds an input site.

    Returns `(out_indices[M, 1+D] int32, out_shape)`.
    """
    out_shape = conv_output_shape(spatial_shape, kernel_size, stride, padding, dilation)
    if any(s <= 0 for s in out_shape):
        return indices.new_zeros((0, indices.shape[1])), out_shape
    sites = _output_sites(indices, batch_size, out_shape, kernel_size, stride, padding, dilation, False)
    return sites, out_shape


def _window_origins(indices: Tensor, stride, padding) -> Tensor:
    """Rows `(batch, *coords * stride - padding)` `(N, 1+D)` int64 of `indices (N, 1+D)`: offset 0 of each window."""
    scale = torch.tensor([1, *stride], dtype=torch.int64, device=indices.device)
    shift = torch.tensor([0, *padding], dtype=torch.int64, device=indices.device)
    return indices.to(torch.int64) * scale - shift


def conv_map(
    index: CoordinateIndex, out_indices: Tensor, kernel_size, stride, padding, dilation, n_in: int
) -> KernelMap:
    """Regular conv map, output-stationary: output `o`, offset `k` reads input `o * stride - padding + k * dilation`.

    `index` (of the input sites) must cover that reach (see :func:`conv_margin`).
    """
    offsets = kernel_offsets(kernel_size)
    base = index.encode(_window_origins(out_indices, stride, padding))
    step = torch.tensor(
        [index.offset_key([o * d for o, d in zip(off, dilation)]) for off in offsets],
        dtype=torch.int64,
        device=base.device,
    )
    return KernelMap(index.lookup(base, step), n_in)


def conv_margin(spatial_shape, out_shape, kernel_size, stride, padding, dilation) -> tuple[int, ...]:
    return tuple(
        max(p, (o - 1) * st - p + (k - 1) * d - (s - 1), 0)
        for s, o, k, st, p, d in zip(spatial_shape, out_shape, kernel_size, stride, padding, dilation)
    )


def conv_transpose_out_indices(indices: Tensor, batch_size, out_shape, kernel_size, stride, padding, dilation):
    """Output sites of a transposed conv: input `i`, offset `k` writes output `i * stride - padding + k * dilation`."""
    return _output_sites(indices, batch_size, out_shape, kernel_size, stride, padding, dilation, True)


def conv_transpose_map(
    out_index: CoordinateIndex, in_indices: Tensor, kernel_size, stride, padding, dilation, n_out: int
) -> KernelMap:
    """Transposed conv map, input-stationary lookup of output rows (see `conv_transpose_out_indices`)."""
    offsets = kernel_offsets(kernel_size)
    base = out_index.encode(_window_origins(in_indices, stride, padding))
    step = torch.tensor(
        [out_index.offset_key([o * d for o, d in zip(off, dilation)]) for off in offsets],
        dtype=torch.int64,
        device=base.device,
    )
    # Output rows per input row = the table of the transposed map; invert it once.
    return KernelMap(out_index.lookup(base, step), n_out).transposed()


def conv_transpose_margin(spatial_shape, out_shape, kernel_size, stride, padding, dilation):
    return tuple(
        max(p, (s - 1) * st - p + (k - 1) * d - (o - 1), 0)
        for s, o, k, st, p, d in zip(spatial_shape, out_shape, kernel_size, stride, padding, dilation)
    )
