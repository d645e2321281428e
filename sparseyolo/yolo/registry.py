"""Register every block listed in `sparseyolo.nn.YAML_MODULES` with Ultralytics (see `patch.py`)."""

from __future__ import annotations

import sys
import warnings


def _check_version() -> None:
    import ultralytics

    from sparseyolo.yolo.env import TESTED_ULTRALYTICS_SPEC, ultralytics_version_tested

    if not ultralytics_version_tested(ultralytics.__version__):
        warnings.warn(
            f"sparseyolo is tested with {TESTED_ULTRALYTICS_SPEC}, found {ultralytics.__version__}",
            stacklevel=3,
        )


def yaml_classes() -> dict[str, type]:
    """Our YAML blocks: those of `sparseyolo.nn`, and the heads built on Ultralytics' own (`SparseDetect`)."""
    import sparseyolo.nn as snn

    classes = {name: getattr(snn, name) for name in snn.YAML_MODULES}
    head = sys.modules.get("sparseyolo.yolo.sparse_detect")
    if head is None or hasattr(head, "SparseDetect"):
        from sparseyolo.yolo.sparse_detect import SparseDetect

        classes["SparseDetect"] = SparseDetect
    # else: that module is importing Ultralytics (which registers us); it registers its head when it is done
    return classes


def register_all() -> None:
    _check_version()
    from sparseyolo.yolo.patch import register

    register(yaml_classes())
