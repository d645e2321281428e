"""Reference models: the shipped checkpoints of the training recipe (`sparseyolo.yolo.recipe`), found by name.

Each ships inside the package as `<name>.yaml` (the model YAML) + `<name>.safetensors` (fp16 weights: plain tensors,
no pickled classes, so a newer SparseYOLO or Ultralytics still loads them) + `<name>.json` (recipe command, seed,
epochs, measured metrics). `YOLO("yolov8n-aerial")` resolves such a name to those files, offline.
"""

from __future__ import annotations

import json
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def shipped_names() -> list[str]:
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def is_reference_name(name: str) -> bool:
    """True for a shipped reference model name such as `yolov8n-aerial` (no suffix, no path)."""
    return "/" not in name and "\\" not in name and (WEIGHTS_DIR / f"{name}.safetensors").is_file()


def reference_files(name: str) -> tuple[Path, Path, Path]:
    """`(yaml, safetensors, json)` of a shipped reference model; a clear error naming the shipped ones."""
    files = tuple(WEIGHTS_DIR / f"{name}{ext}" for ext in (".yaml", ".safetensors", ".json"))
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"reference model {name!r} is not shipped (missing {missing}); shipped: {shipped_names() or 'none'}. "
            "Train them with `sparseyolo demo --train`."
        )
    return files


def reference_info(name: str) -> dict:
    return json.loads(reference_files(name)[2].read_text())


def save_reference(model, name: str, info: dict, out_dir: Path | None = None) -> Path:
    """Write `model` (a DetectionModel) as `<name>.yaml` + fp16 `<name>.safetensors` + `<name>.json` in `out_dir`
    (default: `WEIGHTS_DIR`, read at call time)."""
    import yaml
    from safetensors.torch import save_file

    out_dir = Path(WEIGHTS_DIR if out_dir is None else out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = {k: v for k, v in model.yaml.items() if k not in ("yaml_file", "channels")}
    cfg["nc"] = int(model.nc) if hasattr(model, "nc") else cfg.get("nc")
    (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        sd[k] = (v.half() if v.is_floating_point() else v).contiguous()
    save_file(sd, str(out_dir / f"{name}.safetensors"))
    (out_dir / f"{name}.safetensors").chmod(0o644)
    info = {**info, "names": {int(k): v for k, v in dict(getattr(model, "names", {}) or {}).items()}}
    (out_dir / f"{name}.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    return out_dir / f"{name}.safetensors"


def load_reference_model(name: str):
    """Build the shipped reference model `name` as a `SparseDetectionModel` (fp32, eval mode)."""
    from safetensors.torch import load_file

    from sparseyolo.yolo.model import SparseDetectionModel

    cfg, weights, meta = reference_files(name)
    info = json.loads(meta.read_text())
    model = SparseDetectionModel(str(cfg), verbose=False)
    sd = load_file(str(weights))
    own = model.state_dict()
    bad = sorted(k for k in own if k not in sd) + sorted(k for k in sd if k not in own)
    if bad:
        raise RuntimeError(f"reference weights {weights.name} do not match {cfg.name}: {bad[:5]} ...")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()})
    model.names = {int(k): v for k, v in info.get("names", {}).items()} or {0: "item0"}
    model.args = {"imgsz": info.get("recipe", {}).get("imgsz", 640), "task": "detect"}
    return model.eval()


def run_weights(path: Path):
    """The model of an Ultralytics checkpoint `path`: its EMA when it has one (what training ships), fp32."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return (ckpt.get("ema") or ckpt["model"]).float()
