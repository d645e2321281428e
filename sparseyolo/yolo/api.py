"""`sparseyolo.YOLO`: Ultralytics' YOLO with SparseYOLO's model/trainer classes and model YAMLs."""

from __future__ import annotations

from pathlib import Path

from ultralytics import YOLO as _UltralyticsYOLO

from sparseyolo import __version__
from sparseyolo.yolo.cfg import list_cfgs, resolve_cfg
from sparseyolo.yolo.model import SparseDetectionModel
from sparseyolo.yolo.train import SparseDetectionTrainer


class YOLO(_UltralyticsYOLO):
    """Drop-in for `ultralytics.YOLO`.

    - model YAML names resolve to SparseYOLO's shipped configs too (`yolov8n-sparse.yaml`);
    - detection models are built as `SparseDetectionModel` and trained by `SparseDetectionTrainer`, also when
      a
      checkpoint is loaded (`YOLO('best.pt').train(...)`, `resume=True`), so extra losses and stats stay;
    - a checkpoint that needs a class this SparseYOLO version lacks raises a `RuntimeError` naming it.
    """

    def __init__(
        self, model: str | Path = "yolov8n-sparse.yaml", task: str | None = None, verbose: bool = False
    ):
        if isinstance(model, (str, Path)):
            model = str(model)
            suffix = Path(model).suffix.lower()
            if suffix in (".yaml", ".yml"):
                resolved = resolve_cfg(model)
                if not Path(resolved).exists() and not _ultralytics_has_cfg(resolved):
                    raise FileNotFoundError(
                        f"model YAML {model!r} not found (SparseYOLO configs: {', '.join(list_cfgs())}; "
                        "or any Ultralytics model YAML)"
                    )
                model = resolved
            elif suffix == ".pt" and not Path(model).is_file():
                raise FileNotFoundError(
                    f"checkpoint {model!r} not found. SparseYOLO runs offline: hub weights"
                    " are not downloaded; "
                    "build from a YAML (e.g. yolov8n-sparse.yaml) or pass a local .pt file."
                )
        try:
            super().__init__(model=model, task=task, verbose=verbose)
        except (ModuleNotFoundError, AttributeError) as e:
            if isinstance(model, str) and model.endswith(".pt"):
                raise RuntimeError(
                    f"cannot load checkpoint {model!r} with sparseyolo {__version__}: it refers to {e}."
                    " It was "
                    "probably written by another SparseYOLO/Ultralytics version;"
                    " load it with that version, or "
                    "retrain/convert from its YAML."
                ) from e
            raise
        saved = getattr(self.model, "sparseyolo_version", None)
        if saved is not None and saved != __version__:
            from ultralytics.utils import LOGGER

            LOGGER.warning(f"checkpoint was written by sparseyolo {saved}, this is {__version__}")

    @property
    def task_map(self):
        tm = dict(super().task_map)
        tm["detect"] = {**tm["detect"], "model": SparseDetectionModel, "trainer": SparseDetectionTrainer}
        return tm


def _ultralytics_has_cfg(name: str) -> bool:
    from ultralytics.utils.checks import check_yaml

    try:
        import re

        unified = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", name)
        return bool(check_yaml(name, hard=False) or check_yaml(unified, hard=False))
    except Exception:
        return False
