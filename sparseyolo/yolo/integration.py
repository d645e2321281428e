"""The one switch between SparseYOLO and Ultralytics: `enable()` installs the integration, `disable()` removes it.

Importing sparseyolo changes nothing in Ultralytics. `enable()` (`sparseyolo.enable()`; also building or loading a
SparseYOLO model, its trainer, every command) sets offline environment defaults (those the user has not set) before
it imports Ultralytics, which reads them then, puts our YAML blocks into its parser's namespace and patches the
parser (`patch.py`). `disable()` puts back what every name and variable it set held before. Both are idempotent.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import warnings
from pathlib import Path

from sparseyolo import settings
from sparseyolo.yolo.patch import TESTED_ULTRALYTICS, TESTED_ULTRALYTICS_SPEC  # noqa: F401  (tested range)


def ultralytics_version_tested(version: str) -> bool:
    """Whether an Ultralytics version string lies in `TESTED_ULTRALYTICS`."""
    from ultralytics.utils.checks import check_version

    return check_version(version, ",".join(TESTED_ULTRALYTICS))


def _install_font(cfg: Path) -> None:
    """Put a TTF at the places `check_font('Arial.ttf')` looks first, so it never tries a download."""
    targets = [cfg / "Arial.ttf", cfg / "Ultralytics" / "Arial.ttf"]
    if all(t.exists() for t in targets):
        return
    spec = importlib.util.find_spec("matplotlib")  # an Ultralytics dependency, located without importing it (slow)
    src = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf" if spec and spec.origin else None
    if src is None or not src.is_file():  # nothing to copy
        return
    for t in targets:
        if not t.exists():
            t.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, t)


def offline_defaults() -> dict[str, str]:
    """Those of YOLO_OFFLINE=1, YOLO_AUTOINSTALL=False and YOLO_CONFIG_DIR (`$YOLO_CONFIG_DIR`, else
    `<cache>/ultralytics`; made here, with a local Arial.ttf) that the user has not set; none with
    `SPARSEYOLO_ONLINE=1`. Warns when Ultralytics was already imported: it has then read its environment."""
    if settings.get().online:
        return {}
    if "ultralytics" in sys.modules and "YOLO_CONFIG_DIR" not in os.environ:
        print(
            "sparseyolo: warning: ultralytics was imported before sparseyolo.enable(); offline defaults "
            "(YOLO_OFFLINE, YOLO_AUTOINSTALL, YOLO_CONFIG_DIR) may not take effect. Enable sparseyolo first.",
            file=sys.stderr,
        )
    user = os.environ.get("YOLO_CONFIG_DIR")
    cfg = Path(user).expanduser() if user else settings.get().cache / "ultralytics"
    cfg.mkdir(parents=True, exist_ok=True)
    _install_font(cfg)
    values = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False", "YOLO_CONFIG_DIR": str(cfg)}
    return {k: v for k, v in values.items() if k not in os.environ}


_MISSING = object()
_undo: list | None = None  # what disable() runs (in reverse) while enabled; None when disabled


def enabled() -> bool:
    return _undo is not None


def _assign(namespace, values: dict):
    """Set `values` in `namespace` (a module's dict, `os.environ`); returns what undoes it."""
    before = {name: namespace.get(name, _MISSING) for name in values}
    namespace.update(values)

    def undo():
        for name, old in before.items():
            if namespace.get(name, _MISSING) != values[name]:  # changed by someone else since: theirs
                continue
            if old is _MISSING:
                del namespace[name]
            else:
                namespace[name] = old

    return undo


def enable() -> None:
    """Install the integration (nothing happens when it is installed already)."""
    global _undo
    if _undo is not None:
        return
    undo = [_assign(os.environ, offline_defaults())]
    try:
        import ultralytics
        import ultralytics.nn as unn
        from ultralytics.nn import tasks

        import sparseyolo.nn as snn
        from sparseyolo.yolo.patch import _yaml_args, patched_parse_model
        from sparseyolo.yolo.sparse_detect import SparseDetect

        if not ultralytics_version_tested(found := ultralytics.__version__):
            warnings.warn(f"sparseyolo is tested with {TESTED_ULTRALYTICS_SPEC}, found {found}", stacklevel=2)
        classes = {**{name: getattr(snn, name) for name in snn.YAML_MODULES}, "SparseDetect": SparseDetect}
        for name, cls in classes.items():
            if tasks.__dict__.get(name, cls) is not cls:
                raise RuntimeError(f"sparseyolo module name {name!r} clashes with ultralytics' {tasks.__dict__[name]}")
        parse_model = patched_parse_model()
        names = {**classes, "_sparseyolo_yaml_args": _yaml_args, "parse_model": parse_model}
        undo.append(_assign(tasks.__dict__, names))
        if unn.__dict__.get("parse_model") is parse_model.__sparseyolo_original__:
            undo.append(_assign(unn.__dict__, {"parse_model": parse_model}))
    except BaseException:
        for fn in reversed(undo):
            fn()
        raise
    _undo = undo


def disable() -> None:
    """Remove the integration: Ultralytics as before `enable()` (nothing happens when it is not installed)."""
    global _undo
    undo, _undo = _undo or [], None
    for fn in reversed(undo):
        fn()
