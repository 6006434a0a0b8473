"""Collator-side token masking for DiffCSE's generator input (``mlm_input_ids``).

Two schemes, both applied to the padded ``input_ids`` of a batch, shape [B, V, L] (or [N, L]):

* ``bert`` (DiffCSE, the HF ``DataCollatorForLanguageModeling.mask_tokens`` of transformers 4.2.1 as
  DiffCSE's ``train.py`` copies it): every row is masked independently (the two dropout views of a
  sentence get different masks), dynamically (new draws each batch). Each non-special token is selected
  with probability p = ``--masking_ratio``; a selected token becomes the mask token with probability 0.8,
  a uniformly random id in [0, len(tokenizer)) with probability 0.1 and stays unchanged otherwise.
  Special ids (the tokenizer's ``all_special_ids``: CLS, SEP, PAD, UNK, MASK, ...) are never selected.

* ``kodiffcse`` (BM-K/KoDiffCSE ``only_mask_tokens``): a fixed count k = max(1, int(n * p)) of distinct
  positions drawn uniformly from 1..n, where n is the number of non-special tokens of the row (the
  original assumes those are contiguous after CLS, so an in-sentence UNK shifts the range - kept); the
  chosen positions *and every special token* are replaced by the ``[SEP]`` id (KoDiffCSE's "mask token"),
  position 0 is reset to CLS, padding to PAD. No 80/10/10. The original computes the masks once per
  corpus (static, two independent masks per sentence); here the draw is a deterministic function of
  (seed, view index, the row's non-pad token ids), so a sentence gets the same masks in every epoch
  whatever batch it lands in, without precomputing anything.

Randomness (``rng``): by default (``content``) each batch's draws come from a private ``torch.Generator``
seeded with a hash of (seed, the batch's token ids). The masks are then still new for every batch (batches
differ), but they neither consume nor depend on the global RNG that dropout uses: a run resumed from a
checkpoint masks exactly as the uninterrupted run did (HF's DataLoader prefetches batches, so global-RNG
draws in the collator interleave with dropout differently after a resume), and the result does not depend on
the number of DataLoader workers. ``global`` draws from the global torch RNG exactly as HF's collator does
(same sequence of bernoulli/bernoulli/bernoulli/randint calls), for bit-level comparisons with the original.

Both are picklable callables holding only ints, so DataLoader workers can run them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from clusterns.objectives.token_masking import _mix, bert_mask_tokens, content_generator, row_keys, special_token_mask

__all__ = ["SCHEMES", "RNG_MODES", "MLMMasking", "kodiffcse_mask_tokens", "bert_mask_tokens", "row_keys", "special_token_mask"]

SCHEMES = ("bert", "kodiffcse")
RNG_MODES = ("content", "global")


def kodiffcse_mask_tokens(
    input_ids: Tensor,
    attention_mask: Tensor,
    special_mask: Tensor,
    cls_token_id: int,
    sep_token_id: int,
    pad_token_id: int,
    masking_ratio: float,
    keys: Tensor,
) -> tuple[Tensor, Tensor]:
    """KoDiffCSE's fixed-count [SEP] masking, vectorised. ``keys`` [N] seeds each row's draw.

    Returns (masked ids, chosen positions)."""
    n_rows, length = input_ids.shape
    attn = attention_mask.bool()
    special = special_mask | ~attn  # pads are special ids anyway; be explicit
    n = (~special).sum(dim=1)  # non-special tokens per row (the original's max_len - special count)
    # max(1, int(n * p)): the original multiplies a 0-dim int64 tensor by a Python float -> float32, truncated.
    k = (n.to(torch.float32) * float(masking_ratio)).to(torch.int64).clamp_min(1)
    k = torch.where(n > 0, k, torch.zeros_like(k))
    pos = torch.arange(length, dtype=torch.int64).expand(n_rows, length)
    eligible = (pos >= 1) & (pos <= n.unsqueeze(1))
    # Uniform random k-subset of the eligible positions: the k smallest of i.i.d. hashed scores.
    score = _mix(keys.unsqueeze(1) * 1_000_033 + pos * 2_654_435_761 + 1)
    score = torch.where(eligible, score, torch.full_like(score, 1 << 62))
    order = score.argsort(dim=1)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, pos.clone())
    chosen = eligible & (rank < k.unsqueeze(1))
    out = input_ids.clone()
    out[special_mask | chosen] = sep_token_id
    out = out * attention_mask.to(out.dtype)
    out[out == 0] = pad_token_id
    out[:, 0] = cls_token_id
    return out, chosen


@dataclass
class MLMMasking:
    """The batch transform DiffCSE installs in the collator: adds ``mlm_input_ids`` (same shape as input_ids)."""

    scheme: str
    masking_ratio: float
    mask_token_id: int
    vocab_size: int  # len(tokenizer): range of the random replacement ids
    special_ids: list[int] = field(default_factory=list)
    cls_token_id: int | None = None
    sep_token_id: int | None = None
    pad_token_id: int = 0
    seed: int = 42
    rng: str = "content"  # content: a generator seeded by (seed, batch ids); global: the global torch RNG

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"--masking_scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if not 0.0 < float(self.masking_ratio) < 1.0:
            raise ValueError(f"--masking_ratio must lie in (0, 1), got {self.masking_ratio}")
        if self.rng not in RNG_MODES:
            raise ValueError(f"masking rng must be one of {RNG_MODES}, got {self.rng!r}")
        if self.scheme == "kodiffcse" and (self.cls_token_id is None or self.sep_token_id is None):
            raise ValueError("the kodiffcse masking scheme needs a tokenizer with CLS and SEP tokens")

    @classmethod
    def from_tokenizer(cls, tokenizer, scheme: str, masking_ratio: float, seed: int = 42, rng: str = "content") -> "MLMMasking":
        if scheme == "bert" and tokenizer.mask_token_id is None:
            raise ValueError(f"the tokenizer {type(tokenizer).__name__} has no mask token: DiffCSE's bert masking needs one")
        return cls(
            scheme=scheme,
            masking_ratio=float(masking_ratio),
            mask_token_id=int(tokenizer.mask_token_id) if tokenizer.mask_token_id is not None else -1,
            vocab_size=len(tokenizer),
            special_ids=sorted({int(i) for i in tokenizer.all_special_ids}),
            cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id,
            pad_token_id=int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0,
            seed=seed,
            rng=rng,
        )

    def mask(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        shape = input_ids.shape
        views = shape[1] if input_ids.dim() == 3 else 1
        ids = input_ids.reshape(-1, shape[-1])
        attn = attention_mask.reshape(-1, shape[-1]) if attention_mask is not None else torch.ones_like(ids)
        special = special_token_mask(ids, self.special_ids)
        if self.scheme == "bert":
            generator = content_generator(ids, attn, self.seed) if self.rng == "content" else None
            out, _ = bert_mask_tokens(ids, special, self.mask_token_id, self.vocab_size, self.masking_ratio, generator)
        else:
            view_index = torch.arange(ids.shape[0]) % views
            keys = row_keys(ids, attn, view_index, self.seed)
            out, _ = kodiffcse_mask_tokens(
                ids, attn, special, self.cls_token_id, self.sep_token_id, self.pad_token_id, self.masking_ratio, keys
            )
        return out.reshape(shape)

    def __call__(self, batch: dict) -> dict:
        batch = dict(batch)
        batch["mlm_input_ids"] = self.mask(batch["input_ids"], batch.get("attention_mask"))
        return batch
