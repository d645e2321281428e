"""Executed FLOPs of one forward of a YOLO detection model on a real input.

Dense layers are counted by `torch.utils.flop_counter.FlopCounterMode` on the ops they run; sparse blocks
analytically from the active sites they actually process (2 * kernel-map pairs * C_in * C_out / groups per
conv), since their gather/GEMM/scatter kernels are not seen by the counter; a DFF neck by its own per-image
count (`DFFNeck.last_stats["gflops"]`, tested against the counter). A multiply-add counts 2 FLOPs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# YOLOv8 layer groups (indices of Ultralytics' yolov8.yaml, kept by SparseYOLO's YAMLs)
GROUPS = (("stem 0-4", range(0, 5)), ("backbone 5-9", range(5, 10)), ("neck 10-21", range(10, 22)))


def group_of(i: int, n_layers: int) -> str:
    if i == n_layers - 1:
        return "head"
    for name, rng in GROUPS:
        if i in rng:
            return name
    return "other"


def _conv_flops(conv, mask: Tensor) -> tuple[float, Tensor]:
    """Executed FLOPs of one sparse conv (`SConv`-like: k, s, p, d, g, c1, c2) on active `mask (B, H, W)`."""
    m = mask[:, None].float()
    k, s, p, d, g = conv.k, conv.s, conv.p, conv.d, conv.g
    if k == 1 and s == 1:
        pairs, out = m.sum(), mask
    elif s == 1:  # submanifold: pairs between active sites only
        cnt = F.conv2d(m, torch.ones(1, 1, k, k), padding=p, dilation=d)
        pairs, out = (cnt * m).sum(), mask
    else:  # strided: every output whose window holds an active input
        cnt = F.conv2d(m, torch.ones(1, 1, k, k), stride=s, padding=p, dilation=d)
        pairs, out = cnt.sum(), cnt[:, 0] > 0
    return 2.0 * float(pairs) * conv.c1 * conv.c2 / g, out


def _stem_flops(stem, mask: Tensor) -> tuple[float, Tensor]:
    """The stem's first conv reads the dense image at its output sites (`conv2d_at_sites`): every in-bounds
    tap of every output site whose window holds an active pixel is multiplied, active or not."""
    m = mask[:, None].float()
    k, s, p, d = stem.k, stem.s, stem.p, stem.d
    ones = torch.ones(1, 1, k, k)
    out = F.conv2d(m, ones, stride=s, padding=p, dilation=d)[:, 0] > 0
    taps = F.conv2d(torch.ones_like(m[:1]), ones, stride=s, padding=p, dilation=d)[:, 0]  # in-bounds taps
    pairs = (taps * out.float()).sum()
    return 2.0 * float(pairs) * stem.c1 * stem.c2 / stem.g, out


def _module_conv_flops(module, mask: Tensor) -> tuple[float, Tensor]:
    """`_conv_flops` for an `nn.Conv2d` or a `Conv`-like module (`.conv`) run at the sites of `mask` (stride 1)."""
    from types import SimpleNamespace

    conv = module if isinstance(module, torch.nn.Conv2d) else module.conv
    k, d = conv.kernel_size[0], conv.dilation[0]
    shape = SimpleNamespace(k=k, s=1, p=d * (k // 2), d=d, g=conv.groups, c1=conv.in_channels, c2=conv.out_channels)
    return _conv_flops(shape, mask)


def sparse_head_flops(head, x: list) -> float:
    """A `SparseDetect` on inputs `x` with sparse levels: those levels' branches analytically at their sites, the
    dense levels by the counter, and DFL decoding over the anchors it decodes (the active ones)."""
    from torch.utils.flop_counter import FlopCounterMode

    from sparseyolo.nn import as_dense, site_mask
    from sparseyolo.sparse import SparseConvTensor

    total, anchors = 0.0, 0
    with FlopCounterMode(display=False) as fc:
        for i, v in enumerate(x):
            if isinstance(v, SparseConvTensor):
                mask = site_mask(v)
                for module in (*head.cv2[i], *head.cv3[i]):
                    total += _module_conv_flops(module, mask)[0]
                anchors += v.num_active
            else:
                d = as_dense(v)
                head.cv2[i](d)
                head.cv3[i](d)
                anchors += d.shape[0] * d.shape[-2] * d.shape[-1]
    return total + float(fc.get_total_flops()) + 2.0 * 4 * head.reg_max * anchors


def sparse_block_flops(block, mask: Tensor) -> tuple[float, Tensor]:
    """Executed FLOPs of a sparse block and its output active mask, from its input active `mask (B, H, W)`."""
    from sparseyolo.nn import SC2f, SConcat, SConv, SparseStem

    if isinstance(block, SparseStem):
        return _stem_flops(block, mask)
    if isinstance(block, SConcat):  # a gather: no arithmetic
        return 0.0, mask
    if isinstance(block, SC2f):
        f, mask = _conv_flops(block.cv1, mask)
        for b in block.m:
            f1, mask = _conv_flops(b.cv1, mask)
            f2, mask = _conv_flops(b.cv2, mask)
            f += f1 + f2
        f2, mask = _conv_flops(block.cv2, mask)
        return f + f2, mask
    if isinstance(block, SConv):
        return _conv_flops(block, mask)
    raise TypeError(f"no FLOP rule for sparse block {type(block).__name__}")


def _sparse_input(m, x):
    """The `SparseConvTensor` that sparse layer `m` runs sparsely on, as its forward decides (None when it runs
    its dense path): a sparse Detect's P3 input, a block's (a dense tensor becomes its non-zero sites)."""
    from sparseyolo.nn import DenseMasked, NearestUp
    from sparseyolo.sparse import SparseConvTensor
    from sparseyolo.yolo.sparse_detect import SparseDetect

    if getattr(m, "export_dense", False):
        return None
    if isinstance(m, SparseDetect):  # compact inference: some level runs sparse
        sp = next((v for v in x if isinstance(v, SparseConvTensor)), None)
    else:
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        if any(isinstance(v, DenseMasked) for v in xs):
            return None
        sp = next((v for v in xs if isinstance(v, SparseConvTensor)), None)
        if sp is None and len(xs) == 1 and isinstance(xs[0], Tensor) and not isinstance(xs[0], NearestUp):
            sp = SparseConvTensor.from_dense(xs[0])
    if sp is None or (hasattr(m, "switch_dense") and m.switch_dense(sp.density, sp.features.device)):
        return None
    return sp


@torch.no_grad()
def executed_flops(model, x: Tensor, upto: int | None = None) -> dict:
    """Executed FLOPs of `model` (an Ultralytics DetectionModel, eval mode) on `x (B, 3, H, W)`, over its layers
    `0 .. upto-1` (default: all).

    Returns `{"total": float, "groups": {group: float}, "layers": {i: float}, "active": float | None,
    "mask": bool[B, H, W] | None}`; `mask` is the sparse stem's active mask on `x` (None for a dense model) and
    `active` its kept fraction of input pixels. A sparse layer that runs its
    dense path (above the crossover density, or in export mode) is counted by the counter, as run. The stem's
    sparsifier (a foreground finder's or a mask head's dense convs) is counted by the counter too; when no image
    has an active pixel, nothing after the stem runs (`SparseDetectionModel`'s early exit) and nothing is
    counted."""
    from torch.utils.flop_counter import FlopCounterMode

    from sparseyolo.nn import DFFNeck, SparseBlock, SparseStem, site_mask
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
        sp = _sparse_input(m, x) if isinstance(m, (SparseBlock, SparseDetect)) else None
        if isinstance(m, SparseStem):
            with FlopCounterMode(display=False) as fc:  # the sparsifier's own convs (a finder, a mask head)
                mask = stem_mask = m.sparsify(x)[0]
            active = float(mask.float().mean())
            dense_path = m.export_dense or m.switch_dense(active, x.device)
            if not dense_path:
                layers[m.i] = sparse_block_flops(m, mask)[0] + float(fc.get_total_flops())
                x = m(x)
                if active == 0.0 and not m.export_dense and not model.training:
                    stop = True  # SparseDetectionModel's early exit: nothing else runs
        elif isinstance(m, SparseDetect) and sp is not None:
            layers[m.i] = sparse_head_flops(m, x)
            x = m(x)
        elif sp is not None:
            layers[m.i] = sparse_block_flops(m, site_mask(sp))[0]
            x = m(x)
        elif isinstance(m, DFFNeck):  # its pixel-gated blocks run on the sparse engine: its own exact count
            x = m(x)
            layers[m.i] = float(m.last_stats["gflops"].sum()) * 1e9
        if m.i not in layers:
            with FlopCounterMode(display=False) as fc:
                x = m(x)
            layers[m.i] = float(fc.get_total_flops())
        y.append(x if m.i in model.save else None)
    groups: dict[str, float] = {}
    for i, f in layers.items():
        g = group_of(i, n)
        groups[g] = groups.get(g, 0.0) + f
    return {"total": sum(layers.values()), "groups": groups, "layers": layers, "active": active, "mask": stem_mask}
