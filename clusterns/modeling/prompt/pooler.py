"""The PromptBERT mask pooler (kongds/Prompt-BERT, as used by ClusterNS's prompt variant) as one component.

A sentence is put into a template such as ``This sentence : "[X]" means [MASK].`` and the
sentence vector is the last-layer state at the [MASK] position (the ``mask`` pooler), optionally
minus the *template bias* delta (template denoising, ``--mask_embedding_sentence_delta``).
``PromptPooler`` owns everything that follows: the training and encode tokenisation, the mask
pooler, the delta and the evaluation convention; the encoder only calls the Pooler interface.
View 1 uses template 1, views 2/3 the different template when one is given.

Template denoising: the template with an empty slot, [CLS] P Q [SEP] (T tokens), is encoded as
L_d copies in which the position ids of every token after [CLS]+P are shifted by l in copy l (a
sentence of length l); delta[l] is the mask state of copy l. A view's sentence length is its
number of real tokens minus T, and its embedding is h_mask - delta[length]. In training delta is
computed every step with gradient and dropout (50 copies), per template; in evaluation under
no_grad from 128 copies of template 1 (prompt_bert/models.py).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from clusterns.modeling.backbones import max_positions, ready_padding_mask, space_marking_prompts
from clusterns.modeling.packing import reading_positions
from clusterns.modeling.pooling import Pooler
from clusterns.modeling.prompt.settings import (
    DELTA_COPIES_EVAL,
    DELTA_COPIES_TRAIN,
    PromptSettings,
    check_convention,
    eval_settings,
)
from clusterns.modeling.prompt.templates import Template, build_template, string_input

logger = logging.getLogger(__name__)


class PromptSpec:
    """PromptSettings resolved with the encoder's tokenizer, plus the evaluation delta cache."""

    def __init__(self, settings: PromptSettings, tokenizer, backbone_config):
        self.settings = settings
        self.space_marking = space_marking_prompts(backbone_config, tokenizer)
        self.t1 = build_template(settings.template, tokenizer, self.space_marking, "--mask_embedding_sentence_template")
        t2 = settings.template2
        self.t2 = build_template(t2, tokenizer, self.space_marking, "--mask_embedding_sentence_different_template", strict=False) if t2 else None
        self.mask_id = self.t1.mask_id
        self.max_positions = int(getattr(backbone_config, "max_position_embeddings", 512))
        self.eval_cache: dict[tuple, Tensor] = {}

    @property
    def templates(self) -> list[Template]:
        return [self.t1] if self.t2 is None else [self.t1, self.t2]

    def shift_start(self, template: Template) -> int:
        """Index of the first shifted position in the delta copies: after [CLS] + a prefix."""
        source = template if self.settings.delta_prefix_source == "own_template" else self.t1
        return 1 + len(source.prefix_ids)

    def max_copies(self, template: Template) -> int:
        """Most delta copies whose shifted positions stay inside the position table."""
        if self.settings.delta_no_position:
            return 1 << 30
        return self.max_positions - template.length + 1

    def train_copies(self, template: Template) -> int:
        wanted = max(DELTA_COPIES_TRAIN, int(self.settings.max_seq_length) + 1)
        return max(1, min(wanted, self.max_copies(template)))

    def tokenize_function(self, tokenizer, max_seq_length: int) -> "PromptTokenizeFunction":
        return PromptTokenizeFunction(tokenizer, self.t1, self.t2, max_seq_length)


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

    As the original, the position ids are passed explicitly starting at 0 (also for RoBERTa) and no token types
    are given. The original gives no attention mask either (every token attends to every token); an all-ones mask
    says the same explicitly, because transformers >= 5.25 reads position ids that jump (the shifted copies) without
    a mask as several packed sequences and would let each part attend only to itself. (Made ready as 4-D where
    transformers takes it so: its own builder would ask the device whether the mask is all ones, a host sync.)"""
    device = next(backbone.parameters()).device
    ids, positions = delta_inputs(template, copies, shift_start, no_position, device)
    mask = ready_padding_mask(backbone, torch.ones_like(ids))
    out = backbone(input_ids=ids, attention_mask=mask, position_ids=positions, return_dict=True)
    return out.last_hidden_state[:, template.empty_mask_index]


def _params_version(backbone) -> int:
    return sum(p._version for p in backbone.parameters())


def eval_delta(spec: PromptSpec, backbone, copies: int) -> Tensor:
    """Template-1 delta for evaluation (no gradient), cached until the weights change."""
    template = spec.t1
    copies = max(1, min(copies, spec.max_copies(template)))
    param = next(backbone.parameters())
    key = (copies, param.device, param.dtype, torch.is_autocast_enabled(param.device.type), _params_version(backbone))
    delta = spec.eval_cache.get(key)
    if delta is None:
        with torch.no_grad():
            delta = template_delta(backbone, template, copies, spec.shift_start(template), spec.settings.delta_no_position)
        spec.eval_cache.clear()
        spec.eval_cache[key] = delta
    return delta



# ---- the component -------------------------------------------------------------------------------
class PromptPooler(Pooler):
    """The ``mask`` pooler: the template's [MASK] state (- the template delta), with its own inputs.

    The registry holds an unbound instance; ``bind(config)`` gives each encoder its own, holding the
    typed settings (``config.prompt``), the tokenizer-resolved spec and the evaluation ``convention``:
    encode() of a new encoder uses dev (the in-training selection), a loaded checkpoint test (the final
    test, as evaluation.py), and an exported sentence-transformers model test unless one was chosen."""

    name = "mask"
    reads_one_token = True  # the mask token's state (pooled declares it)
    description = "PromptBERT: the last-layer state at the template's [MASK] token (--mask_embedding_sentence)"
    st_layout = "custom"
    auto_projector = "simcse_mlp"  # PromptBERT applies its MLPLayer (Linear + tanh) in training

    def __init__(self, settings: PromptSettings | None = None, convention: str | None = None):
        self.settings = settings
        self._convention = check_convention(convention) if convention is not None else None
        self._spec: tuple[tuple, PromptSpec] | None = None

    def bind(self, config: Any) -> "PromptPooler":
        settings = PromptSettings.from_dict(config.prompt) if config.prompt else None
        return PromptPooler(settings)

    @property
    def convention(self) -> str:
        return self._convention or "dev"

    @convention.setter
    def convention(self, value: str) -> None:
        self._convention = check_convention(value)

    def spec(self, encoder: Any) -> PromptSpec:
        if self.settings is None:
            raise ValueError("--pooler_type mask needs the prompt settings (train with --mask_embedding_sentence)")
        key = (self.settings, id(encoder.tokenizer))
        if self._spec is None or self._spec[0] != key:
            self._spec = (key, PromptSpec(self.settings, encoder.tokenizer, encoder.backbone.config))
        return self._spec[1]

    def configure_loaded(self, encoder: Any, prompt_convention: str | None = None, **options: Any) -> None:
        """A loaded prompt checkpoint evaluates with the recorded final-test convention (`test`) by default."""
        super().configure_loaded(encoder, **options)
        self.convention = prompt_convention or "test"
        self.spec(encoder)  # resolve (and validate) the recorded templates now

    def check(self, encoder: Any, max_seq_length: int | None = None) -> None:
        """Template tokens + --max_seq_length must fit the model (raises ValueError naming the flags)."""
        spec = self.spec(encoder)
        if max_seq_length is None:
            return
        limit = max_positions(encoder.backbone.config, encoder.tokenizer)
        for template in spec.templates:
            if template.overhead + max_seq_length > limit:
                raise ValueError(
                    f"{template.flag}: the template's {template.overhead} tokens plus --max_seq_length {max_seq_length} "
                    f"exceed the model's limit of {limit} tokens; shorten the template or lower --max_seq_length"
                )

    def training_tokenize_function(self, encoder: Any, max_seq_length: int) -> PromptTokenizeFunction:
        return self.spec(encoder).tokenize_function(encoder.tokenizer, max_seq_length)

    def tokenize(self, encoder: Any, sentences: list[str], max_seq_length: int | None = None) -> dict[str, list[list[int]]]:
        """Template-1 inputs per the convention. `max_seq_length` (optional) truncates the *sentence* tokens; the template
        comes on top, and the sentence is always cut so that the whole input fits the model."""
        spec = self.spec(encoder)
        spec.eval_cache.clear()  # weights may have changed since the last encode()
        settings = eval_settings(spec.settings, self.convention)
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

    def pooled(self, encoder: Any, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
               num_views: int | None = None) -> Tensor:
        """h_mask (- delta[sentence length]) per row, [N, H].

        Training (encoder.training): rows are flattened [B, V] views; view 0 uses template 1, the
        others template 2 (when given), each with its own delta computed now, with gradient and dropout.
        Evaluation: template 1, delta per the convention, no gradient."""
        spec = self.spec(encoder)
        settings = spec.settings
        backbone = encoder.backbone
        deltas: list[Tensor] = []
        if encoder.training:
            use_delta = bool(settings.delta)
            if use_delta:  # computed before the main pass, template 1 then 2, as the original
                with torch.set_grad_enabled(torch.is_grad_enabled() and not settings.delta_freeze):
                    for template in spec.templates:
                        deltas.append(template_delta(backbone, template, spec.train_copies(template),
                                                     spec.shift_start(template), settings.delta_no_position))
        else:
            use_delta = eval_settings(settings, self.convention).delta
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
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        with reading_positions(backbone, positions):  # only the mask tokens' last-layer states are read
            out = backbone(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
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

    def st_module_options(self) -> dict[str, Any]:
        return {"prompt_convention": self._convention or "test"}
