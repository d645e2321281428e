"""Fixtures of the mosaic tests: rasters written with rasterio (a blob raster, a composite mosaic, OSBS_029)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("YOLO_VERBOSE", "False")

from mosaic_utils import blob_raster  # noqa: E402


@pytest.fixture(scope="session")
def blob_tif(tmp_path_factory):
    """A GeoTIFF of `blob_raster()` (EPSG:32612, 10 cm pixels) and its boxes."""
    from sparseyolo.mosaic.samples import write_geotiff

    img, boxes = blob_raster()
    path = write_geotiff(tmp_path_factory.mktemp("blob") / "blobs.tif", img)
    return path, img, boxes


@pytest.fixture(scope="session")
def small_mosaic(tmp_path_factory):
    """A 1024x1024 composite mosaic GeoTIFF (frames of 512 px, 3% crowns) and its COCO ground truth."""
    pytest.importorskip("rasterio")
    from sparseyolo.mosaic.samples import build_mosaic

    try:
        return build_mosaic(tmp_path_factory.mktemp("mosaic"), size=1024, tile=512, fg=0.03)
    except RuntimeError as e:  # deepforest's files neither cached nor downloadable
        pytest.skip(f"deepforest data unavailable: {e}")


@pytest.fixture(scope="session")
def osbs_tif():
    from sparseyolo.mosaic.samples import osbs_029

    try:
        return osbs_029()
    except RuntimeError as e:
        pytest.skip(f"deepforest data unavailable: {e}")
