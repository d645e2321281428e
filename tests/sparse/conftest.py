"""Fixtures of the engine tests.

`engine_path` runs a test once on each engine path: "compiled" (the C++/OpenMP kernels; skipped when they are
unavailable or disabled with SPARSEYOLO_NO_EXT=1) and "pytorch" (the pure-PyTorch reference and fallback).
A module opts in with `pytestmark = pytest.mark.usefixtures("engine_path")`; a test that needs the name takes
`engine_path` as an argument.

`device` runs a test once on the CPU and once on CUDA (the CUDA oracle suite), the latter skipped without a
CUDA device. On CUDA the "compiled" case checks that the loaded kernels are bypassed (they serve the CPU only).
"""

from __future__ import annotations

import pytest
import torch
from engine_utils import cuda_only

from sparseyolo.sparse import _ext


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=cuda_only)])
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=["compiled", "pytorch"])
def engine_path(request):
    if request.param == "pytorch":
        with _ext.disabled():
            yield "pytorch"
        return
    if _ext.load() is None:
        pytest.skip("compiled kernels unavailable or disabled: the 'pytorch' case covers the fallback")
    yield "compiled"
