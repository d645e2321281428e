"""Sparse `nn.Module`s (spconv-compatible names and arguments, PyTorch weight layouts).

Each module's `forward` is one call into `sparseyolo.sparse.functional`. The 1D/2D/3D classes set `ndim` (and a
pool's `mode`) on their family's class (`_SubMConvNd`, ...), which documents them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sparseyolo.sparse import functional as SF
from sparseyolo.sparse.args import as_tuple, check_ndim
from sparseyolo.sparse.tensor import SparseConvTensor


class SparseModule(nn.Module):
    """Marker: takes and returns `SparseConvTensor` (`SparseSequential` passes the tensor itself)."""


class _SparseConvNd(SparseModule):
    ndim: int = 0
    subm = transposed = inverse = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        indice_key=None,
        output_padding=0,
        algo=None,
        fp32_accum=None,
        name=None,
    ):
        super().__init__()
        del algo, fp32_accum, name  # spconv tuning knobs, meaningless on this engine
        D = self.ndim
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(f"{type(self).__name__}: channels must be positive, got {in_channels}, {out_channels}")
        if groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{type(self).__name__}: in_channels {in_channels} and out_channels {out_channels} "
                f"must both be divisible by groups={groups}"
            )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = as_tuple(kernel_size, D, "kernel_size", 1)
        self.stride = as_tuple(stride, D, "stride", 1)
        self.padding = as_tuple(padding, D, "padding", 0)
        self.dilation = as_tuple(dilation, D, "dilation", 1)
        self.output_padding = as_tuple(output_padding, D, "output_padding", 0)
        if self.subm and any(s != 1 for s in self.stride):
            raise ValueError(f"{type(self).__name__} keeps the input sites: stride must be 1, got {self.stride}")
        self.indice_key = indice_key
        if self.transposed or self.inverse:
            shape = (in_channels, out_channels // groups, *self.kernel_size)
        else:
            shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As `torch.nn.ConvNd`: Kaiming-uniform weight, uniform bias in +-1/sqrt(fan_in)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * math.prod(self.kernel_size)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def _check(self, x) -> None:
        check_ndim(x, self.ndim, type(self).__name__)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if not self.subm and not self.inverse:
            s += f", stride={self.stride}, padding={self.padding}"
        if any(d != 1 for d in self.dilation):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.indice_key is not None:
            s += f", indice_key={self.indice_key!r}"
        return s + ("" if self.bias is not None else ", bias=False")


class _SubMConvNd(_SparseConvNd):
    """Submanifold conv: output sites = input sites (padding is implied: kernel // 2 * dilation)."""

    subm = True

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        self._check(x)
        return SF.subm_conv(x, self.weight, self.bias, self.dilation, self.groups, self.indice_key)


class _SparseConvNdRegular(_SparseConvNd):
    """Regular sparse conv: sites dilate (stride 1) or downsample (stride > 1) as dense conv would."""

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        self._check(x)
        return SF.sparse_conv(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups, self.indice_key
        )


class _SparseConvTransposeNd(_SparseConvNd):
    """Transposed sparse conv; weight `(C_in, C_out // groups, *kernel)` as `nn.ConvTransposeNd`."""

    transposed = True

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        self._check(x)
        return SF.sparse_conv_transpose(
            x,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.dilation,
            self.groups,
            self.indice_key,
        )


class _SparseInverseConvNd(_SparseConvNd):
    """Undo the strided conv that used `indice_key`: back to its input sites with its map transposed."""

    inverse = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        indice_key,
        bias: bool = True,
        groups: int = 1,
        **spconv_kwargs,
    ):
        if indice_key is None:
            raise ValueError(f"{type(self).__name__} needs the indice_key of the strided conv it inverts")
        super().__init__(
            in_channels, out_channels, kernel_size, groups=groups, bias=bias, indice_key=indice_key, **spconv_kwargs
        )

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        self._check(x)
        return SF.sparse_inverse_conv(x, self.weight, self.bias, self.indice_key, self.groups)


class SubMConv1d(_SubMConvNd):
    ndim = 1


class SubMConv2d(_SubMConvNd):
    ndim = 2


class SubMConv3d(_SubMConvNd):
    ndim = 3


class SparseConv1d(_SparseConvNdRegular):
    ndim = 1


class SparseConv2d(_SparseConvNdRegular):
    ndim = 2


class SparseConv3d(_SparseConvNdRegular):
    ndim = 3


class SparseConvTranspose1d(_SparseConvTransposeNd):
    ndim = 1


class SparseConvTranspose2d(_SparseConvTransposeNd):
    ndim = 2


class SparseConvTranspose3d(_SparseConvTransposeNd):
    ndim = 3


class SparseInverseConv1d(_SparseInverseConvNd):
    ndim = 1


class SparseInverseConv2d(_SparseInverseConvNd):
    ndim = 2


class SparseInverseConv3d(_SparseInverseConvNd):
    ndim = 3


class _SparsePoolNd(SparseModule):
    """Sparse max (`mode` "max": `functional.sparse_max_pool`) or average pooling (`sparse_avg_pool`)."""

    ndim: int = 0
    mode: str = "max"

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, indice_key=None, algo=None):
        super().__init__()
        del algo
        D = self.ndim
        self.kernel_size = as_tuple(kernel_size, D, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else as_tuple(stride, D, "stride", 1)
        self.padding = as_tuple(padding, D, "padding", 0)
        self.dilation = as_tuple(dilation, D, "dilation", 1)
        self.indice_key = indice_key

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        check_ndim(x, self.ndim, type(self).__name__)
        pool = SF.sparse_max_pool if self.mode == "max" else SF.sparse_avg_pool
        return pool(x, self.kernel_size, self.stride, self.padding, self.dilation, self.indice_key)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class SparseMaxPool1d(_SparsePoolNd):
    ndim, mode = 1, "max"


class SparseMaxPool2d(_SparsePoolNd):
    ndim, mode = 2, "max"


class SparseMaxPool3d(_SparsePoolNd):
    ndim, mode = 3, "max"


class SparseAvgPool1d(_SparsePoolNd):
    ndim, mode = 1, "avg"


class SparseAvgPool2d(_SparsePoolNd):
    ndim, mode = 2, "avg"


class SparseAvgPool3d(_SparsePoolNd):
    ndim, mode = 3, "avg"


class SparseGlobalMaxPool(SparseModule):
    """Max over each batch entry's active sites -> dense `(B, C)`."""

    def forward(self, x: SparseConvTensor) -> Tensor:
        return SF.global_max_pool(x)


class SparseGlobalAvgPool(SparseModule):
    """Mean over each batch entry's active sites -> dense `(B, C)`."""

    def forward(self, x: SparseConvTensor) -> Tensor:
        return SF.global_avg_pool(x)


class ToDense(SparseModule):
    """`SparseConvTensor` -> dense `(B, C, *spatial)`."""

    def forward(self, x: SparseConvTensor) -> Tensor:
        return SF.to_dense(x)


class _FeatureWise(SparseModule):
    """Applies the wrapped row-wise op to `features` and keeps the sites."""

    def forward(self, x):
        if isinstance(x, SparseConvTensor):
            return x.replace_feature(super().forward(x.features))
        return super().forward(x)


class SparseBatchNorm(_FeatureWise, nn.BatchNorm1d):
    """`nn.BatchNorm1d` over the active sites' features (statistics over sites, not the dense map)."""

    def forward(self, x):
        if isinstance(x, SparseConvTensor) and x.num_active == 0:
            return x  # no statistics to take; nothing to normalise
        return super().forward(x)


class SparseReLU(_FeatureWise, nn.ReLU):
    """ReLU on the features."""


class SparseSiLU(_FeatureWise, nn.SiLU):
    """SiLU on the features."""


class SparseLeakyReLU(_FeatureWise, nn.LeakyReLU):
    """LeakyReLU on the features."""


class SparseIdentity(_FeatureWise, nn.Identity):
    """Identity."""


class SparseSequential(nn.Sequential):
    """`nn.Sequential` for sparse tensors.

    Sparse modules get the tensor; any other module (e.g. `nn.BatchNorm1d`, `nn.ReLU`, `nn.Linear`) is applied
    to its `features`.
    """

    def forward(self, x):
        for module in self:
            if isinstance(x, SparseConvTensor) and not isinstance(module, (SparseModule, SparseSequential)):
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and x.num_active == 0:
                    continue
                x = x.replace_feature(module(x.features))
            else:
                x = module(x)
        return x
