"""What differs between Hugging Face backbones, declared in one place (no `model_type` tests elsewhere)."""
from __future__ import annotations

import contextlib

from transformers.utils import logging as hf_logging

# RoBERTa-style position tables reserve padding_idx + 1 positions, and its tokenizers put a space
# before a word (PromptBERT strips its template prefix for them).
ROBERTA_TYPES = frozenset({"roberta", "xlm-roberta", "camembert"})


def is_roberta(config) -> bool:
    return getattr(config, "model_type", "") in ROBERTA_TYPES


def max_positions(config, tokenizer) -> int:
    """Longest input the backbone accepts (RoBERTa reserves padding_idx + 1 positions)."""
    limit = getattr(config, "max_position_embeddings", 512)
    if is_roberta(config):
        limit -= config.pad_token_id + 1
    tok_limit = getattr(tokenizer, "model_max_length", limit) or limit
    return int(min(limit, tok_limit))


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load report: dropping the NSP pooler (add_pooling_layer=False) is intended."""
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
