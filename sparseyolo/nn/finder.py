"""The foreground finder: where a sparse model looks.

`Finder` maps an image batch `Tensor[B, 3, H, W]` (RGB in [0, 1]) to objectness logits on a grid of `cell`-pixel
cells, `Tensor[B, 1, ceil(H / cell), ceil(W / cell)]`, from a cheap coarse pass: the image is average-pooled by
`down` (`DOWN`: 2), then four 3x3 convs with BatchNorm and SiLU (`width` = 16 channels down to 1/8 of the input,
twice that at 1/16, the last one dilated), so each logit sees ~94 input pixels around its cell (~108 with
`down=4`): whole crowns and their surroundings, not a pixel's colour. With 8-pixel cells (`CELL`) the 1/16
context is brought back to 1/8 and fused with the 1/8 features (a 1x1 conv); with 16-pixel cells the 1/16 map is
read directly. Cost at 3840x2176: 2.2 GFLOPs (dense YOLOv8n: ~180), ~0.1 s on 2 CPU cores.

Its mask (`Finder.mask`): cells whose logit is above the `threshold` buffer (content-following: nothing is kept
on empty ground), or each image's top `target` share of cells, dilated by a context `margin` (pixels, rounded up
to whole cells), expanded to `bool[B, H, W]` pixels. The threshold is chosen for recall (`calibrate_recall`):
at least `recall` of the calibration objects keep `MIN_COVER` (90%) of their box active after the margin. A
finder whose threshold was never set (`calibrated` False) keeps every pixel.

Supervision (`cell_cover`, `finder_loss`, `fit_finder`): each cell's target is the share of it that boxes cover
(soft, in [0, 1]); binary cross-entropy with the covered cells weighted `1 + POS_WEIGHT` (recall first), taken on
the logits max-pooled over the context margin (what the mask reads: a cell near an object need not fire itself
when a neighbour does), plus a share of the per-cell loss. Pure torch + numpy; nothing here knows YOLO.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseyolo.boxes import MIN_COVER, box_pixels
from sparseyolo.nn.masks import dilate_mask, expand_mask, topk_mask

DOWN = 2  # the finder looks at the image average-pooled by this factor (2 or 4)
WIDTH = 16  # channels at 1/8 (twice that at 1/16)
CELLS = (8, 16)  # supported cell sizes (input pixels per logit)
CELL = 8  # the default: a 40-px crown costs ~(5+2)^2 cells with an 8-px margin (16-px cells: ~(3+2)^2 * 4)
POS_WEIGHT = 3.0  # extra loss weight of cells that boxes touch
GAMMA = 0.0  # focal exponent of the loss (0: plain BCE)
PLAIN_SHARE = 0.25  # weight of the per-cell loss beside the margin-pooled one (`finder_loss(margin > 0)`)
BLANK = 0.03  # share of training crops replaced by a blank frame
PAD_VALUE = 114 / 255  # Ultralytics' letterbox grey: what padding looks like to the model


class Finder(nn.Module):
    """`forward(x: Tensor[B, C, H, W] in [0, 1]) -> logits Tensor[B, 1, ceil(H / cell), ceil(W / cell)]`.

    Buffers (saved with the model): `threshold` (logit; a cell is kept when its logit is above it),
    `calibrated` (False until `calibrate_recall` or `set_threshold` sets the threshold; until then the mask keeps
    every pixel) and `arch` (`down`, `cell`, `width`: a state dict of another shape loads, taking its shape)."""

    def __init__(self, c1: int = 3, cell: int = CELL, width: int = WIDTH, threshold: float = 0.0, down: int = DOWN):
        super().__init__()
        self.c1 = c1
        self._build(cell, width, down)
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self.register_buffer("calibrated", torch.tensor(False))

    def _build(self, cell: int, width: int, down: int) -> None:
        """The layers for `cell`, `width` and `down`, freshly initialised; `arch` records them (a buffer, so a
        state dict says which finder it holds and loads into any `Finder`)."""
        if cell not in CELLS:
            raise ValueError(f"Finder cell must be one of {CELLS} pixels, got {cell}")
        if int(width) < 1:
            raise ValueError(f"Finder width must be >= 1 channel, got {width}")
        if down not in (2, 4):
            raise ValueError(f"Finder down must be 2 or 4 (the downscale before the convs), got {down}")
        c, c2, c1 = int(width), 2 * int(width), self.c1
        self.cell, self.width, self.down = int(cell), c, int(down)
        pad = "replicate"  # an image border is not an edge: a blank frame gives the same logit everywhere
        self.conv1 = nn.Conv2d(c1, c, 3, 2, 1, bias=False, padding_mode=pad)  # 1/8 after a 4x downscale, 1/4 after 2x
        self.conv2 = nn.Conv2d(c, c, 3, 2 if down == 2 else 1, 1, bias=False, padding_mode=pad)  # 1/8
        self.conv3 = nn.Conv2d(c, c2, 3, 2, 1, bias=False, padding_mode=pad)  # 1/16
        self.conv4 = nn.Conv2d(c2, c2, 3, 1, 2, dilation=2, bias=False, padding_mode=pad)  # 1/16, context
        self.bn1, self.bn2, self.bn3, self.bn4 = (nn.BatchNorm2d(n) for n in (c, c, c2, c2))
        self.fuse = nn.Conv2d(c + c2, c, 1, bias=False) if cell == 8 else None  # 1/8 features + 1/16 context
        self.bn5 = nn.BatchNorm2d(c) if cell == 8 else None
        self.out = nn.Conv2d(c if cell == 8 else c2, 1, 1)
        nn.init.constant_(self.out.bias, -2.0)  # most cells are background
        self.register_buffer("arch", torch.tensor([self.down, self.cell, self.width]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        arch = state_dict.get(prefix + "arch")
        if arch is not None and [int(v) for v in arch] != [self.down, self.cell, self.width]:
            down, cell, width = (int(v) for v in arch)
            self._build(cell, width, down)  # another finder's weights: take its shape first
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        state = f"threshold={float(self.threshold):.4g}" if bool(self.calibrated) else "not calibrated"
        return f"cell={self.cell}, down={self.down}, {state}"

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.c1:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Finder expects an image batch Tensor[B, {self.c1}, H, W], got {got}")
        d = F.avg_pool2d(x, self.down, self.down, ceil_mode=True)
        f8 = F.silu(self.bn2(self.conv2(F.silu(self.bn1(self.conv1(d))))))
        f16 = F.silu(self.bn4(self.conv4(F.silu(self.bn3(self.conv3(f8))))))
        if self.cell == 16:
            return self.out(f16)
        up = F.interpolate(f16, scale_factor=2.0, mode="nearest")[..., : f8.shape[-2], : f8.shape[-1]]
        return self.out(F.silu(self.bn5(self.fuse(torch.cat((f8, up), 1)))))

    def set_threshold(self, value: float) -> None:
        """Use logit `value` as the threshold from now on (marks the finder calibrated)."""
        self.threshold.fill_(float(value))
        self.calibrated.fill_(True)

    def cells(self, logits: Tensor, target: float | None = None) -> Tensor:
        """`bool[B, h, w]`: the kept cells of `logits (B, 1, h, w)`; every cell while not calibrated, each image's
        top `target` share of cells when `target` is given."""
        lo = logits[:, 0]
        if target is not None:
            return topk_mask(lo, target)
        return (lo > self.threshold) | ~self.calibrated  # no branch on data: traceable

    def mask(self, x: Tensor, margin: int = 0, target: float | None = None) -> tuple[Tensor, Tensor]:
        """`(mask bool[B, H, W], logits Tensor[B, 1, h, w])` of image batch `x (B, C, H, W)`: kept cells dilated by
        `margin` pixels (rounded up to whole cells) and expanded to pixels."""
        logits = self(x)
        return expand_cells(self.cells(logits, target), self.cell, margin, tuple(x.shape[-2:])), logits


def margin_cells(margin: int, cell: int) -> int:
    """A margin of `margin` pixels in whole cells (rounded up)."""
    if int(margin) < 0:
        raise ValueError(f"margin must be >= 0 pixels, got {margin}")
    return math.ceil(int(margin) / cell)


def expand_cells(cells: Tensor, cell: int, margin: int, shape: tuple[int, int]) -> Tensor:
    """`bool[B, h, w]` kept cells -> `bool[B, H, W]` pixels: dilated by `margin` pixels (whole cells), each cell
    repeated `cell` x `cell` times, cropped to `shape (H, W)`."""
    return expand_mask(dilate_mask(cells, margin_cells(margin, cell)), cell, shape)


def cell_cover(boxes: list[Tensor], grid: tuple[int, int], cell: int) -> Tensor:
    """`Tensor[B, h, w]` in [0, 1]: the share of each `cell`-pixel cell of grid `(h, w)` covered by the boxes of
    each image (`boxes[b]`: `Tensor[N_b, 4]` xyxy input pixels; overlapping boxes add up, capped at 1)."""
    h, w = grid
    out = []
    for b in boxes:
        b = torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4)
        ys = torch.arange(h, dtype=torch.float32) * cell
        xs = torch.arange(w, dtype=torch.float32) * cell
        oy = (torch.minimum(b[:, 3:4], ys + cell) - torch.maximum(b[:, 1:2], ys)).clamp(0, cell) / cell  # (N, h)
        ox = (torch.minimum(b[:, 2:3], xs + cell) - torch.maximum(b[:, 0:1], xs)).clamp(0, cell) / cell  # (N, w)
        out.append((oy.t() @ ox).clamp_(max=1.0))
    return torch.stack(out) if out else torch.zeros(0, h, w)


def finder_loss(
    logits: Tensor,
    cover: Tensor,
    pos_weight: float = POS_WEIGHT,
    gamma: float = GAMMA,
    margin: int = 0,
    cell: int = CELL,
    plain: float = PLAIN_SHARE,
) -> Tensor:
    """The finder's training loss: `logits (B, 1, h, w)` against the cell cover `cover (B, h, w)` of the boxes.

    `margin=0`: binary cross-entropy of each cell, focal with exponent `gamma` (0: plain BCE; the factor is
    `|target - p| ** gamma`, so easy cells weigh little); cells that boxes touch weigh `1 + pos_weight`.
    `margin > 0` (pixels, whole `cell`s): the loss is taken on what the mask reads, the logits max-pooled over the
    margin (`dilate(L > t) == maxpool(L) > t`): cells that boxes touch -> 1 (weight `1 + pos_weight`), cells with
    no box within the margin -> 0, the ring within the margin of a box but outside it -> ignored (it is kept by
    the margin anyway); plus `plain` times the per-cell loss, so every cell is trained."""
    if logits.dim() != 4 or logits.shape[1] != 1 or logits.shape[-2:] != cover.shape[-2:]:
        raise ValueError(f"logits (B, 1, h, w) and cover (B, h, w) must match, got {tuple(logits.shape)} and "
                         f"{tuple(cover.shape)}")  # fmt: skip
    lo, cover = logits[:, 0], cover.to(logits)
    weight = 1.0 + pos_weight * (cover > 0).to(logits.dtype)
    if gamma:
        weight = weight * (cover - torch.sigmoid(lo)).abs().detach().pow(gamma)
    per_cell = F.binary_cross_entropy_with_logits(lo, cover, weight=weight)
    r = margin_cells(margin, cell)
    if r == 0:
        return per_cell
    pos = cover > 0
    near = F.max_pool2d(pos[:, None].to(logits.dtype), 2 * r + 1, 1, r)[:, 0] > 0
    pooled = F.max_pool2d(logits, 2 * r + 1, 1, r)[:, 0]
    w = (1.0 + pos_weight * pos.to(logits.dtype)) * (pos | ~near).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(pooled, pos.to(logits.dtype), weight=w) + plain * per_cell


# --- training ------------------------------------------------------------------------------------------------


def _as_image(im) -> Tensor:
    """`uint8 Tensor[3, H, W]` from an RGB `ndarray (H, W, 3)` uint8 or a `Tensor[3, H, W]` (uint8 or [0, 1])."""
    if isinstance(im, np.ndarray):
        if im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"images must be RGB arrays (H, W, 3), got shape {im.shape}")
        im = torch.from_numpy(np.require(im, np.uint8, ["C", "W"])).permute(2, 0, 1)  # a copy when read-only
    if not isinstance(im, Tensor) or im.dim() != 3 or im.shape[0] != 3:
        got = tuple(im.shape) if isinstance(im, Tensor) else type(im).__name__
        raise ValueError(f"images must be RGB arrays (H, W, 3) or Tensor[3, H, W], got {got}")
    if im.dtype != torch.uint8:
        im = (im.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return im


def _check_data(images, boxes) -> tuple[list[Tensor], list[Tensor]]:
    images = [_as_image(im) for im in images]
    if not images:
        raise ValueError("no images given")
    if len(boxes) != len(images):
        raise ValueError(f"{len(images)} images but {len(boxes)} box arrays: give one (N, 4) xyxy array per image")
    out = []
    for i, b in enumerate(boxes):
        b = torch.as_tensor(np.asarray(b, np.float32)).reshape(-1, 4)
        if len(b) and bool(((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any()):
            raise ValueError(f"boxes of image {i} must be xyxy pixels with x1 > x0 and y1 > y0")
        out.append(b)
    return images, out


def random_batch(
    images: list[Tensor],
    boxes: list[Tensor],
    batch: int,
    crop: int,
    gen: torch.Generator,
    weights: Tensor | None = None,
):
    """`(Tensor[batch, 3, crop, crop] in [0, 1], list of Tensor[N, 4] xyxy)`: random crops of images drawn with
    probabilities `weights` (default: uniform; grey padding where an image is smaller), a share `BLANK` replaced by
    blank frames (one colour and a little noise, no boxes), flips, 90-degree turns, colour jitter
    (`jitter_colour`)."""
    xs, bs = [], []
    for _ in range(batch):
        if weights is None:
            k = int(torch.randint(len(images), (1,), generator=gen))
        else:
            k = int(torch.multinomial(weights, 1, generator=gen))
        im, b = images[k], boxes[k].clone()
        _, H, W = im.shape
        y0 = int(torch.randint(max(1, H - crop + 1), (1,), generator=gen))
        x0 = int(torch.randint(max(1, W - crop + 1), (1,), generator=gen))
        x = torch.full((3, crop, crop), PAD_VALUE)
        part = im[:, y0 : y0 + crop, x0 : x0 + crop].float() / 255
        x[:, : part.shape[1], : part.shape[2]] = part
        if len(b):
            b -= torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
            lim = torch.tensor([part.shape[2], part.shape[1]] * 2, dtype=torch.float32)
            b = torch.minimum(b.clamp(min=0), lim)
            b = b[((b[:, 2] - b[:, 0]) > 1) & ((b[:, 3] - b[:, 1]) > 1)]
        r = torch.rand(6, generator=gen)
        if r[5] < BLANK:  # a blank frame (one colour, a little noise): nothing to find
            x = (torch.rand(3, 1, 1, generator=gen) + 0.02 * torch.randn(3, crop, crop, generator=gen)).clamp_(0, 1)
            b = b[:0]
        if r[0] < 0.5:  # left-right
            x = x.flip(2)
            b = torch.stack([crop - b[:, 2], b[:, 1], crop - b[:, 0], b[:, 3]], 1)
        if r[1] < 0.5:  # up-down
            x = x.flip(1)
            b = torch.stack([b[:, 0], crop - b[:, 3], b[:, 2], crop - b[:, 1]], 1)
        if r[2] < 0.5:  # transpose (with the flips: every 90-degree turn)
            x = x.transpose(1, 2)
            b = b[:, [1, 0, 3, 2]]
        xs.append(jitter_colour(x, gen, float(r[3]), float(r[4])))
        bs.append(b.reshape(-1, 4))
    return torch.stack(xs), bs


def jitter_colour(x: Tensor, gen: torch.Generator, u: float = 0.5, v: float = 0.5) -> Tensor:
    """`Tensor[3, H, W]` in [0, 1] with random photometric changes, so a finder does not learn one scene's colours:
    white balance (per-channel gains 0.75-1.25), saturation (0.4-1.6; grey one time in ten), hue (a rotation of
    the chroma plane up to +-40 degrees), contrast (0.7-1.3), brightness (0.7-1.3) and gamma (0.7-1.4)."""
    r = torch.rand(8, generator=gen)
    x = x * (0.75 + 0.5 * r[:3]).view(3, 1, 1)
    grey = x.mean(0, keepdim=True)
    chroma = x - grey
    a = math.radians(80.0 * (float(r[3]) - 0.5))  # hue: rotate the chroma around the grey axis (Rodrigues)
    k = torch.full((3,), 1 / math.sqrt(3.0))
    rot = chroma * math.cos(a) + torch.cross(k.view(3, 1, 1).expand_as(chroma), chroma, dim=0) * math.sin(a)
    sat = 0.0 if float(r[4]) < 0.1 else 0.4 + 1.2 * float(r[5])
    x = grey + rot * sat
    mean = x.mean()
    x = (x - mean) * (0.7 + 0.6 * float(r[6])) + mean * (0.7 + 0.6 * u)
    return x.clamp_(0, 1).pow_(0.7 + 0.7 * v)


def fit_finder(
    finder: Finder,
    images,
    boxes,
    steps: int = 1500,
    batch: int = 16,
    crop: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
    weights=None,
    gamma: float = GAMMA,
    margin: int = 0,
) -> dict:
    """Train `finder` on `images` (RGB `ndarray (H, W, 3)` uint8 or `Tensor[3, H, W]`) and their `boxes` (one
    `(N, 4)` xyxy pixel array per image; empty ones teach what empty ground looks like): `steps` AdamW steps on
    `batch` random `crop`-pixel crops (`random_batch`; image `i` drawn with probability proportional to
    `weights[i]`, default uniform), one-cycle learning rate, `finder_loss` (focal exponent `gamma`; on the logits
    max-pooled over `margin` pixels when > 0: what the mask with that margin reads). The finder is
    left in eval mode; its threshold is not touched (see `calibrate_recall`). Returns `{"loss_first", "loss_last",
    "seconds", "steps"}` (losses: means over the first and last 10% of the steps)."""
    import time

    from tqdm import tqdm

    if int(steps) < 1 or int(batch) < 1:
        raise ValueError(f"steps and batch must be >= 1, got steps={steps}, batch={batch}")
    if int(crop) < 4 * finder.cell or int(crop) % finder.cell:
        raise ValueError(f"crop must be a multiple of the cell ({finder.cell}) and >= {4 * finder.cell}, "
                         f"got {crop}")  # fmt: skip
    images, boxes = _check_data(images, boxes)
    if weights is not None:
        weights = torch.as_tensor(np.asarray(weights, np.float64)).float()
        if weights.shape != (len(images),) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError(f"weights must be {len(images)} non-negative numbers (one per image), not all 0")
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    finder.requires_grad_(True)  # a finder taken from an EMA or a frozen model has its gradients off
    params = list(finder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=int(steps), pct_start=0.1)
    finder.train()
    losses = []
    t0 = time.perf_counter()
    bar = tqdm(range(int(steps)), desc="finder", unit="step", disable=not progress, leave=False)
    for _ in bar:
        x, b = random_batch(images, boxes, int(batch), int(crop), gen, weights)
        logits = finder(x)
        cover = cell_cover(b, tuple(logits.shape[-2:]), finder.cell)
        loss = finder_loss(logits, cover, gamma=gamma, margin=margin, cell=finder.cell)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    finder.eval()
    n = max(1, len(losses) // 10)
    return {
        "loss_first": float(np.mean(losses[:n])),
        "loss_last": float(np.mean(losses[-n:])),
        "seconds": time.perf_counter() - t0,
        "steps": int(steps),
    }


# --- recall calibration --------------------------------------------------------------------------------------


def pad_to(x: Tensor, multiple: int = 32) -> Tensor:
    """`x (B, C, H, W)` padded with letterbox grey at the bottom and right to a multiple of `multiple` (as a model's
    input is)."""
    H, W = x.shape[-2:]
    ph, pw = -H % multiple, -W % multiple
    return F.pad(x, (0, pw, 0, ph), value=PAD_VALUE) if ph or pw else x


@torch.no_grad()
def critical_thresholds(
    logits: Tensor, boxes, shape: tuple[int, int], cell: int, margin: int = 0, min_cover: float = MIN_COVER
) -> np.ndarray:
    """`float[N]`: for each xyxy box `(N, 4)` of one image of `shape (H, W)`, the logit value below which a threshold
    keeps at least `min_cover` of its pixels (the finder's mask `logit > threshold`, dilated by `margin` pixels):
    the box is kept by threshold `t` exactly when `t` is below its value. `logits`: `(1, 1, h, w)` or `(h, w)`."""
    lo = logits.reshape(logits.shape[-2:]).float()
    r = margin_cells(margin, cell)
    m = F.max_pool2d(lo[None, None], 2 * r + 1, 1, r)[0, 0] if r else lo  # dilate(L > t) == maxpool(L) > t
    m = m.numpy()
    px = box_pixels(boxes, shape)
    out = np.empty(len(px))
    for i, (x0, y0, x1, y1) in enumerate(px):
        cy0, cy1, cx0, cx1 = y0 // cell, (y1 - 1) // cell, x0 // cell, (x1 - 1) // cell
        cy = np.arange(cy0, cy1 + 1)
        cx = np.arange(cx0, cx1 + 1)
        ny = np.minimum(y1, (cy + 1) * cell) - np.maximum(y0, cy * cell)  # box pixels per cell row / column
        nx = np.minimum(x1, (cx + 1) * cell) - np.maximum(x0, cx * cell)
        values = m[cy0 : cy1 + 1, cx0 : cx1 + 1].ravel()
        weights = np.outer(ny, nx).ravel()
        order = np.argsort(-values, kind="stable")
        need = math.ceil((min_cover - 1e-9) * (x1 - x0) * (y1 - y0))
        out[i] = values[order][np.searchsorted(np.cumsum(weights[order]), need)]
    return out


def _active_share(logits: Tensor, threshold: float, shape: tuple[int, int], cell: int, margin: int) -> float:
    lo = logits.reshape(logits.shape[-2:])
    return float(expand_cells((lo > threshold)[None], cell, margin, shape).float().mean())


def _round_down_half(t: float) -> float:
    """The largest float16 value <= `t` (thresholds ship in float16 safetensors)."""
    h = np.float16(t)
    if float(h) > t:
        h = np.nextafter(h, np.float16(-np.inf))
    return float(h)


@torch.no_grad()
def finder_outputs(finder: Finder, images, boxes, margin: int = 0, min_cover: float = MIN_COVER):
    """`(critical, logits)` of `finder` on `images` (as `calibrate_recall` takes them): `critical float[N]`, each
    object's critical logit (`critical_thresholds`, all images' objects in order), and per image `(logits
    Tensor[1, 1, h, w], shape (H, W))`. The finder runs in eval mode, on each image padded to a multiple of 32."""
    images, boxes = _check_data(images, boxes)
    was_training = finder.training
    finder.eval()
    crit, logits_all = [], []
    try:
        for im, b in zip(images, boxes):
            lo = finder(pad_to(im[None].float() / 255))
            logits_all.append((lo, tuple(im.shape[-2:])))
            if len(b):
                crit.append(critical_thresholds(lo, b.numpy(), tuple(im.shape[-2:]), finder.cell, margin, min_cover))
    finally:
        finder.train(was_training)
    return (np.concatenate(crit) if crit else np.zeros(0)), logits_all


def threshold_for_recall(critical: np.ndarray, recall: float) -> float:
    """The largest float16 threshold at which at least `recall` of the objects with these critical logits are
    kept (a box is kept by threshold `t` when `t` is below its critical logit)."""
    if isinstance(recall, bool) or not isinstance(recall, (int, float)) or not 0.0 < float(recall) <= 1.0:
        raise ValueError(f"recall must be a share in (0, 1], got {recall!r}")
    if not len(critical):
        raise ValueError("no objects: a recall needs images with boxes")
    crit = np.sort(np.asarray(critical, np.float64))[::-1]
    k = max(1, math.ceil(float(recall) * len(crit) - 1e-9))
    return _round_down_half(float(crit[k - 1]) - 1e-3)


@torch.no_grad()
def recall_curve(
    finder: Finder, images, boxes, recalls=(0.5, 0.8, 0.9, 0.95, 0.97, 0.99), margin: int = 0, thresholds=None
) -> list[dict]:
    """The finder's trade-off on `images`/`boxes`: for each `recall`, the threshold that keeps that share of these
    objects (`threshold_for_recall`: an oracle threshold, set on these very images) and the mean active share it
    gives. With `thresholds` (logits; e.g. another set's), the recall and active share at each of them instead.
    Returns one `{"recall", "active", "threshold"}` per point; recall None where the images hold no object."""
    crit, logits = finder_outputs(finder, images, boxes, margin)
    if thresholds is None:
        thresholds = [threshold_for_recall(crit, r) for r in recalls]
    out = []
    for t in thresholds:
        active = float(np.mean([_active_share(lo, t, s, finder.cell, margin) for lo, s in logits]))
        out.append({"recall": float((crit > t).mean()) if len(crit) else None, "active": active, "threshold": t})
    return out


@torch.no_grad()
def calibrate_recall(
    finder: Finder, images, boxes, recall: float = 0.99, margin: int = 0, min_cover: float = MIN_COVER
) -> dict:
    """Set `finder`'s threshold so that at least `recall` of the objects in `images` keep `min_cover` of their box
    active in its mask (margin `margin` pixels), and mark it calibrated; its top-k `target` is not used.

    `images`: RGB `ndarray (H, W, 3)` uint8 or `Tensor[3, H, W]`, each at the resolution the model will see (padded
    with letterbox grey to a multiple of 32, as the model's input is);
    `boxes`: one `(N, 4)` xyxy pixel array per image. Exact, not searched: each box's critical logit
    (`critical_thresholds`) is computed once and the threshold set just below the `ceil(recall * N)`-th largest,
    rounded down to a float16 value. The finder's weights are rounded to float16 first (the shipped format), so
    the calibration holds for the shipped model. Returns `{"threshold", "recall", "active", "objects", "images"}`:
    the recall and mean active share measured on the calibration images at that threshold."""
    if isinstance(recall, bool) or not isinstance(recall, (int, float)) or not 0.0 < float(recall) <= 1.0:
        raise ValueError(f"recall must be a share in (0, 1], got {recall!r}")
    images, boxes = _check_data(images, boxes)
    n_obj = sum(len(b) for b in boxes)
    if n_obj == 0:
        raise ValueError("calibrate_recall needs images with objects (boxes); every box array is empty")
    for p in finder.parameters():
        p.data = p.data.half().float()
    crit, logits_all = finder_outputs(finder, images, boxes, margin, min_cover)
    threshold = threshold_for_recall(crit, recall)
    finder.set_threshold(threshold)
    active = [_active_share(lo, threshold, s, finder.cell, margin) for lo, s in logits_all]
    return {
        "threshold": threshold,
        "recall": float((crit > threshold).mean()),
        "active": float(np.mean(active)),
        "objects": int(n_obj),
        "images": len(images),
        "margin": int(margin),
    }
