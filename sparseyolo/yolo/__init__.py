"""The Ultralytics boundary (the only package that touches Ultralytics internals).

Importing it sets offline environment defaults and registers SparseYOLO blocks with Ultralytics' model parser
(now if Ultralytics is loaded, else as soon as it is; see `hook.py`). Ultralytics itself is imported lazily:
`YOLO`, `SparseDetectionModel`, `SparseDetectionTrainer` are loaded on first access.
"""

from sparseyolo.yolo.hook import install as _install

_install()

_LAZY = {
    "YOLO": "sparseyolo.yolo.api",
    "SparseDetectionModel": "sparseyolo.yolo.model",
    "SparseDetectionTrainer": "sparseyolo.yolo.train",
    "register_all": "sparseyolo.yolo.registry",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparseyolo.yolo' has no attribute {name!r}")
