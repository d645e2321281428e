"""Real-time control of DFF necks on streams: hold a target frame rate by moving the compute budget.

`sparseyolo.YOLO(...).predict(source=video, stream=True, target_fps=15, preset="cpu")`: after every frame (every
batch: a video or a folder is read one frame per batch) the scheduler compares the frame's wall time with
`1 / target_fps` and moves the neck's gate threshold (through the stored calibration curve when there is one,
else directly): fewer fusion blocks, pixels and routes when frames are late, more when there is slack.
Hardware presets cap the paths that run side by side, before any budget:

- `gpu`: no cap (parallel paths are cheap on a GPU);
- `cpu`: one incoming route per level;
- `edge`: one incoming route and one fusion block per level.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sparseyolo.nn.dff import dff_necks, threshold_for_budget

PRESETS = {"gpu": (None, None), "cpu": (1, None), "edge": (1, 1)}  # (max_routes, max_depth)


def apply_preset(model, preset: str | None) -> None:
    """Set the hardware caps of every DFF neck of `model` (None: leave them)."""
    if preset is None:
        return
    if preset not in PRESETS:
        raise ValueError(f"unknown hardware preset {preset!r}; expected one of {', '.join(PRESETS)}")
    routes, depth = PRESETS[preset]
    for n in dff_necks(model):
        n.max_routes, n.max_depth = routes, depth


@dataclass
class FrameRateScheduler:
    """Moves the budget (a fraction of all-on neck FLOPs) by `step` per frame towards the target frame time.

    `history` records `(frame seconds, budget, threshold)` per frame."""

    target_fps: float
    min_budget: float = 0.2
    step: float = 0.05
    budget: float = 1.0
    history: list = field(default_factory=list)
    _t0: float | None = None

    def __post_init__(self):
        if not self.target_fps > 0:
            raise ValueError(f"target_fps must be > 0, got {self.target_fps}")
        if not 0 < self.min_budget <= 1:
            raise ValueError(f"min_budget must be in (0, 1], got {self.min_budget}")

    def threshold(self, neck) -> float:
        """The threshold for the current budget: from the calibration curve, else a linear map onto [0, 0.99]."""
        if bool(neck.calib_valid):
            lo = float(neck.calib_ratios.min())
            return threshold_for_budget(neck, max(self.budget, lo))
        return 0.99 * (1.0 - self.budget)

    def update(self, models, seconds: float) -> None:
        """After a frame of `seconds`: move the budget and set every neck of `models` to its threshold."""
        late = seconds > 1.0 / self.target_fps
        self.budget = min(1.0, max(self.min_budget, self.budget + (-self.step if late else self.step)))
        necks = [n for m in models if m is not None for n in dff_necks(m)]
        thr = self.threshold(necks[0]) if necks else None
        for n in necks:
            n.set_threshold(thr)
        self.history.append((seconds, self.budget, thr))

    # Ultralytics predictor callbacks
    def on_predict_batch_start(self, predictor) -> None:
        self._t0 = time.perf_counter()

    def on_predict_batch_end(self, predictor) -> None:
        if self._t0 is None:
            return
        backend = getattr(predictor, "model", None)
        self.update([backend, getattr(backend, "model", None)], time.perf_counter() - self._t0)
