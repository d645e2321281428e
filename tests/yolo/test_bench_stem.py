"""`sparseyolo bench stem`: analytic sparse FLOPs against torch's FlopCounterMode on the dense stem, and a smoke
run that writes the markdown/CSV report."""

from __future__ import annotations

import csv

import torch

from sparseyolo.bench import stem as bench


def test_analytic_sparse_flops_match_flop_counter_on_full_input():
    dense, sparse = bench.build_models()
    x = torch.rand(1, 3, 64, 96) + 0.1  # every pixel active
    counted = sum(v for v in bench.dense_flops_by_group(dense, x, upto=5).values() if v)
    analytic = sum(bench.sparse_flops(sparse, x).values())
    # the counter also counts multiply-adds with zero padding at the borders; the analytic count skips them
    assert 0.85 * counted < analytic <= counted
    empty = sum(bench.sparse_flops(sparse, torch.zeros(1, 3, 64, 96)).values())
    assert empty == 0


def test_quick_run_writes_report(tmp_path):
    argv = ["--sizes", "tiny", "--fg", "5", "--e2e-scenes", "5", "--repeats", "1", "--no-aerial", "--threads", "1"]
    assert bench.main([*argv, "--out", str(tmp_path)]) == 0
    md = (tmp_path / "stem.md").read_text()
    assert "hybrid stem (sparse 0-4)" in md and "dense model at 640" in md
    rows = list(csv.DictReader(open(tmp_path / "stem.csv")))
    assert {r["variant"] for r in rows} >= {"hybrid stem (sparse 0-4)", "dense stem (0-4)", "sparse full-res model"}
    assert all(float(r["p50_ms"]) > 0 for r in rows)
    assert all(r["peak_mb"] not in ("", None) for r in rows)  # memory from the child process
