"""YOLO blocks (dense `Tensor[B, C, H, W]` in and out, Ultralytics-style `(c1, c2, n=1, ...)` signatures).

Nothing here imports Ultralytics; `sparseyolo.yolo` registers every class in `__all__` with its model parser.
"""

from sparseyolo.nn.base import Channels, YamlBlock, YamlContext, make_divisible
from sparseyolo.nn.common import Chunk, FuseAdd, Pick

__all__ = ["Channels", "YamlBlock", "YamlContext", "make_divisible", "Chunk", "FuseAdd", "Pick"]

# Block classes usable by name in model YAMLs (the parser registry reads this).
YAML_MODULES = ["Chunk", "FuseAdd", "Pick"]
