"""`sparseyolo.YOLO`: Ultralytics' YOLO with SparseYOLO's model/trainer classes and model YAMLs."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from ultralytics import YOLO as _UltralyticsYOLO

from sparseyolo import __version__
from sparseyolo.nn import SparseBlock, SparseStem, dff_necks, set_crossover
from sparseyolo.nn.crossover import resolve as resolve_crossover
from sparseyolo.nn.sparsify import SETTINGS, Sparsifier, switch_settings
from sparseyolo.yolo.budget import budget_threshold, calibrate
from sparseyolo.yolo.cfg import customize_yaml, list_cfgs, parse_sparsify, resolve_cfg, unscaled_name, write_custom_yaml
from sparseyolo.yolo.curriculum import Curriculum, add_curriculum
from sparseyolo.yolo.export import check_stem, export_mode
from sparseyolo.yolo.finder import COMPOSITES, calibrate_recall, foreground, train_finder, training_data
from sparseyolo.yolo.integration import enable
from sparseyolo.yolo.model import SparseDetectionModel
from sparseyolo.yolo.reference import is_reference_name, load_reference_model, reference_files, shipped_names
from sparseyolo.yolo.scheduler import FrameRateScheduler, apply_preset
from sparseyolo.yolo.train import SparseDetectionTrainer


class YOLO(_UltralyticsYOLO):
    """Drop-in for `ultralytics.YOLO`.

    - model YAML names resolve to SparseYOLO's shipped configs too (`yolov8n-sparse.yaml`);
    - detection models are built as `SparseDetectionModel` and trained by `SparseDetectionTrainer`, also when a
      checkpoint is loaded (`YOLO('best.pt').train(...)`, `resume=True`), so extra losses and stats stay;
    - shipped reference model names resolve to their files (`YOLO("yolov8n-sparse-aerial")`);
    - `export` runs sparse blocks as their dense masked equivalent (ONNX-traceable);
    - a checkpoint that needs a class this SparseYOLO version lacks raises a `RuntimeError` naming it.
    """

    def __init__(
        self,
        model: str | Path = "yolov8n-sparse.yaml",
        task: str | None = None,
        verbose: bool = False,
        sparsify: str | dict | None = None,
    ):
        enable()
        sparsify = parse_sparsify(sparsify)
        reference = None
        if isinstance(model, (str, Path)) and is_reference_name(str(model)):
            reference = str(model)  # a shipped reference model: its YAML, then its weights (below)
            model = str(reference_files(reference)[0])
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
                if sparsify:  # a YAML with these SparseStem settings, so trainers rebuild the same model
                    from ultralytics.nn.tasks import yaml_model_load

                    d = customize_yaml(yaml_model_load(model), sparsify)
                    model = write_custom_yaml(d, model)
            elif not suffix and not Path(model).exists() and "://" not in model:
                raise FileNotFoundError(
                    f"model {model!r} is neither a file nor a shipped reference model "
                    f"(shipped: {', '.join(shipped_names()) or 'none'}); or pass a model YAML or a .pt checkpoint"
                )
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
        if reference is not None:
            self._load_reference(reference)
        if sparsify and (reference is not None or not str(getattr(self, "cfg", "") or "").endswith((".yaml", ".yml"))):
            configure_sparsify(self.model, sparsify)
        saved = getattr(self.model, "sparseyolo_version", None)
        if saved is not None and saved != __version__:
            from ultralytics.utils import LOGGER

            LOGGER.warning(f"checkpoint was written by sparseyolo {saved}, this is {__version__}")

    def _load_reference(self, name: str) -> None:
        """Replace the freshly built model by the shipped reference model `name` (weights, class names)."""
        ref = load_reference_model(name)
        ref.args = self.model.args
        ref.task = "detect"
        self.model = ref
        self.ckpt = {"model": ref}  # so that `train()` fine-tunes from these weights
        self.model_name = name
        self.reference = name

    def train(self, trainer=None, **kwargs):
        """Ultralytics' `train`; `dff_*` keywords set the DFF curriculum (`sparseyolo.yolo.curriculum`)."""
        curriculum = Curriculum.pop_from(kwargs, load=lambda name: YOLO(name).model)
        add_curriculum(self.callbacks, curriculum)
        return super().train(trainer=trainer, **kwargs)

    # --- DFF compute control --------------------------------------------------------------------------------
    def calibrate(self, source, budget: float = 0.7, imgsz: int = 640, progress: bool = True) -> dict:
        """Choose the DFF neck's gate threshold so the mean executed neck FLOPs on the images of `source` (an
        image, a folder, a data.yaml's val split, a list of files) is within `budget` (a fraction of all-on).
        Stored in the model (saved by `save()` and in checkpoints); returns a report with the whole curve."""
        report = calibrate(self.model, source, budget, imgsz=imgsz, progress=progress)
        self.predictor = None  # the predictor's model copy predates the calibration
        return report

    # --- where the model looks (sparse stems) -----------------------------------------------------------------
    def foreground(self, source, **predict_kwargs) -> list:
        """The active masks (`bool ndarray (h, w)`, one per image of `source`, at the image's own resolution) that
        the sparse stem runs on: letterboxed as `predict` does (same `predict_kwargs`: `imgsz`, `batch`, ...), only
        the stem's sparsifier run, mapped back to the image. A `ValueError` for a model without a sparse stem."""
        return foreground(self, source, **predict_kwargs)

    def mosaic(self, source, out, **kwargs) -> list:
        """Detect over rasters of any size window by window, writing GeoJSON (map coordinates), CSV/COCO (pixels)
        and a quick-look per input under `out` (`sparseyolo.mosaic.predict_mosaic`; in this process)."""
        from sparseyolo.mosaic import predict_mosaic

        return predict_mosaic(self, source, out, **kwargs)

    def train_finder(self, recall: float = 0.99, **kwargs) -> dict:
        """Train the foreground finder of the sparse stem (`sparsify='finder'`) from boxes alone, the detector
        frozen, then calibrate it to `recall` on the same training data (`sparseyolo.yolo.finder.train_finder`:
        `data=`, `composites=`, `steps=`, ...). Stored in the model (saved by `save()`); returns a report."""
        report = train_finder(self.model, recall=recall, **kwargs)
        self.predictor = None  # the predictor's model copy predates the training
        return report

    def calibrate_recall(self, recall: float = 0.99, data=None, composites="default") -> dict:
        """Set the foreground finder's threshold so that at least `recall` of the training objects (`data`'s train
        split, default the aerial training tiles, and the training `composites`, see
        `sparseyolo.yolo.finder.training_data`) keep 90% of their box active after the context margin. Stored in
        the model (a buffer: saved and shipped with it); returns the measured recall and active share."""
        images, boxes, sources = training_data(data, COMPOSITES if composites == "default" else composites)
        report = {**calibrate_recall(self.model, images, boxes, recall), "data": sources}
        self.predictor = None
        return report

    def _live_models(self) -> list[torch.nn.Module]:
        """The model and the predictor's model copy (Ultralytics' AutoBackend copies it), when there is one."""
        backend = getattr(getattr(self, "predictor", None), "model", None)
        return [m for m in (self.model, backend, getattr(backend, "model", None)) if isinstance(m, torch.nn.Module)]

    def _all_necks(self) -> list:
        """DFF necks of the model and of the predictor's model copy."""
        necks = {id(n): n for m in self._live_models() for n in dff_necks(m)}
        return list(necks.values())

    def set_crossover(self, value: float | None) -> YOLO:
        """Occupancy in [0, 1] above which every sparse block runs its dense path in inference (same numbers);
        None: back to the machine's stored value (`sparseyolo.nn.crossover`). Also on the predictor's copy."""
        if not any(isinstance(b, SparseBlock) for b in self.model.modules()):
            raise ValueError("crossover applies to models with sparse blocks; this model has none")
        for m in self._live_models():
            set_crossover(m, value)
        return self

    @contextlib.contextmanager
    def _crossover(self, value: float | None):
        """Within the block, sparse blocks use `value` as their crossover; their own values are restored after."""
        if value is None:
            yield
            return
        blocks = [b for b in self.model.modules() if isinstance(b, SparseBlock)]
        before = blocks[0].crossover if blocks else None
        self.set_crossover(value)
        try:
            yield
        finally:
            self.set_crossover(before)

    def neck_stats(self) -> dict:
        """`last_stats` of the DFF neck that ran last: per-image `gflops`, `ratio`, `complexity`, `depth`,
        `routes`, `spatial` (after `predict`, the neck of Ultralytics' model copy). Empty before any forward."""
        backend = getattr(getattr(self, "predictor", None), "model", None)
        for m in (getattr(backend, "model", None), self.model):
            necks = dff_necks(m) if isinstance(m, torch.nn.Module) else []
            if necks and necks[0].last_stats:
                return dict(necks[0].last_stats)
        if not dff_necks(self.model):
            raise ValueError("neck_stats: this model has no DFF neck")
        return {}

    @contextlib.contextmanager
    def _dff_control(self, budget: float | None = None, target_fps: float | None = None, preset: str | None = None):
        """Within the block DFF necks run at the calibrated threshold for `budget`, under the hardware `preset`
        caps, and (with `target_fps`) a `FrameRateScheduler` moves the budget per frame (`self.scheduler`).
        Everything is restored afterwards, also in the predictor's model copy."""
        if budget is None and target_fps is None and preset is None:
            yield
            return
        if not dff_necks(self.model):
            raise ValueError("budget=, target_fps= and preset= apply to models with a DFF neck; this model has none")
        thr = budget_threshold(self.model, budget) if budget is not None else None
        sched = FrameRateScheduler(float(target_fps), budget=budget or 1.0) if target_fps is not None else None
        first = dff_necks(self.model)[0]
        before = (float(first.threshold), first.max_routes, first.max_depth)
        apply_preset(self.model, preset)
        for n in self._all_necks():
            if thr is not None:
                n.threshold.fill_(thr)
            n.max_routes, n.max_depth = first.max_routes, first.max_depth
        hooks = []
        if sched is not None:
            self.scheduler = sched
            hooks = [("on_predict_batch_start", sched.on_predict_batch_start)]
            hooks.append(("on_predict_batch_end", sched.on_predict_batch_end))
            for event, fn in hooks:
                self.add_callback(event, fn)
        try:
            yield
        finally:  # a predictor created inside the block copied these settings: restore it too
            for event, fn in hooks:
                self.callbacks[event].remove(fn)
            for n in self._all_necks():
                n.threshold.fill_(before[0])
                n.max_routes, n.max_depth = before[1], before[2]

    def predict(
        self,
        source=None,
        stream: bool = False,
        predictor=None,
        budget: float | None = None,
        target_fps: float | None = None,
        preset: str | None = None,
        crossover: float | None = None,
        **kwargs,
    ):
        """Ultralytics' `predict`. DFF necks: `budget=` runs at the calibrated threshold for that budget;
        `target_fps=` adapts the budget per frame to hold that rate (`self.scheduler.history`); `preset=`
        (`cpu`, `gpu`, `edge`) caps the paths run side by side. Sparse blocks: `crossover=` (see
        `set_crossover`) for this call."""
        resolve_crossover(*self._live_models())
        if budget is None and target_fps is None and preset is None and crossover is None:
            return super().predict(source=source, stream=stream, predictor=predictor, **kwargs)
        if stream:
            return self._stream_under(budget, target_fps, preset, crossover, source, predictor, kwargs)
        with self._dff_control(budget, target_fps, preset), self._crossover(crossover):
            return super().predict(source=source, stream=False, predictor=predictor, **kwargs)

    def _stream_under(self, budget, target_fps, preset, crossover, source, predictor, kwargs):
        with self._dff_control(budget, target_fps, preset), self._crossover(crossover):
            yield from super().predict(source=source, stream=True, predictor=predictor, **kwargs)

    def val(self, validator=None, budget: float | None = None, crossover: float | None = None, **kwargs):
        """Ultralytics' `val`; `budget=` runs DFF necks at their calibrated threshold for that budget;
        `crossover=` sets the sparse blocks' dense switch for this call."""
        resolve_crossover(*self._live_models())
        with self._dff_control(budget), self._crossover(crossover):
            return super().val(validator=validator, **kwargs)

    def export(self, stem: str = "dense", **kwargs):
        """Ultralytics' `export`, with sparse blocks run as their dense masked equivalent (the same numbers in
        a graph that ONNX/TorchScript can trace) and DFF necks in their static all-on configuration (no
        data-dependent control flow). `stem="sparse"` is refused for models with sparse blocks."""
        check_stem(self.model, stem)
        with export_mode(self.model):
            return super().export(**kwargs)

    @property
    def task_map(self):
        tm = dict(super().task_map)
        tm["detect"] = {**tm["detect"], "model": SparseDetectionModel, "trainer": SparseDetectionTrainer}
        return tm


def _ultralytics_has_cfg(name: str) -> bool:
    from ultralytics.utils.checks import check_yaml

    try:
        return bool(check_yaml(name, hard=False) or check_yaml(unscaled_name(name), hard=False))
    except Exception:
        return False


def configure_sparsify(model, sparsify: dict) -> None:
    """Change the sparsify settings of every `SparseStem` of a built model (and its `yaml`, so rebuilds agree).

    A `learned` sparsifier keeps its trained head when the method stays `learned`; switching to `learned`
    creates an untrained head (it starts "all on"). A `finder` keeps its trained finder and calibrated threshold
    when the method stays `finder` (a `threshold` given here replaces the calibrated one); switching to `finder`
    creates an untrained, uncalibrated finder (it keeps every pixel). A new method drops the method-specific
    settings not given here (`sparseyolo.nn.sparsify.switch_settings`)."""
    stems = [m for m in model.modules() if isinstance(m, SparseStem)]
    if not stems:
        raise ValueError("sparsify settings given, but the model has no SparseStem layer")
    for m in stems:
        old = m.sparsify
        kw = switch_settings({k: getattr(old, k) for k in SETTINGS}, sparsify)
        finder = getattr(old, "finder", None)
        new = Sparsifier(m.c1, **kw, **({"cell": finder.cell} if finder is not None else {}))
        new = new.to(next(m.parameters()).device)
        if new.head is not None and old.head is not None:
            new.head = old.head
        if new.finder is not None and finder is not None:
            new.finder = finder
            if "threshold" in sparsify:
                finder.set_threshold(float(sparsify["threshold"]))
        m.sparsify = new
    if isinstance(getattr(model, "yaml", None), dict):
        model.yaml = customize_yaml(model.yaml, sparsify)
