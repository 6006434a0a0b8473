"""ClusterNS under DDP (2 gloo processes on CPU): every rank holds identical centroids, equal to one process
on the global batch, even when the ranks' Python `random` states differ (the initialisation is broadcast)."""
from __future__ import annotations

import os
import socket
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.multiprocess

B, H, K, STEPS = 8, 16, 4, 4


def batches():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, 2, H, generator=g) for _ in range(STEPS)]


def make():
    from clusterns.objectives.clusterns.objective import ClusterNSArguments, ClusterNSObjective

    args = ClusterNSArguments(kmeans=K, kmean_cosine=1.0, kmeans_lr=0.1, bml_weight=0.1)
    return ClusterNSObjective(types.SimpleNamespace(temp=0.05, hard_negative_weight=0.0), args, hidden_size=H).train()


def worker(rank, world, port, out_dir):
    import random

    from clusterns.training.distributed import gather_with_local_grad
    from clusterns.objectives.base import EncodedViews

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        random.seed(100 + rank)  # different on purpose: rank 0's draw must win
        obj = make()
        losses = []
        per = B // world
        for z in batches():
            local = z[rank * per : (rank + 1) * per].clone().requires_grad_(True)
            gathered = gather_with_local_grad(local)
            out = obj(EncodedViews(pooled=local, local=local, gathered=gathered), {}, None)
            out.loss.backward()
            losses.append(out.loss.detach())
        torch.save({"centroids": obj.centroids.clone(), "losses": torch.stack(losses), "state": obj.state_dict()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_agree_and_match_single_process(tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["centroids"], r1["centroids"])
    assert torch.equal(r0["losses"], r1["losses"])
    # One process on the global batch, first index = rank 0's draw.
    import random

    from clusterns.objectives.base import EncodedViews

    random.seed(100)
    single = make()
    losses = []
    for z in batches():
        losses.append(single(EncodedViews(pooled=z, local=z, gathered=z), {}, None).loss.detach())
    torch.testing.assert_close(r0["centroids"], single.centroids)
    torch.testing.assert_close(r0["losses"], torch.stack(losses))
    assert bool(r0["state"]["cluster.started"]) and int(r0["state"]["cluster.start_step"]) == 1
