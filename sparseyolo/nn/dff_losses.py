"""The DFF neck's policy losses: the compute budget (on average and per level), decision smoothness, and the
supervision of the policy by the boxes (pixel gates open at objects, complexity read from the object count)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sparseyolo.nn.masks import boxes_to_mask


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


def complexity_target(counts: Tensor, scale: float) -> Tensor:
    """What the complexity estimate is taught to read: `1 - exp(-n / scale)` for `counts (B,)` objects per image
    (0 for an empty image, 0.63 at `scale` objects, near 1 for a crowded one)."""
    if not float(scale) > 0:
        raise ValueError(f"complexity count scale must be > 0, got {scale}")
    return 1.0 - torch.exp(-counts.float() / float(scale))


def complexity_supervision(cx: Tensor, counts: Tensor, scale: float) -> Tensor:
    """Binary cross-entropy of the complexity estimate `cx (B,)` in (0, 1) against `complexity_target`."""
    p = cx.float().clamp(1e-6, 1 - 1e-6)
    return F.binary_cross_entropy(p, complexity_target(counts, scale).to(p.device))


def gate_supervision(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy of pixel-gate logits `(B, 1, H, W)` against `target (B, H, W)` in {0, 1}: open where an
    object is (its box, grown by a margin), shut elsewhere. On the logits, so every gate kind's decision boundary
    (`sigmoid > 0.5`, `tanh > 0`) is the target's edge, whatever the temperature."""
    return F.binary_cross_entropy_with_logits(logits[:, 0].float(), target.to(logits.device).float())


def box_supervision(
    gate_logits: list[Tensor], cx: Tensor, targets: dict, weights: dict, margin: int, scale: float
) -> dict[str, Tensor]:
    """The policy supervised by the boxes (`targets`: `batch_idx (N,)`, normalised xywh `bboxes (N, 4)`,
    `batch_size`), with `weights` of `gate_loss` and `cx_loss` (0: not computed): `gate_loss`, the pixel-gate
    logits `(B, 1, H_l, W_l)` of each gated level against each box grown by `margin` cells of that level;
    `cx_loss`, the complexity estimate `cx (B,)` against `complexity_target(objects per image, scale)`. Without
    boxes in `targets` (a direct call), nothing is supervised."""
    out = {}
    if "bboxes" not in targets:
        return out
    B = int(targets["batch_size"])
    idx, boxes = targets["batch_idx"].view(-1).long(), targets["bboxes"]
    if weights.get("gate_loss") and gate_logits:
        parts = []
        for logits in gate_logits:
            if logits.shape[0] != B:
                raise ValueError(f"DFFNeck supervision: {B} images in the targets, {logits.shape[0]} in the batch")
            fg = boxes_to_mask(idx, boxes, B, tuple(logits.shape[-2:]), dilate=int(margin))
            parts.append(gate_supervision(logits, fg))
        out["gate_loss"] = weights["gate_loss"] * torch.stack(parts).mean()
    if weights.get("cx_loss"):
        counts = torch.bincount(idx.cpu(), minlength=B)[:B] if idx.numel() else torch.zeros(B, dtype=torch.long)
        out["cx_loss"] = weights["cx_loss"] * complexity_supervision(cx, counts.to(cx.device), scale)
    return out
