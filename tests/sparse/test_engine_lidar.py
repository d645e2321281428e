"""Real airborne LiDAR (laspy's sample scan, installed by `make setup`): voxelize, crop the densest box that a
dense conv3d can hold, and compare SubMConv3d + strided SparseConv3d with the dense oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from engine_utils import assert_same_sites, assert_unique_rows, at_sites, densify, mask_sites, occupancy
from torch.testing import assert_close

import sparseyolo.sparse as sp
from sparseyolo.data.lidar import load_points, voxelize

BOX = 64


def densest_box(coords: np.ndarray, shape, box: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Start corner and size of the `box`^3 window (clipped to the grid) holding the most voxels."""
    size = tuple(min(box, s) for s in shape)
    occ = np.zeros(shape, np.int64)
    occ[tuple(coords.T)] = 1
    integral = np.pad(occ.cumsum(0).cumsum(1).cumsum(2), ((1, 0), (1, 0), (1, 0)))
    a = [np.arange(s - b + 1) for s, b in zip(shape, size)]
    z0, y0, x0 = np.meshgrid(*a, indexing="ij")
    z1, y1, x1 = z0 + size[0], y0 + size[1], x0 + size[2]
    total = (
        integral[z1, y1, x1]
        - integral[z0, y1, x1]
        - integral[z1, y0, x1]
        - integral[z1, y1, x0]
        + integral[z0, y0, x1]
        + integral[z0, y1, x0]
        + integral[z1, y0, x0]
        - integral[z0, y0, x0]
    )
    best = np.unravel_index(np.argmax(total), total.shape)
    return np.array(best), size


@pytest.mark.parametrize("voxel", [1.0, 2.5])  # 2.5 m: several points per voxel, so the counts vary
def test_lidar_crop_subm_and_strided_conv_vs_dense(voxel):
    points = load_points()
    coords, shape, counts = voxelize(points, voxel)
    assert len(coords) > 1000 and len(shape) == 3
    start, size = densest_box(coords, shape, BOX)
    inside = np.all((coords >= start) & (coords < start + np.array(size)), axis=1)
    crop = coords[inside] - start
    assert len(crop) >= 500, f"densest {size} box has only {len(crop)} voxels"

    idx = torch.from_numpy(np.concatenate([np.zeros((len(crop), 1), np.int32), crop.astype(np.int32)], 1))
    feats = torch.from_numpy(counts[inside].astype(np.float64)).unsqueeze(1).requires_grad_(True)
    x = sp.SparseConvTensor(feats, idx, size, 1)

    torch.manual_seed(0)
    subm = sp.SubMConv3d(1, 8, 3).double()
    down = sp.SparseConv3d(8, 8, 3, stride=2, padding=1).double()
    y = subm(x)
    z = sp.SparseSequential(sp.SparseReLU(), down)(y)

    f_d = feats.detach().clone().requires_grad_(True)
    params = [p.detach().clone().requires_grad_(True) for p in (subm.weight, subm.bias, down.weight, down.bias)]
    dense_x = densify(f_d, idx, size, 1)
    dense_y = F.conv3d(dense_x, params[0], params[1], padding=1) * occupancy(idx, size, 1)
    assert_close(y.features, at_sites(dense_y, idx), rtol=1e-10, atol=1e-10)
    dense_z = F.conv3d(torch.relu(dense_y), params[2], params[3], stride=2, padding=1)
    assert z.spatial_shape == tuple(dense_z.shape[2:])
    assert_unique_rows(z.indices)
    reach = F.max_pool3d(occupancy(idx, size, 1), 3, 2, 1)
    assert_same_sites(z.indices, mask_sites(reach > 0))
    ref = at_sites(dense_z, z.indices)
    assert_close(z.features, ref, rtol=1e-10, atol=1e-10)

    cot = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (z.features * cot).sum().backward()
    (ref * cot).sum().backward()
    assert_close(feats.grad, f_d.grad, rtol=1e-9, atol=1e-9)
    for p, q in zip((subm.weight, subm.bias, down.weight, down.bias), params):
        assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-9)
