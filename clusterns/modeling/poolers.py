"""The pooler registry: one entry per pooling mode (SimCSE's poolers and PromptBERT's mask pooler).

Everything that depends on a pooler reads this registry: the --pooler_type choices, evaluation.py's
--pooler choices, the projector `auto` rule, the sentence-transformers export and the model card.
Adding a pooler is one entry here, or `register_pooler(MyPooler())` from outside the package.
"""
from __future__ import annotations

from torch import Tensor

from clusterns.modeling.pooling import ST_LAYOUTS, ClsPooler, MeanPooler, Pooler, TwoLayerMeanPooler
from clusterns.modeling.prompt.pooler import PromptPooler

POOLERS: dict[str, Pooler] = {}


def register_pooler(pooler: Pooler) -> Pooler:
    """Add a pooler (an instance of a modeling.pooling.Pooler subclass) under its name."""
    if not isinstance(pooler, Pooler) or not pooler.name:
        raise ValueError(f"register_pooler needs a named Pooler instance, got {pooler!r}")
    if pooler.name in POOLERS:
        raise ValueError(f"a pooler named {pooler.name!r} is already registered ({POOLERS[pooler.name]!r})")
    if pooler.st_layout not in ST_LAYOUTS:
        raise ValueError(f"pooler {pooler.name!r}: st_layout {pooler.st_layout!r} is not one of {', '.join(ST_LAYOUTS)}")
    POOLERS[pooler.name] = pooler
    return pooler


for _pooler in (
    ClsPooler("cls", "[CLS] state; SimCSE's MLP projector on top (also at evaluation unless --mlp_only_train)",
              auto_projector="simcse_mlp", uses_checkpoint_pooler=True),
    ClsPooler("cls_before_pooler", "[CLS] state without the projector"),
    MeanPooler("avg", "mean of the last layer over the real tokens"),
    TwoLayerMeanPooler("avg_top2", "mean of the average of the last two layers", first="second_last"),
    TwoLayerMeanPooler("avg_first_last", "mean of the average of the first (--first_layer_index) and last layers", first="first"),
    PromptPooler(),
):
    register_pooler(_pooler)


def pooler_names() -> list[str]:
    return list(POOLERS)


def get_pooler(name: str, flag: str = "--pooler_type") -> Pooler:
    if name not in POOLERS:
        raise ValueError(f"{flag} {name!r} is not known; choose one of: {', '.join(POOLERS)}")
    return POOLERS[name]


def pool(pooler_type: str, attention_mask: Tensor, last_hidden_state: Tensor,
         hidden_states: tuple[Tensor, ...] | None = None, first_layer_index: int = 1) -> Tensor:
    """SimCSE's Pooler as a function of the backbone's outputs (`hidden_states[0]` is the embedding output)."""
    return get_pooler(pooler_type).pool(attention_mask, last_hidden_state, hidden_states, first_layer_index)
