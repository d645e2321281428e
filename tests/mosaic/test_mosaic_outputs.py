"""Outputs on real georeferenced data: GeoJSON corners recomputed by hand from the affine transform rasterio reads
back, the CRS recorded, CSV/COCO/GeoJSON agreeing, the quick-look; PNG/JPEG in pixel coordinates; resume and
atomic writes."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from mosaic_utils import BlobDetector, blob_raster

from sparseyolo.mosaic.merge import Detections
from sparseyolo.mosaic.outputs import atomic_path, write_atomic
from sparseyolo.mosaic.run import predict_mosaic


def _features(path):
    return json.loads(path.read_text())


def test_geojson_in_the_rasters_crs(blob_tif, tmp_path):
    import rasterio

    path, _, boxes = blob_tif
    res = predict_mosaic(BlobDetector(), path, tmp_path, window=512, overlap=224, progress=False)
    assert res[0].status == "done" and res[0].detections == len(boxes)
    gj = _features(tmp_path / "blobs.geojson")
    with rasterio.open(path) as ds:
        t, epsg = ds.transform, ds.crs.to_epsg()
    assert gj["type"] == "FeatureCollection" and epsg == 32612
    assert gj["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32612"
    assert rasterio.crs.CRS.from_wkt(gj["crs_wkt"]).to_epsg() == 32612
    rows = list(csv.DictReader((tmp_path / "blobs.csv").open()))
    coco = _features(tmp_path / "blobs.coco.json")
    assert len(gj["features"]) == len(rows) == len(coco["annotations"]) == len(boxes)
    for f, row, ann in zip(gj["features"], rows, coco["annotations"]):
        x0, y0, x1, y1 = (float(row[k]) for k in ("x0", "y0", "x1", "y1"))
        assert ann["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=1e-3)
        assert f["properties"]["score"] == pytest.approx(float(row["score"]), abs=1e-5)
        assert f["properties"]["class"] == int(row["class"]) == 0 and f["properties"]["name"] == "blob"
        ring = np.array(f["geometry"]["coordinates"][0])
        # by hand: X = a*col + b*row + c, Y = d*col + e*row + f; north-up, 10 cm pixels
        west, north = t.c + t.a * x0, t.f + t.e * y0
        east, south = t.c + t.a * x1, t.f + t.e * y1
        assert ring.shape == (5, 2) and (ring[0] == ring[-1]).all()
        assert ring[:, 0].min() == pytest.approx(west, abs=1e-3) and ring[:, 0].max() == pytest.approx(east, abs=1e-3)
        assert ring[:, 1].max() == pytest.approx(north, abs=1e-3) and ring[:, 1].min() == pytest.approx(south, abs=1e-3)
        x, y = ring[:-1, 0], ring[:-1, 1]
        assert 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) > 0  # counter-clockwise (RFC 7946)
    # the boxes are the objects: every ground-truth box found exactly (the detector is exact)
    got = {tuple(round(float(r[k])) for k in ("x0", "y0", "x1", "y1")) for r in rows}
    assert got == {tuple(int(v) for v in b) for b in boxes}


def test_real_geotiff_osbs_029(osbs_tif, tmp_path):
    """deepforest's real GeoTIFF (UTM 17N) with the dense reference: polygons inside the raster's bounds."""
    import rasterio

    res = predict_mosaic("yolov8n-aerial", osbs_tif, tmp_path, window=512, progress=False)
    assert res[0].status == "done" and res[0].detections > 10
    gj = _features(tmp_path / "OSBS_029.geojson")
    assert len(gj["features"]) == res[0].detections
    assert gj["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32617"
    with rasterio.open(osbs_tif) as ds:
        b = ds.bounds
    pts = np.concatenate([np.array(f["geometry"]["coordinates"][0]) for f in gj["features"]])
    assert (pts[:, 0] >= b.left - 1e-6).all() and (pts[:, 0] <= b.right + 1e-6).all()
    assert (pts[:, 1] >= b.bottom - 1e-6).all() and (pts[:, 1] <= b.top + 1e-6).all()
    from PIL import Image

    with Image.open(tmp_path / "OSBS_029.quicklook.jpg") as im:
        assert im.format == "JPEG" and im.size == (400, 400)
        look = np.asarray(im.convert("RGB")).astype(int)
    assert ((look[..., 0] > 200) & (look[..., 1] < 100)).sum() > 100  # the boxes are drawn (red)


def test_png_and_jpeg_in_pixel_coordinates(tmp_path):
    from PIL import Image

    img, boxes = blob_raster(300, 500, n=8, seed=3)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(img).save(tmp_path / "b.jpg", quality=100)
    res = predict_mosaic(BlobDetector(), tmp_path, tmp_path / "out", window=256, overlap=128, progress=False)
    assert [r.status for r in res] == ["done", "done"]
    gj = _features(tmp_path / "out" / "a.geojson")
    assert "crs" not in gj and gj["coordinates"] == "pixel"
    ring = np.array(gj["features"][0]["geometry"]["coordinates"][0])
    x0, y0, x1, y1 = gj["features"][0]["properties"]["bbox_px"]
    assert sorted({*ring[:, 0]}) == pytest.approx([x0, x1]) and sorted({*ring[:, 1]}) == pytest.approx([y0, y1])
    assert res[0].detections == len(boxes)
    assert res[1].detections >= 1  # JPEG: lossy, blobs may split; read and run all the same


def test_quicklook_shows_the_raster(blob_tif, tmp_path):
    from PIL import Image

    path, img, _ = blob_tif

    class Blind(BlobDetector):  # no boxes drawn: the picture alone
        def __call__(self, image):
            return Detections.empty()

    predict_mosaic(Blind(), path, tmp_path, window=384, overlap=224, progress=False)
    with Image.open(tmp_path / "blobs.quicklook.jpg") as im:
        look = np.asarray(im.convert("RGB")).astype(float)
    assert look.shape[1] == 1024 and look.shape[0] == round(1000 * 1024 / 1300)
    ref = np.asarray(Image.fromarray(img).resize(look.shape[1::-1], Image.BOX)).astype(float)
    h, w = (look.shape[0] // 16) * 16, (look.shape[1] // 16) * 16

    def blocks(a):  # 16x16 block means: the picture, not JPEG's noise on a noise image
        return a[:h, :w].reshape(h // 16, 16, w // 16, 16, 3).mean((1, 3))

    a, b = blocks(look).ravel(), blocks(ref).ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.95 and np.abs(a - b).mean() < 1.5  # the same picture, in place
    assert np.corrcoef(a, blocks(ref[::-1]).ravel())[0, 1] < 0.5  # (a misplaced picture would not pass)
    assert look.mean(2).mean(0).min() > 15 and look.mean(2).mean(1).min() > 15  # every core pasted: no black strip


def test_resume_skips_finished_inputs_and_reruns_changed_settings(blob_tif, tmp_path):
    path, _, _ = blob_tif
    calls = []

    class Counting(BlobDetector):
        def __call__(self, image):
            calls.append(1)
            return super().__call__(image)

    kw = dict(window=512, overlap=224, progress=False)
    first = predict_mosaic(Counting(), path, tmp_path, **kw)
    n = len(calls)
    assert first[0].status == "done" and n == first[0].windows
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    again = predict_mosaic(Counting(), path, tmp_path, **kw)
    assert again[0].status == "skipped" and len(calls) == n
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    predict_mosaic(Counting(), path, tmp_path, **kw, force=True)
    assert len(calls) == 2 * n
    changed = predict_mosaic(Counting(), path, tmp_path, **{**kw, "window": 384})
    assert changed[0].status == "done" and len(calls) > 2 * n
    (tmp_path / "blobs.csv").unlink()  # an output lost: not done any more
    assert predict_mosaic(Counting(), path, tmp_path, **{**kw, "window": 384})[0].status == "done"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_atomic_writes_leave_the_old_file_on_failure(tmp_path):
    target = write_atomic(tmp_path / "x.json", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new conte")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["x.json"]


def test_interrupted_run_is_not_done(blob_tif, tmp_path):
    """A run that dies after some outputs are written leaves no `.done.json`: the rerun does the input again."""
    path, _, _ = blob_tif
    import sparseyolo.mosaic.outputs as outputs

    real = outputs.coco

    def broken(*a, **k):
        raise KeyboardInterrupt

    outputs.coco = broken
    try:
        with pytest.raises(KeyboardInterrupt):
            predict_mosaic(BlobDetector(), path, tmp_path, window=512, overlap=224, progress=False)
    finally:
        outputs.coco = real
    assert (tmp_path / "blobs.geojson").is_file() and not (tmp_path / "blobs.done.json").exists()
    res = predict_mosaic(BlobDetector(), path, tmp_path, window=512, overlap=224, progress=False)
    assert res[0].status == "done" and (tmp_path / "blobs.done.json").is_file()


def test_quicklook_draws_only_confident_boxes():
    import io

    from PIL import Image

    from sparseyolo.mosaic.outputs import QUICKLOOK_CONF, QuickLook

    look = QuickLook(200, 200)
    det = Detections([[10, 10, 60, 60], [120, 120, 180, 180]], [QUICKLOOK_CONF, QUICKLOOK_CONF - 0.01], [0, 0])
    pic = np.asarray(Image.open(io.BytesIO(look.jpeg(det))).convert("RGB")).astype(int)
    red = (pic[..., 0] > 150) & (pic[..., 1] < 100)
    assert red[5:65, 5:65].sum() > 100 and red[115:185, 115:185].sum() == 0


def test_rotated_transform_corners(tmp_path):
    """A sheared/rotated affine transform: each polygon's corners are the box's corners through it, by hand."""
    from affine import Affine

    from sparseyolo.mosaic.samples import write_geotiff

    img, _ = blob_raster(300, 400, n=5, seed=7)
    a, b, c, d, e, f = 0.08, 0.06, 500000.0, 0.06, -0.08, 4200000.0
    write_geotiff(tmp_path / "rot.tif", img, transform=Affine(a, b, c, d, e, f))
    predict_mosaic(BlobDetector(), tmp_path / "rot.tif", tmp_path / "out", window=256, overlap=128, progress=False)
    gj = _features(tmp_path / "out" / "rot.geojson")
    assert len(gj["features"]) == 5
    for feat in gj["features"]:
        x0, y0, x1, y1 = feat["properties"]["bbox_px"]
        ring = np.array(feat["geometry"]["coordinates"][0])
        want = {(round(a * x + b * y + c, 4), round(d * x + e * y + f, 4)) for x in (x0, x1) for y in (y0, y1)}
        assert {(round(p[0], 4), round(p[1], 4)) for p in ring[:-1]} == want


def test_nodata_windows_are_not_run(tmp_path):
    """A footprint inside nodata: windows of nothing but nodata never reach the detector; the same detections."""
    from sparseyolo.mosaic.samples import write_geotiff

    img, _ = blob_raster(600, 800, n=10, seed=8)
    img[:, 400:] = 0
    write_geotiff(tmp_path / "a.tif", img, nodata=0)
    write_geotiff(tmp_path / "b.tif", img)
    calls = {"a": 0, "b": 0}

    class Counting(BlobDetector):
        def __init__(self, key):
            self.key = key

        def __call__(self, image):
            calls[self.key] += 1
            return super().__call__(image)

    kw = dict(window=256, overlap=64, progress=False)
    ra = predict_mosaic(Counting("a"), tmp_path / "a.tif", tmp_path / "oa", **kw)[0]
    rb = predict_mosaic(Counting("b"), tmp_path / "b.tif", tmp_path / "ob", **kw)[0]
    assert ra.detections == rb.detections > 0
    assert calls["b"] == rb.windows and calls["a"] < calls["b"]
    assert (tmp_path / "oa" / "a.csv").read_text() == (tmp_path / "ob" / "b.csv").read_text()


def test_new_weights_under_the_same_name_rerun(tmp_path):
    """The settings recorded with the outputs hold the model file's size and time: replaced weights rerun an input."""
    import shutil

    from sparseyolo.mosaic.samples import write_geotiff
    from sparseyolo.yolo.reference import reference_files

    write_geotiff(tmp_path / "a.tif", blob_raster(128, 128, n=2, seed=2)[0])
    yaml = tmp_path / "m.yaml"
    shutil.copy(reference_files("yolov8n-aerial")[0], yaml)
    kw = dict(window=128, overlap=32, progress=False)
    assert predict_mosaic(str(yaml), tmp_path / "a.tif", tmp_path / "out", **kw)[0].status == "done"
    assert predict_mosaic(str(yaml), tmp_path / "a.tif", tmp_path / "out", **kw)[0].status == "skipped"
    yaml.write_text(yaml.read_text() + "\n# changed\n")
    assert predict_mosaic(str(yaml), tmp_path / "a.tif", tmp_path / "out", **kw)[0].status == "done"


def test_out_inside_source_is_not_read_back(tmp_path):
    """Outputs written into the source folder (quick-look JPEGs) are not inputs of the next run."""
    from sparseyolo.mosaic.samples import write_geotiff

    write_geotiff(tmp_path / "a.tif", blob_raster(128, 128, n=2, seed=2)[0])
    kw = dict(window=128, overlap=32, progress=False)
    assert [r.status for r in predict_mosaic(BlobDetector(), tmp_path, tmp_path, **kw)] == ["done"]
    assert (tmp_path / "a.quicklook.jpg").is_file()
    assert [r.status for r in predict_mosaic(BlobDetector(), tmp_path, tmp_path, **kw)] == ["skipped"]
