"""The one timing harness (`sparseyolo.bench.common`) and the benchmarks' use of it: interleaved latency,
percentiles, warm-up counts, argument errors, and the sparse-conv variant record."""

from __future__ import annotations

import numpy as np
import pytest

from sparseyolo.bench import common, stem
from sparseyolo.bench import sparse_conv as sc


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_percentile_matches_numpy(n):
    values = list(np.random.default_rng(n).random(n))
    for q in (0, 50, 90, 100):
        assert common.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert common.percentile([], 50) is None


def test_latency_interleaves_and_counts_calls():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    out = common.latency(fns, repeats=3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3  # warm-ups in order, then one call of each per round
    assert set(out) == {"a", "b"}
    for r in out.values():
        assert r["n"] == 3 and 0 <= r["p50_ms"] <= r["p90_ms"]
    calls.clear()
    warm_only = common.latency(fns, repeats=0, warmup=1)
    assert calls == ["a", "b"] and warm_only["a"] == {"p50_ms": None, "p90_ms": None, "n": 0}
    with pytest.raises(ValueError, match="repeats and warmup must be >= 0"):
        common.latency(fns, repeats=-1)


def test_latency_propagates_errors_and_runs_without_grad():
    import torch

    x = torch.ones(2, requires_grad=True)
    seen = []
    common.latency({"f": lambda: seen.append((x * 2).requires_grad)}, repeats=1)
    assert seen == [False, False]  # warm-up and timed call under no_grad

    def boom():
        raise RuntimeError("broken model")

    with pytest.raises(RuntimeError, match="broken model"):
        common.latency({"ok": lambda: None, "bad": boom}, repeats=2)


def test_stem_rejects_bad_counts_clearly(capsys):
    for argv in (["--repeats", "0"], ["--repeats", "-2"], ["--warmup", "-1"], ["--threads", "0"], ["--sizes", "8k"]):
        with pytest.raises(SystemExit) as exit_:
            stem.parse_args(argv)
        assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--repeats must be >= 1" in err and "unknown size '8k'" in err
    a = stem.parse_args(["--quick", "--repeats", "0"])  # --quick sets its own repeats
    assert a.repeats == 2 and a.sizes == ["small"] and a.fg == [5.0, 25.0] and a.e2e_scenes == [5.0]


def test_stem_memory_ratio_matches_rows_by_scene_not_position():
    def row(variant, scene, peak, **extra):
        return {"part": "stem", "size": "448x256", "scene": scene, "variant": variant, "peak_mb": peak, **extra}

    rows = [
        row(stem.DENSE_STEM, "synthetic 5%", 40.0),
        row(stem.HYBRID_STEM, "synthetic 25%", 20.0, speedup=2.0),
        row(stem.HYBRID_STEM, "synthetic 5%", 10.0, speedup=8.0),
        row(stem.DENSE_STEM, "synthetic 25%", 30.0),
        row(stem.HYBRID_STEM, "aerial (deepforest)", 5.0, speedup=3.0),  # no dense row: no ratio
    ]
    stem.add_memory_ratios(rows)
    assert rows[2]["mem_ratio"] == 4.0 and rows[1]["mem_ratio"] == 1.5
    assert "mem_ratio" not in rows[4] and "mem_ratio" not in rows[0]


def test_sparse_conv_variant_kinds_name_the_columns():
    names = [k.name for k in sc.cases.RUN_ORDER]
    assert names == ["ours built", "dense fwd", "ours cached", "ours fwd+bwd", "dense fwd+bwd"]
    assert sc.cases.spconv_kind("cached", 1).name == "spconv cached 1t"
    assert sc.cases.OURS_FB.backward and sc.cases.OURS_FB.map == "cached" and not sc.cases.OURS_BUILT.backward


def test_variant_warmup_count_and_warm_up_only_variants():
    calls = []
    v = common.Variant("v", lambda: calls.append(1), threads=1, max_samples=0, warmup=3)
    common.run_interleaved([v])
    assert len(calls) == 3 and v.samples == []
