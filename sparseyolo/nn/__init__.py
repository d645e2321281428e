"""YOLO blocks (dense `Tensor[B, C, H, W]` in and out, Ultralytics-style `(c1, c2, n=1, ...)` signatures).

Nothing here imports Ultralytics; `sparseyolo.yolo` registers every class named in `YAML_MODULES` with its model
parser.
"""

from sparseyolo.nn.base import Channels, YamlBlock, YamlContext, make_divisible
from sparseyolo.nn.common import Chunk, FuseAdd, Pick
from sparseyolo.nn.crossover import default_crossover, set_crossover
from sparseyolo.nn.dff import DFFNeck, dff_necks, set_neck_mode
from sparseyolo.nn.sparse_blocks import (
    DenseMasked,
    SBottleneck,
    SC2f,
    SConv,
    SparseBlock,
    SparseStem,
    set_export_dense,
    site_mask,
)
from sparseyolo.nn.sparse_neck import NearestUp, SConcat, SUpsample, as_dense, conv_module_sparse

__all__ = [  # fmt: skip
    "Channels",
    "YamlBlock",
    "YamlContext",
    "make_divisible",
    "Chunk",
    "FuseAdd",
    "Pick",
    "DFFNeck",
    "dff_necks",
    "set_neck_mode",
    "SparseBlock",
    "SparseStem",
    "SConv",
    "SBottleneck",
    "SC2f",
    "set_export_dense",
    "DenseMasked",
    "site_mask",
    "NearestUp",
    "SConcat",
    "SUpsample",
    "as_dense",
    "conv_module_sparse",
    "default_crossover",
    "set_crossover",
    "link_sparse_outputs",
]

# Block classes usable by name in model YAMLs (the parser registry reads this).
YAML_MODULES = [
    *("Chunk", "FuseAdd", "Pick", "DFFNeck"),
    *("SparseStem", "SConv", "SBottleneck", "SC2f", "SUpsample", "SConcat"),
]


def link_sparse_outputs(layers, froms) -> None:
    """Let sparse blocks hand `SparseConvTensor`s on: block i gets `dense_out=False` when every layer
    that reads its output (`froms[j]` is i, or -1 with j == i + 1, or a list containing either) accepts sparse
    inputs (`accepts_sparse`: sparse blocks, `SConcat`, a sparse Detect), and it is not the last layer.
    `layers`: the layer list, `froms`: their `from`s."""
    n = len(layers)
    for i, layer in enumerate(layers):
        if not isinstance(layer, SparseBlock):
            continue
        consumers = []
        for j in range(i + 1, n):
            f = froms[j]
            fs = [f] if isinstance(f, int) else list(f)
            if any((x == -1 and j == i + 1) or (x >= 0 and x == i) or (x < -1 and j + x == i) for x in fs):
                consumers.append(j)
        sparse_ok = bool(consumers) and all(getattr(layers[j], "accepts_sparse", False) for j in consumers)
        layer.dense_out = not sparse_ok
