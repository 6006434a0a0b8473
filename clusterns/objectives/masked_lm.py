"""SimCSE's auxiliary masked-LM loss (--do_mlm), composable with every objective.

loss = objective loss + --mlm_weight * MLM (princeton-nlp/SimCSE simcse/models.py cl_forward, train.py
OurDataCollatorWithPadding.mask_tokens; Gao et al., EMNLP 2021, section 4 "MLM auxiliary objective"):

* the collator masks every view of the batch with BERT's 80/10/10 scheme at --mlm_probability
  (objectives/token_masking.py; special tokens and padding are never selected) and keeps the labels
  (the original ids at the selected positions, -100 elsewhere);
* a second pass of the backbone over the masked views (with the batch's attention mask), the LM head on its
  last hidden states, cross-entropy over the selected positions (mean), added with its weight;
* the LM head is the checkpoint's pre-training head where it has one (SimCSE loads
  ``BertForPreTraining.cls.predictions``; RoBERTa checkpoints carry ``lm_head``): here, the head of
  ``AutoModelForMaskedLM`` for any architecture whose head is one module, untied from the word embeddings
  (the original's separate ``lm_head`` module). Without pretrained head weights it starts at random (logged).

--mlm_clone_inputs: SimCSE clones ``input_ids`` before masking, so the contrastive views stay clean; ClusterNS
and MixCSE dropped the clone, so their contrastive views were the masked ones too (latent there: their scripts
never enable MLM). The default follows the objective's original (Objective.mlm_clones_inputs).

Under DDP the MLM loss is each rank's own mean (averaged by DDP), as in the original.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModelForMaskedLM

from clusterns.modeling.backbones import quiet_transformers
from clusterns.modeling.packing import known_index
from clusterns.objectives.functional import at_least_fp32
from clusterns.objectives.token_masking import bert_mask_tokens, content_generator, special_token_mask
from clusterns.precision import fp32_region

logger = logging.getLogger(__name__)

# The batch keys the masking transform adds (DiffCSE's own generator input is `mlm_input_ids`).
MLM_INPUT_IDS = "aux_mlm_input_ids"
MLM_LABELS = "aux_mlm_labels"
IGNORE_INDEX = -100


@dataclass
class MaskedLMArguments:
    """SimCSE's auxiliary-MLM flags (names as in SimCSE's train.py) and ClusterNS's clone switch."""

    do_mlm: bool = field(default=False, metadata={"help": "Add SimCSE's auxiliary masked-LM loss (any objective)."})
    mlm_weight: float = field(default=0.1, metadata={"help": "With --do_mlm: loss = objective + mlm_weight * MLM (SimCSE: 0.1)."})
    mlm_probability: float = field(
        default=0.15, metadata={"help": "With --do_mlm: the fraction of (non-special) tokens masked, in (0, 1) (SimCSE: 0.15)."}
    )
    # True here so that a bare --mlm_clone_inputs parses (and --no_mlm_clone_inputs exists); not given on the
    # command line, the run sets it to None: the objective's original (training/run.py parse_args).
    mlm_clone_inputs: bool | None = field(
        default=True,
        metadata={"help": "With --do_mlm: mask a copy of the views (SimCSE) or the views themselves, so the contrastive "
                          "loss sees masked inputs too (ClusterNS and MixCSE, which dropped the copy). Default: as the "
                          "objective's original (true for infonce and diffcse, false for clusterns and mixcse)."},
    )

    def __post_init__(self):
        if not 0.0 < float(self.mlm_probability) < 1.0:
            raise ValueError(f"--mlm_probability must lie strictly between 0 and 1, got {self.mlm_probability}")
        if not (math.isfinite(float(self.mlm_weight)) and float(self.mlm_weight) >= 0.0):
            raise ValueError(f"--mlm_weight must be a finite number >= 0, got {self.mlm_weight}")

    def given_without_do_mlm(self) -> list[str]:
        """The MLM flags set away from their defaults while --do_mlm is off (they would do nothing)."""
        if self.do_mlm:
            return []
        defaults = MaskedLMArguments()
        given = [f"--{name}" for name in ("mlm_weight", "mlm_probability") if getattr(self, name) != getattr(defaults, name)]
        return given + (["--mlm_clone_inputs"] if self.mlm_clone_inputs is not None else [])


# ---- the collator side -----------------------------------------------------------------------------
def mask_for_mlm(input_ids: Tensor, special_ids: list[int], mask_token_id: int, vocab_size: int, probability: float,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(masked ids, labels): BERT 80/10/10 masking of every row; labels = the original id where selected, -100 elsewhere."""
    selected_from = special_token_mask(input_ids, special_ids)
    masked, selected = bert_mask_tokens(input_ids, selected_from, mask_token_id, vocab_size, probability, generator)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked, labels


@dataclass
class MLMBatchMasking:
    """The collator transform of --do_mlm: adds aux_mlm_input_ids and aux_mlm_labels (the shape of input_ids);
    with clone_inputs=False the views themselves become the masked ids (ClusterNS's and MixCSE's behaviour).
    Picklable (ints and lists only), so DataLoader workers can run it."""

    probability: float
    mask_token_id: int
    vocab_size: int  # len(tokenizer): the range of the random replacement ids
    special_ids: list[int]
    clone_inputs: bool = True
    seed: int = 42

    @classmethod
    def from_tokenizer(cls, tokenizer, probability: float, clone_inputs: bool, seed: int = 42) -> "MLMBatchMasking":
        if tokenizer.mask_token_id is None:
            raise ValueError(f"--do_mlm needs a tokenizer with a mask token; {type(tokenizer).__name__} has none")
        return cls(float(probability), int(tokenizer.mask_token_id), len(tokenizer),
                   sorted({int(i) for i in tokenizer.all_special_ids}), bool(clone_inputs), int(seed))

    def __call__(self, batch: dict) -> dict:
        batch = dict(batch)
        ids = batch["input_ids"]
        flat = ids.reshape(-1, ids.shape[-1])
        attention = batch.get("attention_mask")
        attention = attention.reshape(flat.shape) if attention is not None else torch.ones_like(flat)
        masked, labels = mask_for_mlm(flat, self.special_ids, self.mask_token_id, self.vocab_size, self.probability,
                                      content_generator(flat, attention, self.seed))
        batch[MLM_INPUT_IDS], batch[MLM_LABELS] = masked.view_as(ids), labels.view_as(ids)
        if not self.clone_inputs:
            batch["input_ids"] = batch[MLM_INPUT_IDS]
        return batch


# ---- the model side ----------------------------------------------------------------------------------
def pretrained_mlm_head(model_name_or_path: str, **from_pretrained) -> tuple[nn.Module, bool]:
    """(the checkpoint's masked-LM head as its own module, whether its weights came from the checkpoint).

    The head is what AutoModelForMaskedLM holds besides the base model (BERT: `cls`, RoBERTa: `lm_head`); it is
    copied out, so its decoder is untied from any embedding matrix."""
    with quiet_transformers():
        mlm, info = AutoModelForMaskedLM.from_pretrained(model_name_or_path, output_loading_info=True, **from_pretrained)
    heads = [(name, module) for name, module in mlm.named_children() if name != mlm.base_model_prefix]
    if len(heads) != 1:
        raise ValueError(
            f"--do_mlm: the masked-LM head of {type(mlm).__name__} is not one module ({', '.join(n for n, _ in heads) or 'none'}); "
            "it is supported for architectures whose head is (BERT, RoBERTa, ...)"
        )
    name, head = heads[0]
    head = copy.deepcopy(head)
    missing = [k for k in info.get("missing_keys", []) if k.startswith(name + ".") and not k.endswith("decoder.weight")]
    return head, not missing


class MaskedLMLoss(nn.Module):
    """The auxiliary MLM: a backbone pass over the masked views, the LM head, the mean cross-entropy (fp32)."""

    def __init__(self, head: nn.Module, weight: float):
        super().__init__()
        self.head = head
        self.weight = float(weight)

    def forward(self, backbone: nn.Module, mlm_input_ids: Tensor, attention_mask: Tensor, labels: Tensor,
                token_type_ids: Tensor | None = None, reduction: str = "mean") -> Tensor:
        """The mean cross-entropy over the selected tokens; reduction "sum": their sum (a chunk's term under
        --mini_batch_size, divided by the whole batch's count of selected tokens, selected_tokens)."""
        length = mlm_input_ids.shape[-1]
        kwargs = {"token_type_ids": token_type_ids.reshape(-1, length)} if token_type_ids is not None else {}
        hidden = backbone(input_ids=mlm_input_ids.reshape(-1, length), attention_mask=attention_mask.reshape(-1, length),
                          return_dict=True, **kwargs).last_hidden_state
        flat_labels = labels.reshape(-1)
        keep = known_index(labels.reshape(-1, length), lambda t: t != IGNORE_INDEX)  # the head on the selected tokens only
        scores = self.head(hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep))
        with fp32_region(hidden.device.type):
            if keep.numel() == 0:  # nothing selected in this batch (tiny batches): no MLM signal, a zero with grad
                return scores.sum() * 0.0
            return F.cross_entropy(at_least_fp32(scores), flat_labels.index_select(0, keep), reduction=reduction)


def selected_tokens(labels: Tensor) -> Tensor:
    """How many tokens the MLM loss averages over (at least 1: a batch without any gives a zero loss)."""
    return (labels != IGNORE_INDEX).sum().clamp_min(1).float()


def build_masked_lm(args: MaskedLMArguments, model_name_or_path: str, vocab_size: int, **from_pretrained) -> MaskedLMLoss:
    head, pretrained = pretrained_mlm_head(model_name_or_path, **from_pretrained)
    if not pretrained:
        logger.warning("--do_mlm: %s holds no masked-LM head weights; the LM head starts from random weights", model_name_or_path)
    out_features = getattr(getattr(head, "decoder", None), "out_features", None) or vocab_size
    if out_features < vocab_size:
        raise ValueError(f"--do_mlm: the LM head predicts {out_features} ids, fewer than the tokenizer's {vocab_size}")
    return MaskedLMLoss(head, args.mlm_weight)


__all__ = ["MaskedLMArguments", "MLMBatchMasking", "MaskedLMLoss", "build_masked_lm", "mask_for_mlm",
           "pretrained_mlm_head", "selected_tokens", "MLM_INPUT_IDS", "MLM_LABELS", "IGNORE_INDEX"]
