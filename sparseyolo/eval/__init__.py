"""Evaluation: COCO metrics (faster-coco-eval; pycocotools in the tests), executed FLOPs, latency and memory, side
by side on the same images.

Used by `sparseyolo eval`, `sparseyolo demo` and the benchmarks. Modules: `coco` (metrics), `flops` (executed
FLOPs of one forward), `compare` (models x inference methods).
"""
