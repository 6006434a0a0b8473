"""The contrastive math every objective shares, as pure functions on tensors (golden-tested).

Precision: these functions promote half-precision inputs to fp32 (fp64 stays fp64, for the golden
tests) and never switch autocast themselves; the one precision boundary is training/model.py, which
runs an objective inside `clusterns.precision.fp32_region` (autocast and TF32 off) so that the
matmuls of these fp32 tensors really run in fp32 under --fp16 / --bf16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NORM_EPS = 1e-8  # torch.nn.CosineSimilarity's clamp of each norm


def at_least_fp32(x: Tensor) -> Tensor:
    """fp16/bf16 -> fp32; fp32 and fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def l2_normalize(x: Tensor) -> Tensor:
    """Rows divided by their norm (clamped at NORM_EPS, as cosine_matrix)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """cos(a_i, b_j) for all pairs: normalise once, one matmul. [N, H] x [M, H] -> [N, M], at least fp32."""
    return l2_normalize(at_least_fp32(a)) @ l2_normalize(at_least_fp32(b)).transpose(0, 1)


def row_cosine(a: Tensor, b: Tensor) -> Tensor:
    """cos(a_i, b_i) per row, [N]."""
    return (l2_normalize(at_least_fp32(a)) * l2_normalize(at_least_fp32(b))).sum(dim=-1)


def add_to_diagonal(block: Tensor, weight: float) -> Tensor:
    """`weight` added at (i, i): each anchor's own hard negative (SimCSE's --hard_negative_weight offset)."""
    if not weight:
        return block
    return block + weight * torch.eye(block.shape[0], block.shape[1], device=block.device, dtype=block.dtype)


def infonce_logits(z1: Tensor, z2: Tensor, temp: float, z3: Tensor | None = None, hard_negative_weight: float = 0.0) -> Tensor:
    """SimCSE logits: [cos(z1_i, z2_j)/temp | cos(z1_i, z3_j)/temp] with the weight added at (i, B+i)."""
    logits = cosine_matrix(z1, z2) / temp
    if z3 is not None:
        logits = torch.cat([logits, add_to_diagonal(cosine_matrix(z1, z3) / temp, hard_negative_weight)], dim=1)
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
