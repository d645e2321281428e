"""`sparseyolo bench neck-spread`: the summary against figures worked out by hand, and its bad-input errors."""

import pytest

from sparseyolo.bench.neck_spread import main, summary


def row(objects, ratio, complexity=0.5, p3=2, p4=0):
    return {"objects": objects, "ratio": ratio, "complexity": complexity, "depth P3": p3, "depth P4": p4}


def test_summary_splits_empty_and_crowded_images():
    rows = [row(0, 0.2), row(0, 0.4, p3=1), row(3, 0.6), row(9, 0.9), row(12, 1.0, p4=2), row(5, 0.7)]
    s = summary(rows)
    assert s["empty"] == pytest.approx(0.3)  # the two images without objects
    assert s["crowded third"] == pytest.approx(0.95) and s["crowded from"] == 9  # 9 and 12 objects
    assert s["depth (level: depth x images)"] == "P3: 1x1 2x5; P4: 0x5 2x1"


def test_summary_without_empty_images_says_so():
    assert summary([row(1, 0.5), row(2, 0.7)])["empty"] is None


@pytest.mark.parametrize("argv", [["--budget", "1.5"], ["--budget", "0"], ["--composites", "-1"]])
def test_bad_arguments_are_named(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and argv[0] in capsys.readouterr().err


@pytest.mark.parametrize("models, says", [("nothere", "not"), ("yolov8n-aerial", "no DFF neck")])
def test_missing_or_non_dff_models_are_named_before_any_work(models, says, capsys, tmp_path):
    assert main(["--models", models, "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert models in out and says in out and not (tmp_path / "out").exists()


def test_terciles_split_in_three_lowest_first():
    from sparseyolo.bench.neck import terciles

    values = [5, 0, 9, 0, 3, 7, 1, 8, 2]
    groups = terciles(values)
    assert [sorted(values[k] for k in g) for g in groups] == [[0, 0, 1], [2, 3, 5], [7, 8, 9]]
    assert sorted(k for g in terciles(list(range(10))) for k in g) == list(range(10))  # every image, once


def test_spread_plot_has_a_panel_per_model_and_point(tmp_path):
    from sparseyolo.bench.neck_spread import plot_spread

    rows = [{"model": m, "point": p, "kind": k, "objects": n, "ratio": r}
            for m in ("a.pt", "b") for p in ("shipped", "budget 0.7")
            for k, n, r in (("forest", 20, 0.9), ("composite", 0, 0.2))]  # fmt: skip
    out = plot_spread(rows, tmp_path / "spread.png")
    assert out.is_file() and out.stat().st_size > 10_000


def test_lever_table_compares_mean_time_with_mean_flops():
    from sparseyolo.bench.neck import lever_table

    def r(neck, g, ms, budget=None):
        return {"model": "m", "neck": neck, "neck_gflops": g, "neck_mean_ms": ms, "map": 0.1, "budget": budget}

    rows = [r("DFF all-on", 1.0, 10.0), r("DFF budget 0.7", 0.6, 7.0, 0.7),
            r("lever: no pixel gates", 0.8, 9.0, 0.7), r("DFF budget 0.5", 0.5, 9.0, 0.5)]  # fmt: skip
    text = lever_table(rows, "m")
    lines = {tuple(ln.split(" | ")[:2]): ln for ln in text.splitlines() if ln.startswith("| 0.")}
    # budget 0.7: FLOPs -40%, time -30% -> 0.75; lever: -20% / -10% -> 0.50; budget 0.5: -50% / -10% -> 0.20
    assert "| -40% | -30% | 0.75 |" in lines["| 0.7", "as shipped"]
    assert "| -20% | -10% | 0.50 |" in lines["| 0.7", "no pixel gates"]
    assert "| -50% | -10% | 0.20 |" in lines["| 0.5", "as shipped"] and len(lines) == 3
    assert lever_table([r("DFF budget 0.7", 0.6, 7.0, 0.7)], "m") == ""  # no all-on row: nothing to compare


def test_whole_model_table_splits_forest_tiles_from_composites_and_judges_the_target():
    from sparseyolo.bench.neck import whole_model_table
    from sparseyolo.eval.compare import Result

    names = ["tile_0.png", "tile_1.png", "composite_0.png", "composite_1.png"]
    gt = {"images": [{"id": i, "file_name": n, "width": 320, "height": 320} for i, n in enumerate(names, 1)],
          "annotations": [{"id": i, "image_id": i, "category_id": 0, "bbox": [10, 10, 40, 40], "area": 1600,
                           "iscrowd": 0} for i in (1, 2, 3)],
          "categories": [{"id": 0, "name": "tree"}]}  # fmt: skip
    hits = [{"image_id": i, "category_id": 0, "bbox": [10, 10, 40, 40], "score": 0.9} for i in (1, 2, 3)]

    def result(g):
        return Result("m", "native", images=names, gflops=g, detections=hits)

    res = {"PAN p": result([10, 10, 10, 10]), "DFF d all-on": result([11, 11, 11, 11]),
           "DFF d b=0.7": result([9, 11, 8, 8])}  # fmt: skip
    text = whole_model_table(res, gt, ["p"], ["d"])
    assert "| PAN p | 10.000 / 1.000 | 10.000 / 1.000 |" in text
    assert "| DFF d b=0.7 | 10.000 / 1.000 | 8.000 / 1.000 |" in text  # forest (9+11)/2, composites (8+8)/2
    assert "forest tiles: 1.000 of p's GFLOPs (target <= 1.00)" in text and text.count(": met") == 2
    res["DFF d b=0.7"] = result([9, 11, 9, 9])  # 0.9 of stock on the composites: over 0.85
    assert (
        "composites: 0.900 of p's GFLOPs (target <= 0.85), mAP50-95 1.000 vs the better stock seed's 1.000: MISSED"
        in whole_model_table(res, gt, ["p"], ["d"])
    )
