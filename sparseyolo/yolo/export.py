"""Export with sparse blocks run as their dense masked equivalent (`stem=dense`), e.g. to ONNX.

The sparse engine's gather/scatter kernels do not export; the dense masked path computes the same numbers with
`conv2d`/`max_pool2d`/`topk` (inactive sites zero, budgets and dilation included), so the exported graph
reproduces the sparse model's outputs at dense cost. DFF necks export in their `static` configuration (every
path on, no data-dependent control flow). `sparseyolo.YOLO.export` does this itself; this function
serves the CLI and any Ultralytics `Model`.
"""

from __future__ import annotations

import contextlib

from sparseyolo.nn import SparseBlock, dff_necks, set_export_dense, set_neck_mode


def check_stem(model, stem: str) -> None:
    """`ValueError` for an unknown `stem`, or `stem="sparse"` on a model (nn.Module) with sparse blocks."""
    if stem not in ("dense", "sparse"):
        raise ValueError(f"stem must be 'dense' or 'sparse', got {stem!r}")
    if stem == "sparse" and any(isinstance(m, SparseBlock) for m in model.modules()):
        raise ValueError(
            "sparse blocks cannot be exported as sparse ops (no ONNX/TorchScript kernels for the engine); "
            "use stem=dense, which exports the same computation as dense masked convolutions"
        )


@contextlib.contextmanager
def export_mode(model):
    """Within the block, sparse blocks of `model` (nn.Module) run dense masked and DFF necks static; restored
    afterwards."""
    set_export_dense(model, True)
    modes = set_neck_mode(model, "static")
    try:
        yield
    finally:
        set_export_dense(model, False)
        for n, m in zip(dff_necks(model), modes, strict=True):
            n.mode = m


def export(model, stem: str = "dense", **kwargs):
    """`model.export(**kwargs)` (any Ultralytics `Model`; a `sparseyolo.YOLO` enters the same mode again, which
    changes nothing) in export mode (`export_mode`); returns the exported file path."""
    check_stem(model.model, stem)
    with export_mode(model.model):
        return model.export(**kwargs)
