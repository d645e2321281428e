"""The Ultralytics boundary: importing this module registers SparseYOLO blocks with Ultralytics' model parser.

Order matters: offline environment defaults are set before `ultralytics` is imported.
"""

from sparseyolo.yolo.env import apply_offline_defaults

apply_offline_defaults()

from sparseyolo.yolo.registry import register_all  # noqa: E402

register_all()

from sparseyolo.yolo.api import YOLO  # noqa: E402
from sparseyolo.yolo.model import SparseDetectionModel  # noqa: E402
from sparseyolo.yolo.train import SparseDetectionTrainer  # noqa: E402

__all__ = ["YOLO", "SparseDetectionModel", "SparseDetectionTrainer", "register_all"]
