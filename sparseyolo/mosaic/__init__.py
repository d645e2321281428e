"""Images of any size: sparse (or dense) inference over orthomosaics, window by window, with georeferenced output.

```python
from sparseyolo.mosaic import predict_mosaic

results = predict_mosaic("yolov8n-sparse-p3-aerial", "mosaics/", "out/", window=4096, workers=2)
```

Modules: `raster` (inputs, checks, windowed reads with rasterio), `windows` (the window grid and its cores),
`detector` (a model run on one window), `merge` (detections across windows), `outputs` (GeoJSON, CSV, COCO,
quick-look; atomic writes), `run` (the pipeline, resumable), `distributed` (Dask), `samples` (test mosaics:
deepforest's OSBS_029.tif, composite GeoTIFFs with ground truth). Nothing heavy is imported here.
"""

from __future__ import annotations

__all__ = ["predict_mosaic", "InputResult", "MosaicInputError", "Detections"]


def __getattr__(name: str):
    if name in ("predict_mosaic", "InputResult"):
        from sparseyolo.mosaic import run

        return getattr(run, name)
    if name == "MosaicInputError":
        from sparseyolo.mosaic.raster import MosaicInputError

        return MosaicInputError
    if name == "Detections":
        from sparseyolo.mosaic.merge import Detections

        return Detections
    raise AttributeError(f"module 'sparseyolo.mosaic' has no attribute {name!r}")
