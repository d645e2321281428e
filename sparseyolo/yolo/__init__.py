"""The Ultralytics boundary (the only package that touches Ultralytics internals). Importing it changes nothing:
`enable()`/`disable()` (`integration.py`) install/remove the integration. `YOLO`, `SparseDetectionModel` and
`SparseDetectionTrainer` load on first access, enabling it first (so Ultralytics reads the offline defaults).
"""

_LAZY = {
    "YOLO": "sparseyolo.yolo.api",
    "SparseDetectionModel": "sparseyolo.yolo.model",
    "SparseDetectionTrainer": "sparseyolo.yolo.train",
}
_INTEGRATION = ("enable", "disable", "enabled")

__all__ = [*_LAZY, *_INTEGRATION]


def __getattr__(name):
    import importlib

    integration = importlib.import_module("sparseyolo.yolo.integration")
    if name in _INTEGRATION:
        return getattr(integration, name)
    if name in _LAZY:
        integration.enable()
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparseyolo.yolo' has no attribute {name!r}")
