"""All-gather across DDP ranks that keeps this rank's gradient (SimCSE's trick).

Every rank computes the same global logits; only its own rows carry gradient, and DDP's
gradient averaging then equals the single-process gradient of the global batch (the loss
is multiplied by the world size to undo DDP's division by it)."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def gather_with_local_grad(x: Tensor) -> Tensor:
    """[b, ...] on each rank -> [world*b, ...] in rank order; rows of this rank keep the autograd graph.

    Ranks may hold different b (the last batch of an epoch): sizes are exchanged first."""
    if not is_distributed():
        return x
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    largest = max(sizes)
    padded = x.detach()
    if x.shape[0] < largest:
        padded = torch.cat([padded, padded.new_zeros((largest - x.shape[0],) + tuple(x.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    parts = [p[:n] for p, n in zip(parts, sizes)]
    parts[rank] = x
    return torch.cat(parts)
