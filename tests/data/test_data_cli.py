"""`sparseyolo data {fetch,aerial,synth}` (`sparseyolo.data.cli.main`, also `python -m sparseyolo.data`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sparseyolo.data.aerial import SCENES
from sparseyolo.data.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_synth_builds_then_reuses(tmp_path, capsys):
    args = ["synth", "--out", tmp_path / "syn", "--images", 3, "--size", "96x64", "--fg", 0.1, "--object-size", "4-12"]
    rc, out, err = run(capsys, *args, "--clutter", 0.01, "--seed", 2)
    assert rc == 0, err
    assert f"data: {tmp_path / 'syn' / 'data.yaml'}" in out and "train: 2 images" in out and "val: 1 images" in out
    p = json.loads((tmp_path / "syn" / "build.json").read_text())["params"]
    assert (p["width"], p["height"], p["size"], p["fg"], p["clutter"], p["seed"]) == (96, 64, [4, 12], 0.1, 0.01, 2)
    rc, out, err = run(capsys, *args, "--clutter", 0.01, "--seed", 2)
    assert rc == 0 and "reused" in out and "train: 2 images" in out
    rc, out, err = run(capsys, *args)  # other parameters: refused, with the difference named
    assert rc == 1 and err.startswith("sparseyolo data: error: ") and "clutter 0.01 there, 0.0 here" in err
    assert "Traceback" not in err
    rc, out, err = run(capsys, *args, "--force", "--count", 2, "--object-size", 5)
    assert rc == 0, err
    p = json.loads((tmp_path / "syn" / "build.json").read_text())["params"]
    assert p["count"] == 2 and p["size"] == [5, 5] and p["fg"] is None


@pytest.mark.parametrize(
    "argv, rc, message",
    [
        (["synth", "--out", "X", "--size", "640"], 2, "argument --size: expected WIDTHxHEIGHT"),
        (["synth", "--out", "X", "--object-size", "8-16-32"], 2, "argument --object-size: expected MIN-MAX"),
        (["synth", "--out", "X", "--images", "many"], 2, "argument --images: invalid int value"),
        (["synth", "--images", "3"], 2, "the following arguments are required: --out"),
        (["synth", "--out", "X", "--fg", "1.5"], 1, "sparseyolo data: error: fg must be a fraction in [0, 1), got 1.5"),
        (["synth", "--out", "X", "--size", "64x32", "--object-size", "8-48"], 1, "does not fit in a 32x64 image"),
        (["aerial", "--out", "X", "--tile", "8"], 1, "sparseyolo data: error: tile must be an int >= 32"),
        (["aerial", "--out", "X", "--val-scenes", "nowhere"], 2, "'nowhere' matches no scene"),
        (["aerial", "--out", "X", "--val-scenes", "YELL"], 2, "'YELL' matches several scenes"),
        (["aerial", "--out", "X", "--val-scenes", ",".join(SCENES)], 1, "val_scenes must be a non-empty proper subset"),
        (["nonsense"], 2, "invalid choice: 'nonsense'"),
        ([], 2, "sparseyolo data: error"),
    ],
)
def test_bad_usage_gives_a_message_and_an_exit_code(tmp_path, capsys, monkeypatch, argv, rc, message):
    monkeypatch.chdir(tmp_path)
    got, out, err = run(capsys, *argv)
    assert got == rc and message in err and "Traceback" not in err
    assert err.lstrip().startswith("usage: sparseyolo data") if rc == 2 else err.startswith("sparseyolo data: error:")
    assert not (tmp_path / "X").exists()


def test_help_exits_zero(capsys):
    rc, out, _ = run(capsys, "synth", "--help")
    assert rc == 0 and "usage: sparseyolo data synth" in out and "--object-size MIN-MAX" in out


def test_aerial_small_tile(tmp_path, capsys, fake_scenes):
    argv = ["aerial", "--out", tmp_path / "aer", "--tile", 48, "--overlap", 0.25, "--val-scenes", "OSBS,SOAP"]
    rc, out, err = run(capsys, *argv, "--min-visible", 0.6)
    assert rc == 0, err
    root = tmp_path / "aer"
    assert f"data: {root / 'data.yaml'}" in out and f"whole validation scenes: {root / 'full.yaml'}" in out
    assert "train:" in out and "slivers" in out  # the report summary
    p = json.loads((root / "build.json").read_text())["params"]
    assert p == {"format": p["format"], "tile": 48, "overlap": 0.25, "min_visible": 0.6, "val_scenes": list(SCENES[2:])}
    assert sorted(x.stem for x in (root / "images" / "full").glob("*.png")) == ["OSBS_029", "SOAP_061"]
    rc, out, err = run(capsys, *argv, "--min-visible", 0.6)
    assert rc == 0 and "reused" in out and "train:" in out
    rc, out, err = run(capsys, *argv)  # min_visible 0.5 now: another build
    assert rc == 1 and "other parameters" in err and "--force" in err
    rc, out, err = run(capsys, *argv, "--force")
    assert rc == 0 and json.loads((root / "build.json").read_text())["params"]["min_visible"] == 0.5


def test_aerial_real_build_is_reused(aerial_build, capsys):
    rc, out, err = run(capsys, "aerial", "--out", aerial_build.parent)
    assert rc == 0, err
    assert "reused" in out and "full: 1 images, 279 boxes" in out and f"data: {aerial_build}" in out


def test_fetch(capsys, monkeypatch, tmp_path):
    import sparseyolo.data.aerial as aerial
    import sparseyolo.data.lidar as lidar

    monkeypatch.setattr(lidar, "lidar_files", lambda: [tmp_path / "a.las", tmp_path / "b.laz"])
    monkeypatch.setattr(aerial, "aerial_files", lambda: [tmp_path / "x.png"])
    rc, out, err = run(capsys, "fetch")
    assert (
        rc == 0 and f"LiDAR samples: 2 files in {tmp_path}" in out and f"aerial samples: 1 files in {tmp_path}" in out
    )

    def offline():
        raise RuntimeError("could not download 'deepforest==2.1.0' from the package index")

    monkeypatch.setattr(aerial, "aerial_files", offline)
    rc, out, err = run(capsys, "fetch")
    assert rc == 1 and err.startswith("sparseyolo data: error: could not download") and "Traceback" not in err


def test_python_dash_m_entry_point(tmp_path):
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "sparseyolo.data", "synth", "--out", str(tmp_path / "x"), "--size", "wide"],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
    )
    assert proc.returncode == 2 and "sparseyolo data synth: error: argument --size" in proc.stderr
