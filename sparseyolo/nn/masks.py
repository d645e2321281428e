"""Boolean pixel masks `bool[B, H, W]` in torch: top share, dilation, block expansion (traceable to ONNX), and
boxes rasterised to a grid (the supervision target of learned masks and gates).

Shared by the sparsifier (`sparseyolo.nn.sparsify`), the foreground finder (`sparseyolo.nn.finder`) and the DFF
neck's pixel gates (`sparseyolo.nn.dff`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def topk_mask(score: Tensor, fraction: float) -> Tensor:
    """`bool[B, H, W]`: the `round(fraction * H * W)` highest-scoring pixels of each image of `score (B, H, W)`."""
    B, H, W = score.shape
    k = min(int(H * W), max(1, int(fraction * H * W + 0.5)))  # int(): a constant when traced for export
    idx = score.reshape(B, -1).topk(k, dim=1).indices
    ones = torch.ones(idx.shape, dtype=torch.float32, device=score.device)  # float scatter: traceable to ONNX
    out = torch.zeros(B, H * W, dtype=torch.float32, device=score.device).scatter(1, idx, ones)
    return (out > 0).view(B, H, W)


def expand_mask(mask: Tensor, stride: int, shape: tuple[int, int]) -> Tensor:
    """`bool[B, h, w]` on a grid of `stride`-pixel blocks -> `bool[B, H, W]` (blocks repeated, cropped to `shape`)."""
    if stride == 1:
        return mask[:, : shape[0], : shape[1]]
    B, h, w = mask.shape
    up = mask[:, :, None, :, None].expand(B, h, stride, w, stride).reshape(B, h * stride, w * stride)  # traceable
    return up[:, : shape[0], : shape[1]]


def dilate_mask(mask: Tensor, r: int) -> Tensor:
    """Grow a boolean `(B, H, W)` mask by `r` pixels (square neighbourhood): a separable OR of shifted copies,
    ~50x faster than a (2r+1)^2 max-pool on CPU at full resolution."""
    if r <= 0:
        return mask
    B, H, W = mask.shape
    padded = F.pad(mask.reshape(B, 1, H, W).to(torch.uint8), (r, r, r, r)).view(B, H + 2 * r, W + 2 * r).bool()
    rows = padded[:, :, 0:W]
    for k in range(1, 2 * r + 1):
        rows = rows | padded[:, :, k : k + W]  # out of place: ONNX has no in-place OR
    out = rows[:, 0:H]
    for k in range(1, 2 * r + 1):
        out = out | rows[:, k : k + H]
    return out


def boxes_to_mask(
    batch_idx: Tensor, bboxes: Tensor, batch_size: int, shape: tuple[int, int], dilate: int = 0
) -> Tensor:
    """Rasterise normalised xywh `bboxes (N, 4)` of images `batch_idx` into a float `(B, H, W)` 0/1 mask."""
    H, W = shape
    out = torch.zeros(batch_size, H, W, device=bboxes.device)
    if bboxes.numel():
        ys = (torch.arange(H, device=bboxes.device, dtype=torch.float32) + 0.5) / H
        xs = (torch.arange(W, device=bboxes.device, dtype=torch.float32) + 0.5) / W
        x0, y0 = bboxes[:, 0] - bboxes[:, 2] / 2, bboxes[:, 1] - bboxes[:, 3] / 2
        x1, y1 = bboxes[:, 0] + bboxes[:, 2] / 2, bboxes[:, 1] + bboxes[:, 3] / 2
        # pixels overlapping the box (so a box smaller than a pixel still marks one)
        iny = (ys[None] + 0.5 / H > y0[:, None]) & (ys[None] - 0.5 / H < y1[:, None])  # (N, H)
        inx = (xs[None] + 0.5 / W > x0[:, None]) & (xs[None] - 0.5 / W < x1[:, None])  # (N, W)
        per_box = (iny[:, :, None] & inx[:, None, :]).float()  # (N, H, W)
        out.index_add_(0, batch_idx.long().view(-1), per_box)
    return dilate_mask(out > 0, dilate).float() if dilate else (out > 0).float()
