"""Calibration of a `DFFNeck`'s gate threshold to a compute budget: the thresholds tried (`calibration_grid`), the
threshold -> mean executed FLOP ratio curve on calibration images (`ratio_curve`), the choice of the smallest
threshold within a budget, stored with the curve in the neck's buffers (`calibrate_neck`), and the lookup of a
stored calibration (`threshold_for_budget`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from sparseyolo.nn.dff import DFFNeck

CALIBRATION_POINTS = 33


def check_budget(budget: float) -> float:
    b = float(budget)
    if not 0.0 < b <= 1.0:
        raise ValueError(f"budget must be a fraction of the all-on neck FLOPs in (0, 1], got {budget}")
    return b


def calibration_grid() -> Tensor:
    """The thresholds a calibration tries (`CALIBRATION_POINTS`): steps of 0.05 up to 0.8, then ever finer steps
    up to 0.999, where saturated gate probabilities are told apart."""
    coarse = torch.arange(17, dtype=torch.float64) * 0.05  # 0 .. 0.8
    fine = 1 - torch.logspace(math.log10(0.18), -3, CALIBRATION_POINTS - 17, dtype=torch.float64)  # 0.82 .. 0.999
    return torch.cat([coarse, fine]).float()


def first_within(curve: Tensor, budget: float) -> int | None:
    """Index of the first (smallest-threshold) point of `curve (K,)` whose FLOP ratio is within `budget`."""
    ok = (curve <= budget + 1e-9).nonzero()[:, 0]
    return int(ok[0]) if ok.numel() else None


@torch.no_grad()
def ratio_curve(neck: DFFNeck, inputs: list[list[Tensor]], thresholds: Tensor) -> Tensor:
    """Mean executed FLOP ratio of `neck` over `inputs` (each the neck's list of maps for one batch) at each of
    `thresholds (K,)`; the neck's own threshold and mode are restored. Returns `Tensor[K]`."""
    if not inputs:
        raise ValueError("ratio_curve needs at least one input batch")
    old_thr, old_mode, was_training = float(neck.threshold), neck.mode, neck.training
    neck.eval()
    neck.mode = "dynamic"
    out = []
    try:
        for t in thresholds.tolist():
            neck.threshold.fill_(t)
            ratios = []
            for xs in inputs:
                neck(xs)
                ratios.append(neck.last_stats["ratio"])
            out.append(torch.cat(ratios).mean())
    finally:
        neck.threshold.fill_(old_thr)
        neck.mode = old_mode
        neck.train(was_training)
    return torch.stack(out).float()


def calibrate_neck(neck: DFFNeck, inputs: list[list[Tensor]], budget: float) -> dict:
    """Choose the smallest gate threshold whose mean executed FLOP ratio on `inputs` is within `budget` (the most
    compute the budget allows); store it, with the whole threshold -> ratio curve, in the neck's buffers.

    Raises `ValueError` when even the highest threshold stays above the budget."""
    budget = check_budget(budget)
    grid = calibration_grid()
    curve = ratio_curve(neck, inputs, grid)
    i = first_within(curve, budget)
    if i is None:
        raise ValueError(
            f"budget {budget} is out of reach on these images: the lowest mean neck FLOP ratio is "
            f"{float(curve.min()):.3f} (every gated path off); use a budget >= {float(curve.min()):.3f}"
        )
    neck.calib_thresholds.copy_(grid)
    neck.calib_ratios.copy_(curve)
    neck.calib_valid.fill_(True)
    neck.set_threshold(float(grid[i]))
    return {
        "budget": budget,
        "threshold": float(grid[i]),
        "ratio": float(curve[i]),
        "thresholds": grid.tolist(),
        "curve": curve.tolist(),
    }


def threshold_for_budget(neck: DFFNeck, budget: float) -> float:
    """The stored calibration's threshold for `budget` (smallest threshold whose ratio is within it)."""
    budget = check_budget(budget)
    if not bool(neck.calib_valid):
        raise ValueError("budget= needs a calibrated model: run `YOLO(...).calibrate(source=..., budget=...)` first")
    i = first_within(neck.calib_ratios, budget)
    if i is None:
        lo = float(neck.calib_ratios.min())
        raise ValueError(f"budget {budget} is below the lowest calibrated neck FLOP ratio {lo:.3f}")
    return float(neck.calib_thresholds[i])
