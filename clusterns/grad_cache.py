"""--mini_batch_size: one optimizer step on the whole batch, the encoder run in chunks (GradCache: Gao et al., 2021,
"Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"; sentence-transformers'
CachedMultipleNegativesRankingLoss with its RandContext).

The encoder's pooled outputs of the whole batch are computed chunk by chunk without a graph, each chunk's random
state recorded. The projector, the cross-rank gather and the objective then run on the whole batch as without
caching (the BatchNorm projector's statistics are the whole batch's, the objective's state is updated once). When
the backward pass reaches the pooled outputs, each chunk is forwarded again under its recorded random state (the
same dropout masks, so the same vectors) and autocast state, and its slice of the cached gradient is
backpropagated through it. Peak memory: one chunk's activations plus the batch's pooled vectors.

The replay happens inside the autograd backward (as reentrant activation checkpointing does), so the Trainer's
step (grad scaler, accumulation, clipping, the optimizer) is unchanged.

Losses that are sums over rows of their own sub-network's output (DiffCSE's replaced-token detection, --do_mlm's
second pass) run in the same chunks with `chunked_sum`: each chunk's term is computed without a graph in the forward
pass and replayed with one in the backward pass, so their activations, too, are one chunk's at a time.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from typing import Any, Callable

import torch
from torch import Tensor


def _libc_malloc_trim() -> Callable[[int], int] | None:
    if os.name != "posix":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def resident_mb() -> float | None:
    """This process's resident memory (MB) from /proc/self/statm; None where there is none."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


class HostMemoryBound:
    """Keeps a CPU pass over the chunks within `slack_mb` of the resident memory after its first chunk.

    glibc keeps the freed activations of each chunk (of another size per chunk under packing) instead of reusing or
    returning them, so without this the peak RSS grows with the number of chunks (MiniLM, batch 1024 in chunks of 64:
    2487 MB against 1745 MB for an uncached batch of 64). Trimming after every chunk (malloc_trim) costs about 30% of
    the step in page faults; trimming only when the pass has grown by the slack costs a trim every few chunks.
    A no-op on GPUs (PyTorch's caching allocator reuses its blocks) and without glibc or /proc."""

    def __init__(self, device: torch.device, slack_mb: float = 64.0):
        self.active = device.type == "cpu" and _MALLOC_TRIM is not None
        self.slack_mb = slack_mb
        self.baseline: float | None = None

    def after_chunk(self) -> None:
        if not self.active:
            return
        rss = resident_mb()
        if rss is None:
            self.active = False
        elif self.baseline is None:
            self.baseline = rss
        elif rss > self.baseline + self.slack_mb:
            _MALLOC_TRIM(0)


class RandomState:
    """The CPU and (on a GPU) the device's random state at one moment, to replay a forward's dropout masks."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def replay(self):
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices, enabled=True):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def chunk_slices(batch_size: int, mini_batch_size: int) -> list[slice]:
    """[0, batch_size) in chunks of mini_batch_size rows (the last one smaller when it does not divide)."""
    if mini_batch_size < 1:
        raise ValueError(f"--mini_batch_size must be >= 1, got {mini_batch_size}")
    return [slice(start, min(start + mini_batch_size, batch_size)) for start in range(0, batch_size, mini_batch_size)]


class _ReplayChunks(torch.autograd.Function):
    """Identity on the cached pooled outputs; its backward replays each chunk with a graph and backpropagates the
    chunk's slice of the incoming gradient into the encoder's parameters."""

    @staticmethod
    def forward(ctx, cached: Tensor, anchor: Tensor, run_chunk: Callable[[slice], Tensor], slices: list[slice],
                states: list[RandomState], autocast: tuple[str, bool, torch.dtype]) -> Tensor:
        ctx.run_chunk, ctx.slices, ctx.states, ctx.autocast = run_chunk, slices, states, autocast
        return cached.view_as(cached)

    @staticmethod
    def backward(ctx, grad: Tensor):
        device_type, enabled, dtype = ctx.autocast
        bound = HostMemoryBound(grad.device)
        for piece, state in zip(ctx.slices, ctx.states):
            with state.replay(), torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
                out = ctx.run_chunk(piece)
            torch.autograd.backward(out, grad[piece].to(out.dtype))
            del out
            bound.after_chunk()
        return None, None, None, None, None, None


def autocast_state(device_type: str) -> tuple[str, bool, torch.dtype]:
    return device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


def cached_forward(run_chunk: Callable[[slice], Tensor], batch_size: int, mini_batch_size: int,
                   anchor: Tensor) -> Tensor:
    """The rows run_chunk(slice) gives for the whole batch, concatenated, as a tensor whose gradient is
    backpropagated chunk by chunk through a replayed forward. `anchor`: any tensor that requires grad (a parameter
    of the chunked module), so that autograd calls the replay."""
    slices = chunk_slices(batch_size, mini_batch_size)
    states, pieces = [], []
    bound = HostMemoryBound(anchor.device)
    with torch.no_grad():
        for piece in slices:
            states.append(RandomState(anchor.device))
            pieces.append(run_chunk(piece))
            bound.after_chunk()
    cached = torch.cat(pieces)  # no graph: computed under no_grad
    return _ReplayChunks.apply(cached, anchor, run_chunk, slices, states, autocast_state(anchor.device.type))


class _ReplayChunkTerms(torch.autograd.Function):
    """Identity on the sum of the chunks' terms; its backward replays each chunk's term with a graph, backpropagates
    the incoming gradient into the parameters it used and collects its gradient with respect to its rows of
    `inputs`."""

    @staticmethod
    def forward(ctx, total: Tensor, inputs: Tensor | None, anchor: Tensor,
                run_chunk: Callable[[slice, Tensor | None], tuple[Tensor, Any]], slices: list[slice],
                states: list[RandomState], autocast: tuple[str, bool, torch.dtype]) -> Tensor:
        ctx.inputs = inputs.detach() if inputs is not None else None
        ctx.run_chunk, ctx.slices, ctx.states, ctx.autocast = run_chunk, slices, states, autocast
        return total.view_as(total)

    @staticmethod
    def backward(ctx, grad: Tensor):
        device_type, enabled, dtype = ctx.autocast
        inputs = ctx.inputs
        wants_inputs = inputs is not None and ctx.needs_input_grad[1]
        grad_inputs = torch.zeros_like(inputs) if wants_inputs else None
        bound = HostMemoryBound(grad.device)
        for piece, state in zip(ctx.slices, ctx.states):
            with state.replay(), torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
                rows = inputs[piece].detach().requires_grad_(wants_inputs) if inputs is not None else None
                term, _ = ctx.run_chunk(piece, rows)
            if term.requires_grad:
                torch.autograd.backward(term, grad.to(term.dtype))
            if wants_inputs and rows.grad is not None:
                grad_inputs[piece] = rows.grad
            del term, rows
            bound.after_chunk()
        ctx.inputs = None
        return None, grad_inputs, None, None, None, None, None


def chunked_sum(run_chunk: Callable[[slice, Tensor | None], tuple[Tensor, Any]], slices: list[slice],
                inputs: Tensor | None, anchor: Tensor) -> tuple[Tensor, list[Any]]:
    """(the sum over `slices` of run_chunk(piece, inputs[piece])[0], the chunks' second outputs).

    run_chunk returns a scalar term (differentiable in its rows of `inputs` and in parameters) and anything else
    (e.g. predictions for logging, computed without a graph). The sum is differentiable in `inputs` and in those
    parameters, but no chunk's graph is kept: the backward pass replays each chunk under the random and autocast
    state of its first run (the same dropout masks). `inputs` may be None (a term of the batch alone); `anchor`: a
    parameter the terms use, so that autograd calls the replay."""
    states, terms, extras = [], [], []
    bound = HostMemoryBound(anchor.device)
    with torch.no_grad():
        for piece in slices:
            states.append(RandomState(anchor.device))
            term, extra = run_chunk(piece, inputs[piece] if inputs is not None else None)
            terms.append(term)
            extras.append(extra)
            bound.after_chunk()
    total = torch.stack(terms).sum()
    return _ReplayChunkTerms.apply(total, inputs, anchor, run_chunk, slices, states,
                                   autocast_state(anchor.device.type)), extras
