"""Smoke tests of `sparseyolo bench`: the dispatcher and a tiny `sparse-conv --quick` run (< 30 s).

Timings at these sizes mean nothing; the tests check that the benchmark runs end to end, writes its
files, prints one table row per case and reports the target check.
"""

from __future__ import annotations

import csv
import importlib.util

import pytest

from sparseyolo import bench
from sparseyolo.bench import common
from sparseyolo.bench import sparse_conv as sc


def test_dispatcher_lists_benchmarks(capsys):
    assert bench.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "sparse-conv" in out and "stem" in out
    assert bench.main([]) == 2


def test_dispatcher_unknown_and_missing(capsys, monkeypatch):
    assert bench.main(["no-such-benchmark"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
    monkeypatch.setitem(bench.BENCHMARKS, "ghost", ("sparseyolo.bench._no_such_module_", "missing"))
    assert bench.main(["ghost"]) == 2
    assert "not available" in capsys.readouterr().err


def test_site_masks_exact_and_reproducible():
    for dist in ("uniform", "clustered"):
        a = sc.site_mask(64, 0.1, dist, seed=3)
        b = sc.site_mask(64, 0.1, dist, seed=3)
        assert int(a.sum()) == round(0.1 * 64 * 64)
        assert bool((a == b).all())


def test_pair_counts_match_engine_maps():
    import torch

    from sparseyolo.sparse import SparseConvTensor
    from sparseyolo.sparse import functional as Fs

    mask = sc.site_mask(40, 0.2, "clustered", seed=1)
    indices = mask.nonzero().to(torch.int32).contiguous()
    x = SparseConvTensor(torch.randn(len(indices), 2), indices, (40, 40), 1)
    pairs, n_out = sc.count_pairs_2d(mask, "subm3")
    assert pairs == sc.count_pairs_subm(indices, (40, 40))
    # Independent check through the dense conv: every pair contributes one product.
    ones = torch.ones(1, 2, 3, 3)
    dense = torch.nn.functional.conv2d(x.dense().abs().gt(0).float(), ones, padding=1)[0, 0]
    assert pairs == int(dense[mask[0]].sum() / 2)
    out = Fs.sparse_conv(x, torch.randn(3, 2, 3, 3), stride=2, padding=1)
    assert sc.count_pairs_2d(mask, "s2p1")[1] == out.num_active
    assert n_out == len(indices)


def test_table_and_files():
    rows = [["a", 1, 2.5], ["bb", 22, 3]]
    text = common.format_table(["name", "n", "x"], rows)
    assert text.splitlines()[0].startswith("name") and len(text.splitlines()) == 4
    md = common.markdown_table(["name", "n", "x"], rows)
    assert md.splitlines()[1] == "|:---|---:|---:|"


def test_sparse_conv_quick(tmp_path, setenv, capsys):
    # The pure-PyTorch engine path: independent of a (possibly rebuilding) compiled extension.
    setenv("SPARSEYOLO_NO_EXT", "1")
    # One thread: on a loaded 2-core machine, 2-thread OpenMP barriers make tiny ops 100x slower.
    args = ["--quick", "--threads", "1", "--no-spconv", "--no-progress", "--out", str(tmp_path), "--voxel-sizes", "8"]
    assert bench.main(["sparse-conv", *args]) == 0
    out = capsys.readouterr().out
    for name in ("sparse_conv.md", "sparse_conv.csv", "sparse_conv.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    cfg = sc.quick_config()
    n_2d = len(cfg.ops) * len(cfg.channels) * len(cfg.distributions) * len(cfg.densities)
    lines = out.splitlines()
    table_rows = [line for line in lines if line.startswith(("subm3 ", "s2p1 "))]
    assert len(table_rows) == n_2d
    assert sum(line.startswith("8 m ") for line in lines) == 1  # one 3D row (or the scan is unavailable)
    assert all(line.rstrip().endswith("ok") for line in table_rows), "ours differs from dense"
    assert "Target check" in out and "not measured" in out  # quick mode measures 5% and 25% only
    with open(tmp_path / "sparse_conv.csv") as f:
        records = list(csv.DictReader(f))
    variants = {r["variant"] for r in records}
    assert {"ours built", "ours cached", "ours fwd+bwd", "dense fwd", "dense fwd+bwd"} <= variants
    assert all(r["median_ms"] for r in records if r["section"] == "2d")
    md = (tmp_path / "sparse_conv.md").read_text()
    assert "## Target check" in md and "sparse_conv.png" in md


@pytest.mark.skipif(importlib.util.find_spec("spconv") is None, reason="spconv not installed")
def test_spconv_adapter_matches_ours_single_thread():
    import spconv.pytorch as spconv
    import torch

    from sparseyolo.sparse import SparseConvTensor
    from sparseyolo.sparse import functional as Fs

    mask = sc.site_mask(32, 0.2, "uniform", seed=2)
    indices = mask.nonzero().to(torch.int32).contiguous()
    feats = torch.randn(len(indices), 4)
    w = torch.randn(8, 4, 3, 3)
    x = SparseConvTensor(feats, indices, (32, 32), 1)
    with common.threads(1):
        for op, ours in (("subm3", Fs.subm_conv(x, w)), ("s2p1", Fs.sparse_conv(x, w, stride=2, padding=1))):
            adapter = sc.SpconvAdapter(spconv, op, 2, w, feats, indices, (32, 32))
            case = sc.Case("2d", op, 4, 8, "uniform", 0.2, (32, 32), len(indices), 0, 0, None)
            v = common.Variant("spconv built 1t", adapter.built, threads=1)
            v.last = adapter.built()
            case.variants[v.name] = {}
            sc._check_against(case, [v], ours)
            assert case.variants[v.name]["check"] < 1e-5, op
            if op == "subm3":
                assert torch.allclose(adapter.cached().features, ours.features, atol=1e-4)
