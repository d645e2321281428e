"""Shared fixtures: a tiny generated detection dataset (bright boxes on a dark background) in YOLO format."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import sparseyolo
from sparseyolo import settings

os.environ.setdefault("YOLO_VERBOSE", "False")
# Sparse blocks run their sparse path in tests unless a test sets a crossover itself: neither the machine's
# stored crossover nor the built-in default decides what a test exercises.
os.environ.setdefault("SPARSEYOLO_CROSSOVER", "1")
settings.reload()
# The tests run with the integration on, installed before any Ultralytics import (test_integration.py checks
# importing, enabling and disabling in fresh processes).
sparseyolo.enable()


def make_dataset(root: Path, n_train: int = 8, n_val: int = 4, size: int = 96, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img = np.zeros((size, size, 3), np.uint8)
            lines = []
            for _ in range(int(rng.integers(1, 4))):
                cls = int(rng.integers(0, 2))
                w, h = (int(v) for v in rng.integers(10, size // 3, 2))
                x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                img[y0 : y0 + h, x0 : x0 + w] = (255, 64, 64) if cls == 0 else (64, 255, 64)
                lines.append(f"{cls} {(x0 + w / 2) / size:.6f} {(y0 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
            Image.fromarray(img).save(root / "images" / split / f"{i:03d}.png")
            (root / "labels" / split / f"{i:03d}.txt").write_text("\n".join(lines) + "\n")
    yaml = root / "data.yaml"
    yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: red\n  1: green\n")
    return yaml


def trained_like_yolov8n():
    """Ultralytics' own dense YOLOv8n (seed 0) with non-trivial BatchNorm statistics and affine weights, as after
    training (random init leaves BN an identity that hides errors)."""
    import torch

    from sparseyolo import YOLO

    torch.manual_seed(0)
    d = YOLO("yolov8n.yaml").model
    for m in d.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return d


@pytest.fixture(scope="session")
def make_trained_like_yolov8n():
    """`trained_like_yolov8n`, for fixtures that build their own copy."""
    return trained_like_yolov8n


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")
