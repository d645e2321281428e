"""Dense helper blocks for model YAMLs: several outputs (`Chunk`, `Pick`), several inputs (`FuseAdd`); and
`fold_batchnorm`, the inference-mode Conv+BN folding every block uses (`folded_once`: computed once, reused)."""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseyolo.nn.base import Channels, YamlBlock, YamlContext


def fold_batchnorm(weight: Tensor, bias: Tensor | None, bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Conv `weight (C_out, C_in/g, k, k)` and `bias (C_out,)` (None: zero) with an inference-mode `bn` folded in."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    folded_bias = bn.bias - bn.running_mean * scale
    return weight * scale.view(-1, 1, 1, 1), folded_bias if bias is None else folded_bias + bias * scale


_FOLDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # owner -> (key, folded, source tensors)


def folded_once(owner: nn.Module, weight: Tensor, bias: Tensor | None, bn) -> tuple[Tensor, Tensor]:
    """`fold_batchnorm(weight, bias, bn)`, folded once per `owner` and reused while autograd is off and the
    tensors keep their storage (the old ones are kept alive here) and in-place version: an optimizer step,
    `load_state_dict`, `.to()` or `.half()` fold again, and so does `owner.train()` (`forget_fold`; tensors made
    in inference mode keep no version). With autograd on, or tracing, it folds afresh, as part of the graph."""
    if torch.is_grad_enabled() or torch.jit.is_tracing():
        return fold_batchnorm(weight, bias, bn)
    src = [t for t in (weight, bias, bn.weight, bn.bias, bn.running_mean, bn.running_var) if t is not None]
    key = [(t.data_ptr(), t.device, None if t.is_inference() else t._version) for t in src] + [bn.eps]
    hit = _FOLDS.get(owner)
    if hit is None or hit[0] != key:
        hit = _FOLDS[owner] = (key, fold_batchnorm(weight, bias, bn), src)
    return hit[1]


def forget_fold(owner: nn.Module) -> None:
    _FOLDS.pop(owner, None)


class Chunk(nn.Module):
    """Split `Tensor[B, c1, H, W]` into `k` equal channel groups; returns a list of `k` tensors.

    YAML: `[-1, 1, Chunk, [k]]`; the layer's channels are `Channels([c1 // k] * k)`, select one with `Pick`.
    """

    def __init__(self, c1: int, k: int = 2):
        super().__init__()
        if k < 1 or c1 % k:
            raise ValueError(f"Chunk: input channels {c1} are not divisible into k={k} groups")
        self.c1, self.k = c1, k

    @classmethod
    def yaml_args(cls, args, ctx: YamlContext):
        c1 = ctx.c_in
        if not isinstance(c1, int):
            raise ValueError(f"Chunk takes one input, got from={ctx.f}")
        k = int(args[0]) if args else 2
        return [c1, k], Channels([c1 // k] * k), ctx.n

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(x.chunk(self.k, 1))


class Pick(nn.Module):
    """Select output `index` of a layer that returns several tensors (`Chunk`). YAML: `[-1, 1, Pick, [i]]`."""

    def __init__(self, index: int = 0):
        super().__init__()
        self.index = int(index)

    @classmethod
    def yaml_args(cls, args, ctx: YamlContext):
        c_in = ctx.c_in
        parts = getattr(c_in, "parts", None)
        if parts is None:
            raise ValueError(f"Pick needs an input layer with several outputs (e.g. Chunk), got channels {c_in}")
        index = int(args[0]) if args else 0
        if not -len(parts) <= index < len(parts):
            raise ValueError(f"Pick index {index} out of range for {len(parts)} outputs")
        return [index], parts[index], ctx.n

    def forward(self, x):
        return x[self.index]


class FuseAdd(YamlBlock, nn.Module):
    """Sum several inputs after a 1x1 projection to `c2` channels and nearest resizing to input 0's size.

    YAML: `[[-1, 4], 1, FuseAdd, [c2]]` (c2 width-scaled like built-in blocks).
    """

    def __init__(self, c1s: list[int], c2: int):
        super().__init__()
        self.c1s, self.c2 = list(c1s), c2
        self.proj = nn.ModuleList(nn.Identity() if c == c2 else nn.Conv2d(c, c2, 1, bias=False) for c in self.c1s)

    @classmethod
    def yaml_args(cls, args, ctx: YamlContext):
        c1s = ctx.c_in
        if isinstance(c1s, int):
            raise ValueError(f"FuseAdd takes several inputs (a list 'from'), got from={ctx.f}")
        c2 = ctx.width_scaled(args[0])
        return [list(c1s), c2, *args[1:]], c2, ctx.n

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        if len(xs) != len(self.proj):
            raise ValueError(f"FuseAdd expects {len(self.proj)} inputs, got {len(xs)}")
        size = xs[0].shape[-2:]
        out = None
        for x, p, c in zip(xs, self.proj, self.c1s, strict=True):
            if x.shape[1] != c:
                raise ValueError(f"FuseAdd input has {x.shape[1]} channels, expected {c}")
            y = p(x)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="nearest")
            out = y if out is None else out + y
        return out
