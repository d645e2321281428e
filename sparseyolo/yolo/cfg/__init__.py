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


SPARSIFY_KEYS = ("method", "threshold", "keep", "dilate", "max_active", "target")
_STEM_ARG_INDEX = {"method": 3, "threshold": 4, "keep": 5, "dilate": 6, "max_active": 7, "target": 8}
_STEM_DEFAULTS = [None, 3, 2, "nonzero", 0.0, 1.0, 0, None, None]


def parse_sparsify(spec) -> dict:
    """`"gradient"` or `{"method": "gradient", "keep": 0.25, ...}` -> a checked dict of SparseStem settings."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        spec = {"method": spec}
    if not isinstance(spec, dict):
        raise TypeError(f"sparsify must be a method name or a dict, got {type(spec).__name__}")
    bad = sorted(set(spec) - set(SPARSIFY_KEYS))
    if bad:
        raise ValueError(f"unknown sparsify setting(s) {bad}; expected {', '.join(SPARSIFY_KEYS)}")
    from sparseyolo.sparsify import METHODS

    if "method" in spec and spec["method"] not in METHODS:
        raise ValueError(f"unknown sparsify method {spec['method']!r}; expected one of {METHODS}")
    return dict(spec)


def customize_yaml(d: dict, sparsify: dict) -> dict:
    """A copy of model dict `d` with every `SparseStem` row's sparsify settings replaced by `sparsify`."""
    import copy

    d = copy.deepcopy(d)
    found = False
    for row in list(d.get("backbone") or []) + list(d.get("head") or []):
        if row[2] == "SparseStem":
            found = True
            args = list(row[3]) + _STEM_DEFAULTS[len(row[3]) :]
            for k, v in sparsify.items():
                args[_STEM_ARG_INDEX[k]] = v
            row[3] = args
    if not found:
        raise ValueError("sparsify settings given, but the model has no SparseStem layer")
    return d


def write_custom_yaml(d: dict, name: str) -> str:
    """Write model dict `d` under the cache as `<model name>-custom-<hash>.yaml` (scale letter kept in the name)."""
    import hashlib

    import yaml

    from sparseyolo.data.registry import cache_dir

    d = {k: v for k, v in d.items() if k not in ("yaml_file", "channels")}
    text = yaml.safe_dump(d, sort_keys=False)
    digest = hashlib.sha1(text.encode()).hexdigest()[:10].translate(str.maketrans("0123456789", "ghijkopqrt"))
    out = cache_dir() / "cfg" / f"{Path(name).stem}-custom-{digest}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.write_text(text)
    return str(out)
