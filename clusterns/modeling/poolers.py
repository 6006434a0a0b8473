"""Parameter-free poolers of SimCSE: hidden states -> one vector per sentence (pure functions)."""
from __future__ import annotations

from torch import Tensor

# Poolers whose vector needs every layer's hidden states (the others use the last layer only).
NEEDS_HIDDEN_STATES = {"avg_top2", "avg_first_last"}
CLS_POOLERS = {"cls", "cls_before_pooler"}


def masked_mean(states: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean over real tokens (special tokens included, as SimCSE): [N, T, H], [N, T] -> [N, H]."""
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1)


def pool(
    pooler_type: str,
    attention_mask: Tensor,
    last_hidden_state: Tensor,
    hidden_states: tuple[Tensor, ...] | None = None,
    first_layer_index: int = 1,
) -> Tensor:
    """SimCSE's Pooler. `hidden_states[0]` is the embedding output, `[-1]` the last layer."""
    if pooler_type in CLS_POOLERS:
        return last_hidden_state[:, 0]
    if pooler_type == "avg":
        return masked_mean(last_hidden_state, attention_mask)
    if pooler_type == "avg_top2":
        return masked_mean((hidden_states[-1] + hidden_states[-2]) / 2.0, attention_mask)
    if pooler_type == "avg_first_last":
        return masked_mean((hidden_states[first_layer_index] + hidden_states[-1]) / 2.0, attention_mask)
    raise ValueError(f"unknown pooler {pooler_type!r}")
