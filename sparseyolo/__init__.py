"""SparseYOLO: spatially sparse convolution and dynamic feature fusion for YOLOv8.

`import sparseyolo.sparse` needs only torch. The Ultralytics-facing API (`sparseyolo.YOLO`) is imported
lazily, on first attribute access, so the engine stays usable without Ultralytics installed.
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name == "YOLO":
        from sparseyolo.yolo import YOLO

        return YOLO
    raise AttributeError(f"module 'sparseyolo' has no attribute {name!r}")
