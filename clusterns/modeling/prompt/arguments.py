"""PromptBERT's training flags (names as in ClusterNS's train_prompt.py) and how a run applies them."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from clusterns.modeling.backbones import space_marking_prompts
from clusterns.modeling.prompt.settings import DELTA_PREFIX_SOURCES, check_choice, prompt_config
from clusterns.modeling.prompt.templates import (
    BERT_TEMPLATES,
    ORIGINAL_DEFAULT_TEMPLATE,
    ROBERTA_TEMPLATES,
    check_template_syntax,
)

logger = logging.getLogger(__name__)

PROMPT_TEMPLATES = ("original", "per_backbone")


# ---- flags ---------------------------------------------------------------------------------------
@dataclass
class PromptArguments:
    """PromptBERT flags (names as in ClusterNS's train_prompt.py) and the faithful/corrected switches."""

    mask_embedding_sentence: bool = field(
        default=False,
        metadata={"help": "Prompt-based sentence embeddings (PromptBERT): the sentence is put into a template and "
                          "represented by the last-layer state at the mask token (implies --pooler_type mask)."},
    )
    mask_embedding_sentence_template: str | None = field(
        default=None,
        metadata={"help": "Template of view 1 (and of evaluation), e.g. '*cls*_This_sentence_of_\"*sent_0*\"_means*mask*.*sep+*': "
                          "*sent_0* = the sentence slot, *mask* = the mask token, _ = a space, *cls*/*sep+* = the "
                          "special tokens. Default: see --prompt_templates."},
    )
    mask_embedding_sentence_different_template: str | None = field(
        default=None,
        metadata={"help": "Template of view 2 (and of a hard-negative view); '' = view 2 uses template 1. "
                          "Default: see --prompt_templates."},
    )
    mask_embedding_sentence_delta: bool = field(
        default=False,
        metadata={"help": "Template denoising: subtract the template-only mask state with position ids shifted by the "
                          "sentence length (with gradient in training, per template; no gradient in evaluation)."},
    )
    mask_embedding_sentence_delta_freeze: bool = field(
        default=False, metadata={"help": "Compute the training delta without gradient."}
    )
    mask_embedding_sentence_delta_no_position: bool = field(
        default=False, metadata={"help": "Do not shift the position ids of the delta copies (all copies identical)."}
    )
    mask_embedding_sentence_delta_no_delta_eval: bool = field(
        default=False, metadata={"help": "No delta in the in-training (dev) evaluation."}
    )
    prompt_templates: str = field(
        default="original",
        metadata={"help": "Defaults of the two template flags: original (train_prompt.py: the RoBERTa 'The sentence : "
                          "'...'' template for both views, whatever the backbone; a template left unset stays on it) or "
                          "per_backbone (corrected: the BERT pair for WordPiece tokenizers: BERT, ELECTRA, DistilBERT, MPNet; the "
                          "RoBERTa pair, a space on both sides of the sentence slot, for RoBERTa and the Ġ/▁ tokenizers: "
                          "XLM-R, DeBERTa-v2/v3, ALBERT, ModernBERT; when only "
                          "--mask_embedding_sentence_template is given, view 2 uses it too)."},
    )
    delta_prefix_source: str = field(
        default="template1",
        metadata={"help": "Where the position shift of template 2's delta copies starts: template1 (original: after "
                          "[CLS] + template 1's prefix, for both templates) or own_template (after each template's own prefix)."},
    )
    prompt_test_delta: bool = field(
        default=False,
        metadata={"help": "Final test (evaluation.py / SentenceEncoder.from_pretrained): subtract the template delta. "
                          "Original: False (run_prompt.sh tests raw mask states); True with --no_prompt_test_add_period "
                          "= the selection convention."},
    )
    prompt_test_add_period: bool = field(
        default=True,
        metadata={"help": "Final test inputs as evaluation_prompt.py (original, True): the string prefix + sentence + "
                          "suffix with '.' appended when missing, tokenised as a whole. False: the selection inputs "
                          "(template 1 ids around the sentence ids, as in training)."},
    )

    def __post_init__(self):
        check_choice("prompt_templates", self.prompt_templates, PROMPT_TEMPLATES)
        check_choice("delta_prefix_source", self.delta_prefix_source, DELTA_PREFIX_SOURCES)
        if self.mask_embedding_sentence_template is not None:
            check_template_syntax(self.mask_embedding_sentence_template, "--mask_embedding_sentence_template")
        if self.mask_embedding_sentence_different_template:
            check_template_syntax(
                self.mask_embedding_sentence_different_template, "--mask_embedding_sentence_different_template"
            )

    def resolve_templates(self, is_roberta: bool) -> tuple[str, str | None]:
        """(template 1, template 2 or None when view 2 uses template 1)."""
        t1, t2 = self.mask_embedding_sentence_template, self.mask_embedding_sentence_different_template
        if self.prompt_templates == "original":
            t1 = ORIGINAL_DEFAULT_TEMPLATE if t1 is None else t1
            t2 = ORIGINAL_DEFAULT_TEMPLATE if t2 is None else t2
        else:
            pair = ROBERTA_TEMPLATES if is_roberta else BERT_TEMPLATES
            if t1 is None:
                t1 = pair[0]
                t2 = pair[1] if t2 is None else t2
        return t1, (t2 or None)

    def to_config(self, is_roberta: bool, max_seq_length: int) -> dict[str, Any]:
        """The settings recorded in clusterns_config.json (EncoderConfig.prompt)."""
        t1, t2 = self.resolve_templates(is_roberta)
        return prompt_config(
            template=t1, template2=t2, delta=self.mask_embedding_sentence_delta,
            delta_freeze=self.mask_embedding_sentence_delta_freeze,
            delta_no_position=self.mask_embedding_sentence_delta_no_position,
            delta_no_delta_eval=self.mask_embedding_sentence_delta_no_delta_eval,
            delta_prefix_source=self.delta_prefix_source, test_delta=self.prompt_test_delta,
            test_add_period=self.prompt_test_add_period, max_seq_length=max_seq_length,
        )


def enable_prompt(model_args, prompt_args: PromptArguments | None) -> PromptArguments | None:
    """train.py: --mask_embedding_sentence (or --pooler_type mask) turns the prompt on and the pooler
    to `mask`; returns the prompt flags to apply, None for a non-prompt run (nothing changed)."""
    enabled = (prompt_args is not None and prompt_args.mask_embedding_sentence) or model_args.pooler_type == "mask"
    if not enabled:
        return None
    if model_args.pooler_type not in ("cls", "mask"):
        raise ValueError(
            f"--mask_embedding_sentence represents a sentence by its mask token: it needs --pooler_type mask "
            f"(or the default), not {model_args.pooler_type!r}"
        )
    model_args.pooler_type = "mask"
    return prompt_args if prompt_args is not None else PromptArguments(mask_embedding_sentence=True)


def attach_prompt(encoder, prompt_args: PromptArguments, max_seq_length: int) -> None:
    """Record the resolved prompt settings in the encoder's config (the run builder then checks the template
    tokens plus --max_seq_length against the model through encoder.pooling.check)."""
    encoder.configure(prompt=prompt_args.to_config(space_marking_prompts(encoder.backbone.config, encoder.tokenizer), max_seq_length))
    spec = encoder.pooling.spec(encoder)
    logger.info("prompt: template 1 %r -> %s, template 2 %r", spec.t1.text, list(spec.t1.empty_ids),
                spec.t2.text if spec.t2 else None)
