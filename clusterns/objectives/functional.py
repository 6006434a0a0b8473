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


def infonce_loss(logits: Tensor, exclude: Tensor | None = None) -> Tensor:
    """Cross-entropy with labels arange(B), mean over rows. exclude: [B, C'] bool over the first C' columns, True
    where a column is no negative of its row (duplicate_negatives): its logit becomes -inf, so it drops out of
    the softmax's denominator (and gets no gradient)."""
    if exclude is not None:
        exclude = F.pad(exclude, (0, logits.shape[1] - exclude.shape[1]))
        logits = logits.masked_fill(exclude, float("-inf"))
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels)


def duplicate_negatives(keys: Tensor) -> Tensor:
    """--mask_duplicates: which in-batch negatives are the row's own sentences.

    keys: [B, V] one integer per view (anchor, positive[, hard negative]); equal keys = identical texts.
    Returns [B, B*(V-1)] bool in the column order of infonce_logits ([positives | hard negatives]), True where:
    - positives block (i, j), j != i: rows i and j share a sentence (an anchor or positive of one is an anchor or
      positive of the other: the same sentence twice in unsupervised data, a repeated NLI premise);
    - hard-negative block (i, j), any j: row j's hard negative is row i's anchor or positive.
    Row i's target (its own positive, column i) is never excluded."""
    own = keys[:, :2]
    shared = (own[:, None, :, None] == own[None, :, None, :]).flatten(2).any(-1)  # [B, B]
    shared &= ~torch.eye(keys.shape[0], dtype=torch.bool, device=keys.device)
    if keys.shape[1] < 3:
        return shared
    hard = (keys[None, :, 2, None] == own[:, None, :]).any(-1)  # [i, j]: hard_neg_j in {anchor_i, positive_i}
    return torch.cat([shared, hard], dim=1)


def similarity_logs(cos: Tensor) -> dict[str, Tensor]:
    """Mean positive (diagonal) and negative (off-diagonal) cosine of a square block."""
    cos = cos.detach()
    n = cos.shape[0]
    diag = cos.diagonal()
    pos = diag.mean()
    neg = (cos.sum() - diag.sum()) / max(n * n - n, 1)
    return {"sim/pos": pos, "sim/neg": neg}
