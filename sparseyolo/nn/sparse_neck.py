"""The sparse P3 path past the stem: YOLOv8's top-down P3 fusion (upsample P4, concat with P3, C2f) at the
active P3 sites only, and a helper that runs a dense `Conv`-like module (conv -> BN -> act) at sparse sites.

- `SUpsample` replaces `nn.Upsample` (layer 13 of yolov8.yaml): it does not materialise the upsampled map; it
  hands on a `NearestUp` carrier that the next `SConcat` reads at the sites it needs.
- `SConcat` replaces `Concat` (layer 14): with a `SparseConvTensor` among its inputs, every other input (dense
  or `NearestUp`, at the same or a coarser resolution) is gathered at that tensor's sites, nearest-neighbour,
  and the features are concatenated -> a `SparseConvTensor` on the same sites. With dense inputs only it is
  `torch.cat` (a `DenseMasked` input keeps its mask: the export / dense-switch path).
- `conv_module_sparse(module, x)`: a module with `conv` (`nn.Conv2d`), `bn` and `act` (Ultralytics' `Conv`,
  `DWConv`) or a bare `nn.Conv2d`, run at the sites of `x` (submanifold, stride 1) with the module's weights.

Nothing here imports Ultralytics. `as_dense` turns any carrier into the dense tensor a dense layer expects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseyolo.nn.base import YamlContext
from sparseyolo.nn.common import folded_once
from sparseyolo.nn.sparse_blocks import DenseMasked, SparseBlock
from sparseyolo.sparse import SparseConvTensor
from sparseyolo.sparse import functional as SF


class NearestUp:
    """Carrier: dense `x (B, C, h, w)` read as its nearest upsampling by the integer `scale` (not built)."""

    __slots__ = ("x", "scale")

    def __init__(self, x: Tensor, scale: int):
        self.x, self.scale = x, scale

    @property
    def shape(self) -> tuple[int, int, int, int]:
        B, C, h, w = self.x.shape
        return B, C, h * self.scale, w * self.scale

    def dense(self) -> Tensor:
        return F.interpolate(self.x, scale_factor=self.scale, mode="nearest")


def as_dense(x):
    """The dense tensor (or list of them) behind any carrier: `SparseConvTensor` (zeros off the sites),
    `DenseMasked`, `NearestUp`; dense tensors pass through."""
    if isinstance(x, (list, tuple)):
        return type(x)(as_dense(v) for v in x)
    if isinstance(x, SparseConvTensor):
        return x.dense()
    if isinstance(x, DenseMasked):
        return x.x
    if isinstance(x, NearestUp):
        return x.dense()
    return x


def gather_at_sites(x: Tensor, indices: Tensor, shape: tuple[int, int]) -> Tensor:
    """Rows `(N, C)` of a dense `x (B, C, h, w)` read at `indices (N, 3)` (batch, y, x) of a finer `shape (H, W)`
    grid, nearest-neighbour (source = floor(y * h / H), as `F.interpolate(mode="nearest")` for integer ratios)."""
    B, C, h, w = x.shape
    H, W = shape
    if H % h or W % w:
        raise ValueError(f"cannot read a {h}x{w} map at the sites of a {H}x{W} grid: not an integer upsampling")
    b, yy, xx = indices.to(torch.int64).unbind(1)
    return x.permute(0, 2, 3, 1)[b, yy // (H // h), xx // (W // w)]  # a strided gather: no dense copy


class SUpsample(nn.Module):
    """`nn.Upsample(None, scale, "nearest")` that defers the work: returns `NearestUp(dense x, scale)`.

    YAML: `[-1, 1, SUpsample, [None, 2, "nearest"]]` (nn.Upsample's args). Read by `SConcat` (or densified).
    """

    accepts_sparse = True  # a sparse input (the P4 path of yolov8-sparse-p34.yaml) is densified first

    def __init__(self, size=None, scale_factor=2, mode="nearest"):
        super().__init__()
        if size is not None or mode != "nearest" or int(scale_factor) != scale_factor or scale_factor < 1:
            raise ValueError(
                f"SUpsample supports nearest upsampling by an integer scale_factor only, got size={size}, "
                f"scale_factor={scale_factor}, mode={mode!r}"
            )
        self.scale = int(scale_factor)

    @classmethod
    def yaml_args(cls, args, ctx: YamlContext):
        c1 = ctx.c_in
        if not isinstance(c1, int):
            raise ValueError(f"SUpsample takes one input, got from={ctx.f}")
        return list(args), c1, 1

    def forward(self, x):
        x = as_dense(x)
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"SUpsample expects Tensor[B, C, H, W], got {getattr(x, 'shape', type(x).__name__)}")
        return NearestUp(x, self.scale)


class SConcat(SparseBlock):
    """`Concat(dimension=1)` at sparse sites: `SparseConvTensor` inputs fix the sites, dense / `NearestUp`
    inputs are gathered there; out: a `SparseConvTensor` with the summed channels (or dense, see module doc).

    YAML: `[[-1, 4], 1, SConcat, [1]]`.
    """

    def __init__(self, dimension: int = 1):
        super().__init__()
        if dimension != 1:
            raise ValueError(f"SConcat concatenates channels (dimension 1), got dimension={dimension}")
        self.d = 1

    @classmethod
    def yaml_args(cls, args, ctx: YamlContext):
        c_in = ctx.c_in
        if isinstance(c_in, int):
            raise ValueError(f"SConcat takes several inputs (a list 'from'), got from={ctx.f}")
        return list(args) or [1], sum(c_in), 1

    def forward(self, xs):
        if not isinstance(xs, (list, tuple)) or not xs:
            raise ValueError(f"SConcat expects a list of inputs, got {type(xs).__name__}")
        sparse = [x for x in xs if isinstance(x, SparseConvTensor)]
        if self.export_dense or not sparse:
            return self.finish(self._dense(xs))
        ref = sparse[0]
        B, H, W = ref.batch_size, *ref.spatial_shape
        parts = []
        for x in xs:
            if isinstance(x, SparseConvTensor):
                if x.indices is not ref.indices and not torch.equal(x.indices, ref.indices):
                    raise ValueError("SConcat: sparse inputs must share their sites (same active positions)")
                parts.append(x.features)
                continue
            d = x.x if isinstance(x, NearestUp) else as_dense(x)
            if not isinstance(d, Tensor) or d.dim() != 4 or d.shape[0] != B:
                raise ValueError(f"SConcat: input of shape {tuple(x.shape)} does not fit the sparse grid {B}x{H}x{W}")
            if isinstance(x, NearestUp) and tuple(x.shape[2:]) != (H, W):
                raise ValueError(f"SConcat: upsampled input is {tuple(x.shape[2:])}, the sparse grid is {(H, W)}")
            parts.append(gather_at_sites(d, ref.indices, (H, W)))
        return self.finish(ref.replace_feature(torch.cat(parts, 1)))

    def _dense(self, xs):
        """All inputs dense: `torch.cat`, keeping the mask of a `DenseMasked` (zero off it)."""
        out = torch.cat([as_dense(x) for x in xs], 1)
        masked = [x for x in xs if isinstance(x, DenseMasked)]
        if not masked:
            return out
        mask = masked[0].mask
        return DenseMasked(out if mask is None else out * mask, mask)


def conv_module_sparse(module: nn.Module, x: SparseConvTensor) -> SparseConvTensor:
    """Run `module` at the sites of `x` (stride 1, 'same' padding: a submanifold conv), same weights.

    `module`: an `nn.Conv2d`, or a block with `conv` (`nn.Conv2d`), `bn` (BatchNorm, batch statistics over the
    active sites in training) and `act`, like Ultralytics' `Conv`/`DWConv`. Features `(N, C_in) -> (N, C_out)`.
    """
    conv = module if isinstance(module, nn.Conv2d) else module.conv
    k, s, d, g = conv.kernel_size[0], conv.stride[0], conv.dilation[0], conv.groups
    if s != 1 or conv.kernel_size[0] != conv.kernel_size[1] or conv.padding[0] != d * (k // 2):
        raise ValueError(f"conv_module_sparse runs stride-1 'same' convs only, got {conv}")
    bn = None if isinstance(module, nn.Conv2d) else getattr(module, "bn", None)
    w, b = conv.weight, conv.bias
    if bn is not None and not bn.training:  # inference: BN folded into the conv (once, `folded_once`)
        w, b = folded_once(module, w, b, bn)
        bn = None
    if k == 1 and g == 1:
        f = F.linear(x.features, w.flatten(1), b)
    else:
        f = SF.subm_conv(x, w, None, d, g).features
        if b is not None:
            f = f + b
    if bn is not None and f.shape[0]:
        f = F.batch_norm(f, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.training, bn.momentum, bn.eps)
    act = None if isinstance(module, nn.Conv2d) else getattr(module, "act", None)
    if act is not None:
        f = act(f)
    return x.replace_feature(f)
