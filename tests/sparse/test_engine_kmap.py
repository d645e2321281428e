"""Kernel maps vs a brute-force Python enumeration; grid and hash lookups give identical maps; big boxes
take the hash path automatically and still compute the same convolution."""

from __future__ import annotations

import contextlib
import itertools

import pytest
import torch
from engine_utils import random_sites, sorted_rows, tup
from torch.testing import assert_close

import sparseyolo.sparse.functional as SF
from sparseyolo.sparse import SparseConvTensor, _ext
from sparseyolo.sparse import kmap as km


def triples(kmap, n_identity_rows):
    """All (in_row, out_row, k) of a map as a list (identity offset expanded to i -> i)."""
    out = []
    for k in range(kmap.kernel_volume):
        rows_in, rows_out = kmap.pairs(k)
        pairs = list(zip(rows_in.tolist(), rows_out.tolist()))
        if k == kmap.identity and not pairs:
            pairs = [(i, i) for i in range(n_identity_rows)]
        out += [(i, o, k) for i, o in pairs]
    return out


def coord(idx, row):
    return tuple(idx[row].tolist())


def brute_subm(idx, kernel, dilation):
    rows = {tuple(r): n for n, r in enumerate(idx.tolist())}
    found = set()
    for n, site in enumerate(idx.tolist()):
        for k, off in enumerate(itertools.product(*[range(s) for s in kernel])):
            src = (site[0], *[c + (o - s // 2) * d for c, o, s, d in zip(site[1:], off, kernel, dilation)])
            if src in rows:
                found.add((rows[src], n, k))
    return found


def brute_conv(idx, out_shape, kernel, stride, padding, dilation):
    """(in_row, out_coord, k): output o reads input o * stride - padding + k * dilation."""
    found = set()
    for n, site in enumerate(idx.tolist()):
        for k, off in enumerate(itertools.product(*[range(s) for s in kernel])):
            out = [site[0]]
            for x, o, st, p, d, size in zip(site[1:], off, stride, padding, dilation, out_shape):
                num = x + p - o * d
                if num % st or not 0 <= num // st < size:
                    break
                out.append(num // st)
            else:
                found.add((n, tuple(out), k))
    return found


def brute_transpose(idx, out_shape, kernel, stride, padding, dilation):
    """(in_row, out_coord, k): input i writes output i * stride - padding + k * dilation."""
    found = set()
    for n, site in enumerate(idx.tolist()):
        for k, off in enumerate(itertools.product(*[range(s) for s in kernel])):
            out = (site[0], *[x * st - p + o * d for x, o, st, p, d in zip(site[1:], off, stride, padding, dilation)])
            if all(0 <= c < s for c, s in zip(out[1:], out_shape)):
                found.add((n, out, k))
    return found


def assert_maps_identical(a, b):
    assert a.kernel_volume == b.kernel_volume and a.identity == b.identity
    assert (a.n_in, a.n_out) == (b.n_in, b.n_out)
    for k in range(a.kernel_volume):
        for ta, tb in zip(a.pairs(k), b.pairs(k)):
            assert torch.equal(ta.to(torch.int64), tb.to(torch.int64)), f"offset {k} differs between grid and hash"


# shape, batch, kernel, stride, padding, dilation
MAP_CASES = [
    ((23,), 2, 3, 2, 1, 1),
    ((23,), 1, 4, 3, 2, 2),
    ((10, 13), 2, 3, 1, 1, 1),
    ((10, 13), 2, (2, 3), (2, 1), (0, 2), (1, 2)),
    ((10, 13), 1, 5, 3, 2, 1),
    ((6, 7, 5), 2, 3, 2, 1, 1),
    ((6, 7, 5), 2, (1, 2, 3), (1, 2, 2), (0, 1, 2), (1, 1, 2)),
    ((6, 7, 5), 1, 2, 2, 0, 2),
    ((150,), 2, 65, 2, 3, 1),  # wider than the compiled site marker's 64 taps: PyTorch output sites
]


@pytest.mark.parametrize("shape,batch,kernel,stride,padding,dilation", MAP_CASES)
def test_subm_map_vs_brute_force(shape, batch, kernel, stride, padding, dilation):
    D = len(shape)
    kernel, dilation = tup(kernel, D), tup(dilation, D)
    idx = random_sites(shape, batch, 0.35, seed=D * 7 + batch)
    margin = km.subm_margin(kernel, dilation)
    maps = {}
    for force, path in (("grid", "default"), ("hash", "default"), ("hash", "pytorch")):
        with _ext.disabled() if path == "pytorch" else contextlib.nullcontext():
            index = km.CoordinateIndex(idx, shape, batch, margin, force=force)
            assert index.mode == force
            maps[force, path] = km.subm_map(index, idx, kernel, dilation)
        got = triples(maps[force, path], idx.shape[0])
        assert len(got) == len(set(got)), "a pair is listed twice"
        assert set(got) == brute_subm(idx, kernel, dilation)
        assert maps[force, path].num_pairs == len(got)
    assert_maps_identical(maps["grid", "default"], maps["hash", "default"])
    assert_maps_identical(maps["grid", "default"], maps["hash", "pytorch"])


@pytest.mark.parametrize("shape,batch,kernel,stride,padding,dilation", MAP_CASES)
def test_conv_map_vs_brute_force(shape, batch, kernel, stride, padding, dilation):
    D = len(shape)
    kernel, stride, padding, dilation = (tup(v, D) for v in (kernel, stride, padding, dilation))
    idx = random_sites(shape, batch, 0.35, seed=D * 11 + batch)
    out_idx, out_shape = km.conv_out_indices(idx, shape, batch, kernel, stride, padding, dilation)
    assert out_shape == km.conv_output_shape(shape, kernel, stride, padding, dilation)
    expected = brute_conv(idx, out_shape, kernel, stride, padding, dilation)
    assert {c for _, c, _ in expected} == {coord(out_idx, r) for r in range(out_idx.shape[0])}
    assert out_idx.shape[0] == len({c for _, c, _ in expected}), "duplicate output sites"
    margin = km.conv_margin(shape, out_shape, kernel, stride, padding, dilation)
    maps = {}
    for force in ("grid", "hash"):
        index = km.CoordinateIndex(idx, shape, batch, margin, force=force)
        maps[force] = km.conv_map(index, out_idx, kernel, stride, padding, dilation, idx.shape[0])
        got = [(i, coord(out_idx, o), k) for i, o, k in triples(maps[force], 0)]
        assert len(got) == len(set(got))
        assert set(got) == expected
    assert_maps_identical(maps["grid"], maps["hash"])


@pytest.mark.parametrize("shape,batch,kernel,stride,padding,dilation", MAP_CASES)
def test_conv_transpose_map_vs_brute_force(shape, batch, kernel, stride, padding, dilation):
    D = len(shape)
    kernel, stride, padding, dilation = (tup(v, D) for v in (kernel, stride, padding, dilation))
    idx = random_sites(shape, batch, 0.35, seed=D * 13 + batch)
    out_shape = km.conv_transpose_output_shape(shape, kernel, stride, padding, dilation, (0,) * D)
    out_idx = km.conv_transpose_out_indices(idx, batch, out_shape, kernel, stride, padding, dilation)
    expected = brute_transpose(idx, out_shape, kernel, stride, padding, dilation)
    assert {c for _, c, _ in expected} == {coord(out_idx, r) for r in range(out_idx.shape[0])}
    assert out_idx.shape[0] == len({c for _, c, _ in expected}), "duplicate output sites"
    margin = km.conv_transpose_margin(shape, out_shape, kernel, stride, padding, dilation)
    maps = {}
    for force in ("grid", "hash"):
        out_index = km.CoordinateIndex(out_idx, out_shape, batch, margin, force=force)
        maps[force] = km.conv_transpose_map(out_index, idx, kernel, stride, padding, dilation, out_idx.shape[0])
        got = [(i, coord(out_idx, o), k) for i, o, k in triples(maps[force], 0)]
        assert len(got) == len(set(got))
        assert set(got) == expected
        # the transposed map is the same pairs with the roles swapped
        back = [(o, i, k) for i, o, k in triples(maps[force].transposed(), 0)]
        assert sorted(back) == sorted(triples(maps[force], 0))
    assert_maps_identical(maps["grid"], maps["hash"])


@pytest.mark.parametrize("force,path", [("grid", "default"), ("hash", "default"), ("hash", "pytorch")])
def test_find_and_duplicates_on_both_paths(force, path):
    idx = torch.tensor([[0, 1, 2], [1, 1, 2], [0, 3, 0]], dtype=torch.int32)
    with _ext.disabled() if path == "pytorch" else contextlib.nullcontext():
        index = km.CoordinateIndex(idx, (4, 3), 2, (2, 2), force=force)
    assert (force, path) != ("hash", "default") or not _ext.enabled() or index.hash_table is not None
    keys = index.encode(torch.tensor([[0, 1, 2], [1, 1, 2], [0, 3, 0], [1, 3, 0], [0, -2, 4]]))
    assert index.find(keys).tolist() == [0, 1, 2, -1, -1]
    assert index.lookup(keys[:2], torch.tensor([0, 0, 1])).tolist() == [[0, 1], [0, 1], [-1, -1]]
    dup = torch.tensor([[0, 1, 2], [1, 1, 2], [0, 3, 0], [1, 1, 2]], dtype=torch.int32)
    with _ext.disabled() if path == "pytorch" else contextlib.nullcontext():
        with pytest.raises(ValueError, match="duplicate coordinates"):
            km.CoordinateIndex(dup, (4, 3), 2, (2, 2), force=force)
    with pytest.raises(ValueError, match="force must be"):
        km.CoordinateIndex(idx, (4, 3), 2, (2, 2), force="tree")


def test_automatic_path_choice_and_big_box_conv():
    """A few sites in a 4096 x 4096 x 512 box use the hash path; results equal the same sites in a small
    (grid-path) box, translated by a multiple of the stride."""
    small_shape = (12, 12, 12)
    idx = random_sites((8, 8, 8), 2, 0.3, seed=5)
    idx[:, 1:] += 2
    shift = torch.tensor([2000, 3000, 100], dtype=torch.int32)
    big_idx = idx.clone()
    big_idx[:, 1:] += shift
    feats = torch.randn(idx.shape[0], 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    small = SparseConvTensor(feats, idx, small_shape, 2)
    big = SparseConvTensor(feats, big_idx, (4096, 4096, 512), 2)

    assert small.coordinate_index((2, 2, 2)).mode == "grid"
    assert big.coordinate_index((2, 2, 2)).mode == "hash"
    assert km.CoordinateIndex(big_idx, (4096, 4096, 512), 2, (2, 2, 2)).mode == "hash"
    assert not km.use_grid(2 * 4100 * 4100 * 516, idx.shape[0])

    g = torch.Generator().manual_seed(2)
    w1 = torch.randn(4, 3, 3, 3, 3, generator=g, dtype=torch.float64)
    w2 = torch.randn(5, 4, 3, 3, 3, generator=g, dtype=torch.float64)
    outs = []
    for x in (small, big):
        y = SF.subm_conv(x, w1, dilation=2)
        z = SF.sparse_conv(y, w2, stride=2, padding=1)
        outs.append((y, z))
    assert all(i.mode == "hash" for i in big._store.indexes.values())
    (ys, zs), (yb, zb) = outs
    assert torch.equal(yb.indices[:, 1:] - shift, ys.indices[:, 1:]) and torch.equal(yb.indices[:, 0], ys.indices[:, 0])
    assert_close(yb.features, ys.features, rtol=1e-12, atol=1e-12)
    assert zb.spatial_shape == (2048, 2048, 256)
    moved = zb.indices.clone()
    moved[:, 1:] -= shift // 2
    assert torch.equal(sorted_rows(moved), sorted_rows(zs.indices))
    order_b = {tuple(r): n for n, r in enumerate(moved.tolist())}
    perm = torch.tensor([order_b[tuple(r)] for r in zs.indices.tolist()])
    assert_close(zb.features[perm], zs.features, rtol=1e-12, atol=1e-12)


def test_huge_box_keys_do_not_wrap_around():
    size = 2**21
    padded = size + 2 * km.DEFAULT_MARGIN
    dz, rest = divmod(2**64 - padded**3, padded * padded)  # batch 1 at (dz, dy, dx) == batch 0 at 0 (mod 2**64)
    dy, dx = divmod(rest, padded)
    assert all(0 <= v < size for v in (dz, dy, dx))
    far = torch.tensor([[0, 0, 0, 0], [1, dz, dy, dx + 1]], dtype=torch.int32)
    same = torch.tensor([[0, 0, 0, 0], [1, dz, dy, dx]], dtype=torch.int32)
    feats = torch.tensor([[1.0], [10.0]])
    for idx in (same, far):
        try:
            x = SparseConvTensor(feats, idx, (size,) * 3, 2)
            y = SF.subm_conv(x, torch.ones(1, 1, 3, 3, 3))
        except ValueError as error:  # a clear refusal of the box would be acceptable; a false duplicate is not
            assert "duplicate" not in str(error), f"distinct sites reported as duplicates: {error}"
            continue
        assert y.features.flatten().tolist() == [1.0, 10.0], f"isolated sites got {y.features.flatten()}"
