"""The training recipe with composites mixed in (`Recipe.composites`), and the default recipe left as it was."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import yaml

import sparseyolo.data.composite as composite
from sparseyolo.yolo.recipe import COMPOSITES, Recipe

DEFAULT_TRAIN_ARGS = {  # the shipped models' recipe: must never change silently
    "epochs": 200,
    "imgsz": 320,
    "batch": 8,
    "nbs": 8,
    "seed": 0,
    "deterministic": True,
    "device": "cpu",
    "workers": 0,
    "amp": False,
    "close_mosaic": 10,
    "patience": 0,
    "cache": "ram",
}


def test_default_recipe_is_unchanged(tmp_path):
    r = Recipe()
    assert r.train_args() == DEFAULT_TRAIN_ARGS
    record = {k: v for k, v in asdict(r).items() if k != "composites"}
    assert r.as_dict() == record and "composites" not in r.as_dict()  # the record stored with runs and weights
    assert record == {"epochs": 200, "imgsz": 320, "batch": 8, "nbs": 8, "seed": 0, "tile": 320, "overlap": 0.2,
                      "extra": {"close_mosaic": 10, "patience": 0, "cache": "ram"}}  # fmt: skip
    data = tmp_path / "data.yaml"
    assert r.training_data(data, tmp_path / "runs") == data  # no composites: the aerial YAML itself, nothing written
    assert not (tmp_path / "runs").exists()


def test_composites_are_listed_beside_the_forest_tiles(tmp_path, monkeypatch):
    from sparseyolo.data.aerial import load_scene

    try:
        load_scene()
    except RuntimeError as e:
        pytest.skip(f"deepforest data unavailable: {e}")
    aer = tmp_path / "aer"
    for split in ("train", "val"):
        (aer / "images" / split).mkdir(parents=True)
    (aer / "data.yaml").write_text(f"path: {aer}\ntrain: images/train\nval: images/val\nnames:\n  0: tree\n")
    monkeypatch.setattr(composite, "default_out", lambda *a: tmp_path / "comp")  # not the user's cache
    r = Recipe(composites={"size": (256, 256), "fg": (0.0, 0.05), "images": 2, "seed": 1})
    got = r.training_data(aer / "data.yaml", tmp_path / "runs")
    assert got.parent == tmp_path / "runs"
    data = yaml.safe_load(got.read_text())
    assert data["train"] == [str(aer / "images" / "train"), str(tmp_path / "comp" / "images" / "train")]
    assert data["val"] == [str(aer / "images" / "val")] and data["names"] == {0: "tree"}
    assert len(list((tmp_path / "comp" / "images" / "train").glob("*.png"))) == 2
    assert r.train_args() == DEFAULT_TRAIN_ARGS  # composites change the data, not the train arguments
    assert r.as_dict()["composites"] == {"size": [256, 256], "fg": [0.0, 0.05], "images": 2, "seed": 1}

    from ultralytics.data.utils import check_det_dataset

    checked = check_det_dataset(str(got))  # Ultralytics resolves both training folders
    assert checked["train"] == data["train"]

    with pytest.raises(ValueError, match="Recipe.composites must be None or a dict with keys from"):
        Recipe(composites={"size": (256, 256), "tile": 320}).training_data(aer / "data.yaml", tmp_path / "runs")


def test_suggested_composites_are_valid():
    assert set(COMPOSITES) <= {"size", "fg", "images", "seed"}
    assert composite._size(COMPOSITES["size"]) == (320, 320) and max(composite._fgs(COMPOSITES["fg"])) <= 0.2


def test_recipe_command_and_demo_flag_for_composites(capsys):
    from sparseyolo import demo
    from sparseyolo.yolo.recipe import COMPOSITES, Recipe, recipe_command

    assert recipe_command(Recipe(), ["yolov8n-aerial"]).endswith("--variants yolov8n-aerial")
    assert recipe_command(Recipe(composites=COMPOSITES), ["yolov8n-aerial"]).endswith("--composites")
    other = recipe_command(Recipe(composites={**COMPOSITES, "images": 8}), ["yolov8n-aerial"])
    assert "# with Recipe(composites=" in other and "'images': 8" in other
    with pytest.raises(SystemExit):
        demo.main(["--composites"])
    assert "--composites changes the training recipe: it needs --train" in capsys.readouterr().err


def test_ablations_are_the_dff_recipe_with_one_part_off_and_are_never_shipped(capsys, monkeypatch):
    from sparseyolo import demo
    from sparseyolo.yolo.curriculum import Curriculum
    from sparseyolo.yolo.recipe import ABLATIONS, VARIANTS

    base = VARIANTS["yolov8n-dff-aerial"]
    assert set(ABLATIONS) == {f"yolov8n-dff-aerial-no-{p}" for p in ("supervision", "routing", "depth", "pixel")}
    assert not set(ABLATIONS) & set(VARIANTS)  # `sparseyolo demo --train` never makes (nor ships) them by default
    for name, v in ABLATIONS.items():
        r, ref = v.recipe(Recipe()), base.recipe(Recipe())
        args, ref_args = r.train_args(), ref.train_args()
        added = {k: args[k] for k in set(args) - set(ref_args)}
        assert {k: args[k] for k in ref_args} == ref_args and added == v.train_extra  # the same run, one change
        assert r.composites == ref.composites and r.seed == ref.seed and not v.shipped
        curriculum = Curriculum.pop_from(dict(added))  # keywords the curriculum takes (bad ones raise)
        assert curriculum.without == name.removeprefix("yolov8n-dff-aerial-no-") or curriculum.supervise == 0.0
    assert Recipe().train_args() == DEFAULT_TRAIN_ARGS  # the ablations' keywords did not leak into the recipe

    with pytest.raises(SystemExit):
        demo.main(["--variants", "yolov8n-dff-aerial-no-pixel"])  # not --train: nothing to show for an ablation
    assert "never shipped or demonstrated" in capsys.readouterr().err
    trained, shipped = [], []
    monkeypatch.setattr(demo, "enable", lambda: None)
    monkeypatch.setattr("sparseyolo.data.aerial.build_aerial_dataset", lambda **kw: "data.yaml")
    monkeypatch.setattr("sparseyolo.yolo.recipe.train_variant", lambda v, *a, **kw: trained.append(v.name) or "w.pt")
    monkeypatch.setattr("sparseyolo.yolo.recipe.ship_variant", lambda v, *a, **kw: shipped.append(v.name))
    monkeypatch.setattr(demo, "run_demo", lambda *a, **kw: pytest.fail("an ablation-only run ran the demo"))
    assert demo.main(["--train", "--variants", "yolov8n-dff-aerial-no-depth"]) == 0
    assert trained == ["yolov8n-dff-aerial-no-depth"] and shipped == []
    assert "trained w.pt (not shipped)" in capsys.readouterr().out
