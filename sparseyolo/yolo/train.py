"""`SparseDetectionTrainer`: Ultralytics' DetectionTrainer building `SparseDetectionModel`.

Import path is used by Ultralytics' DDP launcher (it pickles the trainer class): never move this class.
"""

from __future__ import annotations

from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import RANK

from sparseyolo.yolo.curriculum import add_curriculum
from sparseyolo.yolo.integration import enable
from sparseyolo.yolo.model import SparseDetectionModel


class SparseDetectionTrainer(DetectionTrainer):
    """Trains `SparseDetectionModel`; loss columns include our aux losses/stats. Models with a DFF neck follow
    the DFF curriculum (`sparseyolo.yolo.curriculum`; default settings unless one was registered)."""

    def __init__(self, *args, **kwargs):
        enable()  # also in the fresh processes of Ultralytics' DDP launcher, which import only this module
        super().__init__(*args, **kwargs)
        add_curriculum(self.callbacks)

    def get_model(self, cfg=None, weights=None, verbose=True):
        model = self.set_model_names_for_load(
            SparseDetectionModel(cfg, nc=self.data["nc"], ch=self.data["channels"], verbose=verbose and RANK == -1)
        )
        if weights:
            model.load(weights)
        return model
