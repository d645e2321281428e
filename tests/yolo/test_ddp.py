"""Multi-process training pieces on CPU: our model under torch.distributed (gloo, 2 processes) with DDP, and
SyncBatchNorm conversion of the sparse BatchNorms. Ultralytics' DDP worker script (it unpickles the trainer class
and model in a fresh process): `test_integration.py`."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(rank: int, bs: int = 2, size: int = 64):
    g = torch.Generator().manual_seed(100 + rank)
    img = torch.zeros(bs, 3, size, size)
    img[:, :, 8:40, 16:48] = torch.rand(bs, 3, 32, 32, generator=g)
    return {
        "img": img,
        "batch_idx": torch.arange(bs, dtype=torch.float32),
        "cls": torch.zeros(bs, 1),
        "bboxes": torch.tensor([[0.5, 0.375, 0.5, 0.5]] * bs),
    }


def _worker(rank: int, world: int, port: int, out: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from sparseyolo.yolo import SparseDetectionModel  # first: enables (offline env before ultralytics)
        from ultralytics.utils import DEFAULT_CFG  # isort: skip

        torch.manual_seed(0)
        model = SparseDetectionModel("yolov8n-sparse.yaml", nc=2, verbose=False)
        model.args = DEFAULT_CFG
        ref = copy.deepcopy(model)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        batch = _batch(rank)
        loss, items = ddp(batch)
        loss.sum().backward()
        rloss, _ = ref.loss(batch)
        rloss.sum().backward()
        worst = 0.0
        for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
            if not p.requires_grad:  # Detect's fixed DFL projection
                continue
            if p.grad is None or q.grad is None:
                raise AssertionError(f"rank {rank}: no gradient for {name}")
            g = q.grad.clone()
            dist.all_reduce(g)
            g /= world
            worst = max(worst, float((p.grad - g).abs().max() / (g.abs().max() + 1e-12)))
        # SyncBatchNorm conversion reaches the sparse BatchNorms; eval outputs unchanged
        sync = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(ref)).eval()
        n_sync = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in sync.model[:5].modules())
        n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in ref.model[:5].modules())
        ref.eval()
        with torch.no_grad():
            diff = float((sync(batch["img"])[0] - ref(batch["img"])[0]).abs().max())
        out[rank] = {"worst": worst, "keys": list(items), "n_sync": n_sync, "n_bn": n_bn, "eval_diff": diff}
    finally:
        dist.destroy_process_group()


def test_ddp_gloo_two_processes():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
        res = dict(out)
    assert set(res) == {0, 1}
    for r in res.values():
        assert r["worst"] < 1e-4, r  # DDP-averaged gradients == mean of per-rank gradients, every parameter
        assert r["keys"][-2:] == ["mask_loss", "active"]
        assert r["n_sync"] == r["n_bn"] > 0
        assert r["eval_diff"] < 1e-5


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_syncbn_training_needs_gpu_is_torchs_limit():
    """Documented limit: torch's SyncBatchNorm only synchronises GPU tensors; on CPU it works in eval only."""
    bn = torch.nn.SyncBatchNorm(4)
    assert bn.eval()(torch.rand(3, 4)).shape == (3, 4)
