"""Sparse versions of YOLOv8's first backbone stages: `SparseStem`, `SConv`, `SBottleneck`, `SC2f`.

Each block mirrors an Ultralytics block (same constructor signature, same submodule names and weight shapes:
`conv.weight`, `bn.*`, `cv1`, `cv2`, `m.0...`), so a dense checkpoint's state dict loads into the sparse model
unchanged. On a fully active input the output equals the dense block's; on a sparse input, inactive sites stay
exactly zero (a dense Conv would put `act(bn(0))` there).

Input: a dense `Tensor[B, C, H, W]` (active sites = non-zero pixels; `SparseStem` chooses them with a
`Sparsifier`) or a `SparseConvTensor` from the previous sparse block. Output: a dense tensor with exactly the
dense block's shape when `dense_out` is True (the default), else a `SparseConvTensor` for the next sparse
block.
A model parser (see `sparseyolo.yolo`) sets `dense_out=False` where every consumer is a sparse block.

Export mode (`set_export_dense(model, True)`): the same weights run as dense ops with masks, giving the same
numbers as the sparse path (inactive sites zero) in a graph that traces to ONNX.
"""

from __future__ import annotations

from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseyolo.nn.base import YamlBlock, YamlContext
from sparseyolo.nn.common import folded_once, forget_fold
from sparseyolo.nn.crossover import resolve as resolve_crossover
from sparseyolo.nn.sparsify import Sparsifier
from sparseyolo.sparse import SparseBatchNorm, SparseConvTensor
from sparseyolo.sparse import functional as SF


def autopad(k: int, p: int | None = None, d: int = 1) -> int:
    """'Same' padding, as Ultralytics' `autopad` for int kernels."""
    if d > 1:
        k = d * (k - 1) + 1
    return k // 2 if p is None else p


class DenseMasked:
    """Carrier between blocks on the dense path (export, or above the crossover density): dense features
    `x (B, C, H, W)` (zeros at inactive sites) and a float `mask (B, 1, H, W)`, or None when every site is active
    (then nothing is multiplied)."""

    __slots__ = ("x", "mask")

    def __init__(self, x: Tensor, mask: Tensor | None):
        self.x, self.mask = x, mask

    @classmethod
    def from_sparse(cls, x: SparseConvTensor) -> DenseMasked:
        """The dense form of a 2D sparse tensor; the mask marks its sites exactly."""
        if x.num_active == x.batch_size * x.spatial_shape[0] * x.spatial_shape[1]:
            return cls(x.dense(), None)
        return cls(x.dense(), site_mask(x).unsqueeze(1).to(x.features.dtype))


Sites = namedtuple("Sites", "indices spatial_shape batch_size")  # a 2D sparse tensor's sites, without features


def site_mask(x: SparseConvTensor | Sites) -> Tensor:
    """Bool `(B, H, W)` marking the sites of a 2D sparse tensor."""
    B, (H, W) = x.batch_size, x.spatial_shape
    mask = torch.zeros(B, H, W, dtype=torch.bool, device=x.indices.device)
    b, yy, xx = x.indices.to(torch.int64).unbind(1)
    mask[b, yy, xx] = True
    return mask


def to_sparse(x, c1: int, name: str) -> SparseConvTensor:
    if isinstance(x, SparseConvTensor):
        c = x.features.shape[1]
    elif isinstance(x, Tensor) and x.dim() == 4:
        c = x.shape[1]
    else:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} expects Tensor[B, {c1}, H, W] or a SparseConvTensor, got {got}")
    if c != c1:
        raise ValueError(f"{name} expects {c1} input channels, got {c}")
    return x if isinstance(x, SparseConvTensor) else SparseConvTensor.from_dense(x)


def to_masked(x, c1: int, name: str) -> DenseMasked:
    if isinstance(x, DenseMasked):
        return x
    if isinstance(x, SparseConvTensor):
        return DenseMasked.from_sparse(x)
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != c1:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} expects Tensor[B, {c1}, H, W], got {got}")
    return DenseMasked(x, (x.abs().sum(1, keepdim=True) > 0).to(x.dtype))


def conv_flops(conv, mask: Tensor) -> tuple[float, Tensor]:
    """Executed FLOPs of one sparse conv (`SConv`-like: k, s, p, d, g, c1, c2) at the sites of `mask (B, H, W)`:
    2 * kernel-map pairs * c1 * c2 / g; and its output sites."""
    m, ones = mask[:, None].float(), torch.ones(1, 1, conv.k, conv.k, device=mask.device)
    if conv.k == 1 and conv.s == 1:
        pairs, out = m.sum(), mask
    elif conv.s == 1:  # submanifold: pairs between active sites only
        cnt = F.conv2d(m, ones, padding=conv.p, dilation=conv.d)
        pairs, out = (cnt * m).sum(), mask
    else:  # strided: every output whose window holds an active input
        cnt = F.conv2d(m, ones, stride=conv.s, padding=conv.p, dilation=conv.d)
        pairs, out = cnt.sum(), cnt[:, 0] > 0
    return 2.0 * float(pairs) * conv.c1 * conv.c2 / conv.g, out


def dense_conv_flops(conv, shape: torch.Size) -> float:
    """FLOPs of the dense conv (`SConv`-like) on an input of `shape (B, C, H, W)`, as `FlopCounterMode` counts
    them: 2 * B * H_out * W_out * c2 * c1 / g * k * k."""
    Ho, Wo = ((n + 2 * conv.p - conv.d * (conv.k - 1) - 1) // conv.s + 1 for n in shape[-2:])
    return float(2 * shape[0] * Ho * Wo * conv.c2 * (conv.c1 // conv.g) * conv.k * conv.k)


class SparseBlock(YamlBlock, nn.Module):
    """Common base: `dense_out`, export mode, the dense switch, the forward of the conv blocks (their
    `forward_sparse` / `forward_masked`) and the FLOPs their last forward executed (`flops()`).

    The dense switch: in inference, a sparse input whose occupancy (active sites / all sites) is above
    `crossover` runs the dense masked path instead (same numbers, see `DenseMasked`), and so do the blocks after
    it. `crossover` None: `default_crossovers`, resolved once for the model (`sparseyolo.nn.crossover.resolve`).
    """

    accepts_sparse = True
    _ran = None  # what the last forward ran on: its input's sites, a mask, or the input shape (dense path)

    def __init__(self):
        super().__init__()
        self.dense_out = True
        self.export_dense = False
        self.crossover: float | None = None

    def switch_dense(self, density: float, device: torch.device) -> bool:
        """True when this block should run its dense path at `density` (inference only)."""
        if self.training:
            return False
        if self.crossover is not None:
            return density > self.crossover
        table = self.__dict__.get("default_crossovers") or resolve_crossover(self)
        return density > table.get(device.type, table[""])

    def carrier(self, x, name: str):
        """`x` as this block will run it: a `DenseMasked` (export, dense input carrier, or above the crossover)
        or a `SparseConvTensor`."""
        if self.export_dense or isinstance(x, DenseMasked):
            x = to_masked(x, self.c1, name)
        else:
            x = to_sparse(x, self.c1, name)
            x = DenseMasked.from_sparse(x) if self.switch_dense(x.density, x.features.device) else x
        self._ran = x.x.shape if isinstance(x, DenseMasked) else Sites(x.indices, x.spatial_shape, x.batch_size)
        return x

    # --- FLOPs executed by the last forward: what `carrier` (or a stem's forward) recorded in `_ran` ----------
    def flops(self) -> float:
        """FLOPs the last forward executed (2 per multiply-add): analytic at the active sites it ran on
        (`flops_at`), or the dense path's convs as `torch.utils.flop_counter` counts them (`dense_conv_flops`)."""
        ran = self._ran
        if isinstance(ran, torch.Size):  # the dense path, on an input of this shape (composites: stride-1 convs)
            return sum((dense_conv_flops(c, ran) for c in self.modules() if isinstance(c, SConv)), 0.0)
        return 0.0 if ran is None else self.flops_at(ran if isinstance(ran, Tensor) else site_mask(ran))[0]

    def flops_at(self, mask: Tensor) -> tuple[float, Tensor]:
        """FLOPs at the sites of `mask (B, H, W)` (its convs all keep the sites: stride 1) and the output mask."""
        return sum((c.flops_at(mask)[0] for c in self.modules() if isinstance(c, SConv)), 0.0), mask

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_ran", None)  # the last forward's sites: not part of a checkpoint
        return state

    def finish(self, y):
        if not self.dense_out:
            return y
        if isinstance(y, DenseMasked):
            return y.x
        return y.dense()

    def forward(self, x):
        """`forward_sparse` or, on the dense path, `forward_masked` (the blocks' own); dense out by `dense_out`."""
        x = self.carrier(x, type(self).__name__)
        return self.finish(self.forward_masked(x) if isinstance(x, DenseMasked) else self.forward_sparse(x))


class SConv(SparseBlock):
    """Sparse `Conv` (conv -> BN -> SiLU): `(c1, c2, k=1, s=1, p=None, g=1, d=1, act=True)`.

    k=1, s=1: a per-site linear map; s=1: a submanifold conv (sites kept, 'same' padding required); s>1: a
    strided sparse conv on the same output grid as the dense conv.
    """

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, d=1, act=True):
        super().__init__()
        if not isinstance(k, int):
            raise ValueError(f"SConv supports square int kernels, got k={k}")
        p = autopad(k, p, d)
        if s == 1 and p != d * (k // 2):
            raise ValueError(f"SConv with stride 1 is submanifold and needs 'same' padding {d * (k // 2)}, got {p}")
        self.c1, self.c2, self.k, self.s, self.p, self.g, self.d = c1, c2, k, s, p, g, d
        self.conv = nn.Conv2d(c1, c2, k, s, p, groups=g, dilation=d, bias=False)  # weight storage (dense layout)
        self.bn = SparseBatchNorm(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU() if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    flops_at = conv_flops  # `flops()` at the sites of one conv

    def _folded(self) -> tuple[Tensor, Tensor | None]:
        """Conv weight and bias with an inference-mode BatchNorm folded in (`bn` None then); folded once
        (`nn.common.folded_once`), again when a weight or BN statistic changes or `train()` is called."""
        bn = self.bn
        if self.training or bn.training or bn.running_var is None:
            return self.conv.weight, None
        return folded_once(self, self.conv.weight, None, bn)

    def train(self, mode: bool = True):
        forget_fold(self)
        return super().train(mode)

    def _post(self, f: Tensor, bias: Tensor | None) -> Tensor:
        """BatchNorm (folded into `bias` in inference) and activation of this conv's own fresh output `f`."""
        if bias is None:
            return self.act(self.bn.forward(f)) if f.shape[0] else f
        if f.requires_grad:
            return self.act(f + bias)
        f.add_(bias)  # no autograd graph: update in place (saves two feature-sized buffers per conv)
        return F.silu(f, inplace=True) if isinstance(self.act, nn.SiLU) else self.act(f)

    def forward_sparse(self, x: SparseConvTensor) -> SparseConvTensor:
        w, bias = self._folded()
        if self.k == 1 and self.s == 1 and self.g == 1:
            y = x.replace_feature(F.linear(x.features, w.flatten(1)))
        elif self.s == 1:
            y = SF.subm_conv(x, w, None, self.d, self.g)
        else:
            y = SF.sparse_conv(x, w, None, self.s, self.p, self.d, self.g)
        return y.replace_feature(self._post(y.features, bias))

    def forward_from_dense(self, x: Tensor, mask: Tensor, zero_outside: bool = False) -> SparseConvTensor:
        """Sparse conv of a dense `x (B, C, H, W)` restricted to `mask (B, H, W)` (other pixels count as zero).

        Same result as `forward_sparse(SparseConvTensor.from_dense(x, mask))`, computed without building the
        input's sparse tensor or kernel map: output sites are the dense max-pool of the mask; their receptive
        fields are read straight from the dense image (`sparse.functional.conv2d_at_sites`). Meant for the first
        layer, where the input is a dense image with few channels. `zero_outside=True` promises `x` is already
        zero off the mask (the `nonzero` method without a budget), which skips the mask lookup.
        """
        B, C, H, W = x.shape
        k, s, p, d = self.k, self.s, self.p, self.d
        if self.g != 1:
            return self.forward_sparse(SparseConvTensor.from_dense(x, mask))
        Ho, Wo = (H + 2 * p - d * (k - 1) - 1) // s + 1, (W + 2 * p - d * (k - 1) - 1) // s + 1
        # output sites: any active input in the window (a max-pool of the mask, as shifted strided ORs)
        mp = F.pad(mask, (p, p + s + d * k, p, p + s + d * k)) if s > 1 else None
        if s == 1:  # submanifold, as `forward_sparse`: output sites = input sites
            om = mask
        else:
            rows = mp[:, 0 : s * Ho : s].clone()  # separable: OR over the window's rows, then its columns
            for ky in range(1, k):
                rows |= mp[:, ky * d : ky * d + s * Ho : s]
            om = rows[:, :, 0 : s * Wo : s].clone()
            for kx in range(1, k):
                om |= rows[:, :, kx * d : kx * d + s * Wo : s]
        idx = om.nonzero().to(torch.int32)  # (N, 3) b, y, x in row-major order
        w, bias = self._folded()
        feats = SF.conv2d_at_sites(x, w, idx, s, p, d, mask=None if zero_outside else mask)  # (N, c2)
        return SparseConvTensor(self._post(feats, bias), idx, (Ho, Wo), B, check=False)

    def forward_masked(self, x: DenseMasked) -> DenseMasked:
        w, bias = self._folded()
        y = F.conv2d(x.x, w, bias, self.s, self.p, self.d, self.g)
        if bias is None:  # training: BatchNorm in inference form (this path serves export and the dense switch)
            bn = self.bn
            y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        m = x.mask
        if m is not None and self.s > 1:
            m = F.max_pool2d(m, self.k, self.s, self.p, self.d)
        y = self.act(y)
        return DenseMasked(y if m is None else y * m, m)


class SBottleneck(SparseBlock):
    """Sparse `Bottleneck` (two submanifold convs, optional residual): `(c1, c2, shortcut=True, g=1, k=(3, 3),
    e=0.5)`."""

    def __init__(self, c1, c2, shortcut=True, g=1, k=(3, 3), e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.c1 = c1
        self.cv1 = SConv(c1, c_, k[0], 1)
        self.cv2 = SConv(c_, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward_sparse(self, x: SparseConvTensor) -> SparseConvTensor:
        y = self.cv2.forward_sparse(self.cv1.forward_sparse(x))
        return y.replace_feature(x.features + y.features) if self.add else y

    def forward_masked(self, x: DenseMasked) -> DenseMasked:
        y = self.cv2.forward_masked(self.cv1.forward_masked(x))
        return DenseMasked(x.x + y.x, y.mask) if self.add else y


class SC2f(SparseBlock):
    """Sparse `C2f`: `(c1, c2, n=1, shortcut=False, g=1, e=0.5)`; all convs keep the input's sites."""

    yaml_repeats = True

    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5):
        super().__init__()
        self.c1 = c1
        self.c = int(c2 * e)
        self.cv1 = SConv(c1, 2 * self.c, 1, 1)
        self.cv2 = SConv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(SBottleneck(self.c, self.c, shortcut, g, k=(3, 3), e=1.0) for _ in range(n))

    def forward_sparse(self, x: SparseConvTensor) -> SparseConvTensor:
        y0 = self.cv1.forward_sparse(x)
        parts = list(y0.features.chunk(2, 1))
        cur = y0.replace_feature(parts[-1])
        for m in self.m:
            cur = m.forward_sparse(cur)
            parts.append(cur.features)
        return self.cv2.forward_sparse(y0.replace_feature(torch.cat(parts, 1)))

    def forward_masked(self, x: DenseMasked) -> DenseMasked:
        y0 = self.cv1.forward_masked(x)
        parts = list(y0.x.chunk(2, 1))
        cur = DenseMasked(parts[-1], y0.mask)
        for m in self.m:
            cur = m.forward_masked(cur)
            parts.append(cur.x)
        return self.cv2.forward_masked(DenseMasked(torch.cat(parts, 1), y0.mask))


class SparseStem(SConv):
    """Dense image in -> sparsify -> strided sparse conv (conv -> BN -> SiLU) -> sparse out (or dense).

    `(c1, c2, k=3, s=2, method='nonzero', threshold=0.0, keep=1.0, dilate=0, max_active=None, target=None)`
    (the YAML args; `sparseyolo.yolo.cfg` reads their positions from this signature). `conv`/`bn` have the
    shapes and names of Ultralytics' `Conv(c1, c2, k, s)`, so it replaces YOLOv8's layer 0.
    See `sparseyolo.nn.sparsify` for the methods. An image with no active pixel gives an all-zero output.
    `last_empty` (`bool[B]`, None in export mode): which images of the last batch had no active pixel (a
    `SparseDetectionModel` skips the rest of the network when all had none, see `sparseyolo.yolo.model`).
    """

    last_empty = None  # class default: checkpoints pickled before it existed load unchanged

    def __init__(
        self, c1, c2, k=3, s=2, method="nonzero", threshold=0.0, keep=1.0, dilate=0, max_active=None, target=None
    ):
        super().__init__(c1, c2, k, s)
        settings = dict(keep=keep, dilate=dilate, max_active=max_active, target=target)
        self.sparsify = Sparsifier(c1, method, threshold, **settings)

    def forward(self, x):
        if not isinstance(x, Tensor) or x.dim() != 4:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"SparseStem expects a dense image batch Tensor[B, {self.c1}, H, W], got {got}")
        if x.shape[1] != self.c1:
            hint = " (alpha channel? convert images to RGB)" if x.shape[1] == 4 else ""
            hint = " (grayscale? convert images to RGB)" if x.shape[1] == 1 else hint
            raise ValueError(f"SparseStem expects {self.c1} input channels, got {x.shape[1]}{hint}")
        mask, gate = self.sparsify(x)
        if gate is not None:
            x = x * gate
        density, self.last_empty, self._ran = None, None, mask
        if not self.export_dense:  # the one sync (sizes need it anyway)
            per_image = mask.flatten(1).float().sum(1)  # (4x faster than a bool sum; exact to 2^24 per image)
            density = float(per_image.sum()) / mask.numel() if mask.numel() else 0.0
            self.last_empty = per_image == 0
            if density == 0.0 and not self.training:  # nothing to look at in any image: no work
                Ho, Wo = ((n + 2 * self.p - self.d * (self.k - 1) - 1) // self.s + 1 for n in x.shape[-2:])
                empty = SparseConvTensor(
                    x.new_zeros(0, self.c2), torch.zeros(0, 3, dtype=torch.int32, device=x.device), (Ho, Wo),
                    x.shape[0], check=False,
                )  # fmt: skip
                return self.finish(empty)
        if self.export_dense or self.switch_dense(density, x.device):
            self._ran = x.shape
            if density == 1.0:  # every pixel active: nothing to mask
                return self.finish(self.forward_masked(DenseMasked(x, None)))
            m = mask.unsqueeze(1).to(x.dtype)
            return self.finish(self.forward_masked(DenseMasked(x * m, m)))
        sp = self.sparsify
        exact = sp.no_budget and sp.dilate == 0
        return self.finish(self.forward_from_dense(x, mask, zero_outside=exact))

    def flops_at(self, mask: Tensor) -> tuple[float, Tensor]:
        """The first conv reads the dense image at its output sites (`conv2d_at_sites`): every in-bounds tap of
        every output site whose window holds an active pixel is multiplied, active or not. `mask (B, H, W)`: the
        sparsifier's. (The sparsifier's own convs, a finder's or a mask head's, are not counted here.)"""
        m, ones = mask[:, None].float(), torch.ones(1, 1, self.k, self.k, device=mask.device)
        out = F.conv2d(m, ones, stride=self.s, padding=self.p, dilation=self.d)[:, 0] > 0
        taps = F.conv2d(torch.ones_like(m[:1]), ones, stride=self.s, padding=self.p, dilation=self.d)[:, 0]
        pairs = (taps * out.float()).sum()  # in-bounds taps
        return 2.0 * float(pairs) * self.c1 * self.c2 / self.g, out

    # aux protocol: forwarded to the sparsifier
    @property
    def aux_names(self):
        return self.sparsify.aux_names

    def pop_aux(self, targets):
        return self.sparsify.pop_aux(targets)

    @classmethod
    def yaml_args(cls, args, ctx: YamlContext):
        args, c2, n = super().yaml_args(args, ctx)
        if n != 1:
            raise ValueError(f"SparseStem cannot be repeated (n={n})")
        return args, c2, 1


def set_export_dense(model: nn.Module, on: bool = True) -> nn.Module:
    """Switch every sparse block of `model` to (or from) the dense masked path used for ONNX export."""
    for m in model.modules():
        if isinstance(m, SparseBlock):
            m.export_dense = on
    return model
