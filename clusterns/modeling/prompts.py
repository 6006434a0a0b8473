"""PromptBERT representation (kongds/Prompt-BERT, as used by ClusterNS's prompt variant).

A sentence is put into a template such as ``This sentence : "[X]" means [MASK].`` and the
sentence vector is the last-layer state at the [MASK] position (the ``mask`` pooler), optionally
minus the *template bias* delta (template denoising, ``--mask_embedding_sentence_delta``).
See ``shared/specs/clusterns.md`` §10, §13 item 8 and §15.

Templates use the original syntax: ``*cls*`` and ``*sep+*`` (dropped: the special tokens are
added around the ids), ``*sent_0*`` (the sentence slot), ``*mask*`` (the mask token) and ``_``
for a space; the template itself contains no space. Split at the slot into a prefix P and a
suffix Q (for RoBERTa P's outer spaces are stripped), the training ids are

    [CLS] + tok(P) + tok(sentence)[:max_seq_length] + tok(Q) + [SEP]

(the template tokens come on top of --max_seq_length). View 1 uses template 1, views 2/3 the
different template when one is given.

Template denoising: the template with an empty slot, [CLS] P Q [SEP] (T tokens), is encoded as
L_d copies in which the position ids of every token after [CLS]+P are shifted by l in copy l (a
sentence of length l); delta[l] is the mask state of copy l. A view's sentence length is its
number of real tokens minus T, and its embedding is h_mask - delta[length]. In training delta is
computed every step with gradient and dropout (50 copies), per template; in evaluation under
no_grad from 128 copies of template 1.

Evaluation conventions (``SentenceEncoder.prompt_convention``):
  dev / consistent  the in-training selection: template-1 ids around the sentence ids, delta if
                    the model was trained with it (and not --mask_embedding_sentence_delta_no_delta_eval).
  test              the checkpoint's recorded final-test switches (--prompt_test_add_period,
                    --prompt_test_delta); with their faithful defaults this is ``original``.
  original          evaluation_prompt.py as called by run_prompt.sh: the string P + sentence + Q
                    with '.' appended when the sentence does not end in . ? " ', tokenised as a
                    whole, raw mask state (no delta).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

SENT_SLOT = "*sent_0*"
MASK_SLOT = "*mask*"

# PromptBERT's template pairs (view 1, view 2), as in ClusterNS's run_prompt.sh.
BERT_TEMPLATES = (
    '*cls*_This_sentence_of_"*sent_0*"_means*mask*.*sep+*',
    '*cls*_This_sentence_:_"*sent_0*"_means*mask*.*sep+*',
)
ROBERTA_TEMPLATES = (
    "*cls*_This_sentence_:_'_*sent_0*_'_means*mask*.*sep+*",
    "*cls*_The_sentence_:_'_*sent_0*_'_means*mask*.*sep+*",
)
# train_prompt.py's default of both --mask_embedding_sentence_template and
# --mask_embedding_sentence_different_template (the RoBERTa "The sentence" template).
ORIGINAL_DEFAULT_TEMPLATE = "*cls*_The_sentence_:_'_*sent_0*_'_means*mask*.*sep+*"

DELTA_COPIES_TRAIN = 50  # prompt_bert/models.py get_delta(length=50)
DELTA_COPIES_EVAL = 128  # sentemb_forward: 128 shifted copies
TEST_PERIOD_ENDINGS = ".?\"'"

PROMPT_TEMPLATES = ("original", "per_backbone")
DELTA_PREFIX_SOURCES = ("template1", "own_template")
CONVENTIONS = ("test", "dev", "consistent", "original")
ROBERTA_TYPES = {"roberta", "xlm-roberta", "camembert"}


def _choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"--{flag} must be one of {', '.join(choices)}; got {value!r}")


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
                          "per_backbone (corrected: the BERT pair for BERT, the RoBERTa pair for RoBERTa; when only "
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
        _choice("prompt_templates", self.prompt_templates, PROMPT_TEMPLATES)
        _choice("delta_prefix_source", self.delta_prefix_source, DELTA_PREFIX_SOURCES)
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


def prompt_config(
    template: str,
    template2: str | None = None,
    delta: bool = False,
    delta_freeze: bool = False,
    delta_no_position: bool = False,
    delta_no_delta_eval: bool = False,
    delta_prefix_source: str = "template1",
    test_delta: bool = False,
    test_add_period: bool = True,
    max_seq_length: int = 32,
) -> dict[str, Any]:
    """EncoderConfig.prompt, also for evaluating a plain checkpoint with a template:
    ``SentenceEncoder.from_pretrained(path, pooler="mask", prompt=prompt_config(T))``."""
    check_template_syntax(template, "--mask_embedding_sentence_template")
    if template2:
        check_template_syntax(template2, "--mask_embedding_sentence_different_template")
    _choice("delta_prefix_source", delta_prefix_source, DELTA_PREFIX_SOURCES)
    return {
        "template": template, "template2": template2 or None, "delta": bool(delta),
        "delta_freeze": bool(delta_freeze), "delta_no_position": bool(delta_no_position),
        "delta_no_delta_eval": bool(delta_no_delta_eval), "delta_prefix_source": delta_prefix_source,
        "test_delta": bool(test_delta), "test_add_period": bool(test_add_period), "max_seq_length": int(max_seq_length),
    }


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


def prompt_projector(projector: str) -> str:
    """PromptBERT applies its MLPLayer (Linear + tanh) to the prompt embedding in training."""
    return "simcse_mlp" if projector == "auto" else projector


def attach_prompt(encoder, prompt_args: PromptArguments, max_seq_length: int) -> PromptSpec:
    """Record the resolved prompt settings in encoder.config.prompt and validate them against the model."""
    is_roberta = getattr(encoder.backbone.config, "model_type", "") in ROBERTA_TYPES
    encoder.config.prompt = prompt_args.to_config(is_roberta, max_seq_length)
    spec = check_limits(encoder, max_seq_length)
    logger.info("prompt: template 1 %r -> %s, template 2 %r", spec.t1.text, list(spec.t1.empty_ids),
                spec.t2.text if spec.t2 else None)
    return spec


def evaluation_load_kwargs(
    path: str,
    mask_embedding_sentence: bool = False,
    template: str | None = None,
    delta: bool = False,
    convention: str | None = None,
) -> dict[str, Any]:
    """evaluation.py's prompt flags -> SentenceEncoder.from_pretrained keyword arguments.

    Our prompt checkpoints need none of them (the template is recorded; --prompt_convention picks
    test / original / consistent). --mask_embedding_sentence (+ --mask_embedding_sentence_template,
    --mask_embedding_sentence_delta) evaluates any checkpoint with a template as evaluation_prompt.py
    (the mask pooler replaces --pooler, as there); on one of our prompt checkpoints the template
    flag replaces the recorded template and --mask_embedding_sentence_delta turns on the test delta."""
    import os

    from clusterns.modeling.encoder import CONFIG_NAME

    kwargs: dict[str, Any] = {}
    if convention is not None:
        kwargs["prompt_convention"] = check_convention(convention)
    if not mask_embedding_sentence:
        if template is not None or delta:
            raise ValueError("--mask_embedding_sentence_template / --mask_embedding_sentence_delta need --mask_embedding_sentence")
        return kwargs
    saved_file = os.path.join(path, CONFIG_NAME)
    saved = json.load(open(saved_file)).get("prompt") if os.path.isfile(saved_file) else None
    if saved:
        settings = dict(saved)
        if template is not None:
            check_template_syntax(template, "--mask_embedding_sentence_template")
            settings["template"] = template
        settings["test_delta"] = bool(settings.get("test_delta")) or delta
    else:
        if template is None:
            raise ValueError(f"{path!r} records no prompt: --mask_embedding_sentence needs --mask_embedding_sentence_template")
        settings = prompt_config(template, test_delta=delta)
    kwargs.update(pooler="mask", prompt=settings)
    return kwargs


# ---- templates -----------------------------------------------------------------------------------
def check_template_syntax(template: str, flag: str) -> None:
    if not isinstance(template, str) or not template:
        raise ValueError(f"{flag} must be a non-empty template string")
    if template.count(SENT_SLOT) != 1:
        raise ValueError(f"{flag} {template!r} must contain exactly one sentence slot {SENT_SLOT} (found {template.count(SENT_SLOT)})")
    if template.count(MASK_SLOT) != 1:
        raise ValueError(f"{flag} {template!r} must contain exactly one mask slot {MASK_SLOT} (found {template.count(MASK_SLOT)})")
    if " " in template:
        raise ValueError(f"{flag} {template!r} contains a space; write spaces as '_' (the original asserts this)")


def split_template(template: str, mask_token: str, strip_prefix: bool, flag: str = "--mask_embedding_sentence_template") -> tuple[str, str]:
    """train_prompt.py's parsing: (prefix P, suffix Q) strings around the sentence slot."""
    check_template_syntax(template, flag)
    text = template.replace(MASK_SLOT, mask_token).replace("*sep+*", "").replace("*cls*", "").replace(SENT_SLOT, " ")
    head, tail = text.split(" ")
    prefix, suffix = head.replace("_", " "), tail.replace("_", " ")
    if strip_prefix:  # RoBERTa: "remove empty block"
        prefix = prefix.strip()
    return prefix, suffix


def string_input(template: str, mask_token: str, sentence: str, add_period: bool) -> str:
    """evaluation_prompt.py's test input: the whole prompt as one string."""
    text = template.replace(MASK_SLOT, mask_token).replace("_", " ").replace("*sep+*", "").replace("*cls*", "")
    if add_period and len(sentence) > 0 and sentence[-1] not in TEST_PERIOD_ENDINGS:
        sentence += "."
    return text.replace("*sent 0*", sentence).strip()


@dataclass(frozen=True)
class Template:
    """One template resolved with a tokenizer."""

    text: str
    prefix: str
    suffix: str
    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]
    empty_ids: tuple[int, ...]  # the delta input: tokenizer.encode(P + Q) with special tokens
    cls_id: int
    sep_id: int
    mask_id: int
    flag: str = "--mask_embedding_sentence_template"

    @property
    def length(self) -> int:
        """T: tokens of the empty template, special tokens included."""
        return len(self.empty_ids)

    @property
    def overhead(self) -> int:
        """Template tokens added around a sentence (special tokens included)."""
        return 2 + len(self.prefix_ids) + len(self.suffix_ids)

    @property
    def mask_in_suffix(self) -> bool:
        return self.mask_id in self.suffix_ids

    @property
    def empty_mask_index(self) -> int:
        return self.empty_ids.index(self.mask_id)

    def wrap(self, sentence_ids: list[int]) -> list[int]:
        return [self.cls_id, *self.prefix_ids, *sentence_ids, *self.suffix_ids, self.sep_id]


def build_template(text: str, tokenizer, is_roberta: bool, flag: str = "--mask_embedding_sentence_template", strict: bool = True) -> Template:
    if tokenizer.mask_token is None or tokenizer.mask_token_id is None:
        raise ValueError(f"{flag}: the tokenizer has no mask token, so a prompt cannot be built")
    prefix, suffix = split_template(text, tokenizer.mask_token, is_roberta, flag)
    prefix_ids = tokenizer.encode(prefix, add_special_tokens=False)
    suffix_ids = tokenizer.encode(suffix, add_special_tokens=False)
    mask_id = tokenizer.mask_token_id
    n_masks = (prefix_ids + suffix_ids).count(mask_id)
    if n_masks != 1:
        raise ValueError(f"{flag} {text!r} gives {n_masks} mask tokens after tokenisation; exactly one is needed")
    specials = tokenizer.encode("")
    if len(specials) == 2:
        cls_id, sep_id = specials  # train_prompt.py: model.bos / model.eos
    else:
        cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise ValueError(f"{flag}: the tokenizer has no [CLS]/[SEP] (<s>/</s>) tokens")
    concatenated = [cls_id, *prefix_ids, *suffix_ids, sep_id]
    joint = tokenizer.encode(prefix + suffix)
    if joint != concatenated:
        message = (
            f"{flag} {text!r}: the prefix {prefix!r} and suffix {suffix!r} tokenise differently when joined "
            f"({joint} vs {concatenated}), so the empty template used for denoising does not match the training "
            "inputs; put a space ('_') on one side of *sent_0*"
        )
        if strict:  # train_prompt.py asserts this for template 1
            raise ValueError(message)
        logger.warning("%s (the original uses the joined ids for the delta, as here)", message)
        if joint.count(mask_id) != 1:
            raise ValueError(message)
    return Template(text, prefix, suffix, tuple(prefix_ids), tuple(suffix_ids), tuple(joint), cls_id, sep_id, mask_id, flag)


# ---- the resolved prompt of an encoder -----------------------------------------------------------
class PromptSpec:
    """EncoderConfig.prompt resolved with the encoder's tokenizer, plus the evaluation delta cache."""

    def __init__(self, settings: dict[str, Any], tokenizer, backbone_config):
        self.settings = dict(settings)
        self.is_roberta = getattr(backbone_config, "model_type", "") in ROBERTA_TYPES
        self.t1 = build_template(settings["template"], tokenizer, self.is_roberta, "--mask_embedding_sentence_template")
        t2 = settings.get("template2")
        self.t2 = build_template(t2, tokenizer, self.is_roberta, "--mask_embedding_sentence_different_template", strict=False) if t2 else None
        self.mask_id = self.t1.mask_id
        self.max_positions = int(getattr(backbone_config, "max_position_embeddings", 512))
        self._eval_cache: dict[tuple, Tensor] = {}

    def __getattr__(self, name: str) -> Any:
        settings = self.__dict__.get("settings", {})
        if name in settings:
            return settings[name]
        raise AttributeError(name)

    @property
    def templates(self) -> list[Template]:
        return [self.t1] if self.t2 is None else [self.t1, self.t2]

    def shift_start(self, template: Template) -> int:
        """Index of the first shifted position in the delta copies: after [CLS] + a prefix."""
        source = template if self.delta_prefix_source == "own_template" else self.t1
        return 1 + len(source.prefix_ids)

    def max_copies(self, template: Template) -> int:
        """Most delta copies whose shifted positions stay inside the position table."""
        if self.delta_no_position:
            return 1 << 30
        return self.max_positions - template.length + 1

    def train_copies(self, template: Template) -> int:
        wanted = max(DELTA_COPIES_TRAIN, int(self.settings.get("max_seq_length", 32)) + 1)
        return max(1, min(wanted, self.max_copies(template)))

    def clear_cache(self) -> None:
        self._eval_cache.clear()

    def tokenize_function(self, tokenizer, max_seq_length: int) -> "PromptTokenizeFunction":
        return PromptTokenizeFunction(tokenizer, self.t1, self.t2, max_seq_length)


def get_spec(encoder) -> PromptSpec:
    settings = encoder.config.prompt
    if not settings:
        raise ValueError("--pooler_type mask needs the prompt settings (train with --mask_embedding_sentence)")
    key = (json.dumps(settings, sort_keys=True), id(encoder.tokenizer))
    cached = encoder.__dict__.get("_prompt_spec")
    if cached is not None and cached[0] == key:
        return cached[1]
    spec = PromptSpec(settings, encoder.tokenizer, encoder.backbone.config)
    encoder.__dict__["_prompt_spec"] = (key, spec)
    return spec


def check_limits(encoder, max_seq_length: int) -> PromptSpec:
    """Template tokens + --max_seq_length must fit the model (raises ValueError naming the flags)."""
    from clusterns.modeling.encoder import max_positions

    spec = get_spec(encoder)
    limit = max_positions(encoder.backbone.config, encoder.tokenizer)
    for template in spec.templates:
        if template.overhead + max_seq_length > limit:
            raise ValueError(
                f"{template.flag}: the template's {template.overhead} tokens plus --max_seq_length {max_seq_length} "
                f"exceed the model's limit of {limit} tokens; shorten the template or lower --max_seq_length"
            )
    return spec


# ---- training inputs -----------------------------------------------------------------------------
class PromptTokenizeFunction:
    """Batched `datasets.map` function: sent0 -> template 1, sent1 / hard_neg -> template 2.

    Sentences are tokenised without special tokens and truncated to max_seq_length tokens; the
    template tokens come on top. Unsupervised rows with two templates get `sent1_ids` = the same
    sentence in template 2 (the collator otherwise duplicates `sent0_ids`)."""

    def __init__(self, tokenizer, t1: Template, t2: Template | None, max_seq_length: int):
        self.tokenizer = tokenizer
        self.t1 = t1
        self.t2 = t2
        self.max_seq_length = max_seq_length

    def _sentence_ids(self, texts: list) -> list[list[int]]:
        texts = [t if isinstance(t, str) and t else " " for t in texts]
        ids = self.tokenizer(texts, add_special_tokens=False, truncation=False, padding=False)["input_ids"]
        return [x[: self.max_seq_length] for x in ids]

    def __call__(self, examples: dict) -> dict:
        t2 = self.t2 or self.t1
        out = {}
        sent0 = self._sentence_ids(examples["sent0"])
        out["sent0_ids"] = [self.t1.wrap(x) for x in sent0]
        if "sent1" in examples:
            out["sent1_ids"] = [t2.wrap(x) for x in self._sentence_ids(examples["sent1"])]
        elif self.t2 is not None:
            out["sent1_ids"] = [t2.wrap(x) for x in sent0]
        if "hard_neg" in examples:
            out["hard_neg_ids"] = [t2.wrap(x) for x in self._sentence_ids(examples["hard_neg"])]
        return out


# ---- evaluation inputs ---------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalSettings:
    string_inputs: bool  # evaluation_prompt.py's whole-string tokenisation (with the period rule)
    delta: bool


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"prompt convention must be one of {', '.join(CONVENTIONS)}; got {convention!r}")
    return convention


def eval_settings(spec: PromptSpec, convention: str) -> EvalSettings:
    check_convention(convention)
    if convention in ("dev", "consistent"):
        return EvalSettings(False, bool(spec.delta and not spec.delta_no_delta_eval))
    if convention == "original":
        return EvalSettings(True, False)
    return EvalSettings(bool(spec.test_add_period), bool(spec.test_delta))


def encoder_convention(encoder) -> str:
    return getattr(encoder, "prompt_convention", None) or "dev"


def tokenize_for_encode(encoder, sentences: list[str], max_seq_length: int | None = None) -> dict[str, list[list[int]]]:
    """SentenceEncoder.tokenize for prompt encoders: template-1 inputs per the encoder's convention.

    max_seq_length (optional) truncates the *sentence* tokens; the template comes on top, and the
    sentence is always cut so that the whole input fits the model."""
    from clusterns.modeling.encoder import max_positions

    spec = get_spec(encoder)
    spec.clear_cache()  # weights may have changed since the last encode()
    settings = eval_settings(spec, encoder_convention(encoder))
    tokenizer = encoder.tokenizer
    limit = max_positions(encoder.backbone.config, tokenizer)
    budget = limit - spec.t1.overhead
    if budget < 0:
        raise ValueError(f"{spec.t1.flag}: the template alone ({spec.t1.overhead} tokens) exceeds the model's limit of {limit}")
    if max_seq_length:
        budget = min(budget, max_seq_length)
    sentences = [s if isinstance(s, str) else str(s) for s in sentences]
    if not settings.string_inputs:
        ids = tokenizer(sentences, add_special_tokens=False, truncation=False, padding=False)["input_ids"] if sentences else []
        input_ids = [spec.t1.wrap(x[:budget]) for x in ids]
    else:
        input_ids = [_string_ids(spec.t1, tokenizer, s, budget, limit) for s in sentences]
    return {"input_ids": input_ids, "attention_mask": [[1] * len(x) for x in input_ids]}


def _string_ids(template: Template, tokenizer, sentence: str, budget: int, limit: int) -> list[int]:
    ids = tokenizer.encode(string_input(template.text, tokenizer.mask_token, sentence, True))
    if len(ids) <= limit and len(ids) - template.overhead <= budget:
        return ids
    # Too long (the original does not truncate and fails): cut the sentence at a token boundary.
    enc = tokenizer(sentence, add_special_tokens=False, return_offsets_mapping=True)
    keep = min(budget, len(enc["input_ids"]))
    while keep > 0:
        cut = sentence[: enc["offset_mapping"][keep - 1][1]]
        ids = tokenizer.encode(string_input(template.text, tokenizer.mask_token, cut, True))
        if len(ids) <= limit:
            return ids
        keep -= max(1, len(ids) - limit)
    return tokenizer.encode(string_input(template.text, tokenizer.mask_token, "", True))


# ---- mask pooler and template denoising ----------------------------------------------------------
def mask_positions(input_ids: Tensor, mask_id: int, last: bool | Tensor = True) -> Tensor:
    """Index of the template's mask token per row: the last occurrence when the mask is in the
    suffix, the first when it is in the prefix (robust to a mask string inside the sentence)."""
    length = input_ids.shape[1]
    hit = input_ids == mask_id
    pos = torch.arange(length, device=input_ids.device)
    last_idx = torch.where(hit, pos, -1).argmax(dim=1)
    first_idx = torch.where(hit, length - pos, -1).argmax(dim=1)
    if isinstance(last, Tensor):
        return torch.where(last, last_idx, first_idx)
    return last_idx if last else first_idx


def delta_inputs(template: Template, copies: int, shift_start: int, no_position: bool = False, device=None) -> tuple[Tensor, Tensor]:
    """(input_ids, position_ids) [copies, T] of the shifted empty-template copies."""
    ids = torch.tensor(template.empty_ids, dtype=torch.long, device=device).unsqueeze(0).repeat(copies, 1)
    positions = torch.arange(ids.shape[1], device=device).unsqueeze(0).repeat(copies, 1)
    if not no_position:
        positions[:, shift_start:] += torch.arange(copies, device=device).unsqueeze(-1)
    return ids, positions


def template_delta(backbone, template: Template, copies: int, shift_start: int, no_position: bool = False) -> Tensor:
    """delta [copies, H]: the last-layer mask state of each shifted copy (gradient per the caller's mode).

    As the original, the position ids are passed explicitly starting at 0 (also for RoBERTa) and
    no attention mask / token types are given."""
    device = next(backbone.parameters()).device
    ids, positions = delta_inputs(template, copies, shift_start, no_position, device)
    out = backbone(input_ids=ids, position_ids=positions, return_dict=True)
    return out.last_hidden_state[:, template.empty_mask_index]


def _params_version(backbone) -> int:
    return sum(p._version for p in backbone.parameters())


def eval_delta(spec: PromptSpec, backbone, copies: int) -> Tensor:
    """Template-1 delta for evaluation (no gradient), cached until the weights change."""
    template = spec.t1
    copies = max(1, min(copies, spec.max_copies(template)))
    param = next(backbone.parameters())
    key = (copies, param.device, param.dtype, torch.is_autocast_enabled(param.device.type), _params_version(backbone))
    delta = spec._eval_cache.get(key)
    if delta is None:
        with torch.no_grad():
            delta = template_delta(backbone, template, copies, spec.shift_start(template), spec.delta_no_position)
        spec._eval_cache.clear()
        spec._eval_cache[key] = delta
    return delta


def prompt_pooled(encoder, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
                  num_views: int | None = None) -> Tensor:
    """The mask pooler: h_mask (- delta[sentence length]) per row, [N, H].

    Training (encoder.training): rows are flattened [B, V] views; view 0 uses template 1, the
    others template 2 (when given), each with its own delta computed now, with gradient and dropout.
    Evaluation: template 1, delta per the encoder's prompt convention, no gradient."""
    spec = get_spec(encoder)
    backbone = encoder.backbone
    deltas: list[Tensor] = []
    if encoder.training:
        use_delta = bool(spec.delta)
        if use_delta:  # computed before the main pass, template 1 then 2, as the original
            with torch.set_grad_enabled(torch.is_grad_enabled() and not spec.delta_freeze):
                for template in spec.templates:
                    deltas.append(template_delta(backbone, template, spec.train_copies(template),
                                                 spec.shift_start(template), spec.delta_no_position))
    else:
        use_delta = eval_settings(spec, encoder_convention(encoder)).delta
    kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    two = encoder.training and spec.t2 is not None and num_views is not None and num_views > 1
    if two:
        second = (rows % num_views) > 0  # views 2 (and 3) use template 2
        if spec.t1.mask_in_suffix == spec.t2.mask_in_suffix:
            positions = mask_positions(input_ids, spec.mask_id, spec.t1.mask_in_suffix)
        else:
            last = torch.where(second, spec.t2.mask_in_suffix, spec.t1.mask_in_suffix)
            positions = mask_positions(input_ids, spec.mask_id, last)
    else:
        positions = mask_positions(input_ids, spec.mask_id, spec.t1.mask_in_suffix)
        if not encoder.training and not bool((input_ids == spec.mask_id).any(dim=1).all()):
            raise ValueError("a prompt input has no mask token (was it built with this encoder's template?)")
    hidden = out.last_hidden_state[rows, positions]
    if not use_delta:
        return hidden
    lengths = attention_mask.sum(dim=-1)
    if encoder.training:
        if two:
            d1, d2 = deltas
            template_len = torch.where(second, spec.t2.length, spec.t1.length)
            index = (lengths - template_len).clamp(0, d1.shape[0] - 1)
            index = torch.where(second, (lengths - template_len).clamp(0, d2.shape[0] - 1) + d1.shape[0], index)
            table = torch.cat([d1, d2])
        else:
            table = deltas[0]
            index = (lengths - spec.t1.length).clamp(0, table.shape[0] - 1)
    else:
        sentence_len = lengths - spec.t1.length
        needed = int(sentence_len.max()) + 1 if sentence_len.numel() else 1
        table = eval_delta(spec, backbone, max(DELTA_COPIES_EVAL, needed))
        index = sentence_len.clamp(0, table.shape[0] - 1)
    return hidden - table[index].to(hidden.dtype)


def prompt_summary(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in settings.items())


__all__ = [
    "BERT_TEMPLATES", "ROBERTA_TEMPLATES", "ORIGINAL_DEFAULT_TEMPLATE", "PromptArguments", "PromptSpec", "Template",
    "build_template", "check_limits", "check_template_syntax", "delta_inputs", "eval_settings", "get_spec",
    "mask_positions", "prompt_config", "prompt_pooled", "split_template", "string_input", "template_delta",
    "tokenize_for_encode",
]
