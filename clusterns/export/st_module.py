"""A sentence-transformers module for the encoders built-in modules cannot express.

`ClusternsEncoder` wraps a whole `SentenceEncoder` (tokenisation + backbone + pooler +
projector) as the single module of a SentenceTransformer. `clusterns.export.sentence_transformers` writes it for

* prompt encoders (pooler `mask`, PromptBERT): the sentence goes into the saved template, the
  vector is the [MASK] state, minus the template delta when the evaluation convention uses it;
* encoders evaluated through DiffCSE's BatchNorm projector (`bn_mlp` without --mlp_only_train).

Loading needs this package installed and, with sentence-transformers >= 6, trust_remote_code
(the class lives outside `sentence_transformers.*`; it is imported from the installed
clusterns package, nothing is read from the model folder but weights and JSON):

    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer("result/my-prompt-model", trust_remote_code=True)

The evaluation convention of prompt encoders (see clusterns/modeling/prompt/settings.py: test, dev/consistent,
original) is `prompt_convention` in `clusterns_st_module.json` (default `test`, as
evaluation.py); edit the file, or pass `prompt_convention=` to `load_sentence_transformer`.
The module's `preprocess` takes plain strings only; a sentence-transformers `prompt=` string is
prepended to each sentence, as sentence-transformers does for built-in modules.
"""
from __future__ import annotations

import json
import os
from typing import Any

from torch import Tensor, nn

from clusterns.export.folder import write_model_folder
from clusterns.io import ST_MODULE_CONFIG_NAME, read_json, write_json
from clusterns.modeling.encoder import SentenceEncoder

MODULE_CONFIG_NAME = ST_MODULE_CONFIG_NAME


class ClusternsEncoder(nn.Module):
    """sentence-transformers input module around a SentenceEncoder: texts -> features -> sentence_embedding."""

    def __init__(self, encoder, max_seq_length: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.max_seq_length = max_seq_length

    # ---- sentence-transformers interface -----------------------------------------------------
    @property
    def tokenizer(self):
        return self.encoder.tokenizer

    @property
    def modalities(self) -> list[str]:
        return ["text"]

    def tokenize(self, texts: list[str], **kwargs: Any) -> dict[str, Tensor]:
        texts = [self._text(t) for t in texts]
        features = self.encoder.tokenize(texts, self.max_seq_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in features]
        return dict(self.encoder.tokenizer.pad({k: features[k] for k in keys}, return_tensors="pt"))

    def preprocess(self, inputs: list[str], prompt: str | None = None, **kwargs: Any) -> dict[str, Tensor]:
        texts = [self._text(t) for t in inputs]
        if prompt:
            texts = [prompt + t for t in texts]
        return self.tokenize(texts)

    def forward(self, features: dict[str, Tensor], **kwargs: Any) -> dict[str, Tensor]:
        features["sentence_embedding"] = self.encoder(
            features["input_ids"], features["attention_mask"], features.get("token_type_ids")
        )
        return features

    def get_embedding_dimension(self) -> int:
        return int(self.encoder.hidden_size)

    def get_sentence_embedding_dimension(self) -> int:  # sentence-transformers < 5
        return self.get_embedding_dimension()

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        """SentenceTransformer.save: the encoder folder (weights, configs, sentence-transformers files)."""
        write_model_folder(self.encoder, output_path)
        write_json(os.path.join(output_path, MODULE_CONFIG_NAME), {"max_seq_length": self.max_seq_length, **self._options()})

    @classmethod
    def load(cls, input_path: str) -> "ClusternsEncoder":
        config = _read_config(input_path)
        return cls.from_folder(input_path, prompt_convention=config.get("prompt_convention"),
                               max_seq_length=config.get("max_seq_length"))

    # ---- helpers --------------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, path: str, prompt_convention: str | None = None, max_seq_length: int | None = None) -> "ClusternsEncoder":
        encoder = SentenceEncoder.from_pretrained(path, prompt_convention=prompt_convention)
        return cls(encoder, max_seq_length)

    def _options(self) -> dict[str, Any]:
        return {"prompt_convention": None, **self.encoder.pooling.st_module_options()}

    @staticmethod
    def _text(item: Any) -> str:
        if isinstance(item, str):
            return item
        raise TypeError(f"ClusternsEncoder encodes plain strings; got {type(item).__name__}")

    def __repr__(self) -> str:
        c = self.encoder.config
        return (f"ClusternsEncoder(pooler={c.pooler_type!r}, projector={c.projector!r}, mlp_only_train={c.mlp_only_train}, "
                f"prompt_convention={self._options()['prompt_convention']!r}, max_seq_length={self.max_seq_length})")


def _read_config(path: str) -> dict[str, Any]:
    return read_json(os.path.join(path, MODULE_CONFIG_NAME)) or {}


def load_sentence_transformer(path: str, prompt_convention: str | None = None, device: str | None = None, **kwargs: Any):
    """A SentenceTransformer for any saved encoder folder, without trust_remote_code.

    Native layouts load as usual; for the custom layout the ClusternsEncoder module is built
    here (this package's code) and handed to SentenceTransformer(modules=[...])."""
    # sentence-transformers is an optional dependency (the `ecosystem` extra): imported only when used.
    from sentence_transformers import SentenceTransformer

    with open(os.path.join(path, "modules.json")) as f:
        modules = json.load(f)
    if not any(m.get("type", "").startswith("clusterns.") for m in modules):
        if prompt_convention is not None:
            raise ValueError(f"{path!r} is not a prompt encoder: prompt_convention does not apply")
        return SentenceTransformer(path, device=device, **kwargs)
    config = _read_config(path)
    module = ClusternsEncoder.from_folder(path, prompt_convention=prompt_convention or config.get("prompt_convention"),
                                          max_seq_length=config.get("max_seq_length"))
    return SentenceTransformer(modules=[module], device=device, **kwargs)


__all__ = ["ClusternsEncoder", "MODULE_CONFIG_NAME", "load_sentence_transformer"]
