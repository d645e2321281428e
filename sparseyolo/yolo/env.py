"""Offline-safe Ultralytics environment defaults, applied before `ultralytics` is first imported.

Ultralytics reads these variables at import time, so `sparseyolo.yolo` calls `apply_offline_defaults()` before
its own `import ultralytics`. Every value is a default: a variable the user already set is left alone.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# The tested Ultralytics range: the one source for the code (registry's version warning, patch's error message).
# pyproject.toml's `yolo` extra and docs/yolo.md repeat it; tests/yolo/test_patch.py checks that they agree.
TESTED_ULTRALYTICS = (">=8.4.180", "<8.5")
TESTED_ULTRALYTICS_SPEC = "ultralytics" + ",".join(TESTED_ULTRALYTICS)  # "ultralytics>=8.4.180,<8.5"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(".")[:3] if x.isdigit())


def ultralytics_version_tested(version: str) -> bool:
    """Whether an Ultralytics version string lies in `TESTED_ULTRALYTICS` (bounds `>=`, `>`, `<=`, `<`)."""
    have = _version_tuple(version)
    compare = {">=": tuple.__ge__, ">": tuple.__gt__, "<=": tuple.__le__, "<": tuple.__lt__}
    for bound in TESTED_ULTRALYTICS:
        op = bound[:2] if bound[:2] in compare else bound[:1]
        if not compare[op](have, _version_tuple(bound[len(op) :])):
            return False
    return True


def config_dir() -> Path:
    """The Ultralytics config dir used: `$YOLO_CONFIG_DIR`, else `<sparseyolo cache>/ultralytics`."""
    if os.environ.get("YOLO_CONFIG_DIR"):
        return Path(os.environ["YOLO_CONFIG_DIR"]).expanduser()
    from sparseyolo.data.registry import cache_dir

    return cache_dir() / "ultralytics"


def _install_font(cfg: Path) -> None:
    """Put a TTF at the places `check_font('Arial.ttf')` looks first, so it never tries a download."""
    targets = [cfg / "Arial.ttf", cfg / "Ultralytics" / "Arial.ttf"]
    if all(t.exists() for t in targets):
        return
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")  # locate without importing it (slow)
    if spec is None or not spec.origin:  # matplotlib is an Ultralytics dependency; nothing to copy without it
        return
    src = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not src.is_file():
        return
    for t in targets:
        if not t.exists():
            t.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, t)


def apply_offline_defaults() -> None:
    """Set YOLO_OFFLINE=1, YOLO_AUTOINSTALL=False, a project YOLO_CONFIG_DIR and a local Arial.ttf.

    Set `SPARSEYOLO_ONLINE=1` to skip this (Ultralytics' own defaults then apply). Warns when Ultralytics was
    already imported, since it has then read its environment already.
    """
    if os.environ.get("SPARSEYOLO_ONLINE", "").strip().lower() in {"1", "true", "yes"}:
        return
    if "ultralytics" in sys.modules and "YOLO_CONFIG_DIR" not in os.environ:
        print(
            "sparseyolo: warning: ultralytics was imported before sparseyolo.yolo; offline defaults "
            "(YOLO_OFFLINE, YOLO_AUTOINSTALL, YOLO_CONFIG_DIR) may not take effect. Import sparseyolo first.",
            file=sys.stderr,
        )
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    cfg = config_dir()
    cfg.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cfg))
    _install_font(cfg)
