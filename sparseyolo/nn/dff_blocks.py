"""The DFF neck's convolution blocks: `ConvBN` (BatchNorm folded in eval) and `FusionBlock`, the residual fusion step
that runs densely, on a subset of hidden channels, or at gated pixels only on the sparse engine."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from sparseyolo.nn.common import folded_once, forget_fold
from sparseyolo.sparse import functional as SF


class ConvBN(nn.Module):
    """`k x k` conv ('same' padding, no bias) -> BatchNorm -> SiLU. In eval mode BN is folded into the conv (once:
    `nn.common.folded_once`, again when a weight or BN statistic changes or `train()` is called)."""

    def __init__(self, c1: int, c2: int, k: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, 1, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)

    def folded(self) -> tuple[Tensor, Tensor]:
        """Eval-mode weight `(c2, c1, k, k)` and bias `(c2,)` with BatchNorm folded in."""
        return folded_once(self, self.conv.weight, None, self.bn)

    def train(self, mode: bool = True):
        forget_fold(self)
        return super().train(mode)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return F.silu(self.bn(self.conv(x)))
        w, b = self.folded()
        return F.silu(F.conv2d(x, w, b, 1, self.conv.padding))


class FusionBlock(nn.Module):
    """The residual increment `cv2(cv1(x))` of one fusion step (3x3 ConvBN `c -> c_ -> c`); the neck adds it to
    `x`, scaled by its gate. In eval mode it can run on a subset of hidden channels and at chosen pixels only."""

    def __init__(self, c: int, e: float = 1.0):
        super().__init__()
        self.c, self.c_ = c, max(1, int(c * e))
        self.cv1 = ConvBN(c, self.c_, 3)
        self.cv2 = ConvBN(self.c_, c, 3)

    def forward(self, x: Tensor, channel_mult: Tensor | None = None) -> Tensor:
        """Training/dense: `x (B, c, H, W)`, optional `channel_mult (B, c_)` on the hidden channels."""
        h = self.cv1(x)
        if channel_mult is not None:
            h = h * channel_mult[:, :, None, None]
        return self.cv2(h)

    def _weights(self, channels: Tensor | None):
        w1, b1 = self.cv1.folded()
        w2, b2 = self.cv2.folded()
        if channels is not None:
            w1, b1, w2 = w1[channels], b1[channels], w2[:, channels]
        return w1, b1, w2, b2

    def run_dense(self, x: Tensor, channels: Tensor | None = None) -> Tensor:
        """Eval: the increment on `x (B, c, H, W)`, hidden channels restricted to `channels` (index tensor)."""
        w1, b1, w2, b2 = self._weights(channels)
        return F.silu(F.conv2d(F.silu(F.conv2d(x, w1, b1, 1, 1)), w2, b2, 1, 1))

    def run_at(self, x: Tensor, mask: Tensor, channels: Tensor | None = None) -> tuple[Tensor, Tensor, float]:
        """Eval: the increment at the pixels of `mask (B, H, W) bool` only, read from the dense map `x`.

        The first conv runs at the mask dilated by one pixel (all that the second conv reads at the mask), its
        rows are put back into a zeroed channels-last hidden map, and the second conv runs at the mask's pixels;
        both as `conv2d_at_sites` (the taps gathered, one GEMM). Equals `run_dense` at the mask's pixels.
        Returns `sites (N, 3) int32` (the mask's pixels, row-major), `rows (N, c)` and the FLOPs executed."""
        w1, b1, w2, b2 = self._weights(channels)
        B, _, H, W = x.shape
        near = first_conv_pixels(mask)
        s1, s0 = near.nonzero().int(), mask.nonzero().int()
        h = F.silu(SF.conv2d_at_sites(x, w1, s1, padding=1) + b1)  # (N1, c_)
        hidden = x.new_zeros(B, H, W, h.shape[1])
        hidden[s1[:, 0].long(), s1[:, 1].long(), s1[:, 2].long()] = h
        y = F.silu(SF.conv2d_at_sites(hidden.permute(0, 3, 1, 2), w2, s0, padding=1) + b2)
        return s0, y, float(self.flops(s1.shape[0], s0.shape[0], w1.shape[0]))

    def flops(self, sites1: float | Tensor, sites0: float | Tensor, hidden: int) -> float | Tensor:
        """Dense FLOPs with `hidden` channels, the first conv at `sites1` pixels and the second at `sites0`."""
        return 2 * 9 * self.c * hidden * (sites1 + sites0)


def first_conv_pixels(mask: Tensor) -> Tensor:
    """Where `FusionBlock.run_at` runs its first conv for the gates `mask (B, H, W) bool`: the mask dilated by one
    pixel (all that the second conv's 3x3 reads at the mask), `(B, H, W) bool`."""
    return F.max_pool2d(mask[:, None].float(), 3, 1, 1)[:, 0] > 0
