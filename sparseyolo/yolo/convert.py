"""Sparsify a trained model: the first stages of a dense YOLOv8 checkpoint become sparse blocks, same weights.

Layer `i` keeps its index and its weight names (`conv.weight`, `bn.*`, `cv1`, `m.0...`), so the dense state
dict
loads into the converted model unchanged; on a fully active input the converted stages compute the same
numbers.
"""

from __future__ import annotations

import copy
import sys
from datetime import datetime
from pathlib import Path

import torch

from sparseyolo import __version__
from sparseyolo.cliargs import flag
from sparseyolo.yolo.cfg import stem_args
from sparseyolo.yolo.finder import context_margin
from sparseyolo.yolo.integration import enable

DENSE_TO_SPARSE = {"Conv": "SConv", "C2f": "SC2f", "Bottleneck": "SBottleneck"}
# The sparse P3 path of yolov8.yaml (`p3=True`): layer -> (dense module, sparse module); see yolov8-sparse-p3.yaml
P3_PATH = {
    5: ("Conv", "SConv"),
    13: ("nn.Upsample", "SUpsample"),
    14: ("Concat", "SConcat"),
    15: ("C2f", "SC2f"),
    16: ("Conv", "SConv"),
    22: ("Detect", "SparseDetect"),
}
# ... and the stride-16 path (`p4=True`, with p3): see yolov8-sparse-p34.yaml
P4_PATH = {
    6: ("C2f", "SC2f"),
    7: ("Conv", "SConv"),
    10: ("nn.Upsample", "SUpsample"),
    11: ("Concat", "SConcat"),
    12: ("C2f", "SC2f"),
    17: ("Concat", "SConcat"),
    18: ("C2f", "SC2f"),
    19: ("Conv", "SConv"),
}


def sparse_yaml(
    d: dict,
    stages: int = 5,
    method: str = "nonzero",
    threshold: float = 0.0,
    keep: float = 1.0,
    dilate: int | None = 0,
    max_active: int | None = None,
    target: float | None = None,
    p3: bool = False,
    p4: bool = False,
) -> dict:
    """The model YAML dict `d` with its first `stages` layers made sparse (layer 0 a `SparseStem`); with `p3`,
    also the stride-8 path past the stem (layers of `P3_PATH`, YOLOv8's layout; needs stages=5), with `p4` also
    the stride-16 path (`P4_PATH`, needs p3)."""
    d = copy.deepcopy(d)
    rows = d["backbone"]
    if not 1 <= stages <= len(rows):
        raise ValueError(f"stages must be in 1..{len(rows)}, got {stages}")
    if p4 and not p3:
        raise ValueError("p4=True continues the sparse P3 path: it needs p3=True")
    if p3:
        if stages != 5:
            raise ValueError(f"p3=True continues the sparse stem of layers 0-4: it needs stages=5, got {stages}")
        every = rows + list(d.get("head") or [])
        for i, (dense_name, sparse_name) in {**P3_PATH, **(P4_PATH if p4 else {})}.items():
            name = every[i][2] if i < len(every) else None
            if name not in (dense_name, sparse_name):
                raise ValueError(
                    f"p3=True needs YOLOv8's layer layout: layer {i} should be {dense_name}, got {name!r} "
                    "(the sparse P3 path is defined for yolov8.yaml)"
                )
            every[i][2] = sparse_name
    for i in range(stages):
        f, n, name, args = rows[i]
        if name in DENSE_TO_SPARSE.values() or name == "SparseStem":
            continue  # already sparse
        if name not in DENSE_TO_SPARSE:
            raise ValueError(
                f"layer {i} is {name!r}; convert supports {', '.join(DENSE_TO_SPARSE)} in the converted stages "
                f"(use a smaller stages=)"
            )
        if f != -1:
            raise ValueError(f"layer {i} ({name}) reads from {f}; converted stages must form a chain (from=-1)")
        if i == 0:
            if name != "Conv":
                raise ValueError(f"layer 0 must be a Conv to become a SparseStem, got {name!r}")
            c2, k, s = (list(args) + [1, 1])[:3]
            if len(args) > 3:
                raise ValueError(f"layer 0 Conv args {args}: only (c2, k, s) are supported by SparseStem")
            settings = dict(method=method, threshold=threshold, keep=keep, dilate=dilate or 0, max_active=max_active)
            if target is not None:
                settings["target"] = target
            rows[i] = [f, n, "SparseStem", stem_args(c2, k, s, **settings)]
        else:
            rows[i] = [f, n, DENSE_TO_SPARSE[name], list(args)]
    d.pop("yaml_file", None)
    return d


def convert(dense, stages: int = 5, **sparsify):
    """Return a `SparseDetectionModel` built from `dense` (a `DetectionModel`, an Ultralytics/SparseYOLO `YOLO`,
    or a checkpoint path) with its first `stages` layers sparse and every dense weight copied. With
    `method="finder"` and no `dilate`, the mask's margin is the model's context margin
    (`sparseyolo.yolo.finder.context_margin`: 8 px, 16 with the P4 path); the finder starts untrained (see
    `train_finder`)."""
    enable()  # first: offline defaults before Ultralytics loads, then registration
    from sparseyolo.yolo.model import SparseDetectionModel

    if isinstance(dense, (str, Path)):
        from ultralytics.nn.tasks import load_checkpoint

        if not Path(dense).is_file():
            raise FileNotFoundError(f"checkpoint {dense!r} not found")
        dense, _ = load_checkpoint(str(dense))
    dense = getattr(dense, "model", dense) if not hasattr(dense, "yaml") else dense
    if not hasattr(dense, "yaml"):
        raise TypeError(f"expected a YOLO detection model or checkpoint, got {type(dense).__name__}")
    d = sparse_yaml(dense.yaml, stages, **sparsify)
    ch = dense.yaml.get("channels", 3)
    model = SparseDetectionModel(d, ch=ch, nc=d["nc"], verbose=False)
    if sparsify.get("method") == "finder" and sparsify.get("dilate") is None:
        d = sparse_yaml(dense.yaml, stages, **{**sparsify, "dilate": context_margin(model)})
        model = SparseDetectionModel(d, ch=ch, nc=d["nc"], verbose=False)
    state = dense.float().state_dict()
    result = model.load_state_dict(state, strict=False)
    bad_missing = [k for k in result.missing_keys if ".sparsify." not in k]
    if bad_missing or result.unexpected_keys:
        raise RuntimeError(
            f"converted model does not match the dense weights: missing {bad_missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    # BatchNorm eps/momentum are not in the state dict: copy them
    sparse_mods = dict(model.named_modules())
    for name, m in dense.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and name in sparse_mods:
            sparse_mods[name].eps, sparse_mods[name].momentum = m.eps, m.momentum
    model.names = getattr(dense, "names", model.names)
    model.args = getattr(dense, "args", {})
    model.task = "detect"
    model.stride = dense.stride
    return model


def save_checkpoint(model, path: str | Path) -> Path:
    """Write `model` as an Ultralytics checkpoint (loadable by `YOLO(path)`), float32."""
    import ultralytics
    from ultralytics.utils import DEFAULT_CFG_DICT

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = {**DEFAULT_CFG_DICT, **(model.args if isinstance(getattr(model, "args", None), dict) else {})}
    ckpt = {
        "date": datetime.now().isoformat(),
        "version": ultralytics.__version__,
        "sparseyolo_version": __version__,
        "license": "AGPL-3.0 License (https://www.gnu.org/licenses/agpl-3.0.html)",
        "epoch": -1,
        "best_fitness": None,
        "model": copy.deepcopy(model).float().eval(),
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": args,
    }
    torch.save(ckpt, path)
    return path


def cli_main(overrides: dict) -> int:
    """`sparseyolo convert model=dense.pt out=sparse.pt [stages=5 sparsify=nonzero threshold=0 keep=1 dilate=0
    max_active=None target=None p3=False p4=False]`."""
    allowed = {"model", "out", "stages", "sparsify", "threshold", "keep", "dilate", "max_active", "target", "p3", "p4"}
    bad = sorted(set(overrides) - allowed)
    if bad or "model" not in overrides:
        msg = f"unknown argument(s) {bad}; " if bad else "model= is required; "
        print(f"sparseyolo convert: {msg}allowed: {', '.join(sorted(allowed))}", file=sys.stderr)
        return 2
    src = Path(str(overrides["model"]))
    out = Path(str(overrides.get("out") or src.with_name(src.stem + "-sparse.pt")))
    try:
        p3, p4 = flag(overrides, "p3", False), flag(overrides, "p4", False)
    except ValueError as e:
        print(f"sparseyolo convert: {e}", file=sys.stderr)
        return 2
    kw = {
        "method": str(overrides.get("sparsify", "nonzero")),
        "threshold": float(overrides.get("threshold", 0.0)),
        "keep": float(overrides.get("keep", 1.0)),
        "dilate": None if overrides.get("dilate") is None else int(overrides["dilate"]),
        "max_active": overrides.get("max_active"),
        "target": None if overrides.get("target") is None else float(overrides["target"]),
        "p3": p3,
        "p4": p4,
    }
    try:
        model = convert(src, int(overrides.get("stages", 5)), **kw)
    except (FileNotFoundError, ValueError, RuntimeError, TypeError) as e:
        print(f"sparseyolo convert: error: {e}", file=sys.stderr)
        return 1
    save_checkpoint(model, out)
    p3 = " and the P3 path" + (" and the P4 path" if kw["p4"] else "") if kw["p3"] else ""
    print(f"sparseyolo convert: {src} -> {out} (layers 0-{int(overrides.get('stages', 5)) - 1} sparse{p3})")
    if kw["method"] == "finder":
        print(f"its foreground finder is untrained (it keeps every pixel): sparseyolo finder model={out}")
    return 0
