"""Token masking shared by the masked-LM parts (DiffCSE's generator input, SimCSE's auxiliary MLM).

* ``bert_mask_tokens``: BERT's 80/10/10 masking with the same draws, in the same order, as the HF 4.2.1
  ``DataCollatorForLanguageModeling.mask_tokens`` that SimCSE and DiffCSE copy (bernoulli, bernoulli, bernoulli,
  randint); special ids (the tokenizer's ``all_special_ids``, padding included) are never selected.
* ``content_generator``: a private ``torch.Generator`` seeded by (seed, the batch's token ids), so masks are new
  for every batch but neither consume nor depend on the global RNG that dropout uses (exact resume; independent of
  the number of DataLoader workers).
"""
from __future__ import annotations

import torch
from torch import Tensor


def special_token_mask(input_ids: Tensor, special_ids: Tensor | list[int]) -> Tensor:
    """True where the id is one of the tokenizer's special ids (vectorised get_special_tokens_mask)."""
    special = torch.as_tensor(special_ids, dtype=input_ids.dtype, device=input_ids.device)
    return torch.isin(input_ids, special)


def bert_mask_tokens(
    input_ids: Tensor,
    special_mask: Tensor,
    mask_token_id: int,
    vocab_size: int,
    masking_ratio: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT 80/10/10 masking, the same draws as HF 4.2.1 ``mask_tokens`` (bernoulli, bernoulli, randint).

    Returns (masked ids, selected positions). ``special_mask`` positions are never selected."""
    inputs = input_ids.clone()
    probability = torch.full(inputs.shape, float(masking_ratio))
    probability.masked_fill_(special_mask.cpu(), 0.0)
    selected = torch.bernoulli(probability, generator=generator).bool().to(inputs.device)
    to_mask = torch.bernoulli(torch.full(inputs.shape, 0.8), generator=generator).bool().to(inputs.device) & selected
    inputs[to_mask] = mask_token_id
    to_random = (
        torch.bernoulli(torch.full(inputs.shape, 0.5), generator=generator).bool().to(inputs.device) & selected & ~to_mask
    )
    random_words = torch.randint(vocab_size, inputs.shape, dtype=torch.long, generator=generator).to(inputs.device)
    inputs[to_random] = random_words[to_random].to(inputs.dtype)
    return inputs, selected


_MASK61 = (1 << 61) - 1


def _mix(x: Tensor) -> Tensor:
    """A cheap integer hash (splitmix-style) on int64 tensors, kept non-negative (< 2**61)."""
    x = x & _MASK61
    x = ((x ^ (x >> 31)) * 0x5DEECE66D + 0xB) & _MASK61
    x = ((x ^ (x >> 29)) * 0x27D4EB2F165667C5 % (1 << 61)) & _MASK61
    x = x ^ (x >> 32)
    return x & _MASK61


def row_keys(input_ids: Tensor, attention_mask: Tensor, view_index: Tensor, seed: int) -> Tensor:
    """A per-row key that depends only on (seed, view, the row's attended token ids) - not on padding."""
    n, length = input_ids.shape
    pos = torch.arange(length, dtype=torch.int64)
    tok = (input_ids.to(torch.int64) + 1) * attention_mask.to(torch.int64)
    per_pos = _mix(tok * 1_000_003 + pos * 7919 + 17) * attention_mask.to(torch.int64)
    h = (per_pos % (1 << 40)).sum(dim=1)  # order-aware: positions enter the hash
    return _mix(h + _mix(view_index.to(torch.int64) + 131 * int(seed)))


def content_generator(ids: Tensor, attention_mask: Tensor, seed: int) -> torch.Generator:
    """A generator seeded by a hash of (seed, the [N, L] batch's attended token ids and its shape)."""
    keys = row_keys(ids, attention_mask, torch.arange(ids.shape[0]), seed)
    batch_key = int(_mix((keys % (1 << 40)).sum().reshape(1) + ids.shape[0] * 7 + ids.shape[1])[0])
    return torch.Generator().manual_seed(batch_key)
