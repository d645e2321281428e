"""Offline: train 1 epoch, val, predict, reload -> train, resume, CLI; our model/trainer classes and
extra loss columns survive every path."""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sparseyolo import YOLO
from sparseyolo.yolo import SparseDetectionModel, SparseDetectionTrainer
from sparseyolo.yolo.cli import main as cli_main

COMMON = dict(epochs=1, imgsz=64, batch=4, workers=0, device="cpu", plots=False, amp=False, exist_ok=True)
EXTRA = ("mask_loss", "active")


def _check_trainer(trainer):
    assert type(trainer) is SparseDetectionTrainer
    assert type(trainer.model) is SparseDetectionModel
    assert trainer.loss_names == ("box_loss", "cls_loss", "dfl_loss", *EXTRA)
    assert all(math.isfinite(float(v)) for v in trainer.tloss.values())
    assert set(trainer.validator.loss) == set(trainer.loss_names)  # the validator sums the same columns


@pytest.fixture(scope="module")
def trained(tiny_data, runs_dir):
    model = YOLO("yolov8n-sparse.yaml")
    model.train(data=str(tiny_data), project=str(runs_dir), name="first", **COMMON)
    _check_trainer(model.trainer)
    return model, Path(model.trainer.best)


def test_train_keeps_extra_losses(trained):
    model, best = trained
    assert best.is_file()
    assert type(model.model) is SparseDetectionModel


def test_val_and_predict_from_checkpoint(trained, tiny_data):
    _, best = trained
    m = YOLO(str(best))
    assert type(m.model) is SparseDetectionModel and m.model.sparseyolo_version
    metrics = m.val(data=str(tiny_data), imgsz=64, batch=4, workers=0, device="cpu", plots=False)
    assert 0.0 <= metrics.box.map50 <= 1.0
    img = next((tiny_data.parent / "images" / "val").glob("*.png"))
    res = m.predict(str(img), imgsz=64, device="cpu", verbose=False)
    assert len(res) == 1 and res[0].boxes is not None


def test_reload_then_train(trained, tiny_data, runs_dir):
    _, best = trained
    m = YOLO(str(best))
    m.train(data=str(tiny_data), project=str(runs_dir), name="again", **COMMON)
    _check_trainer(m.trainer)


def test_resume(tiny_data, runs_dir):
    class Stop(Exception):
        pass

    def stop_after_first_save(trainer):
        raise Stop

    m = YOLO("yolov8n-sparse.yaml")
    m.add_callback("on_model_save", stop_after_first_save)
    with pytest.raises(Stop):
        m.train(data=str(tiny_data), project=str(runs_dir), name="resume", **{**COMMON, "epochs": 2})
    last = runs_dir / "resume" / "weights" / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["epoch"] == 0 and ckpt["optimizer"] is not None
    r = YOLO(str(last))
    r.train(resume=True)
    _check_trainer(r.trainer)
    assert r.trainer.start_epoch == 1 and r.trainer.epoch == 1


def test_cli_modes(trained, tiny_data, runs_dir, capsys):
    _, best = trained
    base = ["epochs=1", "imgsz=64", "batch=4", "workers=0", "device=cpu", "plots=False", "amp=False"]
    assert (
        cli_main(
            [
                "train",
                "model=yolov8n-sparse.yaml",
                f"data={tiny_data}",
                f"project={runs_dir}",
                "name=cli",
                "exist_ok=True",
                "sparsify=gradient",
                "sparsify_threshold=0.05",
                "sparsify_keep=0.5",
                *base,
            ]
        )
        == 0
    )
    stem = YOLO(str(runs_dir / "cli" / "weights" / "best.pt")).model.model[0].sparsify
    assert (stem.method, stem.threshold, stem.keep) == ("gradient", 0.05, 0.5)
    assert (
        cli_main(
            [
                "val",
                f"model={best}",
                f"data={tiny_data}",
                "imgsz=64",
                "batch=4",
                "workers=0",
                "device=cpu",
                "plots=False",
            ]
        )
        == 0
    )
    img = next((tiny_data.parent / "images" / "val").glob("*.png"))
    assert (
        cli_main(
            [
                "predict",
                f"model={best}",
                f"source={img}",
                "imgsz=64",
                "device=cpu",
                f"project={runs_dir}",
                "name=pred",
                "exist_ok=True",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert cli_main(["train", "model=yolov8n-sparse.yaml", "epoch=3"]) == 2
    assert "unknown argument 'epoch' (did you mean epochs" in capsys.readouterr().err
    assert cli_main(["trian"]) == 2
    assert cli_main(["train", "model=nope-sparse.yaml", f"data={tiny_data}", *base]) == 1
    assert "not found" in capsys.readouterr().err


def test_checkpoint_from_other_version(tmp_path, trained):
    """A checkpoint pickling a class this version lacks: a RuntimeError that names the class."""
    _, best = trained
    ckpt = torch.load(best, weights_only=False)
    p = tmp_path / "future.pt"
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    data = buf.getvalue()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            content = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                content = content.replace(b"SparseDetectionModel", b"SparseDetectionMode2")
            zout.writestr(item, content)
    with pytest.raises(RuntimeError, match="SparseDetectionMode2"):
        YOLO(str(p))


def test_sparsify_settings_api(trained):
    _, best = trained
    m = YOLO(str(best), sparsify={"method": "learned", "keep": 0.2, "dilate": 1})
    s = m.model.model[0].sparsify
    assert (s.method, s.keep, s.dilate) == ("learned", 0.2, 1) and s.head is not None
    assert m.model.yaml["backbone"][0][3][3:7] == ["learned", 0.0, 0.2, 1]
    with pytest.raises(ValueError, match="unknown sparsify method 'edge'"):
        YOLO("yolov8n-sparse.yaml", sparsify="edge")
    with pytest.raises(ValueError, match="no SparseStem"):
        YOLO("yolov8n.yaml", sparsify="gradient")
    with pytest.raises(ValueError, match="unknown sparsify setting"):
        YOLO("yolov8n-sparse.yaml", sparsify={"ratio": 0.1})


def test_predict_bad_images_have_defined_results(trained, tmp_path):
    """RGBA, grayscale, all-black and odd-sized image files: Ultralytics' loaders make them 3-channel
    letterboxed tensors; the sparse stem then sees no active pixel (black) or a normal image."""
    from PIL import Image

    _, best = trained
    rng = np.random.default_rng(0)
    files = {
        "rgba.png": Image.fromarray(rng.integers(0, 255, (70, 90, 4), dtype=np.uint8), "RGBA"),
        "gray.png": Image.fromarray(rng.integers(0, 255, (61, 83), dtype=np.uint8), "L"),
        "black.png": Image.fromarray(np.zeros((64, 64, 3), np.uint8)),
        "odd.png": Image.fromarray(rng.integers(0, 255, (37, 101, 3), dtype=np.uint8)),
    }
    for name, im in files.items():
        im.save(tmp_path / name)
    m = YOLO(str(best))
    res = m.predict([str(tmp_path / n) for n in files], imgsz=64, device="cpu", verbose=False)
    assert [r.orig_shape for r in res] == [(70, 90), (61, 83), (64, 64), (37, 101)]
    black = res[2]
    assert black.boxes is not None
    with pytest.raises(FileNotFoundError, match="offline"):
        YOLO("yolov8n.pt")
