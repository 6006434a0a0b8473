"""Multi-process training helpers: the all-gather that keeps this rank's gradient (SimCSE's trick),
the gradient convention that makes DDP equal one process on the global batch, and the DataParallel guard.

Gradient convention (what `ContrastiveModel` uses, `scale_local_grad=True`):

* A *global* term (InfoNCE, ClusterNS, MixCSE: anything computed from `views.gathered`) is computed
  identically on every rank; rank r back-propagates it only into its own rows. DDP then *averages*
  the parameter gradients over the W ranks, which would give 1/W of the single-process gradient of
  the global batch. The gather therefore multiplies the gradient reaching the local rows by W (the
  forward values are untouched), so the average is exactly the single-process gradient.
* A *rank-local* term (DiffCSE's RTD loss: a mean over this rank's tokens, computed from
  `views.local` / `views.pooled`, never from `gathered`) is not scaled: DDP's average of the
  per-rank means is the mean over the global batch, as in one process.

So the loss is never rescaled (the logged loss is the true loss), and an objective mixing both
kinds of terms needs no special care. (SimCSE's original scaled nothing: its contrastive gradient
under DDP was 1/W of the single-process one.)
"""
from __future__ import annotations

import datetime
import os
import shlex

import torch
import torch.distributed as dist
from torch import Tensor

from clusterns.training.argv import flag_value, switch_given


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _ScaleGrad(torch.autograd.Function):
    """Identity in the forward; multiplies the incoming gradient by `scale` in the backward."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """`x` unchanged, with its gradient multiplied by `scale` (no-op for scale 1 or without grad)."""
    if scale == 1 or not x.requires_grad:
        return x
    return _ScaleGrad.apply(x, float(scale))


def gather_with_local_grad(x: Tensor, scale_local_grad: bool = False, equal_sizes: bool = False) -> Tensor:
    """[b, ...] on each rank -> [world*b, ...] in rank order; rows of this rank keep the autograd graph.

    Ranks may hold different b (the last batch of an epoch): sizes are exchanged first (a host sync), unless
    `equal_sizes` (the caller knows every rank holds the same b: accelerate's even_batches data loader).
    `scale_local_grad`: multiply the gradient that reaches this rank's rows by the world size, so that
    DDP's gradient average equals the single-process gradient of a loss computed on the gathered batch
    (see the module docstring). Without it the local rows get d(global loss)/d(rows), unscaled.
    One process: `x` itself."""
    if not is_distributed():
        return x
    world, me = dist.get_world_size(), dist.get_rank()
    if equal_sizes:
        sizes = [x.shape[0]] * world
    else:
        size = torch.tensor([x.shape[0]], device=x.device)
        gathered_sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(gathered_sizes, size)
        sizes = [int(s.item()) for s in gathered_sizes]
    largest = max(sizes)
    padded = x.detach()
    if x.shape[0] < largest:
        padded = torch.cat([padded, padded.new_zeros((largest - x.shape[0],) + tuple(x.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    parts = [p[:n] for p, n in zip(parts, sizes)]
    parts[me] = scale_grad(x, world) if scale_local_grad else x
    return torch.cat(parts)


# ---- the DataParallel guard -------------------------------------------------------------------------

def average_gradients(parameters) -> None:
    """DDP's gradient average, done once by hand (for steps that bypass the DDP wrapper: the gradient cache's replayed
    backward would trip DDP's one-reduction-per-parameter rule): every trainable parameter's gradient (zeros where a
    rank has none, so that every rank joins the same collectives) summed over the ranks in one flat buffer and divided
    by the world size."""
    if not is_distributed():
        return
    params = [p for p in parameters if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def torchrun_command(num_gpus: int, argv: list[str], script: str = "train.py") -> str:
    """`argv` launched with torchrun on `num_gpus` GPUs. The global batch is what DataParallel would have
    used (HF's DataParallel batch is --per_device_train_batch_size x num_gpus; under torchrun each process
    holds --per_device_train_batch_size rows and the gathered batch is num_gpus times that)."""
    return " ".join(["torchrun", "--nproc_per_node", str(num_gpus), script, *(shlex.quote(a) for a in argv)])


def data_parallel_message(num_gpus: int, argv: list[str] | None = None, script: str = "train.py") -> str:
    argv = list(argv or [])
    return (
        f"{num_gpus} GPUs are visible but train.py was not launched with torchrun. The Trainer would wrap the model in "
        "torch.nn.DataParallel, where every GPU computes the contrastive loss on its own slice of the batch: the "
        f"negatives would shrink to 1/{num_gpus} of the batch (and the ClusterNS / MixCSE batch statistics with them). "
        f"Use DDP, which gathers the embeddings of all GPUs:\n  {torchrun_command(num_gpus, argv, script)}\n"
        f"(each process gets --per_device_train_batch_size sentences; the global batch is {num_gpus} x that), "
        "or train on one GPU: CUDA_VISIBLE_DEVICES=0 python " + " ".join([script, *(shlex.quote(a) for a in argv)])
    )


def check_no_data_parallel(n_gpu: int, argv: list[str] | None = None, script: str = "train.py") -> None:
    """Raise ValueError when the HF Trainer would use nn.DataParallel (n_gpu > 1 in one process)."""
    if n_gpu > 1:
        raise ValueError(data_parallel_message(n_gpu, argv, script))


# ---- torchrun restarts ------------------------------------------------------------------------------

def init_restarted_process_group(argv: list[str]) -> bool:
    """After a torchrun restart, create the default process group under a key prefix of the restart count.

    torchrun's c10d rendezvous keeps one TCPStore for the workers of every restart round, and the process group
    writes its keys (each rank's gloo/NCCL address) under the same names each time: a restarted rank that reads a
    peer's key before the peer has rewritten it gets the dead group's address and fails ("Connection refused").
    Transformers then finds the group initialised and uses it. Returns True when it created the group; False when
    not under a restart (nothing to do: the first launch has a clean store)."""
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restarts == 0 or "RANK" not in os.environ or not dist.is_available() or dist.is_initialized():
        return False
    timeout = datetime.timedelta(seconds=int(flag_value(argv, "ddp_timeout") or 1800))
    backend = flag_value(argv, "ddp_backend")
    if backend is None:
        on_cpu = switch_given(argv, "use_cpu")
        backend = "nccl" if torch.cuda.is_available() and not on_cpu else "gloo"
    store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, store=dist.PrefixStore(f"clusterns-restart-{restarts}", store), rank=rank,
                            world_size=world, timeout=timeout)
    return True

