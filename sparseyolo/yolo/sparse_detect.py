"""`SparseDetect`: Ultralytics' YOLOv8 `Detect` head whose levels run at active sites when their input is sparse.

A level whose input is a `SparseConvTensor` (P3 in `yolov8-sparse-p3.yaml`) runs its box and class branches
(`cv2[i]`, `cv3[i]`: Conv 3x3, Conv 3x3, Conv2d 1x1) as submanifold convs at its sites, with the dense head's own
weights; other levels run dense, as in `Detect`.

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

import torch
from torch import Tensor
from ultralytics.nn.modules import Detect

from sparseyolo.nn.sparse_blocks import DenseMasked
from sparseyolo.nn.sparse_neck import as_dense, conv_module_sparse
from sparseyolo.sparse import SparseConvTensor

INACTIVE_LOGIT = -100.0  # class logit at inactive positions: sigmoid ~ 4e-44, never above any conf threshold


class LazyRaw(dict):
    """Detect's raw output dict, built by `build()` on first read (in inference only a loss reads it)."""

    KEYS = ("boxes", "scores", "feats")

    def __init__(self, build):
        super().__init__()
        self._build = build

    def _fill(self):
        if self._build is not None:
            build, self._build = self._build, None
            self.update(build())

    def __getitem__(self, key):
        self._fill()
        return super().__getitem__(key)

    def __contains__(self, key):
        return key in self.KEYS if self._build is not None else super().__contains__(key)

    def get(self, key, default=None):
        self._fill()
        return super().get(key, default)

    def keys(self):
        self._fill()
        return super().keys()

    def items(self):
        self._fill()
        return super().items()

    def values(self):
        self._fill()
        return super().values()

    def __iter__(self):
        self._fill()
        return super().__iter__()

    def __len__(self):
        self._fill()
        return super().__len__()


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

    def _branch(self, x, head):
        """`head` (Conv, Conv, Conv2d) on one level: rows `(N, C)` for a sparse input, else a map `(B, C, H, W)`
        (masked after each conv for a `DenseMasked` input)."""
        if isinstance(x, SparseConvTensor):
            for m in head:
                x = conv_module_sparse(m, x)
            return x.features
        y, mask = (x.x, x.mask) if isinstance(x, DenseMasked) else (x, None)
        for m in head[:-1]:
            y = m(y) if mask is None else m(y) * mask
        return head[-1](y)

    def _levels(self, x: list) -> list[tuple]:
        """Per level `(input, box, cls)`: rows for sparse inputs, maps otherwise."""
        return [(v, self._branch(v, self.cv2[i]), self._branch(v, self.cv3[i])) for i, v in enumerate(x)]

    def _full_layout(self, levels: list[tuple], B: int) -> dict:
        """Detect's raw output dict: every anchor, inactive ones filled (see the module doc)."""
        boxes, scores, feats = [], [], []
        for v, box, cls in levels:
            if isinstance(v, SparseConvTensor):
                H, W = v.spatial_shape
                b, yy, xx = v.indices.to(torch.int64).unbind(1)
                pos = yy * W + xx
                box = box.new_zeros(B, H * W, box.shape[1]).index_put((b, pos), box).transpose(1, 2)
                cls = cls.new_full((B, H * W, self.nc), INACTIVE_LOGIT).index_put((b, pos), cls).transpose(1, 2)
                feats.append(v.dense())
            else:
                mask = v.mask if isinstance(v, DenseMasked) else None
                if mask is not None:
                    box = box * mask
                    cls = torch.where(mask > 0, cls, torch.full_like(cls, INACTIVE_LOGIT))
                box, cls = box.flatten(2), cls.flatten(2)
                feats.append(as_dense(v))
            boxes.append(box)
            scores.append(cls)
        return {"boxes": torch.cat(boxes, -1), "scores": torch.cat(scores, -1), "feats": feats}

    def _compact_inference(self, levels: list[tuple], B: int) -> Tensor:
        """Decoded `(B, 4 + nc, A)` of the active anchors only (see the module doc)."""
        rows, anchors, strides, batch = [], [], [], []
        for i, (v, box, cls) in enumerate(levels):
            if isinstance(v, SparseConvTensor):
                idx = v.indices.to(torch.int64)
                b, yx = idx[:, 0], idx[:, 1:]
                r = torch.cat((box, cls), 1)
            else:
                _, _, H, W = box.shape
                r = torch.cat((box, cls), 1).permute(0, 2, 3, 1).reshape(B * H * W, -1)
                ys, xs = torch.meshgrid(
                    torch.arange(H, device=r.device), torch.arange(W, device=r.device), indexing="ij"
                )
                yx = torch.stack((ys, xs), -1).view(-1, 2).repeat(B, 1)
                b = torch.arange(B, device=r.device).repeat_interleave(H * W)
                if isinstance(v, DenseMasked) and v.mask is not None:
                    keep = v.mask.reshape(-1) > 0
                    r, yx, b = r[keep], yx[keep], b[keep]
            rows.append(r)
            anchors.append(yx.flip(1).to(r.dtype) + 0.5)  # (x, y) cell centres, as make_anchors
            strides.append(r.new_full((len(b),), float(self.stride[i])))
            batch.append(b)
        r, a, s, b = torch.cat(rows), torch.cat(anchors), torch.cat(strides), torch.cat(batch)
        nb = 4 * self.reg_max
        dist = self.dfl(r[:, :nb].t().unsqueeze(0))  # (1, 4, N)
        dbox = self.decode_bboxes(dist, a.t().unsqueeze(0)) * s  # (1, 4, N)
        dec = torch.cat((dbox[0], r[:, nb:].sigmoid().t()), 0)  # (4 + nc, N), levels in order
        if B == 1:
            return dec.unsqueeze(0)
        counts = torch.bincount(b, minlength=B)
        order = torch.argsort(b, stable=True)  # per image, levels and positions keep their order
        slot = torch.arange(len(b), device=b.device) - (torch.cumsum(counts, 0) - counts)[b[order]]
        out = dec.new_zeros(B, int(counts.max()), dec.shape[0])
        out[b[order], slot] = dec[:, order].t()
        return out.transpose(1, 2)

    def forward(self, x):
        x = list(x)
        if not any(isinstance(v, (SparseConvTensor, DenseMasked)) for v in x):
            return super().forward(as_dense(x))
        B = next(v.batch_size if isinstance(v, SparseConvTensor) else as_dense(v).shape[0] for v in x)
        levels = self._levels(x)
        if self.training:
            return self._full_layout(levels, B)
        if self.export or not any(isinstance(v, SparseConvTensor) for v in x):
            raw = self._full_layout(levels, B)
            y = self._inference(raw)
            return y if self.export else (y, raw)
        return self._compact_inference(levels, B), LazyRaw(lambda: self._full_layout(levels, B))
