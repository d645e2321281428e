"""The crossover density: the occupancy above which a sparse block's dense (masked) path is faster.

Sparse blocks (`SparseBlock.switch_dense`) compare their input's occupancy with it in inference and run the dense
path above it; both paths give the same numbers. Where the value comes from, first match wins:

1. a block's own `crossover` attribute (`set_crossover(model, value)`, `YOLO(...).set_crossover(value)`, for one
   call `predict(crossover=)`, `val(crossover=)`, the CLI's `crossover=`);
2. the environment variable `SPARSEYOLO_CROSSOVER` (a number in [0, 1]; `sparseyolo.settings`);
3. the value measured on this machine by `sparseyolo bench crossover --save`, stored per device type in
   `<cache>/crossover.json` (cache: `$SPARSEYOLO_CACHE`, default `~/.cache/sparseyolo`);
4. `BUILTIN`, measured on the development machine (2-core x86 CPU) with that command.

2-4 are resolved once into the blocks (`resolve`), when a `SparseDetectionModel` is built or loaded and when
`YOLO.predict`/`val` start (a block on its own: at its first call). 0 always runs dense; 1 never switches.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sparseyolo import settings

ENV = "SPARSEYOLO_CROSSOVER"
BUILTIN = {"cpu": 0.6, "cuda": 0.5}  # device type -> crossover (cpu: `bench crossover`, 1920x1088; cuda: a guess)


def store_path() -> Path:
    """`<cache>/crossover.json` (no directory is created here)."""
    return settings.get().cache / "crossover.json"


def check_crossover(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"crossover must be a number in [0, 1] (occupancy), got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"crossover must be in [0, 1] (0: always dense, 1: never switch), got {v}")
    return v


def stored() -> dict:
    """`{device type: {"crossover": float, ...}}` from the store (empty when there is none or it is unreadable)."""
    try:
        return json.loads(store_path().read_text())
    except (OSError, ValueError):
        return {}


def defaults() -> dict[str, float]:
    """The crossover per device type (key "": any other type) when a block sets none, from 2-4 above."""
    env = settings.get().crossover
    if env:
        try:
            return {"": check_crossover(env)}
        except ValueError as error:
            raise ValueError(f"{ENV}: {error}") from None
    table = {"": BUILTIN["cpu"], **BUILTIN}
    for kind, entry in stored().items():
        if isinstance(entry, dict) and isinstance(entry.get("crossover"), (int, float)):
            table[kind] = float(entry["crossover"])
    return table


def default_crossover(device: torch.device | str = "cpu") -> float:
    """The crossover for `device` when a block sets none: `SPARSEYOLO_CROSSOVER`, else stored, else `BUILTIN`."""
    table = defaults()
    return table.get(torch.device(device).type, table[""])


def resolve(*models: torch.nn.Module) -> dict[str, float]:
    """Resolve `defaults()` now into every sparse block of `models` (their `default_crossovers`); returns it."""
    table = defaults()
    for model in models:
        for m in model.modules():
            if hasattr(m, "switch_dense"):
                m.default_crossovers = table
    return table


def save_crossover(value: float, device: torch.device | str = "cpu", **info) -> Path:
    """Store `value` as this machine's crossover for `device`'s type (with `info`, e.g. how it was measured)."""
    value = check_crossover(value)
    p = store_path()
    data = dict(stored())
    data[torch.device(device).type] = {"crossover": value, **info}
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2) + "\n")
    return p


def set_crossover(model: torch.nn.Module, value: float | None) -> torch.nn.Module:
    """Set the crossover of every sparse block of `model` (None: back to the default chain above)."""
    v = None if value is None else check_crossover(value)
    for m in model.modules():
        if hasattr(m, "switch_dense"):  # a sparse block
            m.crossover = v
    return model
