"""How SparseYOLO extends Ultralytics' model parser (`ultralytics.nn.tasks.parse_model`; installed by `integration`).

Ultralytics has no plugin registry: `parse_model` resolves YAML module names through the globals of
`ultralytics.nn.tasks`, passes channels only to its own hard-coded module sets, and gives any other module
`c2 = ch[f]` (which raises for a list `from`). We

1. put our block classes into `ultralytics.nn.tasks`' namespace (`integration.enable`), and
2. recompile `parse_model` from its own source with ONE extra branch in front of that fallback: a class with a
   `yaml_args(args, ctx)` classmethod (see `sparseyolo.nn.base`) computes its constructor args, output
   channels and repeat count from the channel list and the model's width/depth scaling.

The source patch checks its anchors and raises `RuntimeError` naming the missing one when Ultralytics changes;
`tests/yolo/test_patch.py` also pins the exact source hash of the tested versions.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import inspect
import textwrap

# The text we rely on, in order: the module lookup, the fallback branch (we insert before it), construction.
# The tested Ultralytics range: the one source for the code (enable's version warning, this file's error).
# pyproject.toml's `yolo` extra and docs/yolo.md repeat it; tests/yolo/test_patch.py checks that they agree.
TESTED_ULTRALYTICS = (">=8.4.180", "<8.5")
TESTED_ULTRALYTICS_SPEC = "ultralytics" + ",".join(TESTED_ULTRALYTICS)  # "ultralytics>=8.4.180,<8.5"

ANCHOR_LOOKUP = "else globals()[m]"
ANCHOR_FALLBACK = "        else:\n            c2 = ch[f]\n"
ANCHOR_BUILD = "m_ = torch.nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)"
ANCHOR_APPEND = "ch.append(c2)"
LOCALS_USED = ("width", "max_channels", "depth", "scale", "ch", "f", "n", "args")
HOOK = (
    "        elif hasattr(m, 'yaml_args'):  # sparseyolo: generic channel hook\n"
    "            args, c2, n = _sparseyolo_yaml_args(m, args, ch, f, n, width, max_channels, depth, scale)\n"
)
# sha256 of textwrap.dedent(inspect.getsource(parse_model)) for Ultralytics versions this patch was tested on.
TESTED_SOURCE_SHA256 = {
    "8.4.190": "7da6bb14102890302fd9c8708a9f7d0fbb38e94e8f511c0434fc41c0fcff5f6d",
}


def parse_model_source() -> str:
    from ultralytics.nn import tasks

    fn = getattr(tasks.parse_model, "__sparseyolo_original__", tasks.parse_model)
    return textwrap.dedent(inspect.getsource(fn))


def source_sha256() -> str:
    return hashlib.sha256(parse_model_source().encode()).hexdigest()


def check_anchors(src: str) -> None:
    """Raise `RuntimeError` naming every anchor of the patch missing from (or repeated in) `src`."""
    problems = []
    for name, anchor in [
        ("module lookup", ANCHOR_LOOKUP),
        ("fallback branch", ANCHOR_FALLBACK),
        ("module construction", ANCHOR_BUILD),
        ("channel append", ANCHOR_APPEND),
    ]:
        count = src.count(anchor)
        if count != 1:
            problems.append(f"{name} {anchor!r} found {count} times (expected 1)")
    for name in LOCALS_USED:
        if f"{name} " not in src and f"{name}," not in src:
            problems.append(f"local variable {name!r} not found")
    if problems:
        import ultralytics

        raise RuntimeError(
            f"sparseyolo cannot register its modules with ultralytics {ultralytics.__version__}: "
            f"ultralytics.nn.tasks.parse_model changed ({'; '.join(problems)}). "
            f"SparseYOLO is tested with {TESTED_ULTRALYTICS_SPEC}."
        )


def _yaml_args(m, args, ch, f, n, width, max_channels, depth, scale):
    """Called by the patched parser for classes exposing `yaml_args` (as `tasks._sparseyolo_yaml_args`)."""
    from sparseyolo.nn.base import YamlContext

    ctx = YamlContext(ch=list(ch), f=f, n=n, width=width, max_channels=max_channels, depth=depth, scale=scale or "")
    try:
        out_args, c2, n_out = m.yaml_args(list(args), ctx)
    except (IndexError, KeyError, TypeError) as e:
        raise ValueError(f"bad YAML arguments {args} (from={f}) for {m.__name__}: {e}") from e
    return list(out_args), c2, int(n_out)


def _resolvable(name: str, namespace: dict) -> bool:
    import torch

    if name.startswith("nn."):
        return hasattr(torch.nn, name[3:])
    if name.startswith("torchvision.ops."):
        return True
    return name in namespace


def validate_yaml_modules(d: dict, namespace: dict) -> None:
    """Raise `ValueError` naming the layer and module for an unknown module or a malformed row."""
    rows = list(d.get("backbone") or []) + list(d.get("head") or [])
    if not rows:
        raise ValueError("model YAML has no 'backbone'/'head' layers")
    known = [k for k, v in namespace.items() if isinstance(v, type)]
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) != 4:
            raise ValueError(f"model YAML layer {i}: expected [from, number, module, args], got {row!r}")
        name = row[2]
        if not isinstance(name, str) or not _resolvable(name, namespace):
            close = difflib.get_close_matches(str(name), known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"model YAML layer {i}: unknown module {name!r}.{hint}")


def patched_parse_model():
    """Ultralytics' `parse_model` with our branch (see above), validating the YAML first and linking sparse
    outputs after; `__sparseyolo_original__` holds the original. It calls `_sparseyolo_yaml_args` of `tasks`."""
    from ultralytics.nn import tasks

    original = tasks.parse_model
    src = parse_model_source()
    check_anchors(src)
    patched_src = src.replace(ANCHOR_FALLBACK, HOOK + ANCHOR_FALLBACK)
    first_line = inspect.getsourcelines(original)[1]
    code = compile("\n" * (first_line - 1) + patched_src, inspect.getsourcefile(original), "exec")
    ns: dict = {}
    exec(code, tasks.__dict__, ns)  # globals are tasks' own: `globals()[m]` keeps resolving there
    patched = ns["parse_model"]

    @functools.wraps(original)
    def parse_model(d, ch, verbose=True):
        validate_yaml_modules(d, tasks.__dict__)
        model, save = patched(d, ch, verbose)
        from sparseyolo.nn import link_sparse_outputs

        link_sparse_outputs(list(model), [m.f for m in model])
        return model, save

    parse_model.__sparseyolo_original__ = original
    return parse_model
