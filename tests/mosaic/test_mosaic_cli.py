"""`sparseyolo mosaic key=value`: a run, the resume message, bad arguments and a missing model (exit 2), a failed
input (exit 1, the others done)."""

from __future__ import annotations

import json

from mosaic_utils import blob_raster

from sparseyolo.cli import main
from sparseyolo.mosaic.cli import parse
from sparseyolo.mosaic.samples import write_geotiff


def test_cli_runs_resumes_and_reports_bad_input(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    write_geotiff(src / "a.tif", blob_raster(300, 400, n=6, seed=5)[0])
    args = [
        "mosaic",
        "model=yolov8n-aerial",
        f"source={src}",
        f"out={tmp_path / 'out'}",
        "window=512",
        "conf=0.05",
        "progress=False",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "done     " in out and "1 of 1 inputs done or skipped; 0 failed" in out
    gj = json.loads((tmp_path / "out" / "a.geojson").read_text())
    assert gj["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32612"
    assert main(args) == 0 and "skipped  " in capsys.readouterr().out
    (src / "b.tif").write_bytes(b"not a tiff at all")
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.err and "b.tif: cannot be read as a raster" in captured.err
    assert "1 failed" in captured.out


def test_cli_bad_arguments(tmp_path, capsys):
    assert main(["mosaic", "model=yolov8n-aerial", f"source={tmp_path}"]) == 2
    assert "missing out=" in capsys.readouterr().err
    assert main(["mosaic", "model=m", "source=s", "out=o", "windw=512"]) == 2
    assert "unknown argument 'windw' (did you mean window=?)" in capsys.readouterr().err
    assert main(["mosaic", "model=m", "source=s", "out=o", "window=big"]) == 2
    assert "window= must be an integer, got 'big'" in capsys.readouterr().err
    assert main(["mosaic", "model=no-such-model", f"source={tmp_path}", f"out={tmp_path / 'o'}"]) == 2
    assert "model 'no-such-model' not found" in capsys.readouterr().err
    assert main(["mosaic", "--help"]) == 0 and "scheduler=ADDR" in capsys.readouterr().out
    assert parse(["model=m", "source=s", "out=o", "workers=2", "pixel=true"])["workers"] == 2


def test_cli_window_smaller_than_stride(tmp_path, capsys):
    src = tmp_path / "a.tif"
    write_geotiff(src, blob_raster(100, 100, n=2, seed=1)[0])
    assert main(["mosaic", "model=yolov8n-aerial", f"source={src}", f"out={tmp_path / 'o'}", "window=16"]) == 2
    assert "window=16 is smaller than the model's stride (32 px)" in capsys.readouterr().err
