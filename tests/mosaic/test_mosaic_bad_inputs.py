"""Bad input: each a clear error naming the file and saying what to do, while the other inputs still finish."""

from __future__ import annotations

import numpy as np
import pytest
from mosaic_utils import BlobDetector, blob_raster

from sparseyolo.mosaic.raster import MosaicInputError, inspect_raster
from sparseyolo.mosaic.run import predict_mosaic
from sparseyolo.mosaic.samples import write_geotiff


@pytest.fixture
def folder(tmp_path):
    """A folder with one good GeoTIFF (`good.tif`)."""
    img, _ = blob_raster(300, 400, n=6, seed=5)
    write_geotiff(tmp_path / "good.tif", img)
    return tmp_path, img


def _run(src, out, **kw):
    res = predict_mosaic(BlobDetector(), src, out, window=256, overlap=128, progress=False, **kw)
    return {r.path.split("/")[-1]: r for r in res}


def _check(res: dict, bad: str, *phrases: str):
    assert res["good.tif"].status == "done" and res["good.tif"].detections == 6  # the others still finish
    r = res[bad]
    assert r.status == "failed" and bad in r.error
    for p in phrases:
        assert p in r.error, (p, r.error)


def test_corrupt_tiff(folder, tmp_path):
    src, _ = folder
    (src / "corrupt.tif").write_bytes(b"II*\x00" + np.random.default_rng(0).bytes(5000))
    res = _run(src, tmp_path / "out")
    _check(res, "corrupt.tif", "cannot be read as a raster", "corrupt, truncated", "re-export or re-download")
    assert not (tmp_path / "out" / "corrupt.geojson").exists()


def test_truncated_tiff(folder, tmp_path):
    src, img = folder
    big = np.tile(img, (4, 4, 1))  # 1200x1600, tiled 256: its last tiles are cut off below
    data = write_geotiff(tmp_path / "whole.tif", big, compress="none").read_bytes()
    (src / "truncated.tif").write_bytes(data[: len(data) // 2])
    res = _run(src, tmp_path / "out")
    _check(res, "truncated.tif", "corrupt or truncated", "re-export or re-download")
    assert (
        not (tmp_path / "out" / "truncated.geojson").exists()
        and not (tmp_path / "out" / "truncated.done.json").exists()
    )


@pytest.mark.parametrize(
    "bands,hint",
    [(1, "pass bands=1,1,1 to repeat the band"), (4, "pass bands=1,2,3"), (2, "pass bands=R,G,B")],
)
def test_band_counts(folder, tmp_path, bands, hint):
    src, img = folder
    a = img[..., 0] if bands == 1 else np.concatenate([img, img[..., :1]], 2)[..., :bands]
    write_geotiff(src / "bands.tif", a)
    res = _run(src, tmp_path / "out")
    _check(res, "bands.tif", f"has {bands} band(s); the models take 3 (RGB)", hint)
    if bands in (1, 4):  # doing what the message says works
        fixed = _run(src / "bands.tif", tmp_path / "fixed", bands="1,1,1" if bands == 1 else "1,2,3")
        assert fixed["bands.tif"].status == "done"


def test_sixteen_bits(folder, tmp_path):
    src, img = folder
    write_geotiff(src / "deep.tif", img.astype(np.uint16) * 257)
    res = _run(src, tmp_path / "out")
    _check(res, "deep.tif", "uint16 samples", "8-bit RGB", "gdal_translate -ot Byte -scale")


def test_no_crs(folder, tmp_path):
    src, img = folder
    write_geotiff(src / "nocrs.tif", img, crs=None)
    res = _run(src, tmp_path / "out")
    _check(res, "nocrs.tif", "has no CRS", "gdal_edit.py -a_srs", "pixel=True")
    ok = _run(src / "nocrs.tif", tmp_path / "pixel", pixel=True)["nocrs.tif"]
    assert ok.status == "done" and ok.detections == 6


def test_window_smaller_than_the_stride(folder, tmp_path):
    src, _ = folder
    with pytest.raises(ValueError, match=r"window=16 is smaller than the model's stride \(32 px\): use window >= 32"):
        predict_mosaic(BlobDetector(), src, tmp_path / "out", window=16, overlap=0, progress=False)


def test_missing_model(folder, tmp_path):
    src, _ = folder
    with pytest.raises(FileNotFoundError, match="model 'no-such-model' not found.*shipped reference name"):
        predict_mosaic("no-such-model", src, tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match=r"model 'missing\.pt' not found"):
        predict_mosaic("missing.pt", src, tmp_path / "out", progress=False)


def test_missing_source_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="source .*nothing.tif not found"):
        predict_mosaic(BlobDetector(), tmp_path / "nothing.tif", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no rasters in"):
        predict_mosaic(BlobDetector(), tmp_path / "empty", tmp_path / "out", progress=False)


def test_same_name_twice(folder, tmp_path):
    src, img = folder
    from PIL import Image

    Image.fromarray(img).save(src / "good.png")
    res = predict_mosaic(BlobDetector(), src, tmp_path / "out", window=256, overlap=128, progress=False)
    assert [r.status for r in res] == ["done", "failed"]  # sorted: good.png first, then good.tif
    assert "good.tif" in res[1].error and "would overwrite" in res[1].error and "rename one" in res[1].error


def test_bad_bands_argument(folder):
    src, _ = folder
    with pytest.raises(ValueError, match="bands must be three band numbers"):
        inspect_raster(src / "good.tif", bands="1,2")
    with pytest.raises(MosaicInputError, match="asks for band 5; it has 3"):
        inspect_raster(src / "good.tif", bands="5,2,1")
