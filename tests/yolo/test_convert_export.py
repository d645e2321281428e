"""`convert` (dense checkpoint -> sparse stages, same weights) and the ONNX export path (dense masked stem)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparseyolo import YOLO
from sparseyolo.nn import SC2f, SConv, SparseStem
from sparseyolo.yolo import SparseDetectionModel
from sparseyolo.yolo.cli import main as cli_main
from sparseyolo.yolo.convert import convert, save_checkpoint, sparse_yaml


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory, make_trained_like_yolov8n):
    d = make_trained_like_yolov8n()
    return d, save_checkpoint(d, tmp_path_factory.mktemp("ckpt") / "dense.pt")


def _layer_outputs(model, x, upto=5):
    outs = {}
    hooks = [model.model[i].register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o)) for i in range(upto)]
    y = model(x)
    for h in hooks:
        h.remove()
    return outs, y


def test_converted_stages_match_dense(dense_ckpt):
    dense, path = dense_ckpt
    sparse = convert(path)
    assert type(sparse) is SparseDetectionModel
    kinds = [type(m) for m in sparse.model[:5]]
    assert kinds == [SparseStem, SConv, SC2f, SConv, SC2f]
    dense.eval(), sparse.eval()
    x = torch.rand(2, 3, 96, 160) + 0.05  # fully active
    od, yd = _layer_outputs(dense, x)
    os_, ys = _layer_outputs(sparse, x)
    # layers 0-3 hand sparse tensors on; layer 4 is dense (read by dense layers)
    torch.testing.assert_close(os_[4], od[4], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(os_[0].dense(), od[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ys[0], yd[0], rtol=1e-4, atol=1e-3)
    with torch.no_grad():  # inference path: folded BatchNorm applied in place, compiled first conv
        os_ng, ys_ng = _layer_outputs(sparse, x)
    torch.testing.assert_close(os_ng[4], od[4], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ys_ng[0], yd[0], rtol=1e-4, atol=1e-3)


def test_convert_cli_and_reload(dense_ckpt, tmp_path):
    _, path = dense_ckpt
    out = tmp_path / "sparse.pt"
    assert cli_main(["convert", f"model={path}", f"out={out}", "stages=3", "sparsify=threshold", "threshold=0.1"]) == 0
    m = YOLO(str(out))
    assert type(m.model) is SparseDetectionModel
    assert [type(x).__name__ for x in m.model.model[:4]] == ["SparseStem", "SConv", "SC2f", "Conv"]
    assert m.model.model[0].sparsify.method == "threshold"
    assert cli_main(["convert", f"model={path}", "stages=12"]) == 1
    assert cli_main(["convert", f"model={path}", "colour=red"]) == 2


def test_convert_rejects_unsupported_layers(dense_ckpt):
    dense, _ = dense_ckpt
    with pytest.raises(ValueError, match="layer 9 is 'SPPF'"):
        sparse_yaml(dense.yaml, stages=10)


def test_onnx_export_dense_stem_matches_sparse(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from sparseyolo.yolo.export import export

    torch.manual_seed(0)
    m = YOLO("yolov8n-sparse-hr.yaml")  # learned sparsifier with a 25% budget + dilation: topk/maxpool in ONNX
    m.model.names = {i: str(i) for i in range(80)}
    path = tmp_path / "m.pt"
    save_checkpoint(m.model, path)
    m = YOLO(str(path))
    onnx_file = export(m, format="onnx", imgsz=96, device="cpu", simplify=False)
    x = torch.zeros(1, 3, 96, 96)
    x[:, :, 10:40, 20:70] = torch.rand(1, 3, 30, 50)
    m.model.eval()
    with torch.no_grad():
        ref = m.model(x)[0].numpy()
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)
    assert m.model.model[0].export_dense is False  # export mode switched back off
    with pytest.raises(ValueError, match="stem=dense"):
        export(m, stem="sparse", format="onnx")
    assert cli_main(["export", f"model={path}", "format=onnx", "imgsz=64", "simplify=False"]) == 0
    assert cli_main(["export", f"model={path}", "format=onnx", "stem=sparse"]) == 1
