"""What differs between Hugging Face backbones, declared in one place (no `model_type` tests elsewhere).

Every trait is read from the architecture itself (its AutoModel class, its modules, its tokenizer), so a
new encoder architecture works without an entry here unless it differs in a way not listed below."""
from __future__ import annotations

import contextlib
import functools
import inspect
import json
import sys

import torch
from torch import Tensor, nn
from transformers import MODEL_MAPPING
from transformers.utils import logging as hf_logging

# RoBERTa-style position tables reserve padding_idx + 1 positions, and its tokenizers put a space
# before a word (PromptBERT strips its template prefix for them).
ROBERTA_TYPES = frozenset({"roberta", "xlm-roberta", "camembert"})
# Where an architecture maps its embedding size to the hidden size before the first layer (ELECTRA, ALBERT):
# the first hidden-size representation of the input, which DiffCSE's conditioning replaces at position 0.
EMBEDDING_TO_HIDDEN = ("embeddings_project", "encoder.embedding_hidden_mapping_in")


def is_roberta(config) -> bool:
    return getattr(config, "model_type", "") in ROBERTA_TYPES


WORD_START_MARKERS = ("Ġ", "▁")  # byte-level BPE, SentencePiece


def marks_word_starts(tokenizer) -> bool:
    """Whether the tokenizer writes a word's leading space into its first token (byte-level BPE `Ġ`, SentencePiece
    `▁`), so spaces around a template's sentence slot change the tokens (WordPiece ignores them)."""
    return any(token.startswith(WORD_START_MARKERS) for token in tokenizer.tokenize("x y"))


def space_marking_prompts(config, tokenizer) -> bool:
    """PromptBERT's RoBERTa handling (its templates put a space on both sides of the sentence slot, and the prefix's
    outer spaces are stripped) for RoBERTa and every tokenizer that marks word starts (XLM-R, DeBERTa-v2/v3, ALBERT,
    ModernBERT): with them the prompt's pieces tokenise as the joined template does; BERT's templates glue the
    sentence to its quotes, which only a WordPiece tokenizer (BERT, ELECTRA, DistilBERT, MPNet) splits the same."""
    return is_roberta(config) or marks_word_starts(tokenizer)


def max_positions(config, tokenizer) -> int:
    """Longest input the backbone accepts (RoBERTa reserves padding_idx + 1 positions)."""
    limit = getattr(config, "max_position_embeddings", None) or 512
    if is_roberta(config):
        limit -= config.pad_token_id + 1
    tok_limit = getattr(tokenizer, "model_max_length", limit) or limit
    return int(min(limit, tok_limit))


# Every dropout probability of an encoder config, by the names the architectures use (BERT family: the first two;
# DistilBERT: dropout, attention_dropout; ModernBERT: embedding_dropout, mlp_dropout, attention_dropout).
DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                  "embedding_dropout", "mlp_dropout")


def set_dropout(config, probability: float) -> list[str]:
    """--dropout_prob: set every dropout of the backbone (SimCSE's noise) to probability; returns the fields set.
    Raises ValueError for a config with none of them, instead of ignoring the flag."""
    found = [name for name in DROPOUT_FIELDS if isinstance(getattr(config, name, None), (int, float))]
    if not found:
        raise ValueError(f"--dropout_prob: the {getattr(config, 'model_type', '?')} config has none of the dropout fields "
                         f"{', '.join(DROPOUT_FIELDS)}; drop the flag or set the model's own dropout in its config.json")
    for name in found:
        setattr(config, name, probability)
    return found


def model_class(config) -> type[nn.Module]:
    """The class AutoModel builds for config."""
    try:
        return MODEL_MAPPING[type(config)]
    except KeyError:
        raise ValueError(f"{type(config).__name__} ({getattr(config, 'model_type', '?')}) has no AutoModel class: "
                         "it cannot be a sentence-encoder backbone") from None


def takes_pooling_layer(config) -> bool:
    """Whether the architecture's AutoModel class has the optional HF pooler (add_pooling_layer)."""
    return "add_pooling_layer" in inspect.signature(model_class(config).__init__).parameters


def pooling_layer_kwargs(config, pooling_layer: bool) -> dict:
    """from_pretrained / constructor keywords: build the HF pooler only when asked and only where there is one."""
    return {"add_pooling_layer": pooling_layer} if takes_pooling_layer(config) else {}


@functools.lru_cache(maxsize=64)
def _pooler_slot(config_json: str, config_cls: type) -> tuple[str, str] | None:
    config = config_cls.from_dict(json.loads(config_json))
    with torch.device("meta"):
        model = model_class(config)(config, add_pooling_layer=True)
    for name in ("pooler.dense", "pooler"):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, nn.Linear) and module.in_features == module.out_features == config.hidden_size:
            return f"{name}.weight", f"{name}.bias"
    return None


def pooler_slot(config) -> tuple[str, str] | None:
    """The state-dict keys of the architecture's HF pooler (tanh(W h_[CLS] + b): BERT, RoBERTa, XLM-R, MPNet,
    ALBERT), where SimCSE's MLP projector is stored so that plain AutoModel's `pooler_output` is the MLP output;
    None for an architecture without one (DeBERTa, ModernBERT, ELECTRA, DistilBERT: the MLP is stored beside the
    weights in projector.safetensors)."""
    if not takes_pooling_layer(config):
        return None
    return _pooler_slot(config.to_json_string(use_diff=False), type(config))


def takes_token_type_ids(backbone: nn.Module) -> bool:
    """Whether the backbone's forward takes token_type_ids (DistilBERT, ModernBERT, MPNet do not)."""
    return "token_type_ids" in inspect.signature(type(backbone).forward).parameters


def conditioning_module(backbone: nn.Module) -> nn.Module:
    """The module whose output is the first hidden-size representation of the input (the transformer layers'
    input): `embeddings`, or the embedding-to-hidden projection that follows it (ELECTRA, ALBERT)."""
    for name in EMBEDDING_TO_HIDDEN:
        try:
            return backbone.get_submodule(name)
        except AttributeError:
            continue
    embeddings = getattr(backbone, "embeddings", None)
    if not isinstance(embeddings, nn.Module):
        raise ValueError(f"{type(backbone).__name__} has no `embeddings` module: DiffCSE's conditioning (the sentence "
                         "vector at position 0 of the embedding output) cannot be applied to it")
    return embeddings


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load report: dropping the NSP pooler (add_pooling_layer=False) is intended."""
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def builds_masks_with_masking_utils(backbone: nn.Module) -> bool:
    """Whether the architecture's modeling file builds its attention masks with transformers' `masking_utils`
    (transformers 5: BERT, RoBERTa, ELECTRA, ...), which takes a ready 4-D mask as it is."""
    module = sys.modules.get(type(backbone).__module__)
    return module is not None and hasattr(module, "create_bidirectional_mask")


def ready_padding_mask(backbone: nn.Module, attention_mask: Tensor) -> Tensor:
    """A [N, L] 0/1 padding mask as the [N, 1, 1, L] mask the backbone's attention reads (bool for SDPA, additive for
    eager), so that transformers does not build it: its own builder asks the device whether the mask is all ones, a
    host sync per forward on a GPU. The 2-D mask where the architecture or attention implementation builds its own
    kind (transformers 4, flash / flex attention)."""
    implementation = getattr(backbone.config, "_attn_implementation", None)
    if attention_mask.dim() != 2 or implementation not in ("sdpa", "eager") or not builds_masks_with_masking_utils(backbone):
        return attention_mask
    keep = attention_mask.bool()[:, None, None, :]
    if implementation == "sdpa":
        return keep
    dtype = next(backbone.parameters()).dtype
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(~keep, torch.finfo(dtype).min)
