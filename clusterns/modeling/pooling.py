"""The pooler interface: how token states become one vector per sentence, and what follows from it.

A pooler declares, in one place, everything the rest of the framework needs to know about it:
its name (``--pooler_type`` / evaluation.py's ``--pooler``), whether it needs every layer's hidden
states, the projector ``--projector auto`` gives it in training, its evaluation name, and how it
exports to sentence-transformers (``st_layout``). Poolers that only combine hidden states implement
``pool``; a pooler that also owns its inputs (PromptBERT's template, modeling/prompt/) overrides
``tokenize`` / ``pooled`` / ``training_tokenize_function``, so the encoder never branches on a name.
Register a new one with one entry in modeling/poolers.py (or ``register_pooler`` from outside).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from clusterns.modeling.backbones import max_positions
from clusterns.modeling.packing import reading_positions

# How a pooler is written as sentence-transformers modules (export/sentence_transformers.py):
#   cls              Transformer -> Pooling(cls)
#   mean             Transformer -> Pooling(mean)
#   weighted_layers  Transformer(hidden states) -> WeightedLayerPooling(layer_weights) -> Pooling(mean)
#   custom           clusterns.st_modules.ClusternsEncoder (the whole SentenceEncoder as one module)
ST_LAYOUTS = ("cls", "mean", "weighted_layers", "custom")


def masked_mean(states: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean over real tokens (special tokens included, as SimCSE): [N, T, H], [N, T] -> [N, H]."""
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1)


class Pooler:
    """Base class. Subclasses set the class attributes and implement `pool` (or override `pooled`)."""

    name: str = ""
    description: str = ""
    needs_hidden_states: bool = False
    st_layout: str = "mean"
    auto_projector: str = "none"  # --projector auto in training (SimCSE: the MLP for cls only)
    # Choosing this name at evaluation applies the checkpoint's pooler weights (SimCSE's `cls`: dense + tanh).
    uses_checkpoint_pooler: bool = False
    # `pooled` reads one last-layer token per sentence and declares it (reading_positions): --prune_last_layer applies
    reads_one_token: bool = False

    def bind(self, config: Any) -> "Pooler":
        """The pooler for one encoder (config: its EncoderConfig). Stateless poolers are shared."""
        return self

    # ---- the math ---------------------------------------------------------------------------------
    def pool(self, attention_mask: Tensor, last_hidden_state: Tensor, hidden_states: tuple[Tensor, ...] | None,
             first_layer_index: int) -> Tensor:
        """[N, H] from the backbone's outputs (`hidden_states[0]` is the embedding output)."""
        raise NotImplementedError

    def read_positions(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor | None:
        """[N] long: the one last-layer position per sentence that `pool` reads, when it reads nothing else (the
        packed backbone then runs its last layer's query side for those tokens only: packing.reading_positions);
        None: it reads every token. A pooler that returns positions sets reads_one_token (--prune_last_layer's check)."""
        return None

    def pooled(self, encoder: Any, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
               num_views: int | None = None) -> Tensor:
        """The encoder's pooled output before the projector. `num_views`: rows are flattened [B, V] views."""
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        positions = None if self.needs_hidden_states else self.read_positions(input_ids, attention_mask)
        with reading_positions(encoder.backbone, positions):
            out = encoder.backbone(input_ids=input_ids, attention_mask=attention_mask,
                                   output_hidden_states=self.needs_hidden_states, return_dict=True, **kwargs)
        return self.pool(attention_mask, out.last_hidden_state, out.hidden_states if self.needs_hidden_states else None,
                         encoder.config.first_layer_index)

    # ---- inputs -----------------------------------------------------------------------------------
    def tokenize(self, encoder: Any, sentences: list[str], max_seq_length: int | None = None) -> dict[str, list[list[int]]]:
        """encode()'s token ids, unpadded, truncated to max_seq_length (default: the encoder's, else the model's limit)."""
        limit = max_positions(encoder.backbone.config, encoder.tokenizer)
        max_len = min(max_seq_length or encoder.config.max_seq_length or limit, limit)
        return encoder.tokenizer(list(sentences), truncation=True, max_length=max_len, padding=False)

    def training_tokenize_function(self, encoder: Any, max_seq_length: int) -> Callable[[dict], dict] | None:
        """A batched `datasets.map` function for the training views; None: the plain one (training/data.py)."""
        return None

    def configure_loaded(self, encoder: Any, **options: Any) -> None:
        """Options given when a checkpoint is loaded (SentenceEncoder.from_pretrained); a pooler refuses
        those it does not take, so that none is silently ignored."""
        given = sorted(k for k, v in options.items() if v is not None)
        if given:
            raise ValueError(f"{', '.join(given)} does not apply to the {self.name!r} pooler of this checkpoint")

    def check(self, encoder: Any, max_seq_length: int | None = None) -> None:
        """Raise ValueError naming the flags when this pooler cannot work with the encoder (called at start-up)."""

    # ---- evaluation and export ---------------------------------------------------------------------
    def eval_name(self, projector_at_eval: bool) -> str:
        """The evaluation.py --pooler name that reproduces encode() on a checkpoint."""
        return self.name

    def layer_weights(self, num_layers: int, first_layer_index: int) -> tuple[int, list[float]]:
        """st_layout weighted_layers: (layer_start, weights) of WeightedLayerPooling over hidden_states[start:]."""
        raise NotImplementedError(f"pooler {self.name!r} has no layer weights")

    def st_module_options(self) -> dict[str, Any]:
        """st_layout custom: the options written to clusterns_st_module.json."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class ClsPooler(Pooler):
    """The first token's last-layer state ([CLS] / <s>); `cls` also applies the MLP projector at evaluation."""

    st_layout = "cls"

    def __init__(self, name: str, description: str, auto_projector: str = "none", uses_checkpoint_pooler: bool = False):
        self.name, self.description = name, description
        self.auto_projector, self.uses_checkpoint_pooler = auto_projector, uses_checkpoint_pooler

    @property
    def reads_one_token(self) -> bool:
        # a subclass with a pool() of its own may read other tokens: it declares its positions itself
        return type(self).pool is ClsPooler.pool

    def read_positions(self, input_ids, attention_mask):
        if not self.reads_one_token:
            return None
        return torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)

    def pool(self, attention_mask, last_hidden_state, hidden_states, first_layer_index):
        return last_hidden_state[:, 0]

    def eval_name(self, projector_at_eval: bool) -> str:
        # SimCSE: `cls` at evaluation means CLS + the projector; without it the raw state is cls_before_pooler.
        if self.uses_checkpoint_pooler and not projector_at_eval:
            return "cls_before_pooler"
        return self.name


class MeanPooler(Pooler):
    """Masked mean of the last layer."""

    st_layout = "mean"

    def __init__(self, name: str, description: str):
        self.name, self.description = name, description

    def pool(self, attention_mask, last_hidden_state, hidden_states, first_layer_index):
        return masked_mean(last_hidden_state, attention_mask)


class TwoLayerMeanPooler(Pooler):
    """Masked mean of the average of two hidden states: the last two (avg_top2), or the first and the last
    (avg_first_last; `first_layer_index` 1 = the first transformer layer as SimCSE's code, 0 = the embedding
    output as its paper)."""

    needs_hidden_states = True
    st_layout = "weighted_layers"

    def __init__(self, name: str, description: str, first: str):
        if first not in ("second_last", "first"):
            raise ValueError(f"first must be second_last or first, got {first!r}")
        self.name, self.description, self.first = name, description, first

    def _first_index(self, num_states: int, first_layer_index: int) -> int:
        return num_states - 2 if self.first == "second_last" else first_layer_index

    def pool(self, attention_mask, last_hidden_state, hidden_states, first_layer_index):
        first = hidden_states[self._first_index(len(hidden_states), first_layer_index)]
        return masked_mean((first + hidden_states[-1]) / 2.0, attention_mask)

    def layer_weights(self, num_layers: int, first_layer_index: int) -> tuple[int, list[float]]:
        start = self._first_index(num_layers + 1, first_layer_index)
        weights = [0.0] * (num_layers + 1 - start)
        weights[0] += 1.0
        weights[-1] += 1.0  # the same layer twice when first == last: (h + h) / 2 = h, as pool()
        return start, weights
