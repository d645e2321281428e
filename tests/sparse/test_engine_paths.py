"""The two engine paths and the compiled kernels' loader: the paths agree on one graph of every conv kind; the
build cache is keyed by torch version and CPU; `load(required=True)` raises when the kernels cannot be had."""

from __future__ import annotations

import pytest
import torch
from engine_utils import cotangent, random_sparse
from torch.testing import assert_close

import sparseyolo.sparse.functional as SF
from sparseyolo.sparse import _ext

F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def _chain(x, params):
    """subm (grouped) -> strided conv (key) -> transposed conv -> inverse: every conv kind, one graph."""
    w1, w2, w3, w4 = params
    y = SF.subm_conv(x, w1, groups=2, dilation=(1, 2))
    z = SF.sparse_conv(y, w2, stride=2, padding=1, indice_key="d")
    t = SF.sparse_conv_transpose(z, w3, stride=1, padding=1)
    u = SF.sparse_inverse_conv(z, w4, indice_key="d")
    return [y.features, z.features, t.features, u.features]


def test_compiled_and_pytorch_paths_agree(setenv):
    """The fallback path (SPARSEYOLO_NO_EXT=1) and the default path give the same values and gradients."""
    g = torch.Generator().manual_seed(8)
    shapes = [(6, 2, 3, 3), (5, 6, 3, 3), (5, 4, 3, 3), (5, 3, 3, 3)]
    params = [torch.randn(s, generator=g, dtype=F64) for s in shapes]
    results = []
    for no_ext in ("0", "1"):
        setenv("SPARSEYOLO_NO_EXT", no_ext)
        x = random_sparse((20, 24), 2, 4, seed=8, requires_grad=True)
        ps = [leaf(p) for p in params]
        outs = _chain(x, ps)
        sum((o * cotangent(*o.shape, i)).sum() for i, o in enumerate(outs)).backward()
        results.append(([o.detach() for o in outs], x.features.grad, [p.grad for p in ps]))
    (o0, f0, p0), (o1, f1, p1) = results
    for a, b in zip(o0 + [f0] + p0, o1 + [f1] + p1):
        assert_close(a, b, **TOL)


# --- the loader -------------------------------------------------------------------------------------


@pytest.fixture
def fresh_loader(monkeypatch, setenv, tmp_path):
    """`_ext` with an empty state and its own cache directory (restored afterwards)."""
    monkeypatch.setattr(_ext, "_state", {})
    setenv("SPARSEYOLO_CACHE", str(tmp_path))
    setenv("SPARSEYOLO_NO_EXT", None)
    return _ext


def _failing_build(*args, **kwargs):
    raise RuntimeError("no compiler here")


def test_build_dir_is_keyed_by_torch_version_and_cpu(fresh_loader, monkeypatch):
    path = fresh_loader.build_dir()
    assert path.name.startswith(f"torch-{torch.__version__}-cpu-")
    monkeypatch.setattr(fresh_loader, "cpu_features", lambda: "x86_64 | another cpu | sse2 avx2")
    other = fresh_loader.build_dir()
    assert other != path and other.parent == path.parent and other.is_dir()


def test_required_raises_after_a_cached_failure(fresh_loader, monkeypatch):
    import torch.utils.cpp_extension as cpp

    monkeypatch.setattr(cpp, "load", _failing_build)
    with pytest.warns(RuntimeWarning, match="compiled sparse kernels unavailable .*no compiler here"):
        assert fresh_loader.load() is None
    assert fresh_loader.load() is None  # the failure is cached: no second build, no second warning
    with pytest.raises(RuntimeError, match="compiled sparse kernels are required .*no compiler here"):
        fresh_loader.load(required=True)
    assert not fresh_loader.enabled()


def test_required_raises_on_a_first_failure(fresh_loader, monkeypatch):
    import torch.utils.cpp_extension as cpp

    monkeypatch.setattr(cpp, "load", _failing_build)
    with pytest.raises(RuntimeError, match="no compiler here"):
        fresh_loader.load(required=True)
    with pytest.raises(RuntimeError, match="compiled sparse kernels are required .*no compiler here"):
        fresh_loader.load(required=True)  # and again, from the cached failure


def test_required_raises_while_disabled():
    with _ext.disabled(), pytest.raises(RuntimeError, match="disabled"):
        _ext.load(required=True)
