"""The DFF training curriculum, as an Ultralytics `on_train_epoch_start` callback.

Three phases over the run's epochs:

1. warm-up (`warmup` share of the epochs): every path on (`DFFNeck.mode = "all_on"`), no efficiency loss;
2. dynamic: gates decide, the relaxation temperature anneals from `t_start` to `t_end`, the efficiency and
   smoothness losses are on;
3. fine-tuning (`finetune` share, at the end): the policy (gates, routing, controller, complexity) is frozen
   (but for its box-supervised parts, below),
   the rest of the model adapts to its decisions.

Optional distillation from a static teacher (`dff_teacher=best.pt`, weight `dff_distill=1.0`): the teacher's
Detect outputs (class probabilities, box distributions) guide the student's (`distill_loss` column); classes,
strides and head layout must match.

The dynamic and fine-tune phases also supervise the policy with the boxes (`gate_loss`, `cx_loss`, see
`sparseyolo.nn.dff`); the supervised parts (pixel gates, complexity estimate) stay trainable in the fine-tune phase,
so they follow the features the rest of the model still changes (frozen, they drifted off: a seed-1 run's gates
opened on half of an empty image at the end, against a fifth in its dynamic phase). `dff_supervise=W` sets both
weights (0: off, the policy learns from the detection and budget losses alone).
`dff_without=routing,pixel` trains (and leaves) the neck with those parts switched off after the warm-up
(`DFFNeck.disabled`, parts from `routing`, `depth`, `pixel`): the retrained ablations.

Settings: `sparseyolo train ... dff_warmup=0.3 dff_finetune=0.15 dff_t_start=1.0 dff_t_end=0.2 dff_budget=0.6
dff_eff_weight=2.0 dff_supervise=1.0 dff_without=pixel dff_teacher=best.pt dff_distill=1.0`, or the same keywords in
`sparseyolo.YOLO(...).train(dff_warmup=...)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch

from sparseyolo.nn import dff_necks
from sparseyolo.nn.dff import PARTS, check_budget

PREFIX = "dff_"


@dataclass
class Curriculum:
    warmup: float = 0.3
    finetune: float = 0.15
    t_start: float = 1.0
    t_end: float = 0.2
    budget: float | None = None  # None: each neck's own (from its YAML)
    eff_weight: float | None = None  # None: each neck's own
    supervise: float | None = None  # weight of the policy's box supervision (gate_loss, cx_loss); None: each neck's own
    without: str | None = None  # parts switched off after the warm-up, comma-separated (ablations); see PARTS
    teacher: str | None = None  # a static teacher checkpoint (or shipped reference name) to distil from
    distill: float = 1.0  # weight of `distill_loss`
    load: Callable | None = field(default=None, repr=False)  # teacher name -> model (`sparseyolo.YOLO.train` gives one)

    def __post_init__(self):
        for name in ("warmup", "finetune"):
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"dff_{name} is a share of the epochs in [0, 1], got {v}")
        if self.warmup + self.finetune > 1.0:
            raise ValueError(f"dff_warmup + dff_finetune must not exceed 1, got {self.warmup} + {self.finetune}")
        if not (self.t_start > 0 and self.t_end > 0):
            raise ValueError(f"dff temperatures must be > 0, got t_start={self.t_start}, t_end={self.t_end}")
        if self.budget is not None:
            self.budget = check_budget(self.budget)
        if self.eff_weight is not None and float(self.eff_weight) < 0:
            raise ValueError(f"dff_eff_weight must be >= 0, got {self.eff_weight}")
        if self.supervise is not None and not float(self.supervise) >= 0:
            raise ValueError(f"dff_supervise must be >= 0, got {self.supervise}")
        if self.without is not None:
            parts = self.without if isinstance(self.without, (list, tuple)) else str(self.without).split(",")
            parts = {p.strip() for p in parts if p.strip()}
            if not parts <= set(PARTS):
                raise ValueError(f"dff_without takes parts from {', '.join(PARTS)}, got {self.without!r}")
            self.without = ",".join(sorted(parts))
        if float(self.distill) < 0:
            raise ValueError(f"dff_distill must be >= 0, got {self.distill}")
        if self.teacher is not None and self.load is None:
            raise ValueError("dff_teacher needs a model loader (Curriculum.load); sparseyolo.YOLO.train gives one")

    @classmethod
    def pop_from(cls, overrides: dict, load: Callable | None = None) -> Curriculum:
        """Take the `dff_*` keys out of `overrides` (CLI/train keywords); unknown `dff_` keys raise. `load`: how a
        teacher name becomes a model."""
        names = {f.name for f in fields(cls)} - {"load"}
        kw = {}
        for key in [k for k in overrides if k.startswith(PREFIX)]:
            name = key[len(PREFIX) :]
            if name not in names:
                raise ValueError(f"unknown curriculum setting {key!r}; expected {', '.join(PREFIX + n for n in names)}")
            kw[name] = overrides.pop(key)
        return cls(**kw, load=load)

    def phase(self, epoch: int, epochs: int) -> tuple[str, float]:
        """(`warmup` | `dynamic` | `finetune`, temperature) at 0-based `epoch` of `epochs`."""
        start = round(self.warmup * epochs)
        end = epochs - round(self.finetune * epochs)
        if epoch < start:
            return "warmup", self.t_start
        if epoch >= end:
            return "finetune", self.t_end
        span = max(end - start - 1, 1)
        a = (epoch - start) / span
        return "dynamic", self.t_start * (self.t_end / self.t_start) ** a  # geometric annealing

    def apply(self, models, epoch: int, epochs: int) -> str:
        """Set every DFF neck of `models` (the trained model and its EMA) to the phase of `epoch`."""
        phase, temperature = self.phase(epoch, epochs)
        for model in models:
            if model is None:
                continue
            for neck in dff_necks(model):
                neck.mode = "all_on" if phase == "warmup" else "dynamic"
                neck.set_temperature(temperature)
                neck.efficiency_on = phase == "dynamic"
                if self.budget is not None:
                    neck.budget = self.budget
                if self.eff_weight is not None:
                    neck.loss_weights["eff_loss"] = float(self.eff_weight)
                if self.without is not None and phase != "warmup":
                    neck.disabled = frozenset(self.without.split(",")) - {""}
                if self.supervise is not None:
                    neck.loss_weights["gate_loss"] = neck.loss_weights["cx_loss"] = float(self.supervise)
                neck.supervision_on = phase != "warmup"
                supervised = neck.loss_weights.get("gate_loss", 0) or neck.loss_weights.get("cx_loss", 0)
                for p in neck.policy_parameters():
                    p.requires_grad_(phase != "finetune")
                if supervised:  # taught by the boxes, not by the budget: they follow the features to the end
                    for p in neck.supervised_parameters():
                        p.requires_grad_(True)
        return phase

    def on_train_start(self, trainer) -> None:
        """Attach the distillation teacher (if any) to the trained model and its EMA."""
        if self.teacher is None:
            return
        from ultralytics.utils.torch_utils import unwrap_model

        try:
            teacher = self.load(str(self.teacher)).float().eval()
        except FileNotFoundError as e:
            raise FileNotFoundError(f"dff_teacher: {e}") from e
        for p in teacher.parameters():
            p.requires_grad_(False)
        student = unwrap_model(trainer.model)
        t_nc, s_nc = getattr(teacher.model[-1], "nc", None), getattr(student.model[-1], "nc", None)
        if t_nc != s_nc:
            raise ValueError(f"dff_teacher has {t_nc} classes, the trained model {s_nc}")
        if not torch.equal(teacher.stride.float(), student.stride.float()):
            raise ValueError(f"dff_teacher strides {teacher.stride.tolist()} differ from {student.stride.tolist()}")
        teacher.to(next(student.parameters()).device)
        ema = getattr(trainer, "ema", None)
        for m in (student, ema.ema if ema else None):
            if m is not None and hasattr(m, "set_teacher"):
                m.set_teacher(teacher, self.distill)

    def on_train_epoch_start(self, trainer) -> None:
        from ultralytics.utils.torch_utils import unwrap_model

        ema = getattr(trainer, "ema", None)
        phase = self.apply([unwrap_model(trainer.model), ema.ema if ema else None], trainer.epoch, trainer.epochs)
        trainer.dff_phase = phase


def add_curriculum(callbacks: dict, curriculum: Curriculum | None = None) -> None:
    """Register `curriculum` in Ultralytics `callbacks`, replacing a registered one; with None, register the
    default settings unless a curriculum is registered already."""
    hooks = callbacks.setdefault("on_train_epoch_start", [])
    registered = [h for h in hooks if isinstance(getattr(h, "__self__", None), Curriculum)]
    if registered and curriculum is None:
        return
    for h in registered:
        hooks.remove(h)
    curriculum = curriculum or Curriculum()
    hooks.append(curriculum.on_train_epoch_start)
    start = callbacks.setdefault("on_train_start", [])
    for h in [h for h in start if isinstance(getattr(h, "__self__", None), Curriculum)]:
        start.remove(h)
    start.append(curriculum.on_train_start)
