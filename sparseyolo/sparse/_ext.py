"""Optional compiled kernels (`csrc/sparse_ops.cpp`), built with `torch.utils.cpp_extension` on first use.

The pure-PyTorch path in `functional.py` is the reference and the fallback: when the build fails (no
compiler, no ninja) a warning is issued once and everything still works, only slower.
Set `SPARSEYOLO_NO_EXT=1` to force the fallback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

_state: dict = {}


def build_dir() -> Path:
    import torch

    root = os.environ.get("SPARSEYOLO_CACHE") or Path.home() / ".cache" / "sparseyolo"
    path = Path(root) / "torch_extensions" / f"torch-{torch.__version__}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load(required: bool = False):
    """The compiled module, or None when disabled or unavailable (raises instead when `required`)."""
    if os.environ.get("SPARSEYOLO_NO_EXT") == "1" and not required:
        return None
    if "module" in _state:
        return _state["module"]
    try:
        # torch logs a warning about CUDA_HOME on CUDA builds without a GPU; irrelevant for a CPU kernel.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        from torch.utils.cpp_extension import load as load_extension

        source = Path(__file__).with_name("csrc") / "sparse_ops.cpp"
        module = load_extension(
            name="sparseyolo_sparse_ops",
            sources=[str(source)],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir()),
            verbose=False,
        )
    except Exception as error:  # compiler/ninja missing, build error
        if required:
            raise
        warnings.warn(
            f"sparseyolo: compiled sparse kernels unavailable ({error!s:.300}); using the pure-PyTorch path",
            RuntimeWarning,
            stacklevel=2,
        )
        module = None
    _state["module"] = module
    return module


def enabled() -> bool:
    return load() is not None


@contextlib.contextmanager
def disabled():
    """Run the block on the pure-PyTorch path (tests compare both paths)."""
    saved = _state.get("module", "unset")
    _state["module"] = None
    try:
        yield
    finally:
        if saved == "unset":
            _state.pop("module", None)
        else:
            _state["module"] = saved
