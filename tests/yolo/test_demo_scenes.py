"""The demo's sparse-scenes section on small composites: plans, figures, pictures, the cache, the report."""

from __future__ import annotations

import numpy as np
import pytest

from sparseyolo import demo, demo_scenes
from sparseyolo.demo_scenes import Scene, focus_crop, scene_plan
from sparseyolo.yolo.reference import shipped_names


def test_scene_plans_run_every_model_or_its_roles():
    models = dict.fromkeys(["a", "b", "c"])
    roles = {"dense": "a", "sparse": "b", "sparse_p3": "c"}
    every = scene_plan(Scene("x", (640, 360), 0.01), models, roles)
    assert every == [("a", "native"), ("b", "native"), ("c", "native"), ("a", "640"), ("a", "sahi")]
    some = scene_plan(Scene("x", (640, 360), 0.01, roles=("dense", "sparse_p3")), models, roles)
    assert some == [("a", "native"), ("c", "native"), ("a", "640"), ("a", "sahi")]
    assert {r for s in demo_scenes.SCENES for r in (s.roles or ())} <= set(demo.ROLES)


def test_focus_crop_holds_the_most_objects():
    boxes = np.array([[900, 500, 910, 510], [950, 520, 960, 530], [10, 10, 20, 20]], float)
    x0, y0, x1, y1 = focus_crop((1080, 1920), boxes, (640, 360))
    assert (x1 - x0, y1 - y0) == (640, 360)
    assert x0 <= 900 and x1 >= 960 and y0 <= 500 and y1 >= 530
    assert focus_crop((100, 200), np.zeros((0, 4)), (640, 360)) == (0, 0, 200, 100)


@pytest.mark.skipif(len(shipped_names()) < 5, reason="reference models not shipped")
def test_sparse_scenes_section_measures_masks_and_reuses_its_cache(tmp_path, monkeypatch, capsys):
    from sparseyolo import YOLO

    scenes = (
        Scene("small, 4% foreground", (640, 384), 0.04),
        Scene("small, empty ground", (640, 384), 0.0, roles=("dense", "sparse")),
    )
    monkeypatch.setattr(demo_scenes, "SCENES", scenes)
    names = (demo.DENSE, demo.SPARSE)
    models = {n: YOLO(n) for n in names}
    roles = {"dense": demo.DENSE, "sparse": demo.SPARSE}
    out = tmp_path / "demo"
    res = demo_scenes.run_scenes(out, models, demo._evaluate_cached, roles, 0, False)
    assert [r["scene"] for r in res] == list(scenes) and all(r["cached"] is False for r in res)
    rows = {(r["model"], r["method"]): r for r in res[0]["rows"]}
    assert set(rows) == {(demo.DENSE, "native"), (demo.SPARSE, "native"), (demo.DENSE, "640"), (demo.DENSE, "sahi")}
    assert (
        0.0 <= rows[demo.SPARSE, "native"]["mask_recall"] <= 1.0 and rows[demo.DENSE, "native"]["mask_recall"] is None
    )
    assert 0.0 < rows[demo.SPARSE, "native"]["active"] < 1.0
    assert res[0]["gt"]["annotations"] and not res[1]["gt"]["annotations"]
    empty = {(r["model"], r["method"]): r for r in res[1]["rows"]}
    assert empty[demo.SPARSE, "native"]["mask_recall"] is None  # no object: nothing to recall, not 0 or 1
    assert all(r["map"] is None for r in empty.values())  # no ground truth: AP n/a
    lines = demo_scenes.scenes_report(out, res, demo.targets)
    text = "\n".join(lines)
    assert "## Sparse scenes" in text and "mask recall" in text and "boxes@0.25/img" in text
    assert (out / f"{scenes[0].slug}_boxes.jpg").is_file()
    assert all((out / (s.slug.replace(".", "_") + ".csv")).is_file() for s in scenes)  # one table per scene
    assert (out / f"{scenes[0].slug}_mask_{demo.SPARSE}-native.jpg").is_file()
    capsys.readouterr()
    again = demo_scenes.run_scenes(out, models, demo._evaluate_cached, roles, 0, False)
    assert capsys.readouterr().out.count("cached results reused") == 2 and all(r["cached"] for r in again)
    assert again[0]["rows"] == res[0]["rows"]
