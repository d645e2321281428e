"""Register every block listed in `sparseyolo.nn.YAML_MODULES` with Ultralytics (see `patch.py`)."""

from __future__ import annotations

import warnings


def _check_version() -> None:
    import ultralytics

    parts = tuple(int(x) for x in ultralytics.__version__.split(".")[:3] if x.isdigit())
    if not ((8, 4, 180) <= parts < (8, 5)):
        warnings.warn(
            f"sparseyolo is tested with ultralytics>=8.4.180,<8.5, found {ultralytics.__version__}",
            stacklevel=3,
        )


def yaml_classes() -> dict[str, type]:
    import sparseyolo.nn as snn

    return {name: getattr(snn, name) for name in snn.YAML_MODULES}


def register_all() -> None:
    _check_version()
    from sparseyolo.yolo.patch import register

    register(yaml_classes())
