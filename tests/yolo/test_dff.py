"""DFFNeck: executed FLOPs vs torch's FLOP counter, batch = one by one, sparse pixel gates = dense, gradients,
modes, gates, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sparseyolo.nn.dff import (
    DFFNeck,
    calibrate_neck,
    complexity_target,
    efficiency_loss,
    ratio_curve,
    smoothness,
    threshold_for_budget,
)
from sparseyolo.nn.gates import gate_multiplier, gate_probability
from sparseyolo.sparse import _ext

C1S = [16, 24, 32]
SIZES = [(40, 36), (20, 18), (10, 9)]


def inputs(b=3, seed=0, blank=()):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(b, c, h, w, generator=g) for c, (h, w) in zip(C1S, SIZES, strict=True)]
    for i in blank:
        for x in xs:
            x[i] = 0
    return xs


def trained_like(seed=0, **kw):
    """A neck whose BatchNorm statistics and gate logits vary, so decisions differ between images."""
    torch.manual_seed(seed)
    neck = DFFNeck(C1S, **{"c": 16, "d_max": 2, **kw})
    with torch.no_grad():
        for p in neck.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        for m in neck.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        neck.controller[-1].bias.copy_(torch.tensor([4.0, -0.2, 0.1, 4.0, 0.3, -4.0]))
        neck.spatial_gate[0].weight.mul_(8)  # pixel gates: a mix of on and off
        neck.spatial_gate[0].bias.fill_(-6.0)
    return neck.eval()


def box_targets(per_image):
    """The model's aux targets for normalised xywh boxes given per image."""
    idx = [i for i, boxes in enumerate(per_image) for _ in boxes]
    boxes = [b for bs in per_image for b in bs]
    return {
        "batch_idx": torch.tensor(idx, dtype=torch.float32),
        "bboxes": torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
        "batch_size": len(per_image),
    }


def counted_flops(neck, xs):
    with FlopCounterMode(display=False) as fc:
        neck(xs)
    return fc.get_total_flops()


KW = [{}, {"topk": 0.5}, {"complexity": "stats", "gate": "retanh"}, {"spatial": 2}]
KW += [{"disabled": d} for d in ({"routing"}, {"depth"}, {"pixel"}, {"routing", "depth", "pixel"})]
KW += [{"max_routes": 1, "max_depth": 1}, {"max_routes": 0}]  # hardware presets' caps
KW += [{"gate_cell": 4}]  # a coarser gate grid (bench neck's lever)


@pytest.mark.parametrize("kw", KW)
@pytest.mark.parametrize("sparse_density", [1.0, 0.0])
def test_gflops_match_flop_counter(kw, sparse_density):
    """`last_stats['gflops']` (analytic, from the decisions) = what torch's FLOP counter sees executed, per
    image and summed over a batch; the sparse pixel-gate path is counted on the engine's GEMM path. Also with
    parts switched off (the benchmark's ablations)."""
    kw = dict(kw)
    disabled = frozenset(kw.pop("disabled", ()))
    caps = {k: kw.pop(k) for k in ("max_routes", "max_depth", "gate_cell") if k in kw}
    neck = trained_like(**kw, sparse_density=sparse_density)
    neck.disabled = disabled
    for k, v in caps.items():
        setattr(neck, k, v)
    xs = inputs()
    with _ext.disabled(), torch.no_grad():
        total = counted_flops(neck, xs)
        batch_gflops = neck.last_stats["gflops"].clone()
        depth = neck.last_stats["depth"].clone()
        assert total == pytest.approx(float(batch_gflops.sum()) * 1e9, rel=1e-9)
        for b in range(3):
            one = counted_flops(neck, [x[b : b + 1] for x in xs])
            assert one == pytest.approx(float(neck.last_stats["gflops"][0]) * 1e9, rel=1e-9)
            assert float(neck.last_stats["gflops"][0]) == pytest.approx(float(batch_gflops[b]), rel=1e-9)
    assert depth.shape == (3, 3) and int(depth.min()) >= 0 and int(depth.max()) <= 2
    if sparse_density == 1.0 and not kw and not disabled and not caps:  # pixel gates differ per image
        assert len(set(batch_gflops.tolist())) > 1, "executed FLOPs should differ between these images"
    if "max_depth" in caps:
        assert int(depth.max()) <= caps["max_depth"]
    if "max_routes" in caps:
        assert int(neck.last_stats["routes"].max()) <= caps["max_routes"] * 3


@pytest.mark.parametrize("kw", [{}, {"topk": 0.5}, {"gate": "retanh"}])
def test_batch_equals_one_by_one(kw):
    neck = trained_like(**kw)
    xs = inputs(4, seed=1, blank=(2,))
    with torch.no_grad():
        outs = neck(xs)
        stats = {k: v.clone() for k, v in neck.last_stats.items()}
        for b in range(4):
            single = neck([x[b : b + 1] for x in xs])
            for o, s in zip(outs, single, strict=True):
                torch.testing.assert_close(o[b : b + 1], s, rtol=1e-4, atol=1e-4)
            for k, v in neck.last_stats.items():
                torch.testing.assert_close(v[0].double(), stats[k][b].double(), rtol=1e-6, atol=1e-9)


def test_sparse_pixel_gates_equal_dense_execution():
    """Blocks run on the sparse engine at gated pixels give the dense block's numbers there."""
    xs = inputs(2, seed=2)
    sparse, dense = trained_like(sparse_density=1.0), trained_like(sparse_density=0.0)
    with torch.no_grad():
        a, b = sparse(xs), dense(xs)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    assert 0.0 < float(sparse.last_stats["spatial"].mean()) < 1.0
    assert (sparse.last_stats["gflops"] < dense.last_stats["gflops"]).all()


@pytest.mark.parametrize("cell", [2, 3])
def test_coarser_gate_grid_opens_whole_cells_and_stays_exact(cell, monkeypatch):
    """`gate_cell=k`: a pixel runs when any pixel of its k x k cell (from the top-left; edge cells cut) would;
    the sparse engine still gives the dense block's numbers on that mask."""
    import sparseyolo.nn.dff as dff

    masks = []
    record = dff.gate_multiplier

    def recording(p, kind, thr):
        m = record(p, kind, thr)
        if p.dim() == 4:
            masks.append(m.clone())
        return m

    monkeypatch.setattr(dff, "gate_multiplier", recording)
    xs = inputs(2, seed=3)
    fine, coarse = trained_like(sparse_density=1.0), trained_like(sparse_density=1.0)
    coarse.gate_cell = cell
    dense = trained_like(sparse_density=0.0)
    dense.gate_cell = cell
    with torch.no_grad():
        fine(xs)
        pixel = masks[-1][:, 0] != 0  # (B, H, W) of the fine gates
        share_fine = fine.last_stats["spatial"].clone()
        a, b = coarse(xs), dense(xs)
    H, W = pixel.shape[1:]
    want = torch.zeros_like(pixel)
    for y in range(0, H, cell):
        for x in range(0, W, cell):
            want[:, y : y + cell, x : x + cell] = pixel[:, y : y + cell, x : x + cell].any(2).any(1)[:, None, None]
    share = want.float().mean((1, 2)).double()
    torch.testing.assert_close(coarse.last_stats["spatial"], share)
    assert (share >= share_fine).all() and (share > share_fine).any()
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4)


def test_eval_matches_training_formula():
    """Inference (real skips) computes what training's gated dense formula computes, BatchNorm aside: with
    BatchNorm layers in eval mode, a `train()` forward equals the `eval()` forward."""
    neck = trained_like(gate="ste")
    xs = inputs(3, seed=3)
    with torch.no_grad():
        ref = neck(xs)
        neck.train()
        for m in neck.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        soft = neck(xs)
    for a, b in zip(ref, soft, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_all_gates_open_equals_all_on():
    """A fresh neck starts with every path on: at threshold 0 it computes exactly the all-on neck."""
    torch.manual_seed(0)
    neck = DFFNeck(C1S, c=16, d_max=2).eval()
    xs = inputs(2)
    with torch.no_grad():
        neck.set_threshold(0.0)
        dyn = neck(xs)
        assert (neck.last_stats["depth"] == 2).all() and (neck.last_stats["ratio"] > 1).all()
        neck.mode = "all_on"
        on = neck(xs)
        assert torch.allclose(neck.last_stats["ratio"], torch.ones(2, dtype=torch.float64))
    for a, b in zip(dyn, on, strict=True):
        torch.testing.assert_close(a, b)


def test_every_level_skipped_and_blank_image():
    neck = trained_like()
    neck.set_threshold(0.999)
    xs = inputs(2, blank=(0,))
    with torch.no_grad():
        outs = neck(xs)
    assert [tuple(o.shape) for o in outs] == [(2, 16, h, w) for h, w in SIZES]
    assert all(torch.isfinite(o).all() for o in outs)
    assert (neck.last_stats["depth"] == 0).all()
    assert (neck.last_stats["ratio"] < 0.5).all()


@pytest.mark.parametrize("gate", ["ste", "gumbel", "retanh"])
def test_every_parameter_gets_a_gradient(gate):
    torch.manual_seed(0)
    neck = DFFNeck(C1S, c=16, d_max=2, gate=gate, topk=0.5, spatial=1).train()
    xs = inputs(3)
    outs = neck(xs)
    losses, stats = neck.pop_aux(box_targets([[(0.5, 0.5, 0.2, 0.3)], [], [(0.1, 0.2, 0.1, 0.1)] * 3]))
    assert set(losses) == {"eff_loss", "route_loss", "smooth_loss", "gate_loss", "cx_loss"} and "neck_ratio" in stats
    (sum(o.square().mean() for o in outs) + sum(losses.values())).backward()
    missing = [n for n, p in neck.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_training_without_fusion_blocks_has_aux_losses():
    """d_max 0 (no fusion blocks): training still gives the aux losses, the efficiency loss zero."""
    neck = DFFNeck(C1S, c=16, d_max=0).train()
    neck(inputs(2))
    losses, _ = neck.pop_aux({})
    assert float(losses["eff_loss"]) == 0.0 and torch.isfinite(losses["route_loss"])


def test_efficiency_loss_lowers_expected_flops():
    """A few steps on the efficiency loss alone push the expected FLOP ratio down towards the budget."""
    torch.manual_seed(0)
    neck = DFFNeck(C1S, c=16, d_max=2, budget=0.3).train()
    opt = torch.optim.Adam(neck.policy_parameters(), lr=0.05)
    xs = inputs(4)
    first = None
    for _ in range(30):
        neck(xs)
        losses, _ = neck.pop_aux({})
        first = first if first is not None else float(losses["eff_loss"].detach())
        opt.zero_grad()
        losses["eff_loss"].backward()
        opt.step()
    assert float(losses["eff_loss"]) < 0.5 * first


def test_efficiency_loss_holds_the_budget_on_average_and_per_level():
    """Written out by hand: images may spread around the budget as long as their mean meets it; a level whose mean
    share exceeds the budget pays for it, one under it does not."""
    budget = 0.5
    spread = torch.tensor([0.1, 0.9])  # mean 0.5: no whole-neck cost, unlike a per-image loss (0.16)
    under = torch.tensor([[0.2, 0.0], [0.4, 0.5]])  # level means 0.3, 0.25: under the budget
    assert float(efficiency_loss(spread, under, budget)) == 0.0
    over = torch.tensor([[1.0, 0.0], [0.8, 0.0]])  # level 0 mean 0.9: (0.9 - 0.5)^2
    assert float(efficiency_loss(spread, over, budget)) == pytest.approx(0.16)
    ratio = torch.tensor([0.7, 0.9], requires_grad=True)  # mean 0.8: (0.8 - 0.5)^2, gradient 2 * 0.3 / 2 each
    loss = efficiency_loss(ratio, under, budget)
    loss.backward()
    assert float(loss) == pytest.approx(0.09) and torch.allclose(ratio.grad, torch.tensor([0.3, 0.3]))


def test_gates():
    logits = torch.tensor([-2.0, 0.0, 0.3, 3.0], requires_grad=True)
    p = gate_probability(logits, "retanh")
    m = gate_multiplier(p, "retanh", 0.0)
    assert m[0] == 0 and m[1] == 0 and m[2] > 0  # exact zeros without sampling
    p = gate_probability(logits, "ste", temperature=0.5)
    m = gate_multiplier(p, "ste", 0.5)
    assert m.tolist() == [0.0, 0.0, 1.0, 1.0]
    m.sum().backward()
    assert (logits.grad != 0).all()  # straight-through
    torch.manual_seed(0)
    noisy = gate_probability(torch.zeros(1000), "gumbel", noise=True)
    assert 0.3 < float(noisy.mean()) < 0.7 and float(noisy.std()) > 0.1
    assert torch.equal(gate_probability(torch.zeros(3), "gumbel"), torch.full((3,), 0.5))


def test_smoothness_is_zero_for_equal_decisions_and_grows_with_differences():
    desc = torch.ones(3, 4)
    assert float(smoothness(desc, torch.full((3, 5), 0.7))) == 0.0
    assert float(smoothness(desc, torch.rand(3, 5))) > 0.0
    assert float(smoothness(torch.eye(3), torch.rand(3, 5))) == 0.0  # dissimilar images: no constraint


def test_calibration_meets_budget_and_is_stored():
    neck = trained_like(seed=1)
    batches = [inputs(2, seed=s) for s in range(3)]
    report = calibrate_neck(neck, batches, 0.7)
    curve = ratio_curve(neck, batches, neck.calib_thresholds)
    assert report["ratio"] <= 0.7 and float(curve[neck.calib_thresholds == neck.threshold][0]) <= 0.7
    assert bool(neck.calib_valid) and "calib_ratios" in neck.state_dict()
    assert threshold_for_budget(neck, 0.7) == pytest.approx(float(neck.threshold))
    assert threshold_for_budget(neck, 1.0) <= float(neck.threshold)
    with pytest.raises(ValueError, match="out of reach"):
        calibrate_neck(neck, batches, 0.01)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        calibrate_neck(neck, batches, 1.5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="budget"):
        DFFNeck(C1S, budget=0)
    with pytest.raises(ValueError, match="topk"):
        DFFNeck(C1S, topk=0)
    with pytest.raises(ValueError, match="gate"):
        DFFNeck(C1S, gate="sigmoid")
    with pytest.raises(ValueError, match="2 input levels"):
        DFFNeck([16])
    neck = DFFNeck(C1S, c=16)
    with pytest.raises(ValueError, match="disable every gated path"):
        neck.set_threshold(1.0)
    with pytest.raises(ValueError, match=r"input 1 must be Tensor\[B, 24"):
        neck(inputs()[:1] + [torch.zeros(1, 8, 4, 4), torch.zeros(1, 32, 2, 2)])
    with pytest.raises(ValueError, match="list of 3 maps"):
        neck(inputs()[:2])
    with pytest.raises(ValueError, match="needs a calibrated model"):
        threshold_for_budget(neck, 0.7)


def test_temperature_is_saved_and_old_pickles_load():
    """Thresholds are read on probabilities at the neck's temperature: it is a buffer (in the state dict); a
    checkpoint pickled when it was a plain attribute loads with its value."""
    neck = DFFNeck(C1S, c=16)
    neck.set_temperature(0.2)
    fresh = DFFNeck(C1S, c=16)
    fresh.load_state_dict(neck.state_dict())
    assert float(fresh.temperature) == pytest.approx(0.2)
    state = neck.__dict__.copy()
    state["_buffers"] = {k: v for k, v in state["_buffers"].items() if k != "temperature"}
    state["temperature"] = 0.3
    old = DFFNeck.__new__(DFFNeck)
    old.__setstate__(state)
    assert float(old.temperature) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="temperature"):
        neck.set_temperature(0)


def test_convbn_folds_once_and_again_when_weights_change():
    """The fusion blocks' ConvBN folds BatchNorm once in inference (the same numbers as folding per call, close
    to conv -> BN unfolded) and again after a change of weights or statistics, or `train()`."""
    from sparseyolo.nn.dff import ConvBN

    m = ConvBN(8, 16, 3)
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5), m.bn.running_var.uniform_(0.5, 2.0), m.bn.weight.uniform_(0.5, 1.5)
    m.eval()
    x = torch.randn(2, 8, 9, 11)

    def check():
        with torch.no_grad():
            y = m(x)
            assert m.folded()[0] is m.folded()[0]  # reused
            torch.testing.assert_close(y, torch.nn.functional.silu(m.bn(m.conv(x))), rtol=1e-5, atol=1e-5)
        assert torch.equal(y, m(x))  # autograd on: folded afresh, the same numbers
        return y

    y0 = check()
    with torch.no_grad():
        m.conv.weight.mul_(1.5), m.bn.running_var.add_(0.5)
    assert not torch.equal(check(), y0)
    m.train()
    m(x)  # training updates the statistics
    m.eval()
    check()


def test_flops_reports_the_last_forward():
    """`DFFNeck.flops()`: what its last forward executed over the batch, as torch's FLOP counter counts it (the
    pixel-gated blocks on the engine's GEMM path)."""
    neck = trained_like(spatial=2, sparse_density=1.0)
    assert neck.flops() == 0.0
    for xs in (inputs(), inputs(b=1, seed=3)):
        with _ext.disabled():
            total = counted_flops(neck, xs)
        assert neck.flops() == pytest.approx(total, rel=1e-9) and total > 0


def test_policy_supervision_against_hand_written_targets():
    """gate_loss: binary cross-entropy of the P3 gate logits against each box marked cell by cell (a loop over cells
    and boxes, overlap test written out) and grown by `gate_margin`; cx_loss: against 1 - exp(-n / count_scale)."""
    torch.manual_seed(0)
    neck = DFFNeck(C1S, c=16, d_max=2, spatial=1).train()
    neck.gate_margin, neck.count_scale = 1, 4.0
    per_image = [[(0.51, 0.52, 0.2, 0.3), (0.9, 0.11, 0.05, 0.05)], [], [(0.11, 0.21, 0.1, 0.1)] * 5]  # off grid lines
    neck(inputs(3))
    logits, cx = neck._aux["gate_logits"][0], neck._aux["cx"]
    losses, _ = neck.pop_aux(box_targets(per_image))
    H, W = SIZES[0]
    want = torch.zeros(3, H, W)
    for b, boxes in enumerate(per_image):
        for x, y, w, h in boxes:
            for i in range(H):
                for j in range(W):
                    if (j + 1) / W > x - w / 2 and j / W < x + w / 2 and (i + 1) / H > y - h / 2 and i / H < y + h / 2:
                        want[b, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2] = 1.0
    p = torch.sigmoid(logits[:, 0])
    bce = -(want * torch.log(p) + (1 - want) * torch.log(1 - p)).mean()
    assert float(losses["gate_loss"]) == pytest.approx(float(bce), rel=1e-5)
    t = torch.tensor([1 - math.exp(-2 / 4), 0.0, 1 - math.exp(-5 / 4)])
    assert torch.allclose(complexity_target(torch.tensor([2, 0, 5]), 4.0), t)
    bce_cx = -(t * torch.log(cx) + (1 - t) * torch.log(1 - cx)).mean()
    assert float(losses["cx_loss"]) == pytest.approx(float(bce_cx), rel=1e-5)
    neck.loss_weights["gate_loss"] = neck.loss_weights["cx_loss"] = 0.0  # dff_supervise=0
    neck(inputs(3))
    losses, _ = neck.pop_aux(box_targets(per_image))
    assert float(losses["gate_loss"]) == 0.0 and float(losses["cx_loss"]) == 0.0
    with pytest.raises(ValueError, match="count scale"):
        complexity_target(torch.tensor([1]), 0.0)


def test_supervised_policy_spends_less_on_empty_images():
    """Trained on the supervision alone, where one input channel marks the objects, the policy shuts the pixel
    gates of an empty image and opens them on a crowded one: executed neck FLOPs follow the content."""
    torch.manual_seed(0)
    neck = DFFNeck(C1S, c=16, d_max=2, spatial=1)
    H, W = SIZES[0]

    def scene(n_boxes, seed):
        g = torch.Generator().manual_seed(seed)
        xs = [torch.randn(1, c, h, w, generator=g) * 0.1 for c, (h, w) in zip(C1S, SIZES, strict=True)]
        boxes = []
        for _ in range(n_boxes):
            cx, cy = (torch.rand(2, generator=g) * 0.8 + 0.1).tolist()
            boxes.append((cx, cy, 0.15, 0.15))
        mask = box_targets([boxes])
        from sparseyolo.nn.masks import boxes_to_mask

        for lvl, (h, w) in enumerate(SIZES):
            xs[lvl][0, 0] += 3 * boxes_to_mask(mask["batch_idx"], mask["bboxes"], 1, (h, w))[0]
        return xs, boxes

    train = [scene(n, s) for s, n in enumerate([0, 0, 1, 3, 8, 12, 0, 5] * 2)]
    opt = torch.optim.Adam(list(neck.policy_parameters()) + list(neck.lateral.parameters()), lr=0.02)
    neck.train()
    for step in range(60):
        batch = train[(step * 4) % len(train) :][:4]
        xs = [torch.cat([s[0][lvl] for s in batch]) for lvl in range(3)]
        neck(xs)
        losses, _ = neck.pop_aux(box_targets([s[1] for s in batch]))
        opt.zero_grad()
        (losses["gate_loss"] + losses["cx_loss"]).backward()
        opt.step()
    neck.eval()
    with torch.no_grad():
        empty, crowded = scene(0, 100), scene(12, 101)
        neck(empty[0])
        r_empty, cx_empty = float(neck.last_stats["ratio"][0]), float(neck.last_stats["complexity"][0])
        neck(crowded[0])
        r_crowded, cx_crowded = float(neck.last_stats["ratio"][0]), float(neck.last_stats["complexity"][0])
    assert r_empty < 0.6 * r_crowded, (r_empty, r_crowded)
    assert cx_empty < 0.3 < cx_crowded, (cx_empty, cx_crowded)
