"""The sparse P3 path (`yolov8-sparse-p3.yaml`, `convert(p3=True)`; with P4: `yolov8-sparse-p34.yaml`, `p4=True`)
against Ultralytics' dense YOLOv8 and against the dense masked path, and the dense switch above the crossover."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparseyolo import YOLO
from sparseyolo.nn import DenseMasked, SConcat, SUpsample, as_dense, default_crossover, set_crossover
from sparseyolo.nn import crossover as xo
from sparseyolo.nn.sparse_head import INACTIVE_LOGIT
from sparseyolo.sparse import SparseConvTensor
from sparseyolo.yolo import SparseDetectionModel
from sparseyolo.yolo.convert import convert, save_checkpoint, sparse_yaml
from sparseyolo.yolo.sparse_detect import SparseDetect

P3_LAYERS = {5: "SConv", 13: "SUpsample", 14: "SConcat", 15: "SC2f", 16: "SConv", 22: "SparseDetect"}
P4_LAYERS = {6: "SC2f", 7: "SConv", 10: "SUpsample", 11: "SConcat", 12: "SC2f", 17: "SConcat", 18: "SC2f", 19: "SConv"}


@pytest.fixture(scope="module")
def dense(make_trained_like_yolov8n):
    return make_trained_like_yolov8n().eval()


@pytest.fixture(scope="module")
def p3(dense):
    return convert(dense, method="nonzero", p3=True).eval()


@pytest.fixture(scope="module")
def p34(dense):
    return convert(dense, method="nonzero", p3=True, p4=True).eval()


def _outputs(model, x):
    outs = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, i=i: outs.__setitem__(i, o)) for i, m in enumerate(model.model)]
    with torch.no_grad():
        y = model(x)
    for h in hooks:
        h.remove()
    return outs, y


@pytest.mark.parametrize("name", ["p3", "p34"])
def test_yaml_keeps_layer_indices_and_weight_names(name):
    from ultralytics.nn.tasks import DetectionModel

    layers = P3_LAYERS if name == "p3" else {**P3_LAYERS, **P4_LAYERS}
    for scale in "nsmlx":
        sparse = SparseDetectionModel(f"yolov8{scale}-sparse-{name}.yaml", nc=3, verbose=False)
        dense = DetectionModel(f"yolov8{scale}.yaml", nc=3, verbose=False)
        names = {k for k in sparse.state_dict() if ".sparsify." not in k}
        assert names == set(dense.state_dict()), scale
        assert {i: type(sparse.model[i]).__name__ for i in layers} == layers
        if name == "p34":
            outs = {i: sparse.model[i].dense_out for i in (5, 6, 7, 11, 12, 16, 17, 18, 19)}
            assert [i for i, dense_out in outs.items() if dense_out] == [7, 19]  # into the dense P5 layers
        elif scale == "n":
            assert [m.dense_out for m in sparse.model[:6]] == [False] * 5 + [True]  # 4 -> 5 (strided) and 14
            assert sparse.model[15].dense_out is False and sparse.model[16].dense_out is True


@pytest.mark.parametrize("crossover", [1.0, 0.0], ids=["sparse path", "dense switch"])
@pytest.mark.parametrize("kind", ["p3", "p34"])
def test_converted_model_equals_dense_on_a_fully_active_input(dense, kind, crossover, request):
    p3 = request.getfixturevalue(kind)
    set_crossover(p3, crossover)
    x = torch.rand(2, 3, 128, 160) + 0.05  # every pixel active
    od, yd = _outputs(dense, x)
    op, yp = _outputs(p3, x)
    for i in range(len(dense.model) - 1):  # every layer's output, densified
        torch.testing.assert_close(as_dense(op[i]), od[i], rtol=1e-4, atol=2e-4, msg=f"layer {i}")
    if crossover == 1.0:
        assert isinstance(op[15], SparseConvTensor) and isinstance(op[14], SparseConvTensor)
    else:
        assert isinstance(op[15], DenseMasked) and op[15].mask is None  # all active: nothing multiplied
    torch.testing.assert_close(yp[0], yd[0], rtol=1e-4, atol=2e-3)
    for key in ("boxes", "scores"):
        torch.testing.assert_close(yp[1][key], yd[1][key], rtol=1e-4, atol=2e-3)
    set_crossover(p3, None)


def _predictions(y: torch.Tensor) -> list[torch.Tensor]:
    """Per image, the decoded rows `(n, 4 + nc)` whose best class score is non-zero, sorted by box centre."""
    out = []
    for yb in y:
        rows = yb.t()[yb[4:].amax(0) > 1e-20]
        for col in (3, 2, 1, 0):  # lexicographic on boxes rounded to 0.1 px (float noise must not reorder)
            rows = rows[torch.argsort((rows[:, col] * 10).round(), stable=True)]
        out.append(rows)
    return out


def _sparse_image(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(2, 3, 128, 192)
    x[0, :, 8:40, 16:70] = torch.rand(3, 32, 54, generator=g)
    x[1, :, 70:120, 100:180] = torch.rand(3, 50, 80, generator=g)
    x[1, :, 5:20, 5:20] = torch.rand(3, 15, 15, generator=g)
    return x


@pytest.mark.parametrize("kind", ["p3", "p34"])
def test_sparse_path_equals_dense_masked_path_on_a_sparse_input(kind, request):
    p3 = request.getfixturevalue(kind)
    x = _sparse_image()
    set_crossover(p3, 1.0)
    o_sparse, y_sparse = _outputs(p3, x)
    set_crossover(p3, 0.0)
    o_dense, y_dense = _outputs(p3, x)
    set_crossover(p3, None)
    assert isinstance(o_sparse[15], SparseConvTensor) and isinstance(o_dense[15], DenseMasked)
    assert 0.05 < o_sparse[15].density < 0.9
    if kind == "p34":
        assert isinstance(o_sparse[18], SparseConvTensor) and 0.1 < o_sparse[18].density < 0.9
    for i in (4, 5, 14, 15, 16, 18, 21):
        torch.testing.assert_close(as_dense(o_sparse[i]), as_dense(o_dense[i]), rtol=1e-4, atol=2e-4)
    assert y_sparse[0].shape[2] < y_dense[0].shape[2]  # the sparse path decodes active anchors only
    for a, b in zip(_predictions(y_sparse[0]), _predictions(y_dense[0]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-3)
    for key in ("boxes", "scores"):  # the raw output in Detect's layout, built when read
        torch.testing.assert_close(y_sparse[1][key], y_dense[1][key], rtol=1e-4, atol=2e-3)


def test_inactive_p3_positions_give_no_detection(p3):
    x = _sparse_image(1)
    set_crossover(p3, 1.0)
    o, y = _outputs(p3, x)
    set_crossover(p3, None)
    s = o[15]
    H, W = s.spatial_shape
    active = torch.zeros(2, H * W, dtype=torch.bool)
    active[s.indices[:, 0].long(), (s.indices[:, 1] * W + s.indices[:, 2]).long()] = True
    n_dense = sum(o[i].shape[-2] * o[i].shape[-1] for i in (18, 21))  # P4 and P5 run dense
    counts = active.sum(1)
    assert y[0].shape[2] == int(counts.max()) + n_dense  # P3: active anchors only; the shorter image is padded
    short = int(counts.argmin())
    assert float(y[0][short, 4:, int(counts.min()) + n_dense :].abs().max()) == 0.0
    raw = y[1]["scores"][:, :, : H * W]  # Detect's full layout: P3 anchors first, row-major
    assert torch.all(raw.masked_select(~active.unsqueeze(1)) == INACTIVE_LOGIT)


@pytest.mark.parametrize("name", ["p3", "p34"])
def test_training_step_gives_gradients_through_the_sparse_path(name):
    from ultralytics.cfg import get_cfg

    torch.manual_seed(0)
    m = SparseDetectionModel(f"yolov8n-sparse-{name}.yaml", nc=2, verbose=False)

    m.args = get_cfg()
    m.train()
    x = _sparse_image()[:, :, :128, :128]
    batch = {
        "img": x,
        "batch_idx": torch.tensor([0.0, 1.0]),
        "cls": torch.tensor([[0.0], [1.0]]),
        "bboxes": torch.tensor([[0.3, 0.2, 0.3, 0.25], [0.7, 0.75, 0.4, 0.4]]),
    }
    loss, items = m.loss(batch)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    params = [(15, "cv1.conv.weight"), (22, "cv2.0.0.conv.weight"), (22, "cv3.0.1.conv.weight")]
    if name == "p34":
        params += [(6, "m.0.cv1.conv.weight"), (18, "cv2.conv.weight"), (22, "cv3.1.1.conv.weight")]
    for i, p in params:
        g = dict(m.model[i].named_parameters())[p].grad
        assert g is not None and float(g.abs().sum()) > 0, (i, p)


def test_predict_and_val_run_unchanged_on_a_sparse_p3_model(tiny_data, tmp_path):
    torch.manual_seed(0)
    model = YOLO("yolov8n-sparse-p3.yaml")
    model.model.names = {0: "red", 1: "green"}
    save_checkpoint(model.model, tmp_path / "p3.pt")
    model = YOLO(str(tmp_path / "p3.pt"))
    img = np.zeros((96, 96, 3), np.uint8)
    img[10:50, 20:60] = 200
    res = model.predict(img, imgsz=96, conf=0.0, verbose=False)
    boxes = res[0].boxes.xywh
    assert len(boxes) > 0  # an untrained model: some boxes above conf 0 ...
    metrics = model.val(data=str(tiny_data), imgsz=96, batch=2, verbose=False, plots=False)
    assert 0.0 <= metrics.box.map <= 1.0


@pytest.mark.parametrize("kind", ["p3", "p34"])
def test_onnx_export_runs_the_dense_masked_p3_path(tmp_path, kind, request):
    ort = pytest.importorskip("onnxruntime")
    p3 = request.getfixturevalue(kind)
    from sparseyolo.yolo.export import export

    p3.names = {i: str(i) for i in range(80)}
    path = save_checkpoint(p3, tmp_path / "p3.pt")
    m = YOLO(str(path))
    onnx_file = export(m, format="onnx", imgsz=128, device="cpu", simplify=False)
    x = _sparse_image()[:1, :, :128, :128]
    m.model.eval()
    set_crossover(m.model, 1.0)  # the reference runs the sparse engine
    with torch.no_grad():
        ref = m.model(x)[0].numpy()
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    assert got.shape[2] == 8 * 8 + 4 * 4 + 16 * 16  # the exported graph: every anchor (inactive ones score 0)
    torch.testing.assert_close(_predictions(got)[0], _predictions(torch.from_numpy(ref))[0], rtol=1e-3, atol=2e-3)
    onnx2 = YOLO(str(path)).export(format="onnx", imgsz=64, simplify=False)  # the Python API does the same
    assert str(onnx2).endswith(".onnx")


def test_bad_arguments_give_clear_errors(dense):
    with pytest.raises(ValueError, match="integer scale_factor"):
        SUpsample(None, 1.5)
    with pytest.raises(ValueError, match="dimension 1"):
        SConcat(0)
    with pytest.raises(ValueError, match="needs stages=5"):
        sparse_yaml(dense.yaml, stages=3, p3=True)
    d = dict(dense.yaml)
    d["head"] = [list(r) for r in d["head"]]
    d["head"][4][2] = "C3"  # layer 14
    with pytest.raises(ValueError, match="layer 14 should be Concat"):
        sparse_yaml(d, p3=True)
    with pytest.raises(ValueError, match="end2end"):
        SparseDetect(80, 16, True, (64, 128, 256))
    cat = SConcat()
    s = SparseConvTensor.from_dense(_sparse_image()[:, :, ::8, ::8] + 0)
    with pytest.raises(ValueError, match="does not fit"):
        cat([s, torch.zeros(1, 4, 8, 12)])  # batch 1 vs the grid's 2
    with pytest.raises(ValueError, match="list of inputs"):
        cat(s)


def test_crossover_sources_and_checks(tmp_path, setenv, p3):
    setenv(xo.ENV, None)
    setenv("SPARSEYOLO_CACHE", str(tmp_path))
    assert default_crossover("cpu") == xo.BUILTIN["cpu"]
    xo.save_crossover(0.37, "cpu", command="test")
    assert default_crossover("cpu") == 0.37
    setenv(xo.ENV, "0.2")
    assert default_crossover("cpu") == 0.2
    setenv(xo.ENV, "2")
    with pytest.raises(ValueError, match=xo.ENV):
        default_crossover("cpu")
    for bad in (-0.1, 1.5, "x"):
        with pytest.raises(ValueError, match="crossover must be"):
            set_crossover(p3, bad)
    set_crossover(p3, 0.3)
    assert all(m.crossover == 0.3 for m in p3.modules() if hasattr(m, "switch_dense"))
    set_crossover(p3, None)


def test_the_switch_is_per_stage_and_inference_only(p3):
    x = _sparse_image()
    set_crossover(p3, 1.0)
    o, _ = _outputs(p3, x)
    p3_density = o[14].density
    stem_density = float((x.abs().sum(1) > 0).float().mean())
    assert stem_density < p3_density  # the sites spread with every strided conv
    between = (stem_density + p3_density) / 2
    set_crossover(p3, between)  # the stem stays sparse, the P3 path (denser) switches
    o2, y2 = _outputs(p3, x)
    assert isinstance(o2[0], SparseConvTensor) and isinstance(o2[15], DenseMasked)
    p3.train()
    try:
        set_crossover(p3, 0.0)
        assert not p3.model[15].switch_dense(1.0, torch.device("cpu"))  # training always runs sparse
    finally:
        p3.eval()
        set_crossover(p3, None)


def test_convert_cli_p3_and_crossover_in_api_and_cli(dense, tmp_path):
    from sparseyolo.yolo.cli import main as cli_main

    src = save_checkpoint(dense, tmp_path / "dense.pt")
    out = tmp_path / "p3.pt"
    assert cli_main(["convert", f"model={src}", f"out={out}", "p3=True"]) == 0
    m = YOLO(str(out))
    assert {i: type(m.model.model[i]).__name__ for i in P3_LAYERS} == P3_LAYERS
    assert cli_main(["convert", f"model={src}", "p3=maybe"]) == 2
    assert cli_main(["convert", f"model={src}", "stages=3", "p3=True"]) == 1  # needs the whole stem
    img = np.zeros((64, 64, 3), np.uint8)
    img[8:30, 10:40] = 180
    a = m.predict(img, imgsz=64, conf=0.0, verbose=False, crossover=0.0)[0].boxes.data
    assert all(b.crossover is None for b in m.model.modules() if hasattr(b, "switch_dense"))  # restored
    b = m.predict(img, imgsz=64, conf=0.0, verbose=False, crossover=1.0)[0].boxes.data
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)  # the dense switch gives the same detections
    m.set_crossover(0.25)
    assert all(x.crossover == 0.25 for x in m.predictor.model.model.modules() if hasattr(x, "switch_dense"))
    with pytest.raises(ValueError, match="crossover must be"):
        m.set_crossover(3)
    with pytest.raises(ValueError, match="no sparse blocks|has none"):
        YOLO("yolov8n.yaml").set_crossover(0.5)
    assert cli_main(["predict", f"model={out}", "imgsz=64", "crossover=0.3", "save=False"]) == 0
    assert cli_main(["predict", f"model={out}", "imgsz=64", "crossover=7", "save=False"]) == 1


@pytest.mark.parametrize("kind", ["p3", "p34"])
def test_executed_flops_follow_the_path_that_ran(dense, kind, request):
    from sparseyolo.eval.flops import executed_flops

    model = request.getfixturevalue(kind)
    x = torch.rand(1, 3, 128, 160) + 0.05  # fully active
    ref = executed_flops(dense, x)["layers"]
    set_crossover(model, 0.0)  # the dense switch runs the dense ops: the counter sees exactly the dense FLOPs
    switched = executed_flops(model, x)["layers"]
    assert switched.keys() == ref.keys()
    for i in ref:
        assert switched[i] == pytest.approx(ref[i], rel=1e-6), i
    set_crossover(model, 1.0)  # sparse: analytic at the sites; skips the zero-padding taps the counter counts
    sparse = executed_flops(model, x)["layers"]
    for i in (*range(5), 15, 22):
        assert 0.8 * ref[i] <= sparse[i] <= ref[i] * (1 + 1e-6), i
    x = _sparse_image()[:1]
    few = executed_flops(model, x)["groups"]
    full = executed_flops(dense, x)["groups"]
    assert few["head"] < 0.8 * full["head"] and few["neck 10-21"] < full["neck 10-21"]
    set_crossover(model, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: sparse P3/P4 model on CUDA skipped")
@pytest.mark.parametrize("kind", ["p3", "p34"])
def test_sparse_paths_on_cuda_match_the_cpu(dense, kind, request):
    import copy

    cpu = request.getfixturevalue(kind)
    gpu = copy.deepcopy(cpu).cuda()
    x = _sparse_image()
    for c in (1.0, 0.0):
        set_crossover(cpu, c)
        set_crossover(gpu, c)
        with torch.no_grad():
            a, b = cpu(x)[0], gpu(x.cuda())[0].cpu()
        for u, v in zip(_predictions(a), _predictions(b), strict=True):
            torch.testing.assert_close(u, v, rtol=1e-3, atol=1e-2)
    set_crossover(cpu, None)
