"""`sparseyolo bench stem`: analytic sparse FLOPs against torch's FlopCounterMode on the dense stem, and a smoke
run that writes the markdown/CSV report."""

from __future__ import annotations

import csv

import pytest
import torch

from sparseyolo.bench import stem as bench
from sparseyolo.bench import stem_report


def test_analytic_sparse_flops_match_flop_counter_on_full_input():
    dense, sparse, _, _ = bench.build_models()
    x = torch.rand(1, 3, 64, 96) + 0.1  # every pixel active
    counted = sum(v for v in bench.flops_by_layer(dense, x, upto=5).values() if v)
    analytic = sum(bench.sparse_flops(sparse, x).values())
    # the counter also counts multiply-adds with zero padding at the borders; the analytic count skips them
    assert 0.85 * counted < analytic <= counted
    empty = sum(bench.sparse_flops(sparse, torch.zeros(1, 3, 64, 96)).values())
    assert empty == 0


def test_quick_run_writes_report(tmp_path):
    argv = ["--sizes", "tiny", "--fg", "5", "--e2e-scenes", "5,full", "--repeats", "1", "--no-aerial", "--threads", "1"]
    assert bench.main([*argv, "--out", str(tmp_path)]) == 0
    md = (tmp_path / "stem.md").read_text()
    assert (tmp_path / "stem.png").stat().st_size > 10_000 and "stem.png" in md
    assert (tmp_path / "e2e.png").stat().st_size > 10_000 and "e2e.png" in md
    assert "hybrid stem (sparse 0-4)" in md and "dense model at 640" in md and "full 100%" in md
    rows = list(csv.DictReader(open(tmp_path / "stem.csv")))
    assert {r["variant"] for r in rows} >= {
        "hybrid stem (sparse 0-4)",
        "dense stem (0-4)",
        "sparse full-res model",
        "sparse-P3 full-res model",
        "sparse-P3+P4 full-res model",
    }
    p3 = [r for r in rows if r["variant"] == "sparse-P3 full-res model"]
    assert all(float(r["speedup"]) > 0 and float(r["mem_ratio"]) > 0 for r in p3)  # against the dense model
    assert all(float(r["p50_ms"]) > 0 for r in rows)
    assert all(r["peak_mb"] not in ("", None) for r in rows)  # memory from the child process


def _row(part, scene, variant, p50, gflops, **extra):
    return {
        "part": part,
        "size": "3840x2176",
        "scene": scene,
        "variant": variant,
        "p50_ms": p50,
        "gflops": gflops,
        **extra,
    }


def test_target_rows_bound_and_verdicts():
    rows = [
        _row("stem", "synthetic 5%", "hybrid stem (sparse 0-4)", 100.0, 2.0, speedup=9.0, mem_ratio=3.0),
        _row("stem", "synthetic 5%", "dense stem (0-4)", 900.0, 32.0),
        _row("stem", "synthetic 25%", "hybrid stem (sparse 0-4)", 450.0, 10.0, speedup=2.0, mem_ratio=1.5),
        _row("stem", "synthetic 25%", "dense stem (0-4)", 900.0, 32.0),
        _row("end-to-end", "synthetic 5%", "dense full-res model", 1800.0, 178.0),
        _row("end-to-end", "synthetic 5%", "sparse full-res model", 950.0, 148.0),
    ]
    got = {(r[0], r[1]): r for r in stem_report.target_rows(rows)}
    # 25% foreground is outside the <= 10% stem target
    assert ("stem speed-up", "synthetic 25%") not in got
    assert got[("stem speed-up", "synthetic 5%")][3:] == ["9.00x", "PASS"]
    assert got[("stem memory ratio", "synthetic 5%")][3:] == ["3.00x", "FAIL"]
    # bound = 1800 / (1800 - 900) = 2.0; achieved = 1800 / 950 = 1.895 -> 95% of the bound
    assert got[("end-to-end latency bound", "synthetic 5%")][3].startswith("2.00x (FLOP bound 1.22x)")
    assert got[("end-to-end share of bound", "synthetic 5%")][3:] == ["95%", "PASS"]
    rows[-1]["p50_ms"] = 1100.0  # 1.636 / 2.0 = 82%
    assert stem_report.target_rows(rows)[-1][3:] == ["82%", "FAIL"]


def test_target_rows_sparse_p3_and_full_scene():
    rows = [
        _row("end-to-end", "synthetic 5%", "dense full-res model", 1800.0, 178.0),
        _row("end-to-end", "synthetic 5%", "sparse-P3 full-res model", 500.0, 30.0, speedup=3.6, mem_ratio=1.5),
        _row("end-to-end", "full 100%", "dense full-res model", 1000.0, 178.0),
        _row("end-to-end", "full 100%", "sparse-P3 full-res model", 1040.0, 178.0),
        _row("end-to-end", "full 100%", "sparse full-res model", 1100.0, 178.0),
    ]
    got = {r[0]: r for r in stem_report.target_rows(rows)}
    assert got["sparse-P3 speed-up 3840x2176"][2:] == [">= 3x", "3.60x", "PASS"]
    assert got["sparse-P3 memory ratio 3840x2176"][3:] == ["1.50x", "FAIL"]
    assert got["sparse-P3 / dense at 100% 3840x2176"][3:] == ["1.04x", "PASS"]
    assert got["sparse / dense at 100% 3840x2176"][3:] == ["1.10x", "FAIL"]
    assert not any(k.startswith("sparse-P3+P4") for k in got)  # not in these rows
    assert not any(k.endswith("1920x1088") for k in got)  # no rows at that size: no verdicts


def test_crossover_choice_and_quick_run_store_it(tmp_path, setenv):
    from sparseyolo.bench import crossover
    from sparseyolo.bench import main as bench_main
    from sparseyolo.nn.crossover import ENV, default_crossover

    times = {"5%": {0.0: 300.0, 0.5: 100.0, 1.0: 101.0}, "full": {0.0: 200.0, 0.5: 205.0, 1.0: 400.0}}
    best, cost = crossover.choose(times)
    assert best == 0.5 and cost[0.5] < cost[1.0] < cost[0.0]
    times["5%"][1.0] = 100.5  # within 2% of the best candidate's cost: the larger crossover wins ties
    times["full"][1.0] = 205.0
    assert crossover.choose(times)[0] == 1.0
    setenv("SPARSEYOLO_CACHE", str(tmp_path))
    setenv(ENV, None)
    assert bench_main(["crossover", "--quick", "--threads", "1", "--save", "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "crossover.md").read_text()
    assert "Chosen crossover" in md and "full 100%" in md
    stored = default_crossover("cpu")
    assert f"**{stored:g}**" in md  # the stored value is the reported choice
    with pytest.raises(SystemExit):
        crossover.parse_args(["--candidates", "0.5,2"])  # outside [0, 1]
