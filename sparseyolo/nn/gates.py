"""Per-image on/off decisions that train by relaxation and execute as a real skip at inference.

A gate turns logits into a probability-like `p` in [0, 1] and a *multiplier*: the factor the gated path's output
is scaled by. The multiplier is exactly 0 where the path is skipped, so inference may leave that path out and get
the same numbers as training's dense computation.

- `ste` (straight-through): `p = sigmoid(logit / T)`; multiplier `1[p > threshold]` forward, `dp` backward.
- `gumbel`: as `ste`, with logistic noise added to the logits in training (binary Gumbel-softmax, hard).
- `retanh`: `p = max(0, tanh(logit))` (exact zeros without sampling); multiplier `p * 1[p > threshold]`.

`T` (temperature) scales the relaxation; a training curriculum anneals it. `threshold` in [0, 1) is the inference
knob a calibration moves to meet a compute budget (0.5 for `ste`/`gumbel`, 0 for `retanh`: the trained policy).
"""

from __future__ import annotations

import torch
from torch import Tensor

GATES = ("ste", "gumbel", "retanh")
DEFAULT_THRESHOLD = {"ste": 0.5, "gumbel": 0.5, "retanh": 0.0}


def check_gate(kind: str) -> str:
    if kind not in GATES:
        raise ValueError(f"unknown gate {kind!r}; expected one of {', '.join(GATES)}")
    return kind


def check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0.0 <= t < 1.0:
        raise ValueError(
            f"gate threshold must lie in [0, 1) (a threshold of 1 or more would disable every gated path), got {t}"
        )
    return t


def gate_probability(logits: Tensor, kind: str, temperature: float = 1.0, noise: bool = False) -> Tensor:
    """`p` in [0, 1], same shape as `logits`. `noise` adds logistic noise (the `gumbel` relaxation in training)."""
    if kind == "retanh":
        return torch.tanh(logits).clamp_min(0.0)
    if kind == "gumbel" and noise:
        u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
        logits = logits + torch.log(u) - torch.log1p(-u)
    return torch.sigmoid(logits / temperature)


def gate_multiplier(p: Tensor, kind: str, threshold: float) -> Tensor:
    """The factor a gated path is scaled by: 0 where it is skipped. Straight-through for `ste`/`gumbel`."""
    on = (p > threshold).to(p.dtype)
    if kind == "retanh":
        return p * on
    return on + (p - p.detach()) if p.requires_grad else on


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """`hard` forward, gradient of `soft` backward."""
    return hard + (soft - soft.detach()) if soft.requires_grad else hard
