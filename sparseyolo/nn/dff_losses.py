"""The DFF neck's policy losses: the compute budget (on average and per level) and decision smoothness."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def efficiency_loss(ratio: Tensor, level_share: Tensor, budget: float) -> Tensor:
    """The budget holds on average, not per image: `(mean(ratio) - budget)^2`, so an image that gains from more
    fusion can buy it from one that does not; plus, per level, `relu(mean(level_share) - budget)^2`, so the saving
    cannot come from the cheap coarse levels alone. `ratio (B,)` expected neck FLOPs over all-on; `level_share
    (B, L)` expected block FLOPs of each level over its all-on blocks."""
    whole = (ratio.mean() - budget) ** 2
    return whole + F.relu(level_share.mean(0) - budget).pow(2).sum()


def smoothness(desc: Tensor, decisions: Tensor | None) -> Tensor:
    """Similar images -> similar decisions: the mean squared decision difference over image pairs, weighted by
    the positive cosine similarity of their descriptors `desc (B, F)`. `decisions (B, K)` soft probabilities."""
    if decisions is None or desc.shape[0] < 2:
        return desc.new_zeros(())
    z = F.normalize(desc, dim=1)
    sim = (z @ z.t()).clamp_min(0)
    sim = sim - torch.diag_embed(torch.diagonal(sim))
    diff = torch.cdist(decisions, decisions) ** 2 / decisions.shape[1]
    return (sim * diff).sum() / sim.sum().clamp_min(1e-6)
