"""The sparse math of a YOLOv8 detection head, without Ultralytics (`sparseyolo.yolo.sparse_detect` wraps it in
Ultralytics' `Detect`): its box and class branches (each Conv 3x3, Conv 3x3, Conv2d 1x1) run on each level's input,
as submanifold convs at the sites of a `SparseConvTensor` level, as dense convs masked after each conv for a
`DenseMasked` level, plainly otherwise; the anchors are laid out in Detect's raw layout or gathered and decoded
compactly (active anchors only).
"""

from __future__ import annotations

import torch
from torch import Tensor

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


def branch(x, head):
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


def head_levels(x: list, box_heads, cls_heads) -> list[tuple]:
    """Per level `(input, box, cls)`: the box and class branches (a Detect's `cv2[i]`, `cv3[i]`) on each level's
    input; rows for sparse inputs, maps otherwise."""
    return [(v, branch(v, box_heads[i]), branch(v, cls_heads[i])) for i, v in enumerate(x)]


def full_layout(levels: list[tuple], B: int, nc: int) -> dict:
    """Detect's raw output dict `{"boxes", "scores", "feats"}` of `levels` (`head_levels`), batch `B`, `nc` classes:
    every anchor, level by level in row-major order; inactive ones carry box logits 0 and class logits
    `INACTIVE_LOGIT`."""
    boxes, scores, feats = [], [], []
    for v, box, cls in levels:
        if isinstance(v, SparseConvTensor):
            H, W = v.spatial_shape
            b, yy, xx = v.indices.to(torch.int64).unbind(1)
            pos = yy * W + xx
            box = box.new_zeros(B, H * W, box.shape[1]).index_put((b, pos), box).transpose(1, 2)
            cls = cls.new_full((B, H * W, nc), INACTIVE_LOGIT).index_put((b, pos), cls).transpose(1, 2)
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


def compact_decode(levels: list[tuple], B: int, level_strides, reg_max: int, dfl, decode_bboxes) -> Tensor:
    """Decoded `(B, 4 + nc, A)` of the active anchors of `levels` only (sparse levels: their sites; dense levels:
    every position, or a `DenseMasked`'s mask), by a Detect's `dfl` and `decode_bboxes` with its `level_strides`
    and `reg_max`; images with fewer anchors than the batch's most are padded with zero rows."""
    rows, anchors, strides, batch = [], [], [], []
    for i, (v, box, cls) in enumerate(levels):
        if isinstance(v, SparseConvTensor):
            idx = v.indices.to(torch.int64)
            b, yx = idx[:, 0], idx[:, 1:]
            r = torch.cat((box, cls), 1)
        else:
            _, _, H, W = box.shape
            r = torch.cat((box, cls), 1).permute(0, 2, 3, 1).reshape(B * H * W, -1)
            ys, xs = torch.meshgrid(torch.arange(H, device=r.device), torch.arange(W, device=r.device), indexing="ij")
            yx = torch.stack((ys, xs), -1).view(-1, 2).repeat(B, 1)
            b = torch.arange(B, device=r.device).repeat_interleave(H * W)
            if isinstance(v, DenseMasked) and v.mask is not None:
                keep = v.mask.reshape(-1) > 0
                r, yx, b = r[keep], yx[keep], b[keep]
        rows.append(r)
        anchors.append(yx.flip(1).to(r.dtype) + 0.5)  # (x, y) cell centres, as make_anchors
        strides.append(r.new_full((len(b),), float(level_strides[i])))
        batch.append(b)
    r, a, s, b = torch.cat(rows), torch.cat(anchors), torch.cat(strides), torch.cat(batch)
    nb = 4 * reg_max
    dist = dfl(r[:, :nb].t().unsqueeze(0))  # (1, 4, N)
    dbox = decode_bboxes(dist, a.t().unsqueeze(0)) * s  # (1, 4, N)
    dec = torch.cat((dbox[0], r[:, nb:].sigmoid().t()), 0)  # (4 + nc, N), levels in order
    if B == 1:
        return dec.unsqueeze(0)
    counts = torch.bincount(b, minlength=B)
    order = torch.argsort(b, stable=True)  # per image, levels and positions keep their order
    slot = torch.arange(len(b), device=b.device) - (torch.cumsum(counts, 0) - counts)[b[order]]
    out = dec.new_zeros(B, int(counts.max()), dec.shape[0])
    out[b[order], slot] = dec[:, order].t()
    return out.transpose(1, 2)
