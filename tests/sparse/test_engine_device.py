"""Devices: the compiled kernels see CPU tensors only, the engine makes its tensors on its inputs' device, and
mixed devices are refused with a message that says what to move.

Without a GPU the checks run on the CPU with `meta` as the "other" device: a meta tensor holds no data, so the
PyTorch path stops wherever it reads values, but nothing may hand one to a compiled kernel; and under
`torch.device("meta")` as the default device, any tensor the engine made without `device=` would be a meta
tensor next to CPU ones. On a CUDA machine one run of every op is also compared with the CPU's (the CUDA oracle
suite proper is `test_engine_oracle.py` and `test_engine_conv2d_at_sites.py`, through the `device` fixture).
"""

from __future__ import annotations

import pytest
import torch
from engine_utils import cuda_only, random_sites, random_sparse
from torch import nn
from torch.testing import assert_close

import sparseyolo.sparse.functional as SF
from sparseyolo.sparse import SparseBatchNorm, SparseConvTensor, SparseSequential, SubMConv2d, _ext, core
from sparseyolo.sparse import kmap as km

F64 = torch.float64
CPU, META = torch.device("cpu"), torch.device("meta")


# --- which device gets the compiled kernels -----------------------------------------------------------


def test_compiled_kernels_are_offered_for_cpu_tensors_only(monkeypatch):
    module = object()
    monkeypatch.setattr(_ext, "load", lambda required=False: module)
    assert _ext.for_device(CPU) is module
    for device in (META, torch.device("cuda"), torch.device("cuda:1")):
        assert _ext.for_device(device) is None
    assert core.compiled(torch.float32, CPU) is module and core.compiled(torch.float64, CPU) is module
    assert core.compiled(torch.float16, CPU) is None and core.compiled(torch.bfloat16, CPU) is None
    assert core.compiled(torch.float32, torch.device("cuda")) is None


class _Spy:
    """Stands in for the compiled module: records every kernel asked for instead of running it."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def kernel(*args, **kwargs):
            self.calls.append(name)
            raise RuntimeError(f"compiled kernel {name} reached")

        return kernel


def _meta_rows(n, width):
    """An int32 `(n, width)` meta tensor: sites or a kernel-map table (a shape only; meta holds no values)."""
    return torch.zeros(n, width, dtype=torch.int32, device=META)


def _empty_meta_grid():
    """A grid index of no sites on meta (built on the PyTorch path, which reads no value for it)."""
    with _ext.disabled():
        return km.CoordinateIndex(torch.zeros(0, 3, dtype=torch.int32, device=META), (6, 7), 2, (2, 2), "grid")


def _meta_map():
    """A 3x3 map of 3 input to 4 output rows on meta, its pair lists given (deriving them reads values)."""
    kmap = km.KernelMap(_meta_rows(9, 4), 3)
    pairs = torch.zeros(5, dtype=torch.int64, device=META)
    kmap._pair_lists = (pairs, pairs, [0, 5, 5, 5, 5, 5, 5, 5, 5, 5])
    return kmap


# Each entry reaches one call site of the compiled kernels with meta tensors. The index builds get int64 rows,
# which `encode` keys on the PyTorch path, so that the build's own call site is the one tested.
META_CALLS = {
    "CoordinateIndex grid_build": lambda: km.CoordinateIndex(_meta_rows(4, 3).long(), (6, 7), 2, (2, 2), "grid"),
    "CoordinateIndex hash_build": lambda: km.CoordinateIndex(_meta_rows(4, 3).long(), (6, 7), 2, (2, 2), "hash"),
    "CoordinateIndex.encode": lambda: _empty_meta_grid().encode(_meta_rows(4, 3)),
    "CoordinateIndex.lookup": lambda: _empty_meta_grid().lookup(
        torch.full((4,), 30, device=META), torch.arange(3, device=META)
    ),
    "KernelMap pairs": lambda: km.KernelMap(_meta_rows(9, 4), 3, identity=4).in_rows,
    "invert_table": lambda: km.invert_table(_meta_rows(9, 4), 3),
    "output sites": lambda: km.conv_out_indices(_meta_rows(4, 3), (6, 7), 2, (3, 3), (2, 2), (1, 1), (1, 1)),
    "apply_map": lambda: core.apply_map(
        torch.zeros(3, 2, device=META), torch.zeros(9, 1, 2, 4, device=META), _meta_map()
    ),
    "weight_grad": lambda: core.weight_grad(
        torch.zeros(3, 2, device=META),
        torch.zeros(4, 4, device=META),
        torch.zeros(9, 1, 2, 4, device=META),
        _meta_map(),
    ),
    "conv2d_at_sites": lambda: SF.conv2d_at_sites(
        torch.zeros(1, 3, 8, 8, device=META), torch.zeros(4, 3, 3, 3, device=META), _meta_rows(0, 3), 2, 1
    ),
}


@pytest.mark.parametrize("call", META_CALLS.values(), ids=META_CALLS.keys())
def test_no_compiled_kernel_sees_a_non_cpu_tensor(call, monkeypatch, setenv):
    """With the kernels loaded, meta tensors take the PyTorch path (which may then stop: meta holds no data)."""
    spy = _Spy()
    monkeypatch.setattr(_ext, "_state", {"module": spy})
    setenv("SPARSEYOLO_NO_EXT", None)
    with torch.no_grad():
        try:
            call()
        except (NotImplementedError, RuntimeError):  # a value read from a meta tensor, or the spy
            pass
    assert spy.calls == []


# --- mixed devices --------------------------------------------------------------------------------


def test_features_and_indices_on_different_devices_are_refused():
    x = random_sparse((5, 6), 2, 3, seed=0)
    with pytest.raises(ValueError, match="features are on cpu but indices are on meta; .*indices.to"):
        SparseConvTensor(x.features, x.indices.to(META), x.spatial_shape, 2)
    with pytest.raises(ValueError, match="features are on meta but indices are on cpu"):
        SparseConvTensor(x.features.to(META), x.indices, x.spatial_shape, 2)
    with pytest.raises(ValueError, match="features are on meta but indices are on cpu"):
        x.replace_feature(x.features.to(META))


@pytest.mark.parametrize(
    "op,weight_shape,kwargs",
    [
        ("subm_conv", (4, 3, 3, 3), {}),
        ("sparse_conv", (4, 3, 3, 3), dict(stride=2)),
        ("sparse_conv_transpose", (3, 4, 3, 3), dict(stride=2)),
    ],
)
def test_weight_and_bias_off_the_features_device_are_refused(op, weight_shape, kwargs):
    x = random_sparse((5, 6), 2, 3, seed=0)
    fn = getattr(SF, op)
    weight, bias = torch.randn(weight_shape, dtype=F64), torch.randn(4, dtype=F64)
    with pytest.raises(ValueError, match=f"{op}: weight is on meta but features are on cpu; move the module"):
        fn(x, weight.to(META), **kwargs)
    with pytest.raises(ValueError, match=f"{op}: bias is on meta but features are on cpu; move the module"):
        fn(x, weight, bias.to(META), **kwargs)


def test_module_and_inverse_conv_off_the_features_device_are_refused():
    x = random_sparse((5, 6), 2, 3, seed=0)
    with pytest.raises(ValueError, match=r"weight is on meta but features are on cpu; .*\.to\(features.device\)"):
        SubMConv2d(3, 4, 3).to(META, F64)(x)
    z = SF.sparse_conv(x, torch.randn(4, 3, 3, 3, dtype=F64), stride=2, indice_key="down")
    with pytest.raises(ValueError, match="sparse_inverse_conv: weight is on meta but features are on cpu"):
        SF.sparse_inverse_conv(z, torch.randn(4, 3, 3, 3, dtype=F64, device=META), indice_key="down")


def test_from_dense_mask_off_the_input_device_is_refused():
    dense = torch.randn(2, 3, 5, 6)
    with pytest.raises(ValueError, match=r"from_dense: mask is on meta but x is on cpu; .*mask.to\(x.device\)"):
        SparseConvTensor.from_dense(dense, torch.ones(2, 5, 6, dtype=torch.bool, device=META))


@pytest.mark.parametrize("name", ["weight", "sites", "mask"])
def test_conv2d_at_sites_inputs_off_the_image_device_are_refused(name):
    args = dict(
        weight=torch.randn(4, 3, 3, 3),
        sites=torch.zeros(2, 3, dtype=torch.int32),
        mask=torch.ones(1, 8, 8, dtype=torch.bool),
    )
    args[name] = args[name].to(META)
    with pytest.raises(ValueError, match=rf"conv2d_at_sites: {name} is on meta but x is on cpu; move it"):
        SF.conv2d_at_sites(torch.randn(1, 3, 8, 8), args["weight"], args["sites"], mask=args["mask"])


# --- every tensor made on the inputs' device ------------------------------------------------------------

SHAPE, FAR_SHAPE = (12, 14), (1000, 1000, 1000)  # FAR_SHAPE: too large a box for a dense index grid


def _leaves(device) -> dict:
    """Inputs and parameters of `_run` on `device` (drawn on the CPU, seeded: equal on every device)."""
    g = torch.Generator().manual_seed(0)

    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=F64).to(device).requires_grad_(True)

    sites = random_sites(SHAPE, 2, seed=1)
    base = torch.arange(20) * 47 % 990
    far = torch.stack([torch.zeros_like(base), base, base, base], 1)
    far = torch.cat([far, far + torch.tensor([0, 1, 0, 0])]).to(torch.int32)  # neighbour pairs, far apart
    return dict(
        features=draw(sites.shape[0], 4),
        sites=sites.to(device),
        far_features=draw(far.shape[0], 2),
        far_sites=far.to(device),
        subm=draw(6, 4, 3, 3),
        bias=draw(6),
        down=draw(5, 6, 3, 3),
        up=draw(5, 3, 2, 2),
        inverse=draw(5, 6, 3, 3),
        far_subm=draw(3, 2, 3, 3, 3),
        image=draw(2, 3, *SHAPE),
        mask=(torch.rand(2, *SHAPE, generator=g) < 0.5).to(device),
        stem=draw(4, 3, 3, 3),
        norm=SparseSequential(SparseBatchNorm(6), nn.ReLU()).to(device, F64),
    )


def _run(t: dict):
    """Every op of the engine, forward and backward: (outputs and output sites, gradients of all leaves)."""
    x = SparseConvTensor(t["features"], t["sites"], SHAPE, 2)
    y = t["norm"](SF.subm_conv(x, t["subm"], t["bias"]))
    z = SF.sparse_conv(y, t["down"], stride=2, padding=1, indice_key="down")
    back = SF.sparse_inverse_conv(z, t["inverse"], indice_key="down")
    far = SparseConvTensor(t["far_features"], t["far_sites"], FAR_SHAPE, 1)  # sorted-key / hash lookups
    far_y = SF.subm_conv(far, t["far_subm"])
    nothing = SparseConvTensor(t["far_features"][:0], t["far_sites"][:0], FAR_SHAPE, 1)
    masked = SparseConvTensor.from_dense(t["image"], t["mask"])
    sparse = [
        y,
        z,
        SF.sparse_conv_transpose(z, t["up"], stride=2),
        back,
        SF.sparse_max_pool(y, 3, 2, 1),
        SF.sparse_avg_pool(y, 2),
        SparseConvTensor(torch.cat([x.features] * 2), torch.cat([x.indices] * 2), SHAPE, 2, duplicates="sum"),
        far_y,
        SF.sparse_max_pool(far_y, 2),  # output sites by sort/unique: the box is too large for a grid
        SF.subm_conv(nothing, t["far_subm"]),  # lookups in an empty table
        SparseConvTensor.from_dense(back.dense()),
        masked,
    ]
    stem = SF.conv2d_at_sites(t["image"], t["stem"], masked.indices, padding=1, mask=t["mask"])
    with torch.no_grad():
        stem_no_grad = SF.conv2d_at_sites(t["image"], t["stem"], masked.indices, padding=1, mask=t["mask"])
    outs = [s.features for s in sparse] + [SF.global_max_pool(y), SF.global_avg_pool(z), back.dense(), stem]
    sum((o * o).sum() for o in outs).backward()
    leaves = [v for v in t.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    results = [o.detach() for o in outs] + [stem_no_grad] + [s.indices for s in sparse]
    return results, [p.grad for p in leaves + list(t["norm"].parameters())]


@pytest.mark.usefixtures("engine_path")
def test_the_engine_makes_no_tensor_off_its_inputs_device(monkeypatch):
    """Under `torch.device("meta")` a tensor made without `device=` would be meta: the run would fail or differ.

    The default device does not reach into autograd's backward, so the engine's backward enters it itself.
    """
    expected = _run(_leaves(CPU))
    backward = core.SparseConvFunction.backward

    def backward_on_meta(ctx, grad_out):
        with torch.device(META):
            return backward(ctx, grad_out)

    monkeypatch.setattr(core.SparseConvFunction, "backward", staticmethod(backward_on_meta))
    t = _leaves(CPU)
    with torch.device(META):
        got = _run(t)
    for a, b in zip(got[0] + got[1], expected[0] + expected[1], strict=True):
        assert a.device == CPU
        assert_close(a, b, rtol=0, atol=0)


@cuda_only
@pytest.mark.usefixtures("engine_path")
def test_cuda_run_matches_the_cpu_run():
    """Every op on CUDA (the PyTorch path, also with the kernels loaded) equals the CPU run, gradients too."""
    expected = _run(_leaves(CPU))
    got = _run(_leaves(torch.device("cuda")))
    for a, b in zip(got[0] + got[1], expected[0] + expected[1], strict=True):
        assert a.is_cuda
        assert_close(a.cpu(), b, rtol=1e-10, atol=1e-10)
