"""The typed configuration of a prompt encoder (EncoderConfig.prompt in clusterns_config.json) and the
evaluation conventions.

Evaluation conventions (``PromptPooler.convention``):
  dev / consistent  the in-training selection: template-1 ids around the sentence ids, delta if
                    the model was trained with it (and not --mask_embedding_sentence_delta_no_delta_eval).
  test              the checkpoint's recorded final-test switches (--prompt_test_add_period,
                    --prompt_test_delta); with their faithful defaults this is ``original``.
  original          evaluation_prompt.py as called by run_prompt.sh: the string P + sentence + Q
                    with '.' appended when the sentence does not end in . ? " ', tokenised as a
                    whole, raw mask state (no delta).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from clusterns.modeling.prompt.templates import check_template_syntax

DELTA_COPIES_TRAIN = 50  # prompt_bert/models.py get_delta(length=50)
DELTA_COPIES_EVAL = 128  # sentemb_forward: 128 shifted copies
DELTA_PREFIX_SOURCES = ("template1", "own_template")
CONVENTIONS = ("test", "dev", "consistent", "original")


def check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"--{flag} must be one of {', '.join(choices)}; got {value!r}")


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"prompt convention must be one of {', '.join(CONVENTIONS)}; got {convention!r}")
    return convention


@dataclass(frozen=True)
class PromptSettings:
    """Everything a prompt encoder records: its templates, template denoising and the final-test switches."""

    template: str
    template2: str | None = None
    delta: bool = False
    delta_freeze: bool = False
    delta_no_position: bool = False
    delta_no_delta_eval: bool = False
    delta_prefix_source: str = "template1"
    test_delta: bool = False
    test_add_period: bool = True
    max_seq_length: int = 32

    def __post_init__(self):
        check_template_syntax(self.template, "--mask_embedding_sentence_template")
        if self.template2:
            check_template_syntax(self.template2, "--mask_embedding_sentence_different_template")
        check_choice("delta_prefix_source", self.delta_prefix_source, DELTA_PREFIX_SOURCES)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PromptSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown prompt settings {unknown}; known: {', '.join(sorted(known))}")
        return cls(**data)


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
    return PromptSettings(
        template=template, template2=template2 or None, delta=bool(delta), delta_freeze=bool(delta_freeze),
        delta_no_position=bool(delta_no_position), delta_no_delta_eval=bool(delta_no_delta_eval),
        delta_prefix_source=delta_prefix_source, test_delta=bool(test_delta), test_add_period=bool(test_add_period),
        max_seq_length=int(max_seq_length),
    ).to_dict()


@dataclass(frozen=True)
class EvalSettings:
    string_inputs: bool  # evaluation_prompt.py's whole-string tokenisation (with the period rule)
    delta: bool


def eval_settings(settings: PromptSettings, convention: str) -> EvalSettings:
    check_convention(convention)
    if convention in ("dev", "consistent"):
        return EvalSettings(False, bool(settings.delta and not settings.delta_no_delta_eval))
    if convention == "original":
        return EvalSettings(True, False)
    return EvalSettings(bool(settings.test_add_period), bool(settings.test_delta))
