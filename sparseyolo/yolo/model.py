"""`SparseDetectionModel`: Ultralytics' DetectionModel plus the auxiliary losses and stats of our blocks.

Import path is part of the checkpoint format (pickled): never move this class.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel

from sparseyolo import __version__
from sparseyolo.nn.crossover import resolve as resolve_crossover
from sparseyolo.yolo.cfg import resolve_cfg
from sparseyolo.yolo.integration import enable


def aux_modules(model: nn.Module) -> list[nn.Module]:
    """Blocks that implement the aux protocol: `pop_aux(targets) -> (losses: dict, stats: dict)`."""
    return [m for m in model.modules() if callable(getattr(m, "pop_aux", None))]


class SparseDetectionModel(DetectionModel):
    """A DetectionModel whose loss adds the auxiliary losses of SparseYOLO blocks (e.g. `mask_loss`
    of a learned sparsifier) as extra loss columns, and reports their stats (e.g. `active`, the kept
    fraction of pixels).

    Blocks take part through two duck-typed members (no Ultralytics imports on their side):
    `aux_names -> tuple[list[str], list[str]]` (loss names, stat names) and
    `pop_aux(targets: dict) -> (dict[str, Tensor], dict[str, Tensor])`, with `targets` holding
    `batch_idx (N,)`, `bboxes (N, 4)` normalised xywh, `imgsz (H, W)` and `batch_size`. Loss values are means
    over the batch; they are scaled by the batch size like Ultralytics' own loss components.
    """

    def __init__(self, cfg="yolov8n-sparse.yaml", ch=3, nc=None, verbose=True):
        enable()  # building (and loading, `__setstate__`) a SparseYOLO model installs the integration
        if isinstance(cfg, str):
            cfg = resolve_cfg(cfg)
        super().__init__(cfg, ch=ch, nc=nc, verbose=verbose)
        self.sparseyolo_version = __version__
        for m in aux_modules(self):  # match Ultralytics' initialize_weights() for our BatchNorms
            for bn in m.modules():
                if isinstance(bn, nn.modules.batchnorm._BatchNorm) and type(bn) is not nn.BatchNorm2d:
                    bn.eps, bn.momentum = 1e-3, 0.03
        resolve_crossover(self)

    def __setstate__(self, state):
        enable()
        super().__setstate__(state)
        resolve_crossover(self)  # this machine's, not the one of the process that pickled it

    def _predict_once(self, x, profile=False, embed=None):
        """Ultralytics' forward, with the early exit of sparse stems in inference: when no image of the batch has
        an active pixel, the rest of the network is not run and the output holds no detections (zero anchors,
        Detect's layout; its raw part is computed only if read). Images of a batch whose mask is empty get no
        detections either (scores zeroed), so a batch detects what its images do one by one."""
        if not self.training and not self.__dict__.get("_finder_warned"):
            self._warn_uncalibrated()
        stems = self._exit_stems(embed)
        if not stems:
            return super()._predict_once(x, profile, embed)
        handles = [s.register_forward_hook(_stop_when_empty) for s in stems]
        try:
            out = super()._predict_once(x, profile, embed)
        except _NothingActive:
            return self._no_detections(x)
        finally:
            for h in handles:
                h.remove()
        empty = _empty_images(stems)
        if empty is not None and bool(empty.any()):
            y = out[0] if isinstance(out, tuple) else out
            y[empty.to(y.device), 4:] = 0.0  # scores 0: never above a confidence threshold, NMS drops them
        return out

    def _warn_uncalibrated(self) -> None:
        """Warn once when a foreground finder decides by a threshold it was never given (it then keeps every pixel)."""
        from sparseyolo.nn.finder import Finder

        for m in self.modules():
            f = getattr(m, "finder", None)
            if isinstance(f, Finder) and getattr(m, "target", None) is None and not bool(f.calibrated):
                self.__dict__["_finder_warned"] = True
                warnings.warn(
                    "the sparse stem's foreground finder is not calibrated: it keeps every pixel (the model runs as a "
                    "dense one). Train and calibrate it: YOLO.train_finder() or YOLO.calibrate_recall()",
                    stacklevel=4,
                )
                return

    def _exit_stems(self, embed) -> list:
        """The sparse stems whose empty masks may end the forward early (none in training, export or with
        `embed`, or when the head is not a plain one-to-many Detect)."""
        from ultralytics.nn.modules import Detect

        from sparseyolo.nn import SparseStem
        from sparseyolo.yolo.sparse_detect import SparseDetect

        head = self.model[-1]
        if self.training or embed or type(head) not in (Detect, SparseDetect):
            return []
        if getattr(head, "end2end", False) or getattr(head, "export", False):
            return []
        return [m for m in self.model if isinstance(m, SparseStem) and not m.export_dense]

    def _no_detections(self, x: torch.Tensor):
        """Detect's inference output for a batch without detections: `(Tensor[B, 4 + nc, 0], raw)`; the raw
        prediction dict (read only by a validation loss) runs the whole network when read."""
        from sparseyolo.yolo.sparse_detect import LazyRaw

        head = self.model[-1]
        y = x.new_zeros(x.shape[0], 4 + head.nc, 0)
        return y, LazyRaw(lambda: DetectionModel._predict_once(self, x)[1])

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_finder_warned", None)
        state.pop("_teacher", None)  # a distillation teacher is never saved (nor copied into the EMA)
        return state

    def set_teacher(self, teacher: nn.Module | None, weight: float = 1.0) -> None:
        """Distil from `teacher` (a static detection model with the same classes, strides and head layout): adds
        `distill_loss` = weight * (MSE of class probabilities + KL of box distributions) on Detect's raw outputs.
        Kept outside the module tree: not trained, not in the state dict, not saved."""
        self.__dict__["_teacher"] = None if teacher is None else (teacher.eval(), float(weight))

    def _distill_loss(self, img: torch.Tensor, preds) -> torch.Tensor:
        teacher, weight = self.__dict__["_teacher"]
        student = preds[1] if isinstance(preds, tuple) else preds
        student = student.get("one2many", student)
        with torch.no_grad():
            t = teacher(img)
        t = t[1] if isinstance(t, tuple) else t
        t = t.get("one2many", t)
        if t["scores"].shape != student["scores"].shape or t["boxes"].shape != student["boxes"].shape:
            raise ValueError(
                f"teacher outputs {tuple(t['scores'].shape)}/{tuple(t['boxes'].shape)} do not match the student's "
                f"{tuple(student['scores'].shape)}/{tuple(student['boxes'].shape)} (scores/boxes): the teacher needs "
                "the same classes, strides and head"
            )
        cls = (student["scores"].sigmoid() - t["scores"].sigmoid()).square().mean()
        b, c, a = student["boxes"].shape
        s_box = student["boxes"].view(b, 4, c // 4, a).log_softmax(2)
        t_box = t["boxes"].view(b, 4, c // 4, a).softmax(2)
        box = (t_box * (t_box.clamp_min(1e-9).log() - s_box)).sum(2).mean()
        return weight * (cls + box)

    def aux_names(self) -> tuple[list[str], list[str]]:
        losses, stats = [], []
        for m in aux_modules(self):
            lo, st = m.aux_names
            losses += [n for n in lo if n not in losses]
            stats += [n for n in st if n not in stats]
        return losses, stats

    def loss(self, batch, preds=None):
        if preds is None:
            preds = self.forward(batch["img"])
        loss, items = super().loss(batch, preds)
        if self.__dict__.get("_teacher") is not None:
            d = self._distill_loss(batch["img"], preds)
            loss = torch.cat([loss.view(-1), (d * batch["img"].shape[0]).view(1)])
            items = {**dict(items), "distill_loss": d.detach()}
        mods = aux_modules(self)
        if not mods:
            return loss, items
        img = batch["img"]
        bs = img.shape[0]
        targets = {
            "batch_idx": batch["batch_idx"].view(-1),
            "bboxes": batch["bboxes"],
            "imgsz": tuple(img.shape[-2:]),
            "batch_size": bs,
        }
        loss_names, stat_names = self.aux_names()
        aux_l: dict[str, list] = {k: [] for k in loss_names}
        aux_s: dict[str, list] = {k: [] for k in stat_names}
        for m in mods:
            lo, st = m.pop_aux(targets)
            for k, v in lo.items():
                aux_l.setdefault(k, []).append(v)
            for k, v in st.items():
                aux_s.setdefault(k, []).append(v)
        zero = loss.new_zeros(())
        extra_loss = [torch.stack(v).sum() if v else zero for v in aux_l.values()]
        if extra_loss:
            loss = torch.cat([loss.view(-1), torch.stack(extra_loss) * bs])
        items = dict(items)
        for k, v in zip(aux_l, extra_loss, strict=True):
            items[k] = v.detach()
        for k, v in aux_s.items():
            items[k] = (
                torch.stack([torch.as_tensor(x, dtype=zero.dtype, device=zero.device) for x in v]).mean().detach()
                if v
                else zero
            )
        return loss, items


class _NothingActive(Exception):
    """Raised by a sparse stem's hook inside `SparseDetectionModel._predict_once`: no image has an active pixel."""


def _stop_when_empty(module, args, output):
    if module.last_empty is not None and bool(module.last_empty.all()):
        raise _NothingActive


def _empty_images(stems: list):
    """`bool[B]`: images with no active pixel in any of `stems` (None when unknown)."""
    empty = None
    for m in stems:
        e = m.last_empty
        if e is None:
            return None
        empty = e if empty is None else empty & e
    return empty
