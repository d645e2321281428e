"""Model YAMLs shipped with SparseYOLO, found by name as Ultralytics finds its own."""

from __future__ import annotations

import re
from pathlib import Path

from sparseyolo.data.registry import cache_dir
from sparseyolo.nn import SparseStem
from sparseyolo.nn.sparsify import METHODS, SETTINGS, switch_settings

CFG_DIR = Path(__file__).parent
# The scale letter after the version in a model name (yolov8n-sparse.yaml: n), as Ultralytics reads it.
SCALE_IN_NAME = re.compile(r"(\d+)([nslmx])(.+)?$")


def unscaled_name(name: str) -> str:
    """`yolov8n-sparse.yaml` -> `yolov8-sparse.yaml` (folder kept): the file Ultralytics loads for every scale."""
    p = Path(name)
    return str(p.with_name(SCALE_IN_NAME.sub(r"\1\3", p.stem) + p.suffix))


def resolve_cfg(name: str) -> str:
    """Map a model YAML name to a path Ultralytics can load.

    An existing file is returned as is. Otherwise `yolov8n-sparse.yaml` resolves to
    `<cfg dir>/yolov8n-sparse.yaml`: Ultralytics then reads `yolov8-sparse.yaml` and takes scale `n` from the
    name. Anything else (e.g. Ultralytics' own `yolov8n.yaml`) is returned unchanged.
    """
    p = Path(name)
    if p.exists() or p.suffix.lower() not in (".yaml", ".yml"):
        return str(name)
    for candidate in (p.name, unscaled_name(p.name)):
        if (CFG_DIR / candidate).is_file():
            return str(CFG_DIR / p.name)
    return str(name)


def list_cfgs() -> list[str]:
    return sorted(p.name for p in CFG_DIR.glob("*.yaml"))


SPARSIFY_KEYS = SETTINGS  # the sparsify settings of a SparseStem, in YAML order


def stem_params() -> tuple[list[str], list]:
    """Names and defaults of `SparseStem`'s YAML args `(c2, k, s, *SPARSIFY_KEYS)`, read from its signature."""
    import inspect

    params = list(inspect.signature(SparseStem).parameters.values())[1:]  # after c1 (given by the parser)
    return [p.name for p in params], [None if p.default is p.empty else p.default for p in params]


def stem_args(c2, k, s, **settings) -> list:
    """`SparseStem` YAML args for `settings` (names in SPARSIFY_KEYS), up to the last one given."""
    names, defaults = stem_params()
    bad = sorted(set(settings) - set(names[3:]))
    if bad:
        raise ValueError(f"unknown sparsify setting(s) {bad}; expected {', '.join(SPARSIFY_KEYS)}")
    given = [i for i, name in enumerate(names) if name in settings]
    args = [c2, k, s] + defaults[3:]
    for i in given:
        args[i] = settings[names[i]]
    return args[: max(given, default=2) + 1]


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
    if "method" in spec and spec["method"] not in METHODS:
        raise ValueError(f"unknown sparsify method {spec['method']!r}; expected one of {METHODS}")
    return dict(spec)


def customize_yaml(d: dict, sparsify: dict) -> dict:
    """A copy of model dict `d` with every `SparseStem` row's sparsify settings replaced by `sparsify`.

    A new method drops the row's method-specific settings that `sparsify` does not give (`switch_settings`):
    `{"method": "nonzero"}` on a row with a learned `target` gives a plain nonzero stem."""
    import copy

    d = copy.deepcopy(d)
    found = False
    for row in list(d.get("backbone") or []) + list(d.get("head") or []):
        if row[2] == "SparseStem":
            found = True
            names, defaults = stem_params()
            args = list(row[3]) + defaults[len(row[3]) :]
            current = {k: args[names.index(k)] for k in SPARSIFY_KEYS}
            new = switch_settings(current, sparsify, {k: defaults[names.index(k)] for k in SPARSIFY_KEYS})
            for k, v in new.items():
                args[names.index(k)] = v
            row[3] = args
    if not found:
        raise ValueError("sparsify settings given, but the model has no SparseStem layer")
    return d


def write_custom_yaml(d: dict, name: str) -> str:
    """Write model dict `d` under the cache as `<model name>-custom-<hash>.yaml` (scale letter kept in the name)."""
    import hashlib

    import yaml

    d = {k: v for k, v in d.items() if k not in ("yaml_file", "channels")}
    text = yaml.safe_dump(d, sort_keys=False)
    digest = hashlib.sha1(text.encode()).hexdigest()[:10].translate(str.maketrans("0123456789", "ghijkopqrt"))
    out = cache_dir() / "cfg" / f"{Path(name).stem}-custom-{digest}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.write_text(text)
    return str(out)
