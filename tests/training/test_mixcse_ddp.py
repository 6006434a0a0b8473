"""MixCSE over the gathered global batch: 2 gloo ranks give the single-process loss and gradients.

The mixtures roll over the *global* batch, so the last row of rank 0 is mixed with the first row of
rank 1 (spec §3: B = global batch when the all-gather is active)."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.multiprocess

WORLD = 2
LOCAL_B = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(WORLD * LOCAL_B, 2, 8, generator=g, dtype=torch.float64)


def _objective(mode, fill):
    from clusterns.training.arguments import ModelArguments
    from clusterns.objectives.mixcse import MixCSEArguments, MixCSEObjective

    return MixCSEObjective(ModelArguments(temp=0.05, hard_negative_weight=0.5), MixCSEArguments(lambdas=0.2, mixcse_mode=mode, mask_fill=fill), None)


CONFIGS = [("repo", "zero"), ("repo", "neginf"), ("paper", "zero")]


def _worker(rank, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from clusterns.training.distributed import gather_with_local_grad
        from clusterns.objectives.base import EncodedViews

        for mode, fill in CONFIGS:
            z = _inputs()[rank * LOCAL_B : (rank + 1) * LOCAL_B].clone().requires_grad_()
            gathered = gather_with_local_grad(z)
            out = _objective(mode, fill)(EncodedViews(z, z, gathered), {}, None)
            out.loss.backward()
            queue.put(((mode, fill), rank, out.loss.item(), z.grad.tolist()))  # plain data: no shared memory
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process():
    from clusterns.objectives.base import EncodedViews

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in range(WORLD * len(CONFIGS))]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for config, rank, loss, grad in results:
        z = _inputs().requires_grad_()
        ref = _objective(*config)(EncodedViews(z, z, z), {}, None)
        ref.loss.backward()
        grad = torch.tensor(grad)
        assert loss == pytest.approx(ref.loss.item(), rel=1e-6)  # every rank sees the global fp32 loss
        # Local rows' gradient of the global loss = the single-process gradient of those rows (DDP then
        # sums parameter gradients over ranks via the world-size loss scaling).
        torch.testing.assert_close(grad.double(), z.grad[rank * LOCAL_B : (rank + 1) * LOCAL_B].double(), rtol=1e-4, atol=1e-5)
