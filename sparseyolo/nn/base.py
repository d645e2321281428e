"""The model-YAML protocol of SparseYOLO blocks, independent of any Ultralytics internals.

A block that defines a classmethod `yaml_args(args, ctx) -> (args, c2, n)` is given its input channels and the
model's width/depth scaling by the parser, just like Ultralytics' built-in blocks (see `sparseyolo.yolo`, the
only place that connects this protocol to Ultralytics' parser).

- `args`: the YAML row's argument list (strings already evaluated), e.g. `[128, True]`.
- `ctx`: a `YamlContext` with the channel list `ch`, the `from` field `f`, the depth-scaled repeat count `n`,
  `width`, `max_channels`, `depth` and the scale letter.
- returns the constructor arguments, the output channels `c2` (an int, or `Channels` for several outputs), and
  the number of copies the parser should stack in an `nn.Sequential` (1 when the block repeats internally).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def make_divisible(x: float, divisor: int = 8) -> int:
    """Smallest multiple of `divisor` that is >= `x` (Ultralytics' rounding of scaled widths)."""
    return int(math.ceil(x / divisor) * divisor)


class Channels(int):
    """Output channels of a block with several outputs: an int (the sum) that also carries `parts`.

    Select one output with `Pick(i)` in the YAML; `Pick` reads `parts[i]` for its channel count.
    """

    parts: tuple[int, ...]

    def __new__(cls, parts):
        parts = tuple(int(p) for p in parts)
        obj = super().__new__(cls, sum(parts))
        obj.parts = parts
        return obj

    def __repr__(self):
        return f"Channels{self.parts}"


@dataclass(frozen=True)
class YamlContext:
    ch: list
    f: int | list
    n: int
    width: float = 1.0
    max_channels: float = float("inf")
    depth: float = 1.0
    scale: str = ""

    @property
    def c_in(self):
        """Input channels: `ch[f]`, or a list of them when `f` is a list."""
        return self.ch[self.f] if isinstance(self.f, int) else [self.ch[x] for x in self.f]

    def width_scaled(self, c: int) -> int:
        """Output channels scaled like Ultralytics' built-in blocks: min(c, max)*width, rounded up to 8."""
        return make_divisible(min(c, self.max_channels) * self.width, 8)


class YamlBlock:
    """Mixin: the default protocol, identical to Ultralytics' handling of `Conv`/`C2f`-like blocks.

    `(c1, c2, *rest)` constructor; `c1` from the input layer, `c2 = args[0]` width-scaled. Set
    `yaml_repeats = True` when the third constructor argument is a repeat count `n` (like `C2f`).
    """

    yaml_repeats = False

    @classmethod
    def yaml_args(cls, args: list, ctx: YamlContext):
        c1 = ctx.c_in
        if not isinstance(c1, int):
            raise ValueError(f"{cls.__name__} takes one input, got from={ctx.f}")
        c2 = ctx.width_scaled(args[0])
        args = [c1, c2, *args[1:]]
        n = ctx.n
        if cls.yaml_repeats:
            args.insert(2, n)
            n = 1
        return args, c2, n
