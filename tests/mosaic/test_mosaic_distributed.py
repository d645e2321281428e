"""Dask: a local cluster of 2 single-thread workers gives byte-identical outputs to one process (1 thread); a worker
killed in the middle of a window loses nothing (its window is rerun); a bad input fails alone; `scheduler=` reaches
an existing cluster."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import mosaic_utils
import numpy as np
import pytest
from mosaic_utils import BlobDetector, blob_raster

from sparseyolo.mosaic.run import predict_mosaic
from sparseyolo.mosaic.samples import write_geotiff

pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")
# the workers cannot import the test modules: their detectors travel by value
cloudpickle.register_pickle_by_value(mosaic_utils)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

OUTPUTS = (".geojson", ".csv", ".coco.json", ".quicklook.jpg")


class KillOnce(BlobDetector):
    """Kills the worker process running it the first time it runs (anywhere), marking that in `marker`."""

    def __init__(self, marker: str):
        self.marker = marker

    def __call__(self, image):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)  # the worker dies mid-task: no exception, no cleanup
        return super().__call__(image)


def _same_outputs(a: Path, b: Path, names) -> None:
    for n in names:
        for suffix in OUTPUTS:
            assert (a / f"{n}{suffix}").read_bytes() == (b / f"{n}{suffix}").read_bytes(), f"{n}{suffix} differs"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, small_mosaic, osbs_tif):
    src = tmp_path_factory.mktemp("inputs")
    shutil.copy(small_mosaic, src)
    shutil.copy(osbs_tif, src)
    return src


def test_two_workers_equal_one_process(inputs, tmp_path):
    kw = dict(window=512, conf=0.01, progress=False)
    one = predict_mosaic("yolov8n-aerial", inputs, tmp_path / "one", threads=1, **kw)
    two = predict_mosaic("yolov8n-aerial", inputs, tmp_path / "two", workers=2, **kw)
    assert [r.status for r in one] == [r.status for r in two] == ["done", "done"]
    assert [r.detections for r in one] == [r.detections for r in two] and min(r.detections for r in one) > 20
    _same_outputs(tmp_path / "one", tmp_path / "two", [Path(r.path).stem for r in one])


def test_a_killed_worker_loses_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for k in range(2):
        write_geotiff(src / f"r{k}.tif", blob_raster(600, 700, n=20, seed=10 + k)[0])
    kw = dict(window=256, overlap=128, progress=False)
    ref = predict_mosaic(BlobDetector(), src, tmp_path / "ref", **kw)
    marker = tmp_path / "killed"
    got = predict_mosaic(KillOnce(str(marker)), src, tmp_path / "got", workers=2, retries=0, **kw)
    assert marker.is_file()  # a worker did die in a task
    assert [r.status for r in got] == ["done", "done"]
    assert [r.detections for r in got] == [r.detections for r in ref] and ref[0].detections == 20
    _same_outputs(tmp_path / "ref", tmp_path / "got", ["r0", "r1"])


def test_bad_input_fails_alone_and_scheduler_address(tmp_path):
    from distributed import LocalCluster

    src = tmp_path / "src"
    src.mkdir()
    img, _ = blob_raster(300, 400, n=6, seed=5)
    write_geotiff(src / "good.tif", img)
    big = write_geotiff(tmp_path / "big.tif", np.tile(img, (4, 4, 1)), compress="none").read_bytes()
    (src / "truncated.tif").write_bytes(big[: len(big) // 2])
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None, processes=True) as cluster:
        res = predict_mosaic(
            BlobDetector(),
            src,
            tmp_path / "out",
            window=256,
            overlap=128,
            scheduler=cluster.scheduler_address,
            retries=0,
            progress=False,
        )
    good, bad = res
    assert good.status == "done" and good.detections == 6
    assert bad.status == "failed" and "truncated.tif" in bad.error and "corrupt or truncated" in bad.error
    assert not (tmp_path / "out" / "truncated.done.json").exists()


def test_a_model_object_cannot_travel(tmp_path):
    from sparseyolo.yolo.api import YOLO

    img, _ = blob_raster(100, 100, n=2, seed=1)
    write_geotiff(tmp_path / "a.tif", img)
    with pytest.raises(TypeError, match="cannot be sent to Dask workers.*pass the model by name or path"):
        predict_mosaic(YOLO("yolov8n-aerial"), tmp_path / "a.tif", tmp_path / "out", workers=1, progress=False)


def test_an_unreachable_scheduler_is_named():
    from sparseyolo.mosaic.distributed import connect

    with pytest.raises(ConnectionError, match=r"cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'.*workers=N"):
        connect(scheduler="tcp://127.0.0.1:9", timeout="1s")
