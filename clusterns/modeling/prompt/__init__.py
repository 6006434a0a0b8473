"""PromptBERT as one component: templates, typed settings, the mask pooler with its delta, the training flags."""
from clusterns.modeling.prompt.arguments import PromptArguments, attach_prompt, enable_prompt
from clusterns.modeling.prompt.pooler import (
    PromptPooler,
    PromptSpec,
    delta_inputs,
    eval_delta,
    mask_positions,
    template_delta,
)
from clusterns.modeling.prompt.settings import (
    CONVENTIONS,
    PromptSettings,
    check_convention,
    eval_settings,
    prompt_config,
)
from clusterns.modeling.prompt.templates import (
    BERT_TEMPLATES,
    ORIGINAL_DEFAULT_TEMPLATE,
    ROBERTA_TEMPLATES,
    Template,
    build_template,
    check_template_syntax,
    split_template,
    string_input,
)


def get_spec(encoder) -> PromptSpec:
    """The tokenizer-resolved prompt of a prompt encoder (raises ValueError for any other pooler)."""
    if not isinstance(encoder.pooling, PromptPooler):
        raise ValueError(f"the encoder's pooler is {encoder.config.pooler_type!r}, not the prompt pooler (mask)")
    return encoder.pooling.spec(encoder)


__all__ = [
    "BERT_TEMPLATES", "CONVENTIONS", "ORIGINAL_DEFAULT_TEMPLATE", "PromptArguments", "PromptPooler", "PromptSettings",
    "PromptSpec", "ROBERTA_TEMPLATES", "Template", "attach_prompt", "build_template", "check_convention",
    "check_template_syntax", "delta_inputs", "enable_prompt", "eval_delta", "eval_settings", "get_spec",
    "mask_positions", "prompt_config", "split_template", "string_input", "template_delta",
]
