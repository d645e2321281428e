"""sparse conv engine vs dense F.conv2d/conv3d and spconv: time, speed-up, GFLOP/s, peak memory.

`sparseyolo bench sparse-conv [--quick] [--threads 2] [--repeat 5] [--out results/bench] ...`

2D: a 1024x1024 map, batch 1, channels 16->32 and 64->64, 3x3 submanifold conv ("subm3") and 3x3 stride-2
padding-1 conv ("s2p1"), active sites uniform or clustered (gaussian blobs, fixed seed) at 1..50%:

* ours, map built in the call: a fresh `SparseConvTensor` every call (coordinate lookup + kernel map);
* ours, map cached: the same tensor again after a warm-up call;
* ours, forward + backward (input and weight gradients), map cached;
* dense `F.conv2d` forward and forward + backward on the densified input;
* spconv (when installed), map built each call and (SubM only: spconv re-uses maps only for SubM layers
  sharing an `indice_key`) cached; at the benchmark's thread count (unverified: spconv's CPU scatter-add
  races with 2+ threads) and at 1 thread.

Useful MACs = kernel-map pairs x C_in x C_out (pairs counted independently of the engine); effective
GFLOP/s = 2 x useful MACs / time, shown beside the machine's fp32 GEMM GFLOP/s from the same run.
3D: a real airborne LiDAR scan voxelized at two voxel sizes, 3x3x3 SubM 16->16.
Forward timings run under `torch.no_grad()`. Writes sparse_conv.md / .csv / .png to `--out`.

Modules: `cases` (inputs, the variants of a case and their `Kind`, one case, `Result`), `run` (the run), `report`
(derived numbers, CSV, text and markdown tables), `plot` (sparse_conv.png), `cli` (options, files, `main`). The
package exports `main` and the few helpers its tests use; the rest is read from its modules.
"""

from __future__ import annotations

from sparseyolo.bench.sparse_conv.cases import (
    Case,
    SpconvAdapter,
    _check_against,
    count_pairs_2d,
    count_pairs_subm,
    quick_config,
    site_mask,
)
from sparseyolo.bench.sparse_conv.cli import main

__all__ = [
    "Case",
    "SpconvAdapter",
    "_check_against",
    "count_pairs_2d",
    "count_pairs_subm",
    "main",
    "quick_config",
    "site_mask",
]
