"""Optional compiled kernels (`csrc/sparse_ops.cpp`), built with `torch.utils.cpp_extension` on first use.

The pure-PyTorch path is the reference and the fallback: when the build fails (no compiler, no ninja) a
warning is issued once and everything still works, only slower. Set `SPARSEYOLO_NO_EXT=1` to force the
fallback; `load(required=True)` raises instead of falling back.

The kernels read raw CPU memory: the engine asks for them through :func:`for_device` with the device of the
tensors at hand, which gives None (the PyTorch path) for any device but the CPU.

The kernels are built with `-march=native`, so a build only runs on CPUs with the same instruction set: builds
are cached per torch version *and* per CPU (model and feature flags), under `$SPARSEYOLO_CACHE` (default
`~/.cache/sparseyolo`)`/torch_extensions/`. A home directory shared by machines with different CPUs gets one
build per CPU, never an illegal-instruction build from another machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import platform
import warnings
from pathlib import Path

from sparseyolo import settings

# "module": the loaded module, or None after a failed build or inside `disabled()`; "error": why it failed.
_state: dict = {}


def cpu_features() -> str:
    """What a `-march=native` build depends on: machine, CPU model and instruction-set flags (Linux), or the
    platform's processor description elsewhere."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:  # x86 / ARM
                    flags = " ".join(sorted(value.split()))
                if model and flags:
                    break
    except OSError:
        pass
    return " | ".join((platform.machine(), model or platform.processor(), flags))


def build_dir() -> Path:
    """The build cache of this torch version on this CPU (created if missing)."""
    import torch

    cpu = hashlib.sha1(cpu_features().encode()).hexdigest()[:12]
    path = settings.get().cache / "torch_extensions" / f"torch-{torch.__version__}-cpu-{cpu}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load(required: bool = False):
    """The compiled module, or None when disabled or unavailable.

    With `required=True` it never returns None: it raises `RuntimeError` when the kernels are disabled or
    cannot be built, also when an earlier call already failed (the failure is cached; the build is not retried).
    """
    if settings.get().no_ext and not required:
        return None
    if "module" not in _state:
        _build(warn=not required)
    module = _state["module"]
    if module is None and required:
        error = _state.get("error")
        why = f"the build failed: {error!s:.500}" if error is not None else "they are disabled (_ext.disabled())"
        raise RuntimeError(f"sparseyolo: compiled sparse kernels are required but {why}") from error
    return module


def for_device(device):
    """The compiled module for tensors on `device` (a `torch.device`): None off the CPU, or when unavailable."""
    return load() if device.type == "cpu" else None


def _build(warn: bool) -> None:
    try:
        # torch logs a warning about CUDA_HOME on CUDA builds without a GPU; irrelevant for a CPU kernel.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        from torch.utils.cpp_extension import load as load_extension

        source = Path(__file__).with_name("csrc") / "sparse_ops.cpp"
        _state["module"] = load_extension(
            name="sparseyolo_sparse_ops",
            sources=[str(source)],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir()),
            verbose=False,
        )
    except Exception as error:  # compiler/ninja missing, build error
        _state["module"], _state["error"] = None, error
        if warn:
            warnings.warn(
                f"sparseyolo: compiled sparse kernels unavailable ({error!s:.300}); using the pure-PyTorch path",
                RuntimeWarning,
                stacklevel=3,
            )


def enabled() -> bool:
    return load() is not None


@contextlib.contextmanager
def disabled():
    """Run the block on the pure-PyTorch path (tests compare both paths)."""
    saved = dict(_state)
    _state.clear()
    _state["module"] = None
    try:
        yield
    finally:
        _state.clear()
        _state.update(saved)
