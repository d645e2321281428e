"""SparseYOLO's settings from the environment, read once (at first use) and cached; `reload()` reads them again.

- `SPARSEYOLO_CACHE`: the cache root (data, kernels, crossover store, Ultralytics' config), `~/.cache/sparseyolo`.
- `SPARSEYOLO_NO_EXT=1`: the pure-PyTorch engine (`sparseyolo.sparse._ext`).
- `SPARSEYOLO_CROSSOVER`: the sparse blocks' crossover (`sparseyolo.nn.crossover`), checked where it is used.
- `SPARSEYOLO_ONLINE=1` (or true, yes): no offline defaults for Ultralytics (`sparseyolo.yolo.integration`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import NamedTuple


class Settings(NamedTuple):
    cache: Path
    no_ext: bool
    crossover: str | None
    online: bool


@functools.cache
def get() -> Settings:
    env = os.environ
    return Settings(
        cache=Path(env.get("SPARSEYOLO_CACHE") or Path.home() / ".cache" / "sparseyolo"),
        no_ext=env.get("SPARSEYOLO_NO_EXT") == "1",
        crossover=env.get("SPARSEYOLO_CROSSOVER") or None,
        online=env.get("SPARSEYOLO_ONLINE", "").strip().lower() in {"1", "true", "yes"},
    )


def reload() -> Settings:
    """Read the environment again (after a change to it, e.g. in tests)."""
    get.cache_clear()
    return get()


def cache_dir() -> Path:
    """The cache root (created if missing)."""
    path = get().cache
    path.mkdir(parents=True, exist_ok=True)
    return path
