"""`SparseDetect`: Ultralytics' YOLOv8 `Detect` head whose levels run at active sites when their input is sparse.

A level whose input is a `SparseConvTensor` (P3 in `yolov8-sparse-p3.yaml`) runs its box and class branches
(`cv2[i]`, `cv3[i]`: Conv 3x3, Conv 3x3, Conv2d 1x1) as submanifold convs at its sites, with the dense head's own
weights; other levels run dense, as in `Detect`. The math itself: `sparseyolo.nn.sparse_head` (torch only).

- Training (and export): the raw output has Detect's layout, anchors level by level in row-major order; inactive
  anchors carry box logits 0 and class logits `INACTIVE_LOGIT` (score sigmoid(-100) ~ 0): no detection, and
  the task-aligned assigner gives them no target weight, so no loss and no gradient. Ultralytics' loss runs
  unchanged. `feats[i]` of a sparse level is its densified map.
- Inference: the decoded output `(B, 4 + nc, A)` holds the active anchors only (sparse levels: their sites;
  dense levels: every position), decoded by Detect's own DFL and `decode_bboxes`; images with fewer anchors
  than the batch's most are padded with zero rows (score 0). NMS, `val` metrics and `predict` results run
  unchanged on it. The raw output (second element) is built in Detect's full layout only when read (a
  validation loss).

A `DenseMasked` input (export, or the dense switch above the crossover density) runs the same weights as dense
convs with the mask applied after each conv: the same numbers at active sites, inactive anchors as above.
"""

from __future__ import annotations

from torch import Tensor
from ultralytics.nn.modules import Detect

from sparseyolo.nn.sparse_blocks import DenseMasked
from sparseyolo.nn.sparse_head import LazyRaw, compact_decode, full_layout, head_levels
from sparseyolo.nn.sparse_neck import as_dense
from sparseyolo.sparse import SparseConvTensor


class SparseDetect(Detect):
    """`Detect(nc, reg_max, end2end, ch)` with sparse levels. YAML: `[[15, 18, 21], 1, SparseDetect, [nc]]`."""

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

    def _full_layout(self, levels: list[tuple], B: int) -> dict:
        """Detect's raw output dict: every anchor, inactive ones filled (see the module doc)."""
        return full_layout(levels, B, self.nc)

    def _compact_inference(self, levels: list[tuple], B: int) -> Tensor:
        """Decoded `(B, 4 + nc, A)` of the active anchors only (see the module doc)."""
        return compact_decode(levels, B, self.stride, self.reg_max, self.dfl, self.decode_bboxes)

    def forward(self, x):
        x = list(x)
        if not any(isinstance(v, (SparseConvTensor, DenseMasked)) for v in x):
            return super().forward(as_dense(x))
        B = next(v.batch_size if isinstance(v, SparseConvTensor) else as_dense(v).shape[0] for v in x)
        levels = head_levels(x, self.cv2, self.cv3)
        if self.training:
            return self._full_layout(levels, B)
        if self.export or not any(isinstance(v, SparseConvTensor) for v in x):
            raw = self._full_layout(levels, B)
            y = self._inference(raw)
            return y if self.export else (y, raw)
        return self._compact_inference(levels, B), LazyRaw(lambda: self._full_layout(levels, B))
