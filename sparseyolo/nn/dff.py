"""Dynamic Feature Fusion neck (`DFFNeck`): per-image routing, gating and fusion depth, executed as a real skip.

Takes the backbone's P3/P4/P5 maps (`Tensor[B, c1_l, H_l, W_l]`, finest first) and returns one
`Tensor[B, c, H_l, W_l]` per level for Detect (select them with `Pick` in the YAML). Per image:

1. lateral 1x1 ConvBN to the common width `c`; descriptors `d_l = mean_HW(lat_l)`;
2. complexity in (0, 1): `learned` (MLP on the descriptors) or `stats` (edge density and channel diversity of
   the finest input map, through a learned 1-parameter-pair squash);
3. attention routing: `r_ij = sigmoid(q_i . k_j / sqrt(dk) + b_ij)` for levels i != j; a connection with
   `r_ij <= route_threshold` is not computed; the context `ctx_i = sum_j r_ij align(lat_j)` (nearest upsampling
   from coarser levels, average pooling from finer ones) is blended in by a channel gate from `[d_i, d(ctx_i)]`;
4. per level, up to `d_max` residual fusion blocks (two 3x3 ConvBN). Block `d` runs when the depth controller's
   gate is on, `d < ceil(complexity * d_max)`, the previous block ran and the quality estimate after it did not
   call an early stop. On the `spatial` finest levels a per-pixel gate marks where the blocks run; at inference
   they then run on the sparse engine (`conv2d_at_sites`) at those pixels only, exact against the dense block.
   With `topk < 1` an importance predictor keeps each image's top channels of the blocks' hidden width.

Training computes every path and scales it by its gate (`sparseyolo.nn.gates`: straight-through, Gumbel or
ReTanH), so the multiplier is exactly 0 where inference skips. Besides the budget (`efficiency_loss`), the
policy is supervised by the boxes in training (`gate_loss`: pixel gates open on each box grown by `gate_margin`
cells, shut elsewhere; `cx_loss`: the complexity estimate reads the object count), so an empty image can shut its
gates and a crowded one keep them open; loss weight 0 turns either off. Inference groups the images of a batch by
decision: a batch gives the same outputs and decisions as its images one by one.

Modes: `dynamic` (default), `all_on` (every path, gates ignored: the curriculum's warm-up and the reference the
FLOP ratio is taken against) and `static` (all-on without data-dependent control flow, for ONNX export).

After each forward `last_stats` holds per-image tensors: `gflops (B,)` executed neck GFLOPs (convolutions,
linear layers and the routing's matmul, 2 per multiply-add, as `torch.utils.flop_counter` counts them),
`ratio (B,)` against all-on, `complexity (B,)`, `depth (B, L)` blocks run per level, `routes (B,)` connections
computed, `spatial (B,)` share of gated pixels the blocks ran on; `flops()` is the batch's total.

The FLOP accounting is in `sparseyolo.nn.dff_flops`, the calibration of the threshold to a budget in
`sparseyolo.nn.dff_calibration` (`calibrate_neck`, `threshold_for_budget`, `ratio_curve` are importable from here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseyolo.nn.base import Channels, YamlContext
from sparseyolo.nn.dff_blocks import ConvBN, FusionBlock  # noqa: F401  (public here too)
from sparseyolo.nn.dff_calibration import (  # noqa: F401  (calibration: public here too)
    CALIBRATION_POINTS,
    calibrate_neck,
    check_budget,
    ratio_curve,
    threshold_for_budget,
)
from sparseyolo.nn.dff_flops import NeckFlops
from sparseyolo.nn.dff_losses import (  # noqa: F401  (public here too)
    box_supervision,
    complexity_supervision,
    complexity_target,
    efficiency_loss,
    gate_supervision,
    smoothness,
)
from sparseyolo.nn.gates import (
    DEFAULT_THRESHOLD,
    check_gate,
    check_threshold,
    gate_multiplier,
    gate_probability,
    straight_through,
)

COMPLEXITY = ("learned", "stats")
MODES = ("dynamic", "all_on", "static")
PARTS = ("routing", "depth", "pixel")  # what `DFFNeck.disabled` can switch off (ablations)
ON_LOGIT = 3.0  # initial gate logit: every path starts on (sigmoid 0.95, tanh 0.995)


class DFFNeck(NeckFlops, nn.Module):
    """Dynamic Feature Fusion neck; see the module docstring.

    Runtime settings (plain attributes, saved with a pickled checkpoint): `mode`, `disabled` (parts switched off
    in `dynamic` mode, a subset of `PARTS`), `efficiency_on`, `loss_weights`. Buffers (saved in the state dict,
    so in shipped safetensors too): the gate `threshold`, the relaxation `temperature` (thresholds are read on
    probabilities at this temperature: it must travel with the weights) and the calibration curve.

    Args:
        c1s (list[int]): input channels per level, finest first (P3, P4, P5).
        c (int): common width (the YAML's value is width-scaled like built-in blocks).
        d_max (int): fusion blocks per level, 0..8.
        complexity (str): `learned` or `stats`.
        gate (str): `ste`, `gumbel` or `retanh` (see `sparseyolo.nn.gates`).
        spatial (int): number of finest levels whose blocks are gated per pixel (and run sparsely).
        topk (float): share of hidden channels each image keeps in its fusion blocks, (0, 1].
        route_threshold (float): routing weights at or under it are not computed, [0, 1).
        budget (float): training target of the expected executed FLOPs over all-on, (0, 1].
        sparse_density (float): a gated map denser than this runs its blocks densely (masked) instead; the same
            numbers either way. Default 0.5; the shipped YAMLs use 0.2, the crossover `sparseyolo bench neck` measured
            (section 4).
    """

    # class defaults, so checkpoints pickled before these attributes existed still load
    disabled: frozenset = frozenset()
    max_routes: int | None = None  # hardware cap: incoming connections computed per level (None: no cap)
    max_depth: int | None = None  # hardware cap: fusion blocks per level (None: d_max)
    count_scale: float = 8.0  # policy supervision: complexity target 1 - exp(-objects / count_scale)
    gate_margin: int = 2  # policy supervision: pixel gates open on boxes grown by this many cells of their level
    supervision_on: bool = True  # the curriculum turns the box supervision off in warm-up
    gate_cell: int = 1  # inference: pixel gates decided per `gate_cell`-pixel square (a cell opens if any pixel does)

    def __init__(
        self,
        c1s: list[int],
        c: int = 64,
        d_max: int = 2,
        complexity: str = "learned",
        gate: str = "ste",
        spatial: int = 1,
        topk: float = 1.0,
        route_threshold: float = 0.1,
        budget: float = 0.6,
        sparse_density: float = 0.5,
    ):
        super().__init__()
        c1s = [int(x) for x in c1s]
        L = len(c1s)
        if L < 2:
            raise ValueError(f"DFFNeck needs at least 2 input levels (P3, P4, P5), got {L}")
        if not 0 <= int(d_max) <= 8:
            raise ValueError(f"DFFNeck d_max must be in 0..8, got {d_max}")
        if complexity not in COMPLEXITY:
            raise ValueError(f"DFFNeck complexity must be one of {COMPLEXITY}, got {complexity!r}")
        if not 0 <= int(spatial) <= L:
            raise ValueError(f"DFFNeck spatial must be in 0..{L} (levels with pixel gates), got {spatial}")
        if not 0.0 < float(topk) <= 1.0:
            raise ValueError(f"DFFNeck topk must be in (0, 1], got {topk}")
        if not 0.0 <= float(route_threshold) < 1.0:
            raise ValueError(f"DFFNeck route_threshold must be in [0, 1), got {route_threshold}")
        if not 0.0 <= float(sparse_density) <= 1.0:
            raise ValueError(f"DFFNeck sparse_density must be in [0, 1], got {sparse_density}")
        self.c1s, self.c, self.L, self.d_max = c1s, int(c), L, int(d_max)
        self.complexity, self.gate = complexity, check_gate(gate)
        self.spatial, self.topk = int(spatial), float(topk)
        self.route_threshold, self.sparse_density = float(route_threshold), float(sparse_density)
        self.budget = check_budget(budget)
        c, D = self.c, self.d_max
        h = max(16, c // 4)
        self.dk = dk = max(8, c // 4)
        self.hidden = max(1, math.ceil(self.topk * c))  # kept hidden channels per block

        self.lateral = nn.ModuleList(ConvBN(ci, c, 1) for ci in c1s)
        if complexity == "learned":
            self.complexity_head = nn.Sequential(nn.Linear(L * c, h), nn.SiLU(), nn.Linear(h, 1))
        else:
            self.complexity_head = nn.Linear(2, 1)
        self.query, self.key = nn.Linear(c, dk), nn.Linear(c, dk)
        self.route_bias = nn.Parameter(torch.full((L, L), 2.0))
        self.feature_gate = nn.Linear(2 * c, c)
        self.controller = nn.Sequential(nn.Linear(L * c + 1, h), nn.SiLU(), nn.Linear(h, L * max(D, 1)))
        self.quality = nn.ModuleList(nn.Linear(c, 1) for _ in range(L))  # early-stop logit after a block
        self.spatial_gate = nn.ModuleList(nn.Conv2d(c, 1, 1) for _ in range(self.spatial))
        self.importance = nn.ModuleList(nn.Linear(c, c) for _ in range(L)) if self.topk < 1 else None
        self.blocks = nn.ModuleList(nn.ModuleList(FusionBlock(c) for _ in range(D)) for _ in range(L))
        with torch.no_grad():
            last = [m for m in self.complexity_head.modules() if isinstance(m, nn.Linear)][-1]
            last.bias.fill_(ON_LOGIT)  # complexity starts high: the depth cap starts open
            self.controller[-1].bias.fill_(ON_LOGIT)
            for q in self.quality:
                q.bias.fill_(-ON_LOGIT)
            for g in self.spatial_gate:
                g.bias.fill_(ON_LOGIT)
        self.register_buffer("threshold", torch.tensor(DEFAULT_THRESHOLD[self.gate]))
        # calibration curve (threshold -> mean FLOP ratio on the calibration images); valid once calibrated
        self.register_buffer("calib_thresholds", torch.zeros(CALIBRATION_POINTS))
        self.register_buffer("calib_ratios", torch.zeros(CALIBRATION_POINTS))
        self.register_buffer("calib_valid", torch.tensor(False))
        self.mode = "dynamic"
        self.disabled: frozenset[str] = frozenset()  # parts switched off in `dynamic` mode (ablations), see PARTS
        self.register_buffer("temperature", torch.tensor(1.0))
        self.efficiency_on = True  # the curriculum turns the efficiency/smoothness losses off in warm-up
        # gate_loss / cx_loss: the policy supervised by the boxes (pixel gates open at objects, complexity from the
        # object count), after the curriculum's warm-up; 0 turns it off (curriculum `dff_supervise=0`)
        self.loss_weights = {
            "eff_loss": 2.0,
            "route_loss": 0.01,
            "smooth_loss": 0.1,
            "gate_loss": 1.0,
            "cx_loss": 1.0,
        }
        self.last_stats: dict[str, Tensor] = {}
        self._aux = None

    # --- Ultralytics YAML protocol ------------------------------------------------------------------------
    @classmethod
    def yaml_args(cls, args, ctx: YamlContext):
        c1s = ctx.c_in
        if isinstance(c1s, int):
            raise ValueError(f"DFFNeck takes the P3/P4/P5 layers as a list 'from', got from={ctx.f}")
        if getattr(c1s, "parts", None) is not None or any(getattr(c, "parts", None) for c in c1s):
            raise ValueError(f"DFFNeck inputs must be single maps, got channels {c1s}")
        if not args:
            raise ValueError("DFFNeck needs its width: [c, d_max, complexity, gate, spatial, ...]")
        c = ctx.width_scaled(args[0])
        L = len(c1s)
        return [list(c1s), c, *args[1:]], Channels([c] * L), 1

    def __setstate__(self, state):
        # checkpoints pickled before `temperature` became a buffer hold it as a plain float
        old = state.pop("temperature", None)
        super().__setstate__(state)
        if "temperature" not in self._buffers:
            self.register_buffer("temperature", torch.tensor(float(1.0 if old is None else old)))

    def set_temperature(self, t: float) -> None:
        if not float(t) > 0:
            raise ValueError(f"temperature must be > 0, got {t}")
        self.temperature.fill_(float(t))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_aux"], state["last_stats"] = None, {}
        return state

    def extra_repr(self) -> str:
        return (
            f"c1s={self.c1s}, c={self.c}, d_max={self.d_max}, complexity={self.complexity!r}, gate={self.gate!r}, "
            f"spatial={self.spatial}, topk={self.topk}, route_threshold={self.route_threshold}, "
            f"budget={self.budget}, mode={self.mode!r}"
        )

    def policy_parameters(self) -> list[nn.Parameter]:
        """The decision-making parameters (frozen in the curriculum's fine-tuning phase)."""
        mods = [self.complexity_head, self.query, self.key, self.controller, self.quality, self.spatial_gate]
        if self.importance is not None:
            mods.append(self.importance)
        return [self.route_bias] + [p for m in mods for p in m.parameters()]

    def supervised_parameters(self) -> list[nn.Parameter]:
        """The parts of the policy taught by the boxes (pixel gates, complexity estimate): they keep learning in the
        curriculum's fine-tune phase, so they follow the features that the rest of the model still changes."""
        return [p for m in (self.spatial_gate, self.complexity_head) for p in m.parameters()]

    def set_threshold(self, threshold: float) -> None:
        self.threshold.fill_(check_threshold(threshold))

    # --- forward --------------------------------------------------------------------------------------------
    def _check_inputs(self, xs) -> list[Tensor]:
        if not isinstance(xs, (list, tuple)) or len(xs) != self.L:
            n = len(xs) if isinstance(xs, (list, tuple)) else type(xs).__name__
            raise ValueError(f"DFFNeck expects a list of {self.L} maps (finest first), got {n}")
        B = None
        for i, (x, ci) in enumerate(zip(xs, self.c1s, strict=True)):
            if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != ci:
                got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"DFFNeck input {i} must be Tensor[B, {ci}, H, W], got {got}")
            if B is not None and x.shape[0] != B:
                raise ValueError(f"DFFNeck inputs have different batch sizes: {[t.shape[0] for t in xs]}")
            B = x.shape[0]
        return list(xs)

    def _complexity(self, xs: list[Tensor], desc: Tensor) -> Tensor:
        if self.complexity == "learned":
            return torch.sigmoid(self.complexity_head(desc.flatten(1)))[:, 0]
        g = xs[0].float().mean(1)  # (B, H, W)
        scale = g.abs().mean((1, 2)) + 1e-6
        edges = ((g[:, 1:] - g[:, :-1]).abs().mean((1, 2)) + (g[:, :, 1:] - g[:, :, :-1]).abs().mean((1, 2))) / scale
        diversity = xs[0].float().std(1).mean((1, 2)) / (xs[0].float().abs().mean((1, 2, 3)) + 1e-6)
        stats = torch.stack([edges, diversity], 1).to(desc.dtype)
        return torch.sigmoid(self.complexity_head(stats))[:, 0]

    @staticmethod
    def _align(t: Tensor, size: tuple[int, int]) -> Tensor:
        """Resize `t (B, c, h, w)` to `size`: nearest upsampling or average pooling (YOLO's levels differ by
        powers of two)."""
        h = int(t.shape[-2])
        if (h, int(t.shape[-1])) == tuple(size):
            return t
        if h < size[0]:
            return F.interpolate(t, size=size, mode="nearest")
        f = -(-h // size[0])
        return F.avg_pool2d(t, f, f, ceil_mode=True)[..., : size[0], : size[1]]

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = self._check_inputs(xs)
        tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        mode = "static" if tracing else self.mode
        if mode not in MODES:
            raise ValueError(f"DFFNeck mode must be one of {MODES}, got {mode!r}")
        B, L = xs[0].shape[0], self.L
        sizes = [tuple(int(v) for v in x.shape[-2:]) for x in xs]
        dynamic = mode == "dynamic"
        soft = self.training  # training: every path computed, scaled by its gate

        lat = [m(x) for m, x in zip(self.lateral, xs, strict=True)]
        desc = torch.stack([t.mean((2, 3)) for t in lat], 1)  # (B, L, c)
        cx = self._complexity(xs, desc)  # (B,)

        off = self.disabled if dynamic else frozenset()
        if not off <= set(PARTS):
            raise ValueError(f"DFFNeck.disabled must be a subset of {PARTS}, got {sorted(off)}")
        if "routing" in off:
            return self._levels(lat, desc, cx, mode=mode, off=off)

        # routing: r (B, L, L), diagonal excluded; weights at or under the threshold are not computed
        q, k = self.query(desc), self.key(desc)
        r = torch.sigmoid(torch.bmm(q, k.transpose(1, 2)) / math.sqrt(self.dk) + self.route_bias)
        r = r * (1 - torch.eye(L, dtype=r.dtype, device=r.device))
        if mode == "static":
            w = r
        else:
            keep = r > self.route_threshold
            if self.max_routes is not None and not soft and int(self.max_routes) < L - 1:
                k = max(int(self.max_routes), 0)  # the strongest k incoming routes per level (diagonal r = 0)
                top = torch.zeros_like(keep).scatter_(2, r.topk(k, dim=2).indices, True) if k else keep & False
                keep = keep & top
            w = torch.where(keep, r, r - r.detach())  # forward: 0 where dropped; gradient everywhere
        dctx = (w[..., None] * desc[:, None]).sum(2)  # (B, L, c): descriptor of each context
        g = torch.sigmoid(self.feature_gate(torch.cat([desc, dctx], 2)))  # (B, L, c)
        feats = []
        one = not soft and mode != "static" and B == 1  # predict: one Python test per route, no index bookkeeping
        for i in range(L):
            ctx = None
            for j in range(L):
                if i == j:
                    continue
                wij = w[:, i, j]
                if one and float(wij.detach()) == 0.0:
                    continue
                if soft or mode == "static" or one:
                    part = wij[:, None, None, None] * self._align(lat[j], sizes[i])
                    ctx = part if ctx is None else ctx + part
                    continue
                idx = (wij != 0).nonzero()[:, 0]
                if idx.numel() == 0:
                    continue
                src = lat[j] if idx.numel() == B else lat[j].index_select(0, idx)
                part = wij.index_select(0, idx)[:, None, None, None] * self._align(src, sizes[i])
                if ctx is None:
                    ctx = lat[i].new_zeros(lat[i].shape)
                ctx.index_add_(0, idx, part)
            feats.append(lat[i] if ctx is None else lat[i] + g[:, i, :, None, None] * ctx)
        return self._levels(feats, desc, cx, mode=mode, off=off, r=r, w=w)

    def _levels(self, feats, desc, cx, *, mode: str, off: frozenset, r=None, w=None):
        """The per-level fusion blocks on the routed maps `feats` (`desc (B, L, c)`, complexity `cx (B,)`, the
        routing `r`, `w (B, L, L)` when it ran); records `last_stats` (and the aux losses' inputs in training)."""
        B, L, D = feats[0].shape[0], self.L, self.d_max
        sizes = [tuple(int(v) for v in f.shape[-2:]) for f in feats]
        tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        dynamic = mode == "dynamic"
        soft = self.training
        thr = float(self.threshold) if dynamic else 0.0
        temp = float(self.temperature)
        fixed = self.fixed_flops(sizes, mode if dynamic else "all_on", off)
        # per-image bookkeeping in Python numbers (one `tolist()` per decision, no small tensor ops per block)
        flops = [fixed] * B
        depth_run = [[0] * L for _ in range(B)]
        spatial_share = [0.0] * B
        expected = desc.new_zeros(B, L)  # training: expected block FLOPs per image and level
        decisions = []  # soft decision probabilities (B, .) for the smoothness loss
        gate_logits = []  # training: pixel-gate logits (B, 1, H_l, W_l) of the gated levels, for their supervision
        if dynamic and D > 0 and "depth" in off:  # ablation: every block runs (no controller, cap, early stop)
            p_depth = m_depth = desc.new_ones(B, L, D)
            cap = cap_soft = desc.new_ones(B, D)
        elif dynamic and D > 0:
            logits = self.controller(torch.cat([desc.flatten(1), cx[:, None]], 1)).view(B, L, D)
            p_depth = gate_probability(logits, self.gate, temp, noise=soft)
            m_depth = gate_multiplier(p_depth, self.gate, thr)
            steps = torch.arange(D, dtype=cx.dtype, device=cx.device)
            cap_soft = (cx[:, None] * D - steps).clamp(0, 1)  # (B, D): soft "d < complexity * d_max"
            cap = straight_through((cx[:, None] * D > steps).to(cx.dtype), cap_soft)
            decisions += [p_depth.flatten(1), cx[:, None]]
            if self.max_depth is not None and not soft:
                cap = cap * (steps < int(self.max_depth)).to(cap.dtype)

        outs = []
        for lvl in range(L):
            x = feats[lvl]
            hw = sizes[lvl][0] * sizes[lvl][1]
            blocks = self.blocks[lvl]
            if not dynamic or D == 0:
                for blk in blocks:
                    x = x + (blk(x) if soft or mode == "static" else blk.run_dense(x))
                if mode != "static" and D:
                    for b in range(B):
                        flops[b] += D * float(blocks[0].flops(hw, hw, self.c))
                        depth_run[b][lvl] = D
                outs.append(x)
                continue
            ms = ps = None
            if lvl < self.spatial and "pixel" not in off:
                pixel_logits = self._pixel_logits(lvl, x)
                if soft:
                    gate_logits.append(pixel_logits)
                ps = gate_probability(pixel_logits, self.gate, temp, noise=soft)
                ms = gate_multiplier(ps, self.gate, thr)  # (B, 1, H, W)
                if not soft and self.gate_cell > 1:  # coarser gate grid: whole cells open
                    k = int(self.gate_cell)
                    cells = F.max_pool2d(ms, k, k, ceil_mode=True)
                    ms = cells.repeat_interleave(k, 2).repeat_interleave(k, 3)[..., : ms.shape[2], : ms.shape[3]]
                if soft:
                    decisions.append(F.adaptive_avg_pool2d(ps, 4).flatten(1))
                for b, v in enumerate((ms.detach() != 0).float().mean((1, 2, 3)).tolist()):
                    spatial_share[b] += v / self.spatial
            channels = cmult = None
            if self.importance is not None:
                imp = torch.sigmoid(self.importance[lvl](desc[:, lvl]))  # (B, c)
                channels = imp.topk(self.hidden, 1).indices  # (B, hidden)
                cmult = straight_through(torch.zeros_like(imp).scatter_(1, channels, 1.0), imp)
            chain = torch.ones(B, dtype=x.dtype, device=x.device)
            p_chain = torch.ones_like(chain)
            for d, blk in enumerate(blocks):
                e = chain * m_depth[:, lvl, d] * cap[:, d]
                if soft:  # the expected-FLOPs chain feeds the efficiency loss only
                    p_chain = p_chain * p_depth[:, lvl, d] * cap_soft[:, d]
                if soft:
                    inc = blk(x, cmult)
                    if ms is not None:
                        inc = inc * ms
                    x = x + e[:, None, None, None] * inc
                    share = ps.mean((1, 2, 3)) if ps is not None else 1.0
                    expected[:, lvl] = expected[:, lvl] + p_chain * float(blk.flops(hw, hw, self.hidden)) * share
                    ran = e.detach() != 0
                    gated = self._gated_flops(blk, ms, hw)
                    gated = gated.tolist() if isinstance(gated, Tensor) else [gated] * B
                    for b, on in enumerate(ran.tolist()):
                        flops[b] += gated[b] if on else 0.0
                else:
                    x, ran = self._run_block(blk, x, e, ms, channels, flops, hw)
                ran_l = ran.tolist()
                for b in range(B):
                    depth_run[b][lvl] += int(ran_l[b])
                if d < D - 1 and "depth" not in off:
                    idx = ran.nonzero()[:, 0]
                    if soft or idx.numel() == B:
                        stop = self.quality[lvl](x.mean((2, 3)))[:, 0]
                    else:
                        stop = x.new_full((B,), -ON_LOGIT)
                        if idx.numel():
                            stop[idx] = self.quality[lvl](x.index_select(0, idx).mean((2, 3)))[:, 0]
                    for b in range(B):
                        flops[b] += 2 * self.c if ran_l[b] else 0
                    p_cont = gate_probability(-stop, self.gate, temp, noise=soft)
                    chain = e * gate_multiplier(p_cont, self.gate, thr)
                    if soft:
                        p_chain = p_chain * p_cont
            outs.append(x)

        if tracing:
            return outs
        all_on = self.all_on_flops(sizes)
        routes = (w.detach() != 0).sum((1, 2)).cpu() if w is not None else torch.zeros(B, dtype=torch.long)
        flops_t = torch.tensor(flops, dtype=torch.float64)
        self.last_stats = {
            "gflops": flops_t / 1e9,
            "ratio": flops_t / all_on,
            "complexity": cx.detach().cpu(),
            "depth": torch.tensor(depth_run, dtype=torch.long),
            "routes": routes,
            "spatial": torch.tensor(spatial_share, dtype=torch.float64),
        }
        if soft:
            r = r if r is not None else desc.new_zeros(B, L, L)
            self._aux = {"r": r, "expected": (self.fixed_flops(sizes, "dynamic") + expected.sum(1)) / all_on}
            level_all_on = expected.new_tensor(self.level_block_flops(sizes)).clamp_min(1.0)  # d_max 0: no blocks
            self._aux["level_share"] = expected / level_all_on  # (B, L)
            self._aux["decisions"] = torch.cat(decisions, 1) if decisions else None
            self._aux["desc"] = desc.detach().flatten(1)
            self._aux["gate_logits"], self._aux["cx"] = gate_logits, cx
        return outs

    def _pixel_logits(self, lvl: int, x: Tensor) -> Tensor:
        """Pixel-gate logits `(B, 1, H, W)` of level `lvl`: the 1x1 conv as one matmul over channels (a
        one-channel conv is ~10x slower through the conv kernels at batch 1 on CPU; same numbers)."""
        conv = self.spatial_gate[lvl]
        B, C, H, W = x.shape
        y = torch.matmul(conv.weight.view(1, C), x.reshape(B, C, H * W)) + conv.bias.view(1, 1, 1)
        return y.view(B, 1, H, W)

    def _run_block(self, blk, x, e, ms, channels, flops, hw):
        """Eval: run `blk` for the images whose multiplier `e (B,)` is non-zero, at gated pixels where a pixel
        gate `ms (B, 1, H, W)` exists (sparse under `sparse_density`), on their top channels if `channels`."""
        ran = e != 0
        idx = ran.nonzero()[:, 0]
        B = x.shape[0]
        if idx.numel() == 0:
            return x, ran
        if ms is None and channels is None:
            xs = x if idx.numel() == B else x.index_select(0, idx)
            inc = blk.run_dense(xs) * e.index_select(0, idx)[:, None, None, None]
            for b in idx.tolist():
                flops[b] += float(blk.flops(hw, hw, self.hidden))
            return (x + inc if idx.numel() == B else x.index_add(0, idx, inc)), ran
        maps = list(x.unbind(0))  # per-image maps; each updated out of place (no copy of the others)
        for b in idx.tolist():
            ch = channels[b] if channels is not None else None
            xb = x[b : b + 1]
            if ms is None:
                maps[b] = maps[b] + e[b] * blk.run_dense(xb, ch)[0]
                flops[b] += float(blk.flops(hw, hw, self.hidden))
                continue
            gate = ms[b, 0]
            mask = gate != 0
            n0 = int(mask.sum())
            if n0 == 0:
                continue
            if n0 > self.sparse_density * hw:
                inc = blk.run_dense(xb, ch)[0]
                maps[b] = maps[b] + e[b] * (inc if n0 == hw and self.gate != "retanh" else gate * inc)
                flops[b] += float(blk.flops(hw, hw, self.hidden))
                continue
            sites, rows, f = blk.run_at(xb, mask[None], ch)
            ys, xs_ = sites[:, 1].long(), sites[:, 2].long()
            scale = e[b] * gate[ys, xs_]
            flat = maps[b].reshape(self.c, -1).index_add(1, ys * x.shape[3] + xs_, (rows * scale[:, None]).t())
            maps[b] = flat.view_as(maps[b])
            flops[b] += f
        return (maps[0][None] if B == 1 else torch.stack(maps)), ran

    # --- aux protocol (see sparseyolo.yolo.model.SparseDetectionModel) ---------------------------------------
    @property
    def aux_names(self):
        return list(self.loss_weights), ["neck_ratio"]

    def pop_aux(self, targets: dict):
        aux, self._aux = self._aux, None
        stats = {"neck_ratio": self.last_stats["ratio"].float().mean()} if self.last_stats else {}
        if aux is None:
            return {}, stats
        r, expected, dec = aux["r"], aux["expected"], aux["decisions"]
        L = self.L
        off = r.sum((1, 2)) / max(L * (L - 1), 1)
        zero = r.new_zeros(())
        weights = self.loss_weights
        losses = dict.fromkeys(weights, zero)
        losses["route_loss"] = weights["route_loss"] * off.mean()
        if self.mode == "dynamic" and self.efficiency_on and self.d_max > 0:
            losses["eff_loss"] = weights["eff_loss"] * efficiency_loss(expected, aux["level_share"], self.budget)
            losses["smooth_loss"] = weights["smooth_loss"] * smoothness(aux["desc"], dec)
        if self.mode == "dynamic" and self.supervision_on:
            losses.update(box_supervision(aux["gate_logits"], aux["cx"], targets, weights, self.gate_margin,
                                          self.count_scale))  # fmt: skip
        return losses, stats


def dff_necks(model: nn.Module) -> list[DFFNeck]:
    return [m for m in model.modules() if isinstance(m, DFFNeck)]


def set_neck_mode(model: nn.Module, mode: str) -> list[str]:
    """Set every DFFNeck of `model` to `mode` (`dynamic`, `all_on`, `static`); returns the previous modes."""
    if mode not in MODES:
        raise ValueError(f"neck mode must be one of {MODES}, got {mode!r}")
    old = []
    for m in dff_necks(model):
        old.append(m.mode)
        m.mode = mode
    return old
