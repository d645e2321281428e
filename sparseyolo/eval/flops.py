"""Executed FLOPs of one forward of a YOLO detection model on a real input.

The model runs once, layer by layer. Blocks that count their own FLOPs report what their forward executed
(`flops()`): a sparse block analytically at the active sites it ran on (2 * kernel-map pairs * C_in * C_out /
groups per conv: its gather/GEMM/scatter kernels are not seen by the counter), or its dense path's convs when it
switched to it; a DFF neck its per-image count (`DFFNeck.last_stats["gflops"]`, tested against the counter). A
sparse Detect's levels are counted here (`sparse_head_flops`). Every other layer, and a sparse stem's sparsifier
(a finder's or a mask head's dense convs), is counted by `torch.utils.flop_counter.FlopCounterMode` on the ops it
runs. A multiply-add counts 2 FLOPs.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

# YOLOv8 layer groups (indices of Ultralytics' yolov8.yaml, kept by SparseYOLO's YAMLs)
GROUPS = (("stem 0-4", range(0, 5)), ("backbone 5-9", range(5, 10)), ("neck 10-21", range(10, 22)))


def group_of(i: int, n_layers: int) -> str:
    if i == n_layers - 1:
        return "head"
    for name, rng in GROUPS:
        if i in rng:
            return name
    return "other"


def _sconv_like(module) -> SimpleNamespace:
    """An `nn.Conv2d` (or a `Conv`'s `.conv`) as `conv_flops` reads an `SConv`: stride 1, 'same' padding (as
    `conv_module_sparse` runs it)."""
    c = module if isinstance(module, torch.nn.Conv2d) else module.conv
    k, d = c.kernel_size[0], c.dilation[0]
    return SimpleNamespace(k=k, s=1, p=d * (k // 2), d=d, g=c.groups, c1=c.in_channels, c2=c.out_channels)


def sparse_head_flops(head, x: list) -> float:
    """A `SparseDetect` on inputs `x` with sparse levels: those levels' branches analytically at their sites, the
    dense levels' convs as the counter counts them, and DFL decoding over the anchors it decodes (the active ones)."""
    from sparseyolo.nn import as_dense, site_mask
    from sparseyolo.nn.sparse_blocks import conv_flops, dense_conv_flops
    from sparseyolo.sparse import SparseConvTensor

    total, anchors = 0.0, 0
    for i, v in enumerate(x):
        convs = [_sconv_like(m) for m in (*head.cv2[i], *head.cv3[i])]
        if isinstance(v, SparseConvTensor):
            mask = site_mask(v)
            total += sum(conv_flops(c, mask)[0] for c in convs)
            anchors += v.num_active
        else:
            d = as_dense(v)
            total += sum(dense_conv_flops(c, d.shape) for c in convs)
            anchors += d.shape[0] * d.shape[-2] * d.shape[-1]
    return total + 2.0 * 4 * head.reg_max * anchors


@contextmanager
def _counted(module):
    """Counts the calls of `module` (None: nothing) with the counter, from its forward pre-hook to its forward
    hook; yields a namespace with their `flops` and the last call's `output`."""
    got = SimpleNamespace(flops=0.0, output=None, fc=None)

    def enter(*_):
        got.fc = FlopCounterMode(display=False).__enter__()

    def leave(_, args, out):
        got.fc.__exit__(None, None, None)
        got.flops, got.output, got.fc = got.flops + float(got.fc.get_total_flops()), out, None

    hooks = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)] if module is not None else []
    try:
        yield got
    finally:
        for h in hooks:
            h.remove()
        if got.fc is not None:  # the module raised
            got.fc.__exit__(None, None, None)


@torch.no_grad()
def executed_flops(model, x: Tensor, upto: int | None = None) -> dict:
    """Executed FLOPs of `model` (an Ultralytics DetectionModel, eval mode) on `x (B, 3, H, W)`, over its layers
    `0 .. upto-1` (default: all).

    Returns `{"total": float, "groups": {group: float}, "layers": {i: float}, "active": float | None,
    "mask": bool[B, H, W] | None}`; `mask` is the sparse stem's active mask on `x` (None for a dense model) and
    `active` its kept fraction of input pixels. A sparse layer that runs its dense path (above the crossover
    density, or in export mode) counts that path's convs, as run. When no image has an active pixel, nothing after
    the stem runs (`SparseDetectionModel`'s early exit) and nothing is counted."""
    from sparseyolo.nn import DFFNeck, SparseBlock, SparseStem
    from sparseyolo.sparse import SparseConvTensor
    from sparseyolo.yolo.sparse_detect import SparseDetect

    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"executed_flops expects an input batch Tensor[B, C, H, W], got {getattr(x, 'shape', x)}")
    layers, y, active, stem_mask, stop = {}, [], None, None, False
    n = len(model.model)
    for m in model.model:
        if stop or (upto is not None and m.i >= upto):
            break
        if m.f != -1:
            x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
        if isinstance(m, SparseDetect) and any(isinstance(v, SparseConvTensor) for v in x):
            layers[m.i] = sparse_head_flops(m, x)  # compact inference: some level runs sparse
            x = m(x)
        elif isinstance(m, (SparseBlock, DFFNeck)):  # they count what they execute
            with _counted(getattr(m, "sparsify", None)) as sparsifier:  # a stem's: counted, its mask kept
                x = m(x)
            layers[m.i] = m.flops() + sparsifier.flops
            if isinstance(m, SparseStem):
                stem_mask = sparsifier.output[0]
                active = float(stem_mask.float().mean())
                stop = active == 0.0 and not m.export_dense and not model.training  # the early exit
        else:
            with FlopCounterMode(display=False) as fc:
                x = m(x)
            layers[m.i] = float(fc.get_total_flops())
        y.append(x if m.i in model.save else None)
    groups: dict[str, float] = {}
    for i, f in layers.items():
        g = group_of(i, n)
        groups[g] = groups.get(g, 0.0) + f
    return {"total": sum(layers.values()), "groups": groups, "layers": layers, "active": active, "mask": stem_mask}
