"""Real airborne LiDAR from laspy's source distribution, voxelized into sparse coordinates."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparseyolo.data.registry import fetch_member_files

LASPY_REQUIREMENT = "laspy==2.7.0"


def lidar_files() -> list[Path]:
    """The `.las`/`.laz` scans in laspy's test data (downloaded once, then cached)."""
    return fetch_member_files(LASPY_REQUIREMENT, ["*/tests/data/*.las", "*/tests/data/*.laz"], sdist=True)


def load_points(path: str | Path | None = None) -> np.ndarray:
    """Load a scan as float64 `(P, 3)` xyz in metres. Default: the largest uncompressed `.las` in laspy's data."""
    import laspy

    if path is None:
        candidates = [p for p in lidar_files() if p.suffix == ".las"]
        path = max(candidates, key=lambda p: p.stat().st_size)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LiDAR file not found: {path}")
    las = laspy.read(path)
    return np.stack([np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)], axis=1).astype(np.float64)


def voxelize(points: np.ndarray, voxel_size: float) -> tuple[np.ndarray, tuple[int, int, int], np.ndarray]:
    """Quantize `(P, 3)` points to unique voxels.

    Returns `coords (V, 3)` int32 as (z, y, x), the grid `spatial_shape` (Z, Y, X), and per-voxel point
    counts `(V,)`, usable as a 1-channel feature.
    """
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"points must be a non-empty (P, 3) array, got shape {points.shape}")
    if voxel_size <= 0:
        raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
    q = np.floor((points - points.min(axis=0)) / voxel_size).astype(np.int64)
    zyx = q[:, ::-1]
    uniq, counts = np.unique(zyx, axis=0, return_counts=True)
    shape = tuple(int(v) + 1 for v in uniq.max(axis=0))
    return uniq.astype(np.int32), shape, counts
