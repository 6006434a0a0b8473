"""PromptBERT templates (kongds/Prompt-BERT, as used by ClusterNS's train_prompt.py): syntax, parsing, tokenisation.

Templates use the original syntax: ``*cls*`` and ``*sep+*`` (dropped: the special tokens are
added around the ids), ``*sent_0*`` (the sentence slot), ``*mask*`` (the mask token) and ``_``
for a space; the template itself contains no space. Split at the slot into a prefix P and a
suffix Q (for RoBERTa P's outer spaces are stripped), the training ids are

    [CLS] + tok(P) + tok(sentence)[:max_seq_length] + tok(Q) + [SEP]

(the template tokens come on top of --max_seq_length).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

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
TEST_PERIOD_ENDINGS = ".?\"'"


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


