"""SparseYOLO: spatially sparse convolution and dynamic feature fusion for YOLOv8.

`import sparseyolo.sparse` needs only torch. Importing sparseyolo changes nothing in Ultralytics: the
Ultralytics-facing API (`sparseyolo.YOLO`, loaded on first access) and `sparseyolo.enable()` install the
integration, `sparseyolo.disable()` removes it (`sparseyolo.yolo.integration`).
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name in ("YOLO", "enable", "disable", "enabled"):
        import sparseyolo.yolo

        return getattr(sparseyolo.yolo, name)
    raise AttributeError(f"module 'sparseyolo' has no attribute {name!r}")
