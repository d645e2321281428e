"""Export with sparse blocks run as their dense masked equivalent (`stem=dense`), e.g. to ONNX.

The sparse engine's gather/scatter kernels do not export; the dense masked path computes the same numbers with
`conv2d`/`max_pool2d`/`topk` (inactive sites zero, budgets and dilation included), so the exported graph
reproduces the sparse model's outputs at dense cost. DFF necks export in their `static` configuration (every
path on, no data-dependent control flow). `sparseyolo.YOLO.export` does this itself; this function
serves the CLI and any Ultralytics `Model`.
"""

from __future__ import annotations

from sparseyolo.nn import SparseBlock, dff_necks, set_export_dense, set_neck_mode


def export(model, stem: str = "dense", **kwargs):
    """`model.export(**kwargs)` with every sparse block in dense masked mode; returns the exported file path."""
    from sparseyolo.yolo.api import YOLO

    if isinstance(model, YOLO):
        return model.export(stem=stem, **kwargs)
    if stem != "dense" and any(isinstance(m, SparseBlock) for m in model.model.modules()):
        raise ValueError(
            "sparse blocks cannot be exported as sparse ops (no ONNX/TorchScript kernels for the engine); "
            "use stem=dense, which exports the same computation as dense masked convolutions"
        )
    set_export_dense(model.model, True)
    modes = set_neck_mode(model.model, "static")
    try:
        return model.export(**kwargs)
    finally:
        set_export_dense(model.model, False)
        for n, m in zip(dff_necks(model.model), modes, strict=True):
            n.mode = m
