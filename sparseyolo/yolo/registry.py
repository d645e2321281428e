"""Register every block listed in `sparseyolo.nn.YAML_MODULES` with Ultralytics (see `patch.py`)."""

from __future__ import annotations

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
    import sparseyolo.nn as snn

    return {name: getattr(snn, name) for name in snn.YAML_MODULES}


def register_all() -> None:
    _check_version()
    from sparseyolo.yolo.patch import register

    register(yaml_classes())
