"""FLOP accounting of the DFF neck (`DFFNeck`), per image, 2 FLOPs per multiply-add as `torch.utils.flop_counter`
counts convolutions, linear layers and matmuls: what every image pays (`fixed_flops`), the all-on reference of the
FLOP ratio and the training budget (`all_on_flops`), a fusion block under pixel gates (`_gated_flops`) and the
last forward's total (`flops`). The forward adds the cost of each decision it takes to its image's count
(`DFFNeck._levels`, `last_stats["gflops"]`); tests check the counts against the FLOP counter."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sparseyolo.nn.dff_blocks import first_conv_pixels


class NeckFlops:
    """The `DFFNeck` methods that count FLOPs (a mixin: they read the neck's widths and settings)."""

    def fixed_flops(self, sizes: list[tuple[int, int]], mode: str, disabled=frozenset()) -> float:
        """FLOPs every image pays in `mode`: laterals, complexity, routing, feature gate (+ controller, pixel
        gates and channel importance in `dynamic`), less the `disabled` parts."""
        c, L, D = self.c, self.L, self.d_max
        f = sum(2 * h * w * ci * c for (h, w), ci in zip(sizes, self.c1s, strict=True))
        f += linear_flops(self.complexity_head)
        if "routing" not in disabled:
            f += 2 * 2 * L * c * self.dk + 2 * L * L * self.dk  # q, k projections; q k^T
            f += 2 * L * 2 * c * c  # feature gate
        if mode == "dynamic" and D > 0:
            if "depth" not in disabled:
                f += linear_flops(self.controller)
            if "pixel" not in disabled:
                f += sum(2 * h * w * c for h, w in sizes[: self.spatial])
            if self.importance is not None:
                f += 2 * L * c * c
        return float(f)

    def level_block_flops(self, sizes: list[tuple[int, int]]) -> list[float]:
        """FLOPs of each level's fusion blocks, all on (`d_max` blocks of two 3x3 convs at `c` channels)."""
        return [float(self.d_max * 2 * 9 * self.c * self.c * 2 * h * w) for h, w in sizes]

    def all_on_flops(self, sizes: list[tuple[int, int]]) -> float:
        """FLOPs of one image in `all_on` mode: the reference of `ratio` and of the training budget."""
        return self.fixed_flops(sizes, "all_on") + sum(self.level_block_flops(sizes))

    def _gated_flops(self, blk, ms: Tensor | None, hw: int) -> Tensor | float:
        """Per-image FLOPs inference spends on `blk` under pixel gates `ms (B, 1, H, W)` (dense when none)."""
        dense = float(blk.flops(hw, hw, self.hidden))
        if ms is None:
            return dense
        mask = ms.detach()[:, 0] != 0
        n0 = mask.sum((1, 2)).double().cpu()
        near = first_conv_pixels(mask).sum((1, 2)).double().cpu()
        sparse = blk.flops(near, n0, self.hidden)  # as `FusionBlock.run_at` runs it
        return torch.where(n0 > self.sparse_density * hw, torch.full_like(n0, dense), sparse)

    def flops(self) -> float:
        """FLOPs the last forward executed, summed over its batch (`last_stats["gflops"]`; 0 before any)."""
        return float(self.last_stats["gflops"].sum()) * 1e9 if self.last_stats else 0.0


def linear_flops(module: nn.Module) -> int:
    """FLOPs of one row through every `nn.Linear` of `module` (2 per multiply-add)."""
    return 2 * sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))
