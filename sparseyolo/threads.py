"""PyTorch's intra-op thread count, set for a block and restored after it (torch only; used by every layer)."""

from __future__ import annotations

import contextlib


def set_threads(n: int) -> None:
    """Intra-op threads of PyTorch (and of OpenMP code called from this thread, e.g. C++ extensions)."""
    import torch

    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@contextlib.contextmanager
def threads(n: int | None):
    """Run a block with `n` intra-op threads (None: as they are), restoring the previous count afterwards."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        set_threads(n)
    try:
        yield
    finally:
        set_threads(before)
