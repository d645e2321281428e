"""Sparse blocks against Ultralytics' own dense blocks (the oracle): forward and gradients on fully active
inputs, the dense masked path on sparse inputs, zero active sites, bad inputs, sparsify strategies."""

from __future__ import annotations

import pytest
import torch
from ultralytics.nn.modules import Bottleneck, C2f, Conv

from sparseyolo.nn import SBottleneck, SC2f, SConv, SparseStem, set_export_dense
from sparseyolo.nn.sparsify import Sparsifier, apply_budget, boxes_to_mask, dilate_mask
from sparseyolo.sparse import SparseConvTensor

torch.manual_seed(0)


def _prep_dense(m):
    for b in m.modules():
        if isinstance(b, torch.nn.BatchNorm2d):  # Ultralytics' initialize_weights() values, as in every model
            b.eps, b.momentum = 1e-3, 0.03
            b.running_mean.uniform_(-0.5, 0.5)
            b.running_var.uniform_(0.5, 2.0)
            b.weight.data.uniform_(0.5, 1.5)
            b.bias.data.uniform_(-0.5, 0.5)
    return m


CASES = [
    ("conv k3 s2", lambda: Conv(8, 16, 3, 2), lambda: SConv(8, 16, 3, 2), 8),
    ("conv k1", lambda: Conv(8, 16, 1, 1), lambda: SConv(8, 16, 1, 1), 8),
    ("conv k3 s1", lambda: Conv(8, 16, 3, 1), lambda: SConv(8, 16, 3, 1), 8),
    (
        "bottleneck",
        lambda: Bottleneck(8, 8, True, 1, (3, 3), 1.0),
        lambda: SBottleneck(8, 8, True, 1, (3, 3), 1.0),
        8,
    ),
    ("c2f n2", lambda: C2f(8, 16, 2, True), lambda: SC2f(8, 16, 2, True), 8),
    ("c2f n1 noshort", lambda: C2f(8, 16, 1, False), lambda: SC2f(8, 16, 1, False), 8),
    ("stem", lambda: Conv(3, 16, 3, 2), lambda: SparseStem(3, 16, 3, 2), 3),
    ("stem s1", lambda: Conv(3, 16, 3, 1), lambda: SparseStem(3, 16, 3, 1), 3),
    ("stem k5 s2", lambda: Conv(3, 16, 5, 2), lambda: SparseStem(3, 16, 5, 2), 3),
]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name,dense_fn,sparse_fn,c1", CASES, ids=[c[0] for c in CASES])
def test_fully_active_matches_dense(name, dense_fn, sparse_fn, c1, train):
    dense = _prep_dense(dense_fn().double())
    sparse = sparse_fn().double()
    missing = sparse.load_state_dict(dense.state_dict(), strict=False)
    assert not missing.unexpected_keys and all(k.startswith("sparsify.") for k in missing.missing_keys)
    dense.train(train), sparse.train(train)
    x = torch.rand(2, c1, 13, 18, dtype=torch.float64) + 0.1  # odd sizes, every pixel active
    xd, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    yd, ys = dense(xd), sparse(xs)
    assert ys.shape == yd.shape
    torch.testing.assert_close(ys, yd, rtol=1e-9, atol=1e-9)
    g = torch.randn_like(yd)
    (yd * g).sum().backward()
    (ys * g).sum().backward()
    torch.testing.assert_close(xs.grad, xd.grad, rtol=1e-8, atol=1e-8)
    pd = dict(dense.named_parameters())
    for k, p in sparse.named_parameters():
        assert p.grad is not None, f"no gradient for {k}"
        torch.testing.assert_close(p.grad, pd[k].grad, rtol=1e-8, atol=1e-8, msg=f"grad of {k}")
    if train:  # batch statistics updated identically
        for k, b in sparse.named_buffers():
            if "running" in k:
                torch.testing.assert_close(b, dict(dense.named_buffers())[k], rtol=1e-9, atol=1e-9)


def _sparse_image(B=2, C=3, H=37, W=50, frac=0.15, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, C, H, W, generator=g)
    blobs = torch.rand(B, 1, H // 4 + 1, W // 4 + 1, generator=g) < frac
    m = torch.nn.functional.interpolate(blobs.float(), scale_factor=4)[..., :H, :W]
    return x * m, m[:, 0] > 0


@pytest.mark.parametrize("name,dense_fn,sparse_fn,c1", CASES, ids=[c[0] for c in CASES])
def test_sparse_input_matches_dense_masked_oracle(name, dense_fn, sparse_fn, c1):
    """On a sparse input the sparse path equals dense convs on the masked input, masked to the output sites
    (the dense export path; conv sites of a strided conv = 3x3/s2 max-pool of the input mask)."""
    sparse = sparse_fn().double().eval()
    _prep_dense(dense_fn()).double()  # same init path; the sparse block is compared with its own dense mode
    x, _ = _sparse_image(C=c1)
    x = x.double()
    ys = sparse(x)
    with torch.no_grad():  # the inference path (in-place epilogue, compiled first conv) gives the same numbers
        torch.testing.assert_close(sparse(x), ys.detach(), rtol=1e-9, atol=1e-9)
    set_export_dense(sparse, True)
    yd = sparse(x)
    torch.testing.assert_close(ys, yd, rtol=1e-9, atol=1e-9)
    # independent check of the first conv's site set: output zero exactly off the dense max-pooled mask
    if isinstance(sparse, (SConv, SparseStem)) and sparse.s == 2:
        m = torch.nn.functional.max_pool2d((x.abs().sum(1, keepdim=True) > 0).double(), sparse.k, 2, sparse.p)
        assert torch.all(ys.abs().sum(1, keepdim=True)[m == 0] == 0)


@pytest.mark.parametrize("method", ["nonzero", "threshold", "gradient", "learned"])
def test_zero_active_sites(method):
    """Ultralytics probes strides with an all-zero 256x256 image: empty sparse maps, right dense shapes."""
    stem = SparseStem(3, 16, 3, 2, method, 0.5)
    chain = torch.nn.Sequential(stem, SConv(16, 32, 3, 2), SC2f(32, 32, 1, True))
    stem.dense_out = False
    chain[1].dense_out = False
    for train in (True, False):
        chain.train(train)
        x = torch.zeros(1, 3, 256, 256, requires_grad=True)
        if method == "learned":
            stem.sparsify.head.conv2.bias.data.fill_(-10.0)  # head says "background" everywhere
        y = chain(x)
        assert y.shape == (1, 32, 64, 64) and torch.all(y == 0)
        y.sum().backward()


def test_bad_inputs_name_the_problem():
    stem = SparseStem(3, 16)
    with pytest.raises(ValueError, match="alpha channel"):
        stem(torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match="grayscale"):
        stem(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="expects 8 input channels, got 16"):
        SConv(8, 16, 3, 2)(torch.rand(1, 16, 8, 8))
    with pytest.raises(ValueError, match="unknown sparsify method 'edges'"):
        Sparsifier(3, "edges")
    with pytest.raises(ValueError, match="keep must be a ratio"):
        Sparsifier(3, "nonzero", keep=2.0)


def test_sparsify_strategies():
    x = torch.zeros(1, 3, 20, 30)
    x[0, :, 5:10, 5:15] = 0.8  # bright box
    x[0, :, 15:18, 20:25] = 0.05  # faint box
    nz, _ = Sparsifier(3, "nonzero")(x)
    assert torch.equal(nz, x.abs().sum(1) > 0)
    th, _ = Sparsifier(3, "threshold", 0.5)(x)
    assert torch.equal(th, x.mean(1) > 0.5)
    gr, _ = Sparsifier(3, "gradient", 0.5)(x)
    assert gr[0, 5:10, 4].all() and not gr[0, 7, 10] and not gr[0, 0, 0]  # edges of the box, not its inside
    kept, _ = Sparsifier(3, "nonzero", keep=0.05)(x)
    assert kept.sum() == int(0.05 * 600) and kept[0, 5:10, 5:15].any() and not kept[0, 15:18, 20:25].any()
    capped, _ = Sparsifier(3, "nonzero", max_active=7)(x)
    assert capped.sum() == 7
    dil, _ = Sparsifier(3, "threshold", 0.5, dilate=2)(x)
    assert torch.equal(dil, dilate_mask(th, 2)) and dil[0, 3:12, 3:17].all() and dil.sum() == 9 * 14
    assert torch.equal(apply_budget(nz, x.sum(1), keep=1.0), nz)


def test_learned_sparsifier_trains_from_boxes():
    s = Sparsifier(3, "learned")
    x = torch.rand(2, 3, 32, 32)
    mask, gate = s(x)
    assert gate is not None and torch.allclose(gate, torch.ones_like(gate))
    (x * gate).sum().backward(retain_graph=True)  # straight-through: detection loss reaches the head
    assert s.head.conv1.weight.grad is not None and s.head.conv1.weight.grad.abs().sum() > 0
    s.zero_grad()
    targets = {
        "batch_idx": torch.tensor([0, 1]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.2, 0.2, 0.2, 0.2]]),
        "batch_size": 2,
        "imgsz": (32, 32),
    }
    losses, stats = s.pop_aux(targets)
    assert set(losses) == {"mask_loss"} and 0.0 <= float(stats["active"]) <= 1.0
    losses["mask_loss"].backward()
    assert all(p.grad is not None for p in s.head.parameters())
    assert s.pop_aux(targets) == ({}, {})  # popped: nothing graph-connected stays on the module
    fg = boxes_to_mask(targets["batch_idx"], targets["bboxes"], 2, (8, 8))
    assert fg[0, 2:6, 2:6].all() and fg[0].sum() == 16 and fg[1, 0:2, 0:2].all()


def test_sparse_chain_passes_sparse_tensors():
    stem, c = SparseStem(3, 8), SConv(8, 16, 3, 2)
    stem.dense_out = False
    x, _ = _sparse_image()
    h = stem(x)
    assert isinstance(h, SparseConvTensor) and 0 < h.num_active < h.batch_size * h.spatial_shape[0] * h.spatial_shape[1]
    assert c(h).shape == (2, 16, 10, 13)


def test_sparsify_settings_have_one_order():
    """SparseStem's signature is the one source of its YAML arg positions; Sparsifier takes settings by name."""
    import inspect

    from sparseyolo.nn.sparsify import SETTINGS
    from sparseyolo.yolo.cfg import stem_args, stem_params

    names, defaults = stem_params()
    assert names == ["c2", "k", "s", *SETTINGS] == list(inspect.signature(SparseStem).parameters)[1:]
    assert defaults[:5] == [None, 3, 2, "nonzero", 0.0]
    assert stem_args(16, 3, 2, method="nonzero", max_active=9) == [16, 3, 2, "nonzero", 0.0, 1.0, 0, 9]
    with pytest.raises(TypeError):
        Sparsifier(3, "nonzero", 0.0, 0.5)  # keep and later settings are keyword-only: no silent reordering
    stem = SparseStem(3, 8, 3, 2, "nonzero", 0.0, 1.0, 2, 100)
    assert (stem.sparsify.dilate, stem.sparsify.max_active) == (2, 100)
    assert Sparsifier(3, "nonzero").no_budget and not Sparsifier(3, "nonzero", keep=0.5).no_budget
    assert not Sparsifier(3, "threshold").no_budget and not Sparsifier(3, "nonzero", max_active=5).no_budget


@pytest.mark.parametrize("name,dense_fn,sparse_fn,c1", [CASES[0], CASES[4]], ids=["conv k3 s2", "c2f n2"])
def test_batchnorm_folded_once_and_again_when_weights_change(name, dense_fn, sparse_fn, c1, monkeypatch):
    """Inference folds each conv's BatchNorm once and reuses it (bit for bit what folding per call gives; close to
    the unfolded dense conv -> BN); a change of weights or statistics (in place, load_state_dict, dtype) folds
    again; training runs the unfolded BN."""
    from sparseyolo.nn import common

    folds = []
    fold = common.fold_batchnorm
    monkeypatch.setattr(common, "fold_batchnorm", lambda *a: folds.append(1) or fold(*a))
    dense, sparse = _prep_dense(dense_fn()).eval(), sparse_fn().eval()
    sparse.load_state_dict(dense.state_dict())
    n_convs = sum(isinstance(m, SConv) for m in sparse.modules())
    x = torch.rand(2, c1, 13, 18) + 0.1

    def check(dtype=torch.float32):
        with torch.no_grad():
            y, again = sparse(x.to(dtype)), sparse(x.to(dtype))
            torch.testing.assert_close(y, dense(x.to(dtype)), rtol=1e-4, atol=1e-4)  # unfolded conv -> BN
        assert torch.equal(y, again) and torch.equal(y, sparse(x.to(dtype)))  # autograd on: folded afresh
        return y

    y0 = check()
    assert len(folds) == 2 * n_convs  # once under no_grad (then reused), once in the autograd call
    with torch.no_grad():
        for m in (dense, sparse):
            next(b for b in m.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)).running_var.add_(0.5)
            m.get_submodule("cv2.conv" if name == "c2f n2" else "conv").weight.mul_(1.5)
    assert not torch.equal(check(), y0)
    dense.train(), sparse.train()  # training: BatchNorm from the batch (unfolded), statistics updated
    torch.testing.assert_close(sparse(x), dense(x), rtol=1e-4, atol=1e-4)
    dense.eval(), sparse.eval()
    check()
    state = {k: v * 1.1 if v.is_floating_point() else v for k, v in dense.state_dict().items()}
    dense.load_state_dict(state), sparse.load_state_dict(state)
    check()
    dense.double(), sparse.double()
    check(torch.float64)


@pytest.mark.parametrize("name,dense_fn,sparse_fn,c1", CASES, ids=[c[0] for c in CASES])
def test_each_block_counts_the_flops_it_executed(name, dense_fn, sparse_fn, c1):
    """`flops()` reports the last forward: switched to its dense path, exactly the FLOP counter's count of the
    dense Ultralytics block (fully active and on a sparse image); sparse, exactly the counter's count of the GEMMs
    the pure-PyTorch engine runs (gather -> mm -> scatter over the kernel-map pairs). That engine's stem also
    multiplies the zero padding at the border, which the count (the compiled kernel's) leaves out: the sparse
    image keeps off the border."""
    from torch.utils.flop_counter import FlopCounterMode

    from sparseyolo.sparse import _ext

    def counted(m, x):
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            m(x)
        return fc.get_total_flops()

    dense, sparse = _prep_dense(dense_fn()).eval(), sparse_fn().eval()
    sparse.load_state_dict(dense.state_dict(), strict=False)
    assert sparse.flops() == 0.0  # nothing run yet
    inner = _sparse_image(C=c1, frac=0.3)[0]
    inner[..., :6, :], inner[..., -6:, :], inner[..., :6], inner[..., -6:] = 0, 0, 0, 0
    for x in (torch.rand(2, c1, 13, 18) + 0.1, inner):
        sparse.crossover = 0.0  # the dense path: the counter sees its convs
        assert counted(sparse, x) == sparse.flops() == counted(dense, x)
        sparse.crossover = 1.0  # sparse
        stem_s1 = isinstance(sparse, SparseStem) and sparse.s == 1  # its count takes the dilated mask's sites
        if (x is inner or not isinstance(sparse, SparseStem)) and not stem_s1:
            with _ext.disabled():
                assert counted(sparse, x) == sparse.flops()
        sparse(x)
        assert 0 < sparse.flops() <= counted(dense, x)
