"""`SparseDetect`: Ultralytics' YOLOv8 `Detect` head whose first level (P3, stride 8) runs at active sites only.

The P3 input is a `SparseConvTensor` (the sparse P3 path of `yolov8-sparse-p3.yaml`); its box and class
branches (`cv2[0]`, `cv3[0]`: Conv 3x3, Conv 3x3, Conv2d 1x1) run as submanifold convs at its sites with the
dense head's own weights. The result is laid out as Detect's raw output, P3 anchors first in row-major order:
active sites carry their predictions, inactive ones box logits 0 and class logits `INACTIVE_LOGIT` (score
sigmoid(-100) ~ 0: no detection, no loss, no gradient). Ultralytics' decoding, NMS, loss, `val` and `predict`
therefore run unchanged. P4/P5 are dense, as in `Detect`.

A `DenseMasked` P3 input (export, or the dense switch above the crossover density) runs the same weights as
dense convs with the mask applied after each conv: the same numbers at active sites.

In inference, `feats[0]` of the raw output is a zero-stride view with the P3 grid's shape (Ultralytics reads
only its shape there, for the anchors); in training it is the densified P3 map.
"""

from __future__ import annotations

import torch
from torch import Tensor
from ultralytics.nn.modules import Detect

from sparseyolo.nn.sparse_blocks import DenseMasked
from sparseyolo.nn.sparse_neck import as_dense, conv_module_sparse
from sparseyolo.sparse import SparseConvTensor

INACTIVE_LOGIT = -100.0  # class logit at inactive P3 positions: sigmoid ~ 4e-44, never above any conf threshold


class SparseDetect(Detect):
    """`Detect(nc, reg_max, end2end, ch)` with a sparse P3 level. YAML: `[[15, 18, 21], 1, SparseDetect, [nc]]`."""

    legacy = True  # YOLOv8's head layout: cv3 = Conv 3x3, Conv 3x3, Conv2d 1x1 (weight names as yolov8.yaml)
    accepts_sparse = True

    def __init__(self, nc: int = 80, reg_max: int = 16, end2end: bool = False, ch=()):
        if end2end:
            raise ValueError("SparseDetect supports YOLOv8's one-to-many head only (end2end=False)")
        super().__init__(nc, reg_max, False, ch)

    @classmethod
    def yaml_args(cls, args, ctx):
        if isinstance(ctx.f, int) or len(ctx.f) < 1:
            raise ValueError(f"SparseDetect takes the P3, P4, P5 layers as a list 'from', got from={ctx.f}")
        nc = int(args[0]) if args else 80
        ch = [ctx.ch[x] for x in ctx.f]
        return [nc, 16, False, ch], ch[0], 1

    def _level0(self, x, head) -> tuple[Tensor, Tensor]:
        """`head` (a Sequential of Conv, Conv, Conv2d) on the P3 carrier -> (rows (N, C) at the sites, their flat
        anchor index (N,) and batch (N,)) for a sparse input, or a masked dense output `(B, C, H, W)`."""
        if isinstance(x, SparseConvTensor):
            for m in head:
                x = conv_module_sparse(m, x)
            return x.features
        y, mask = x.x, x.mask
        for m in head[:-1]:
            y = m(y) if mask is None else m(y) * mask
        return head[-1](y)

    def forward_head(self, x, box_head=None, cls_head=None) -> dict:
        if box_head is None or cls_head is None:  # fused inference
            return {}
        p3 = x[0]
        if not isinstance(p3, (SparseConvTensor, DenseMasked)):
            return super().forward_head(as_dense(list(x)), box_head, cls_head)
        rest = as_dense(list(x[1:]))
        B = p3.batch_size if isinstance(p3, SparseConvTensor) else p3.x.shape[0]
        boxes = [box_head[i](v).view(B, 4 * self.reg_max, -1) for i, v in enumerate(rest, 1)]
        scores = [cls_head[i](v).view(B, self.nc, -1) for i, v in enumerate(rest, 1)]
        box0, cls0 = self._level0(p3, box_head[0]), self._level0(p3, cls_head[0])
        if isinstance(p3, SparseConvTensor):
            H, W = p3.spatial_shape
            b, yy, xx = p3.indices.to(torch.int64).unbind(1)
            pos = yy * W + xx
            box0 = box0.new_zeros(B, H * W, box0.shape[1]).index_put((b, pos), box0).transpose(1, 2)
            cls0 = cls0.new_full((B, H * W, self.nc), INACTIVE_LOGIT).index_put((b, pos), cls0).transpose(1, 2)
            c = p3.features.shape[1]
            feat0 = p3.dense() if self.training else p3.features.new_zeros(()).expand(B, c, H, W)
        else:
            feat0 = p3.x
            if p3.mask is not None:  # inactive positions: no box, no class
                box0 = box0 * p3.mask
                cls0 = torch.where(p3.mask > 0, cls0, torch.full_like(cls0, INACTIVE_LOGIT))
            box0, cls0 = box0.flatten(2), cls0.flatten(2)
        return {
            "boxes": torch.cat([box0, *boxes], -1),
            "scores": torch.cat([cls0, *scores], -1),
            "feats": [feat0, *rest],
        }


def _register() -> None:
    from sparseyolo.yolo.patch import register

    register({"SparseDetect": SparseDetect})


_register()  # when this module was the one that imported Ultralytics, the registry skipped it (import cycle)
