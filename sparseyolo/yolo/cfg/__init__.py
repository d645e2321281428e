"""Model YAMLs shipped with SparseYOLO, found by name as Ultralytics finds its own."""

from __future__ import annotations

import re
from pathlib import Path

CFG_DIR = Path(__file__).parent


def resolve_cfg(name: str) -> str:
    """Map a model YAML name to a path Ultralytics can load.

    An existing file is returned as is. Otherwise `yolov8n-sparse.yaml` resolves to
    `<cfg dir>/yolov8n-sparse.yaml`: Ultralytics then reads `yolov8-sparse.yaml` and takes scale `n` from the
    name.
    Anything else (e.g. Ultralytics' own `yolov8n.yaml`) is returned unchanged.
    """
    p = Path(name)
    if p.exists() or p.suffix.lower() not in (".yaml", ".yml"):
        return str(name)
    unified = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", p.stem) + p.suffix
    for candidate in (p.name, unified):
        if (CFG_DIR / candidate).is_file():
            return str(CFG_DIR / p.name)
    return str(name)


def list_cfgs() -> list[str]:
    return sorted(p.name for p in CFG_DIR.glob("*.yaml"))
