"""The Ultralytics boundary: parser patch anchors, registration, channel scaling of our blocks, bad YAMLs."""

from __future__ import annotations

import copy

import pytest
import torch

from sparseyolo.yolo import patch

BASE = {
    "nc": 2,
    "scales": {"n": [0.33, 0.25, 1024], "s": [0.33, 0.50, 1024], "l": [1.0, 1.0, 512]},
    "backbone": [
        [-1, 1, "Conv", [64, 3, 2]],  # 0 P1
        [-1, 1, "Conv", [128, 3, 2]],  # 1 P2
        [-1, 3, "C2f", [128, True]],  # 2
        [-1, 1, "Conv", [256, 3, 2]],  # 3 P3
        [-1, 1, "Chunk", [2]],  # 4 two outputs
        [4, 1, "Pick", [1]],  # 5 second half
        [[5, 2], 1, "FuseAdd", [256]],  # 6 two inputs, P3 size
        [-1, 1, "Conv", [512, 3, 2]],  # 7 P4
        [-1, 1, "Conv", [1024, 3, 2]],  # 8 P5
    ],
    "head": [[[6, 7, 8], 1, "Detect", ["nc"]]],
}


def test_parse_model_source_is_the_tested_one():
    import ultralytics

    sha = patch.source_sha256()
    known = patch.TESTED_SOURCE_SHA256
    assert sha in known.values(), (
        f"ultralytics {ultralytics.__version__}: parse_model source changed (sha256 {sha}); "
        f"re-run tests/yolo, "
        f"then add it to sparseyolo.yolo.patch.TESTED_SOURCE_SHA256 (known: {known})"
    )


def test_anchors_present_and_patch_installed():
    from ultralytics.nn import tasks

    patch.check_anchors(patch.parse_model_source())
    assert tasks.parse_model.__sparseyolo_original__ is not None
    with pytest.raises(RuntimeError, match="fallback branch"):
        patch.check_anchors(patch.parse_model_source().replace("c2 = ch[f]", "c2 = ch[f]  # x"))


@pytest.mark.parametrize("scale", ["n", "s", "l"])
def test_width_scaling_matches_builtin(scale):
    """Our blocks get c1 from the input layer and c2 scaled exactly like a built-in Conv at the same place."""
    from ultralytics.nn.tasks import Conv, DetectionModel

    from sparseyolo.nn import Chunk, FuseAdd, Pick

    d = copy.deepcopy(BASE)
    d["scale"] = scale
    m = DetectionModel(d, verbose=False)
    ref = copy.deepcopy(BASE)
    ref["scale"] = scale
    ref["backbone"][6] = [-1, 1, "Conv", [256, 1, 1]]  # oracle: built-in block, same c2 request
    r = DetectionModel(ref, verbose=False)
    fuse, oracle = m.model[6], r.model[6]
    assert isinstance(fuse, FuseAdd) and isinstance(oracle, Conv)
    assert fuse.c2 == oracle.conv.out_channels
    c3 = r.model[3].conv.out_channels
    assert isinstance(m.model[4], Chunk) and m.model[4].c1 == c3
    assert isinstance(m.model[5], Pick)
    assert fuse.c1s == [c3 // 2, r.model[2].cv2.conv.out_channels]
    assert m.model[7].conv.in_channels == oracle.conv.out_channels
    # forward works through multi-output and multi-input layers; strides found from the 256x256 probe
    assert m.stride.tolist() == [8.0, 16.0, 32.0]
    m.eval()
    out = m(torch.rand(1, 3, 64, 96))
    assert out[0].shape[-1] == (8 * 12 + 4 * 6 + 2 * 3)


def test_depth_scaling_repeats():
    from ultralytics.nn.tasks import DetectionModel

    d = copy.deepcopy(BASE)
    d["scale"] = "n"
    d["backbone"][6] = [[5, 2], 3, "FuseAdd", [256]]  # non-repeat block: n copies (depth-scaled 3*0.33 -> 1)
    m = DetectionModel(d, verbose=False)
    assert not isinstance(m.model[6], torch.nn.Sequential)


def test_unknown_module_names_the_layer():
    from ultralytics.nn.tasks import DetectionModel

    d = copy.deepcopy(BASE)
    d["backbone"][2] = [-1, 3, "C2F", [128, True]]
    with pytest.raises(ValueError, match=r"layer 2: unknown module 'C2F'.*C2f"):
        DetectionModel(d, verbose=False)


def test_bad_yaml_args_are_named():
    from ultralytics.nn.tasks import DetectionModel

    d = copy.deepcopy(BASE)
    d["backbone"][5] = [3, 1, "Pick", [0]]  # input has a single output
    with pytest.raises(ValueError, match="Pick needs an input layer with several outputs"):
        DetectionModel(d, verbose=False)
    d = copy.deepcopy(BASE)
    d["backbone"][6] = [-1, 1, "FuseAdd", [256]]
    with pytest.raises(ValueError, match="FuseAdd takes several inputs"):
        DetectionModel(d, verbose=False)
    d = copy.deepcopy(BASE)
    d["backbone"][4] = [-1, 1, "Chunk", [3]]
    with pytest.raises(ValueError, match="not divisible"):
        DetectionModel(d, verbose=False)


def test_wrong_channel_count_at_runtime():
    from sparseyolo.nn import FuseAdd

    m = FuseAdd([8, 16], 8)
    with pytest.raises(ValueError, match="16 channels, expected 8"):
        m([torch.rand(1, 16, 4, 4), torch.rand(1, 16, 4, 4)])


@pytest.mark.parametrize(
    "scale,variant",
    [
        ("n", "sparse"),
        ("s", "sparse"),
        ("m", "sparse"),
        ("l", "sparse"),
        ("x", "sparse"),
        ("n", "sparse-hr"),
        ("x", "sparse-hr"),
    ],
)
def test_sparse_yaml_scales_match_dense_yolov8(scale, variant):
    """yolov8{scale}-{variant}.yaml has exactly the weights (names and shapes) of Ultralytics' yolov8{scale}.yaml,
    plus the sparsifier's: so scaling works as for the dense model and `convert` maps one to one."""
    from ultralytics.nn.tasks import DetectionModel

    from sparseyolo.yolo import SparseDetectionModel

    torch.manual_seed(0)
    dense = DetectionModel(f"yolov8{scale}.yaml", verbose=False).state_dict()
    sparse = SparseDetectionModel(f"yolov8{scale}-{variant}.yaml", verbose=False)
    assert sparse.yaml["scale"] == scale
    sd = {k: v for k, v in sparse.state_dict().items() if ".sparsify." not in k}
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in dense.items()}


def test_tested_ultralytics_range_has_one_source():
    """The code reads the range from `integration.TESTED_ULTRALYTICS`; pyproject's extra and docs/yolo.md must agree."""
    from pathlib import Path

    from sparseyolo.yolo import integration as env

    root = Path(__file__).resolve().parents[2]
    assert f'"{env.TESTED_ULTRALYTICS_SPEC}"' in (root / "pyproject.toml").read_text()
    assert f"`{env.TESTED_ULTRALYTICS_SPEC}`" in (root / "docs" / "yolo.md").read_text()
    assert env.ultralytics_version_tested("8.4.190") and env.ultralytics_version_tested("8.4.180")
    assert not env.ultralytics_version_tested("8.4.179") and not env.ultralytics_version_tested("8.5.0")
