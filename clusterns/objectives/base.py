"""The Objective interface and the InfoNCE pieces every method shares.

An objective receives the pooled views of a batch (already projected and, under
DDP, gathered across ranks) and the raw batch, and returns the loss with a dict
of scalar logs. It owns its trainable parts and its non-parameter state, so the
Trainer's optimizer and checkpointing see them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clusterns.precision import fp32_region


@dataclass
class EncodedViews:
    """What the encoder produced for one batch.

    pooled:     [B_local, V, H] pooler output before the projector (local rows, with grad).
    local:      [B_local, V, H] the training embeddings (after the projector), local rows.
    gathered:   [B_global, V, H] `local` all-gathered across ranks; this rank's rows keep their
                gradient (the SimCSE trick). Equal to `local` on a single process.
    """

    pooled: Tensor
    local: Tensor
    gathered: Tensor


@dataclass
class ObjectiveOutput:
    loss: Tensor
    # Scalar tensors (detached), logged as `<key>` averaged over the logging window.
    logs: dict[str, Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    """Base class of every training objective (one file per method, see the registry)."""

    name: ClassVar[str] = ""
    # The dataclass holding this objective's own flags (None: only the shared flags).
    arguments_class: ClassVar[type | None] = None

    def __init__(self, model_args: Any, objective_args: Any = None, encoder: nn.Module | None = None):
        super().__init__()
        self.model_args = model_args
        self.objective_args = objective_args
        self.temp = float(model_args.temp)

    def batch_transform(self, tokenizer) -> Callable[[dict], dict] | None:
        """A picklable function the collator applies to each padded batch (e.g. MLM masking)."""
        return None

    def forward(self, views: EncodedViews, batch: dict[str, Tensor], encoder: nn.Module) -> ObjectiveOutput:
        raise NotImplementedError

    # Non-parameter state (e.g. ClusterNS centroids) goes through state_dict via buffers or
    # get_extra_state/set_extra_state, so resumed runs continue exactly.


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """cos(a_i, b_j) for all pairs: normalise once, one matmul. [N, H] x [M, H] -> [N, M].

    The eps matches torch.nn.CosineSimilarity (clamp of each norm at 1e-8). fp16/bf16 inputs are
    promoted to fp32 and the product runs outside autocast (and TF32): under --fp16/--bf16 autocast
    would otherwise run the matmul in half precision even on fp32 inputs (clusterns/precision.py)."""
    if a.dtype in (torch.float16, torch.bfloat16):
        a = a.float()
    if b.dtype in (torch.float16, torch.bfloat16):
        b = b.float()
    with fp32_region(a.device.type):
        a_n = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        b_n = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        return a_n @ b_n.transpose(0, 1)


def infonce_logits(
    z1: Tensor,
    z2: Tensor,
    temp: float,
    z3: Tensor | None = None,
    hard_negative_weight: float = 0.0,
) -> Tensor:
    """SimCSE logits: [cos(z1_i, z2_j)/temp | cos(z1_i, z3_j)/temp] with the weight added at (i, B+i).

    At least fp32 whatever the autocast dtype (softmax over /0.05 logits needs it): cosine_matrix
    promotes half precision; fp64 inputs (the golden tests) stay fp64."""
    logits = cosine_matrix(z1, z2) / temp
    if z3 is not None:
        hard = cosine_matrix(z1, z3) / temp
        if hard_negative_weight:
            hard = hard + hard_negative_weight * torch.eye(hard.shape[0], hard.shape[1], device=hard.device, dtype=hard.dtype)
        logits = torch.cat([logits, hard], dim=1)
    return logits


def infonce_loss(logits: Tensor) -> Tensor:
    """Cross-entropy with labels arange(B), mean over rows."""
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels)


def similarity_logs(cos: Tensor) -> dict[str, Tensor]:
    """Mean positive (diagonal) and negative (off-diagonal) cosine of a square block."""
    cos = cos.detach()
    n = cos.shape[0]
    diag = cos.diagonal()
    pos = diag.mean()
    neg = (cos.sum() - diag.sum()) / max(n * n - n, 1)
    return {"sim/pos": pos, "sim/neg": neg}
