"""Foreground selection for the sparse stem: which input pixels become active sites.

Strategies (`method`):

- `nonzero`: pixels where any channel is non-zero (score: sum of |x| over channels).
- `threshold`: pixels whose mean intensity over channels is > `threshold` (score: the intensity).
- `gradient`: pixels whose Sobel gradient magnitude of the channel mean is > `threshold` (score: magnitude).
- `learned`: a tiny conv head predicts foreground logits; active where the logit is > `threshold` (0.0: p > 0.5).
  The head runs at 1/`head_stride` resolution and is trained from box-derived foreground masks (`mask_loss`,
  BCE) while a straight-through estimator lets the detection loss reach it through the kept features. With a
  `target` active fraction, the mask is instead the top `target` share of each image's pixels by the learned
  score (a fixed budget per image, the head chooses where), in training and at inference; `calibrate_threshold`
  turns that into a content-adaptive threshold whose mean active fraction on given images meets a target.

- `finder`: a foreground finder (`sparseyolo.nn.finder.Finder`) decides on a grid of 8-pixel cells from a coarse
  pass over the 4x-downscaled image (receptive field ~108 px: whole objects and their surroundings): cells whose
  logit is above its calibrated threshold (a buffer, saved with the model), or each image's top `target` share of
  cells. The budget applies to cells (`keep`: a share of them; `max_active`: pixels, in whole cells), and
  `dilate` is the context margin in pixels, rounded up to whole cells. Trained from boxes alone
  (`sparseyolo.yolo.finder.train_finder`; `mask_loss` during detector training) and calibrated for recall
  (`calibrate_recall`). Until calibrated it keeps every pixel.

All other strategies then apply a budget, keep at most `keep * H * W` (ratio) and at most `max_active` pixels per
image, the highest-scoring first, and finally dilate the mask by `dilate` pixels (a square (2r+1)^2 window) for
context; dilation happens after the budget, so it can grow the active set by up to (2r+1)^2 times.

Everything is plain differentiable tensor code (also traceable to ONNX: `Sparsifier.forward` never branches on
data).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseyolo.nn.finder import CELL, Finder, cell_cover, expand_cells, finder_loss
from sparseyolo.nn.masks import boxes_to_mask, dilate_mask, expand_mask, topk_mask

METHODS = ("nonzero", "threshold", "gradient", "learned", "finder")
TARGET_METHODS = ("learned", "finder")  # methods that can keep a fixed top share (`target`)
# Settings whose meaning depends on the method: switching the method drops those the override does not give.
METHOD_SETTINGS = ("threshold", "target")
# The sparsify settings, in the order of `SparseStem`'s YAML args after (c2, k, s) (its signature is the one
# source of those positions); `Sparsifier` takes the ones after `threshold` by name only.
SETTINGS = ("method", "threshold", "keep", "dilate", "max_active", "target")


def switch_settings(current: dict, override: dict, defaults: dict | None = None) -> dict:
    """The sparsify settings after applying `override` to `current` (both dicts of `SETTINGS` names).

    When `override` changes the method, the settings whose meaning depends on the method (`METHOD_SETTINGS`:
    a logit, intensity or gradient threshold; a top-k `target`) and that `override` does not give go back to
    `defaults` (the `Sparsifier` defaults: threshold 0.0, target None): `{"method": "nonzero"}` on a learned stem
    with `target=0.25` gives a plain nonzero stem instead of an error. `keep`, `dilate` and `max_active` carry
    over."""
    defaults = {"threshold": 0.0, "target": None, **(defaults or {})}
    out = {**current, **override}
    if "method" in override and override["method"] != current.get("method"):
        for k in METHOD_SETTINGS:
            if k not in override and k in current:
                out[k] = defaults.get(k)
    return out


def score_nonzero(x: Tensor) -> Tensor:
    """`Tensor[B, C, H, W] -> Tensor[B, H, W]`: sum of |x| over channels (> 0 iff any non-zero)."""
    return x.abs().sum(1)


def any_nonzero(x: Tensor) -> Tensor:
    """`Tensor[B, C, H, W] -> bool[B, H, W]`: any channel non-zero (OR over channels, no (B, C, H, W) temporary)."""
    mask = x[:, 0] != 0
    tracing = torch.jit.is_tracing()  # ONNX has no in-place OR
    for c in range(1, x.shape[1]):
        if tracing:
            mask = mask | (x[:, c] != 0)
        else:
            mask |= x[:, c] != 0
    return mask


def score_intensity(x: Tensor) -> Tensor:
    """Mean over channels."""
    return x.mean(1)


def score_gradient(x: Tensor) -> Tensor:
    """Sobel gradient magnitude of the channel mean (replicate padding, so borders are not edges)."""
    g = x.mean(1, keepdim=True)
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    w = torch.stack([k, k.t()]).unsqueeze(1)
    gp = F.pad(g, (1, 1, 1, 1), mode="replicate")
    d = F.conv2d(gp, w)
    return d.pow(2).sum(1).sqrt()


def apply_budget(mask: Tensor, score: Tensor, keep: float = 1.0, max_active: int | None = None) -> Tensor:
    """Keep at most `keep*H*W` and `max_active` pixels of `mask (B, H, W)` per image, best `score` first."""
    B, H, W = mask.shape
    limit = H * W
    if keep < 1.0:
        limit = min(limit, max(0, int(keep * H * W)))
    if max_active is not None:
        limit = min(limit, int(max_active))
    if limit >= H * W:
        return mask
    if limit == 0:
        return torch.zeros_like(mask)
    s = torch.where(mask, score.float(), torch.full_like(score, -float("inf"), dtype=torch.float32))
    idx = s.reshape(B, -1).topk(limit, dim=1).indices  # exactly `limit` per image (ties broken by position)
    ones = torch.ones(idx.shape, dtype=torch.float32, device=mask.device)
    keep_mask = torch.zeros(B, H * W, dtype=torch.float32, device=mask.device).scatter(1, idx, ones) > 0
    return (mask.reshape(B, -1) & keep_mask).view(B, H, W)  # reshape: a cropped mask is not contiguous


class MaskHead(nn.Module):
    """Tiny foreground head: avg-pool by `stride`, conv3x3(c1->hidden)+SiLU, conv3x3(hidden->1) -> logits."""

    def __init__(self, c1: int = 3, hidden: int = 8, stride: int = 4):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(c1, hidden, 3, 1, 1)
        self.conv2 = nn.Conv2d(hidden, 1, 3, 1, 1)
        nn.init.constant_(self.conv2.bias, 2.0)  # start mostly "on": nothing is dropped before training

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, 1, ceil(H/stride), ceil(W/stride))`."""
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True)
        return self.conv2(F.silu(self.conv1(x)))


class Sparsifier(nn.Module):
    """Chooses active pixels of a dense image batch.

    `forward(x: Tensor[B, C, H, W]) -> (mask: bool[B, H, W], gate: Tensor[B, 1, H, W] | None)`; `gate` is the
    straight-through factor of the `learned` method (1.0 forward, soft-mask gradient backward): multiply it
    into the kept features so the detection loss trains the head. For the other methods it is None.
    """

    target: float | None = None  # class default: checkpoints pickled before `target` existed load unchanged

    def __init__(
        self,
        c1: int = 3,
        method: str = "nonzero",
        threshold: float = 0.0,
        *,
        keep: float = 1.0,
        dilate: int = 0,
        max_active: int | None = None,
        target: float | None = None,
        head_stride: int = 4,
        cell: int | None = None,
    ):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown sparsify method {method!r}; expected one of {METHODS}")
        if not 0.0 <= float(keep) <= 1.0:
            raise ValueError(f"keep must be a ratio in [0, 1], got {keep}")
        if max_active is not None and int(max_active) < 0:
            raise ValueError(f"max_active must be >= 0, got {max_active}")
        if int(dilate) < 0:
            raise ValueError(f"dilate must be >= 0, got {dilate}")
        if target is not None:
            if method not in TARGET_METHODS:
                raise ValueError(
                    f"target (a fixed active share per image) needs method 'learned' or 'finder', got {method!r}; "
                    "drop target (sparsify={'method': ..., 'target': None}) or pick one of those methods"
                )
            if not 0.0 < float(target) <= 1.0:
                raise ValueError(f"target must be an active fraction in (0, 1], got {target}")
            target = float(target)
        self.target = target
        self.c1, self.method, self.threshold = c1, method, float(threshold)
        self.keep, self.max_active, self.dilate = float(keep), max_active, int(dilate)
        self.head = MaskHead(c1, stride=head_stride) if method == "learned" else None
        if method == "finder":
            self.finder = Finder(c1, cell=cell or CELL, threshold=threshold)
        else:
            self.finder = None
        self._aux = None  # (logits, mask) of the last forward; never saved (see __getstate__)

    @property
    def no_budget(self) -> bool:
        """`nonzero` without a keep ratio or cap: the mask is every pixel with a non-zero channel (then dilated)."""
        return self.method == "nonzero" and self.keep >= 1.0 and self.max_active is None

    def extra_repr(self) -> str:
        if self.method == "finder":  # the threshold is the finder's buffer (shown by the finder)
            return (f"method='finder', keep={self.keep}, max_active={self.max_active}, margin={self.dilate}"
                    + (f", target={self.target}" if self.target else ""))  # fmt: skip
        return (
            f"method={self.method!r}, threshold={self.threshold}, keep={self.keep}, "
            f"max_active={self.max_active}, dilate={self.dilate}" + (f", target={self.target}" if self.target else "")
        )

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_aux"] = None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "finder" not in self._modules and "finder" not in self.__dict__:
            self.finder = None  # pickled before the finder existed

    def score(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.method == "nonzero":
            s = score_nonzero(x)
            return s, None
        if self.method == "threshold":
            return score_intensity(x), None
        if self.method == "gradient":
            return score_gradient(x), None
        logits = self.head(x)
        up = F.interpolate(logits, scale_factor=self.head.stride, mode="nearest")[..., : x.shape[-2], : x.shape[-1]]
        return up.squeeze(1), logits

    def forward(self, x: Tensor):
        if x.dim() != 4 or x.shape[1] != self.c1:
            raise ValueError(f"Sparsifier expects Tensor[B, {self.c1}, H, W], got {tuple(x.shape)}")
        if self.method == "learned":
            return self._forward_learned(x)
        if self.method == "finder":
            return self._forward_finder(x)
        if self.no_budget:
            mask = any_nonzero(x)  # no budget: the score is not needed (cheaper than |x|.sum)
        else:
            s, _ = self.score(x)
            mask = s > (0 if self.method == "nonzero" else self.threshold)
            mask = apply_budget(mask, s, self.keep, self.max_active)
        mask = dilate_mask(mask, self.dilate)
        self._aux = (None, mask.detach())
        return mask, None

    def _forward_learned(self, x: Tensor):
        """The head's logits are constant over each stride x stride block, so the decision is taken on the head's
        grid and expanded to pixels; full-resolution scores are made only for a budget or the training gate."""
        H, W = x.shape[-2:]
        logits = self.head(x)  # (B, 1, h, w)
        lo = topk_mask(logits[:, 0], self.target) if self.target is not None else logits[:, 0] > self.threshold
        mask = expand_mask(lo, self.head.stride, (H, W))
        budget = self.keep < 1.0 or self.max_active is not None
        s = None
        if budget or torch.is_grad_enabled():
            s = F.interpolate(logits, scale_factor=self.head.stride, mode="nearest")[..., :H, :W].squeeze(1)
        if budget:
            mask = apply_budget(mask, s, self.keep, self.max_active)
        mask = dilate_mask(mask, self.dilate)
        gate = None
        if torch.is_grad_enabled():
            p = torch.sigmoid(s).unsqueeze(1)
            gate = (1.0 - p).detach() + p  # value 1, gradient dp (straight-through)
        self._aux = (logits, mask.detach())
        return mask, gate

    def _forward_finder(self, x: Tensor):
        """Cells kept by the finder (threshold or top `target`), the budget on cells, the margin `dilate` in whole
        cells, expanded to pixels; no gate (the finder learns from boxes, `mask_loss`)."""
        finder = self.finder
        logits = finder(x)
        cells = finder.cells(logits, self.target)
        if self.keep < 1.0 or self.max_active is not None:
            cap = None if self.max_active is None else int(self.max_active) // (finder.cell * finder.cell)
            cells = apply_budget(cells, logits[:, 0], self.keep, cap)
        mask = expand_cells(cells, finder.cell, self.dilate, tuple(x.shape[-2:]))
        self._aux = (logits, mask.detach())
        return mask, None

    # --- aux protocol (see sparseyolo.yolo.model.SparseDetectionModel) -------------------------------
    @property
    def aux_names(self):
        return (["mask_loss"] if self.method in ("learned", "finder") else []), ["active"]

    def pop_aux(self, targets: dict):
        aux, self._aux = self._aux, None
        if aux is None:
            return {}, {}
        logits, mask = aux
        stats = {"active": mask.float().mean().detach()}
        if logits is None:
            return {}, stats
        if self.method == "finder":
            return {"mask_loss": self._finder_loss(logits, targets)}, stats
        fg = boxes_to_mask(targets["batch_idx"], targets["bboxes"], targets["batch_size"], tuple(logits.shape[-2:])).to(
            logits.dtype
        )
        return {"mask_loss": F.binary_cross_entropy_with_logits(logits.squeeze(1), fg)}, stats

    def _finder_loss(self, logits: Tensor, targets: dict) -> Tensor:
        """`finder_loss` of the finder's `logits (B, 1, h, w)` against the cell cover of the batch's boxes."""
        H, W = targets["imgsz"]
        b = targets["bboxes"].detach().float().cpu()
        xyxy = torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1) * torch.tensor([W, H, W, H])
        idx = targets["batch_idx"].view(-1).long().cpu()
        boxes = [xyxy[idx == i] for i in range(int(targets["batch_size"]))]
        cover = cell_cover(boxes, tuple(logits.shape[-2:]), self.finder.cell).to(logits.device)
        return finder_loss(logits, cover, margin=self.dilate, cell=self.finder.cell)


@torch.no_grad()
def calibrate_threshold(sparsifier: Sparsifier, images, active: float, iters: int = 30) -> float:
    """Set the `learned` sparsifier's logit threshold so the mean active fraction over `images` is `active`.

    `images`: an iterable of `Tensor[B, C, H, W]` batches (what the model receives: RGB in [0, 1]). Bisection on
    the threshold over the full mask computation (budget and dilation included). The threshold is stored in
    `sparsifier.threshold` and `target` is cleared (the mask is then `logit > threshold`: how much of an image
    is kept follows its content). Returns the measured mean active fraction at the chosen threshold.
    """
    if sparsifier.method != "learned":
        raise ValueError(f"only a learned sparsifier has a threshold to calibrate, got method={sparsifier.method!r}")
    if not 0.0 < float(active) <= 1.0:
        raise ValueError(f"active must be a fraction in (0, 1], got {active}")
    images = [x for x in images]
    if not images:
        raise ValueError("calibrate_threshold needs at least one image batch")
    old = sparsifier.threshold, sparsifier.target
    sparsifier.target = None

    def measured(th: float) -> float:
        sparsifier.threshold = th
        fr = [sparsifier(x)[0].float().mean(dim=(1, 2)) for x in images]
        return float(torch.cat(fr).mean())

    try:
        lo, hi = -30.0, 30.0  # logit range: all on .. all off
        for _ in range(iters):
            mid = (lo + hi) / 2
            if measured(mid) > active:
                lo = mid
            else:
                hi = mid
        th = hi  # the smallest threshold found whose active fraction is <= the target
        got = measured(th)
    except Exception:
        sparsifier.threshold, sparsifier.target = old
        raise
    sparsifier._aux = None
    return got
