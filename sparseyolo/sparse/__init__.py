"""The sparse convolution engine (torch only; nothing here imports YOLO or Ultralytics).

`SparseConvTensor` + spconv-compatible modules; functional ops in `sparseyolo.sparse.functional`.

Modules: `tensor` (SparseConvTensor), `functional` (the ops), `modules` (nn.Modules, one functional call each);
internal: `args` (argument checks), `kmap` (coordinate lookup, kernel maps), `cache` (the kernel-map cache and
`indice_key`), `core` (gather -> GEMM -> scatter with autograd), `_ext` (the compiled kernels' loader).
"""

from sparseyolo.sparse import functional
from sparseyolo.sparse.modules import (
    SparseAvgPool1d,
    SparseAvgPool2d,
    SparseAvgPool3d,
    SparseBatchNorm,
    SparseConv1d,
    SparseConv2d,
    SparseConv3d,
    SparseConvTranspose1d,
    SparseConvTranspose2d,
    SparseConvTranspose3d,
    SparseGlobalAvgPool,
    SparseGlobalMaxPool,
    SparseIdentity,
    SparseInverseConv1d,
    SparseInverseConv2d,
    SparseInverseConv3d,
    SparseLeakyReLU,
    SparseMaxPool1d,
    SparseMaxPool2d,
    SparseMaxPool3d,
    SparseModule,
    SparseReLU,
    SparseSequential,
    SparseSiLU,
    SubMConv1d,
    SubMConv2d,
    SubMConv3d,
    ToDense,
)
from sparseyolo.sparse.tensor import SparseConvTensor

__all__ = [
    "SparseConvTensor",
    "functional",
    "SparseModule",
    "SparseSequential",
    "SparseBatchNorm",
    "SparseReLU",
    "SparseSiLU",
    "SparseLeakyReLU",
    "SparseIdentity",
    "ToDense",
    "SparseGlobalMaxPool",
    "SparseGlobalAvgPool",
    "SubMConv1d",
    "SubMConv2d",
    "SubMConv3d",
    "SparseConv1d",
    "SparseConv2d",
    "SparseConv3d",
    "SparseConvTranspose1d",
    "SparseConvTranspose2d",
    "SparseConvTranspose3d",
    "SparseInverseConv1d",
    "SparseInverseConv2d",
    "SparseInverseConv3d",
    "SparseMaxPool1d",
    "SparseMaxPool2d",
    "SparseMaxPool3d",
    "SparseAvgPool1d",
    "SparseAvgPool2d",
    "SparseAvgPool3d",
]
