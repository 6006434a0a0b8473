"""Dropout at a quarter of torch's CPU cost.

On the CPU, torch draws a dropout mask one element at a time (`bernoulli_`: a generator call and a double-precision
comparison per element, single-threaded; 8.6% of MiniLM's training step, scripts/profile_step.py) and then applies
the bool mask with unvectorised bool arithmetic, forward and backward. Here the mask comes from random 64-bit
integers, each split into two 32-bit halves compared with a threshold (half the generator calls, integer
comparisons, a keep probability exact to 2**-32), and is applied as a float mask. Every
element is still dropped independently with probability p and the kept ones scaled by 1 / (1 - p): the same
distribution as torch's dropout, drawn from the same (seeded, checkpointed, replayable) default generator; only
the particular masks differ. CUDA tensors keep torch's own kernel (a fused Philox draw, already cheap there).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INT32_SPAN = 1 << 32


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, generator: torch.Generator | None = None) -> Tensor:
    """A bool CPU tensor of `shape`, each element True (kept) with probability 1 - p, independently."""
    numel = math.prod(shape)
    # random_(min, None): the full 64-bit range (random64 per element), so both 32-bit halves are uniform
    draws = torch.empty((numel + 1) // 2, dtype=torch.int64).random_(-(1 << 63), None, generator=generator)
    halves = draws.view(torch.int32)[:numel]
    threshold = -(1 << 31) + round(p * INT32_SPAN)  # P(half < threshold) = p (to 2**-32)
    return (halves >= threshold).view(shape)


def scaled_mask(mask: Tensor, scale: float, dtype: torch.dtype) -> Tensor:
    """The bool mask as 0 / scale values of `dtype`. Through uint8: CPU kernels on bool tensors are not vectorised
    (bool -> float: 9x slower than uint8 -> float; x * bool_mask: 6x slower than x * float_mask)."""
    return mask.view(torch.uint8).to(dtype).mul_(scale)


class _MaskedScale(torch.autograd.Function):
    """x * mask * scale; the gradient is masked and scaled the same way. Saves the 1-byte mask, as torch's dropout."""

    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return x * scaled_mask(mask, scale, x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (mask,) = ctx.saved_tensors
        return grad * scaled_mask(mask, ctx.scale, grad.dtype), None, None


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """F.dropout's contract (inverted dropout); on the CPU with the cheaper mask above."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training)
    return _MaskedScale.apply(x, keep_mask(x.shape, p), 1.0 / (1.0 - p))


class CpuDropout(nn.Dropout):
    """nn.Dropout (same `p`, `inplace` ignored as by F.dropout's out-of-place path) through `dropout` above."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


def use_cpu_dropout(module: nn.Module) -> int:
    """Replace every plain nn.Dropout inside `module` by a CpuDropout of the same p; returns how many. Parameters,
    state_dict keys and saved checkpoints are unchanged (dropout has no state)."""
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                replacement = CpuDropout(child.p)
                replacement.train(child.training)
                setattr(parent, name, replacement)
                replaced += 1
    return replaced


__all__ = ["CpuDropout", "dropout", "keep_mask", "use_cpu_dropout"]
