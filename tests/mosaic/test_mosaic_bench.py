"""`sparseyolo bench mosaic` at a toy size: one method in its own process, the table and CSV written with AP,
wall time and peak memory; bad options refused."""

from __future__ import annotations

import csv

import pytest

from sparseyolo.bench import main as bench_main


def test_bench_mosaic_smoke(tmp_path, small_mosaic, capsys):
    out = tmp_path / "res"
    args = [
        "mosaic",
        "--size",
        "1024",
        "--tile",
        "512",
        "--fg",
        "0.03",
        "--window",
        "512",
        "--models",
        "",
        "--methods",
        "windows",
        "--workers",
        "",
        "--data",
        str(small_mosaic.parent),
        "--out",
        str(out),
    ]
    assert bench_main(args) == 0
    rows = list(csv.DictReader((out / "mosaic.csv").open()))
    assert len(rows) == 1 and rows[0]["model"] == "yolov8n-aerial" and rows[0]["method"] == "mosaic windows"
    assert 0.0 < float(rows[0]["map50"]) <= 1.0 and float(rows[0]["seconds"]) > 0 and float(rows[0]["peak_mib"]) > 100
    assert "| yolov8n-aerial | mosaic windows |" in (out / "mosaic.md").read_text()


@pytest.mark.parametrize("bad", [["--methods", "dense"], ["--size", "100"], ["--workers", "one"]])
def test_bench_mosaic_bad_options(bad, capsys):
    with pytest.raises(SystemExit) as e:
        bench_main(["mosaic", *bad])
    assert e.value.code == 2
