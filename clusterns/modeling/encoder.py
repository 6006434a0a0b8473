"""SentenceEncoder: backbone (AutoModel, no pooling layer) + pooler + projector, with encode() and checkpoints.

A saved encoder folder loads with plain `transformers.AutoModel.from_pretrained(dir)`: the
backbone weights are stored with the HF key names, and SimCSE's MLP projector is stored as
the HF pooler (`pooler.dense.*`), so `pooler_output` is the MLP output exactly as after
SimCSE's conversion script. `clusterns_config.json` records how to pool.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from clusterns.training.arguments import POOLERS
from clusterns.modeling.poolers import NEEDS_HIDDEN_STATES, pool
from clusterns.modeling.projectors import BNProjectionMLP, MLPProjector, build_projector

logger = logging.getLogger(__name__)

CONFIG_NAME = "clusterns_config.json"
WEIGHTS_NAME = "model.safetensors"
PROJECTOR_WEIGHTS_NAME = "projector.safetensors"
MLP_KEYS = ("pooler.dense.weight", "pooler.dense.bias")


@dataclass
class EncoderConfig:
    """How sentences become vectors; saved as clusterns_config.json beside the weights."""

    pooler_type: str = "cls"
    first_layer_index: int = 1
    projector: str = "none"  # none | simcse_mlp | bn_mlp (already resolved from `auto`)
    mlp_only_train: bool = False
    max_seq_length: int | None = None  # truncation for encode(); None: the model's limit
    base_model: str | None = None
    objective: str | None = None
    prompt: dict[str, Any] | None = None  # PromptBERT template settings (prompt encoders)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.pooler_type not in POOLERS:
            raise ValueError(f"--pooler_type {self.pooler_type!r} is not known; choose one of: {', '.join(POOLERS)}")
        if self.first_layer_index not in (0, 1):
            raise ValueError(f"--first_layer_index must be 0 (embedding output) or 1 (first layer), got {self.first_layer_index}")

    @property
    def projector_at_eval(self) -> bool:
        """SimCSE: the projector is used for evaluation unless --mlp_only_train."""
        return self.projector != "none" and not self.mlp_only_train

    @property
    def eval_pooler(self) -> str:
        """The evaluation.py --pooler name that reproduces encode() on this checkpoint."""
        if self.pooler_type == "cls":
            return "cls" if self.projector_at_eval else "cls_before_pooler"
        return self.pooler_type

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EncoderConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load report: dropping the NSP pooler (add_pooling_layer=False) is intended."""
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _is_roberta(config) -> bool:
    return getattr(config, "model_type", "") in {"roberta", "xlm-roberta", "camembert"}


def max_positions(config, tokenizer) -> int:
    """Longest input the backbone accepts (RoBERTa reserves padding_idx + 1 positions)."""
    limit = getattr(config, "max_position_embeddings", 512)
    if _is_roberta(config):
        limit -= config.pad_token_id + 1
    tok_limit = getattr(tokenizer, "model_max_length", limit) or limit
    return int(min(limit, tok_limit))


class SentenceEncoder(nn.Module):
    def __init__(self, backbone: nn.Module, tokenizer, config: EncoderConfig):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config
        self.hidden_size = backbone.config.hidden_size
        self.projector = build_projector(config.projector, self.hidden_size, backbone.config.initializer_range)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls,
        model_name_or_path: str,
        config: EncoderConfig,
        tokenizer_name: str | None = None,
        dropout_prob: float | None = None,
        trust_pickle: bool = False,
        cache_dir: str | None = None,
        revision: str = "main",
    ) -> "SentenceEncoder":
        """Start training from a pretrained BERT/RoBERTa checkpoint (the pooling layer is not built)."""
        if os.path.isdir(model_name_or_path) and not trust_pickle and not _safetensors_files(str(model_name_or_path)):
            raise FileNotFoundError(
                f"--model_name_or_path {model_name_or_path!r} holds no safetensors weights; .bin/pickle files are refused "
                "unless you pass --trust_pickle (unpickling can run arbitrary code)"
            )
        hf_config = AutoConfig.from_pretrained(model_name_or_path, cache_dir=cache_dir, revision=revision)
        if dropout_prob is not None:
            hf_config.hidden_dropout_prob = dropout_prob
            hf_config.attention_probs_dropout_prob = dropout_prob
        with quiet_transformers():
            backbone = AutoModel.from_pretrained(
                model_name_or_path, config=hf_config, add_pooling_layer=False, use_safetensors=None if trust_pickle else True,
                cache_dir=cache_dir, revision=revision,
            )
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name or model_name_or_path, cache_dir=cache_dir, revision=revision)
        config.base_model = config.base_model or str(model_name_or_path)
        return cls(backbone, tokenizer, config)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        pooler: str | None = None,
        device: str | torch.device | None = None,
        trust_pickle: bool = False,
        prompt_convention: str | None = None,
        **overrides: Any,
    ) -> "SentenceEncoder":
        """Load one of our checkpoints, or a plain HF BERT/RoBERTa checkpoint, for evaluation.

        `pooler` overrides the saved pooling, with evaluation.py's names: `cls` uses the
        checkpoint's pooler weights (our MLP, or HF's dense+tanh), `cls_before_pooler` the raw
        [CLS] state, `avg`, `avg_top2`, `avg_first_last` as in training.
        Prompt checkpoints (pooler `mask`): `prompt_convention` = test (default: the recorded final-test
        convention), original, dev / consistent (see clusterns/prompts.py); a plain checkpoint takes
        `pooler="mask", prompt=clusterns.modeling.prompts.prompt_config(template)`.
        """
        path = str(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"model folder {path!r} does not exist (give a checkpoint folder saved by train.py or a HF model folder)")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"{path!r} has no config.json: it is not a complete checkpoint")
        saved = Path(path, CONFIG_NAME)
        config = EncoderConfig.from_dict(json.loads(saved.read_text())) if saved.exists() else EncoderConfig(pooler_type="cls", projector="none", base_model=path)
        if pooler is not None and pooler != config.eval_pooler:
            if pooler not in POOLERS:
                raise ValueError(f"--pooler {pooler!r} is not known; choose one of: {', '.join(POOLERS)}")
            # The pooler is chosen explicitly: `cls` means CLS + the checkpoint's dense+tanh pooler.
            config.pooler_type = pooler
            config.projector = "simcse_mlp" if pooler == "cls" else "none"
            config.mlp_only_train = False
        elif not saved.exists() and pooler is None:
            config.pooler_type, config.projector = "cls_before_pooler", "none"
        for key, value in overrides.items():
            setattr(config, key, value)
        weights = _safetensors_files(path)
        if not weights and not trust_pickle:
            raise FileNotFoundError(
                f"{path!r} holds no safetensors weights; .bin/pickle files are refused unless you pass --trust_pickle "
                "(unpickling can run arbitrary code)"
            )
        with quiet_transformers():
            backbone = AutoModel.from_pretrained(path, add_pooling_layer=False, use_safetensors=None if trust_pickle else True)
        tokenizer = AutoTokenizer.from_pretrained(path)
        encoder = cls(backbone, tokenizer, config)
        encoder._load_projector(path, weights)
        if config.pooler_type == "mask":  # prompt encoders: final-test convention unless asked otherwise
            from clusterns.modeling.prompts import check_convention, get_spec

            encoder.prompt_convention = check_convention(prompt_convention or "test")
            get_spec(encoder)  # resolve (and validate) the recorded templates now
        if device is not None:
            encoder.to(device)
        encoder.eval()
        return encoder

    def _load_projector(self, path: str, weights: list[str]) -> None:
        if isinstance(self.projector, MLPProjector):
            tensors = _read_tensors(weights, MLP_KEYS)
            if len(tensors) != 2:
                raise ValueError(
                    f"{path!r} has no pooler weights (pooler.dense.*), so --pooler cls cannot be applied; "
                    "use --pooler cls_before_pooler"
                )
            self.projector.dense.weight.data.copy_(tensors[MLP_KEYS[0]])
            self.projector.dense.bias.data.copy_(tensors[MLP_KEYS[1]])
        elif isinstance(self.projector, BNProjectionMLP):
            file = os.path.join(path, PROJECTOR_WEIGHTS_NAME)
            if not os.path.isfile(file):
                raise FileNotFoundError(f"{file!r} is missing: this checkpoint's projector cannot be restored")
            self.projector.load_state_dict(load_file(file))

    # ---- saving -------------------------------------------------------------------------------
    def save_pretrained(self, output_dir: str | os.PathLike) -> None:
        """Write an AutoModel-loadable folder: config, safetensors weights, tokenizer, clusterns_config.json."""
        output_dir = str(output_dir)
        os.makedirs(output_dir, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.backbone.state_dict().items()}
        if isinstance(self.projector, MLPProjector):
            state[MLP_KEYS[0]] = self.projector.dense.weight.detach().contiguous().cpu()
            state[MLP_KEYS[1]] = self.projector.dense.bias.detach().contiguous().cpu()
        elif isinstance(self.projector, BNProjectionMLP):
            projector_state = {k: v.detach().contiguous().cpu() for k, v in self.projector.state_dict().items()}
            save_file(projector_state, os.path.join(output_dir, PROJECTOR_WEIGHTS_NAME), metadata={"format": "pt"})
        hf_config = self.backbone.config
        hf_config.architectures = [type(self.backbone).__name__]
        hf_config.save_pretrained(output_dir)
        save_file(state, os.path.join(output_dir, WEIGHTS_NAME), metadata={"format": "pt"})
        self.tokenizer.save_pretrained(output_dir)
        Path(output_dir, CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
        from clusterns.export.sentence_transformers import write_sentence_transformers_files  # SentenceTransformer(output_dir) loads it too

        write_sentence_transformers_files(output_dir, self)

    # ---- forward ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def pooled(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
               num_views: int | None = None) -> Tensor:
        """Pooler output before the projector, [N, H]. `num_views`: rows are flattened [B, V] views (prompts)."""
        if self.config.pooler_type == "mask":  # PromptBERT: mask state (- template delta), clusterns/prompts.py
            from clusterns.modeling.prompts import prompt_pooled

            return prompt_pooled(self, input_ids, attention_mask, token_type_ids, num_views)
        need_all = self.config.pooler_type in NEEDS_HIDDEN_STATES
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=need_all, return_dict=True, **kwargs
        )
        return pool(
            self.config.pooler_type, attention_mask, out.last_hidden_state,
            out.hidden_states if need_all else None, self.config.first_layer_index,
        )

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """The evaluation embedding: pooled, then the projector unless --mlp_only_train."""
        z = self.pooled(input_ids, attention_mask, token_type_ids)
        return self.projector(z) if self.config.projector_at_eval else z

    # ---- encode -------------------------------------------------------------------------------
    def tokenize(self, sentences: list[str], max_seq_length: int | None = None) -> dict[str, list[list[int]]]:
        """Token ids without padding; truncated to max_seq_length (default: the model's limit)."""
        if self.config.pooler_type == "mask":  # the saved template, per self.prompt_convention (prompts.py)
            from clusterns.modeling.prompts import tokenize_for_encode

            return tokenize_for_encode(self, sentences, max_seq_length)
        limit = max_positions(self.backbone.config, self.tokenizer)
        max_len = min(max_seq_length or self.config.max_seq_length or limit, limit)
        return self.tokenizer(list(sentences), truncation=True, max_length=max_len, padding=False)

    @torch.inference_mode()
    def encode(
        self,
        sentences: str | list[str],
        batch_size: int = 64,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        normalize_embeddings: bool = False,
        device: str | torch.device | None = None,
        max_seq_length: int | None = None,
        normalize: bool | None = None,
        **kwargs: Any,
    ) -> np.ndarray | Tensor:
        """Embed sentences in input order, sentence-transformers' signature (MTEB can call it).

        Batches are formed over length-sorted inputs so padding is minimal; the model is put in
        eval mode for the call and restored afterwards."""
        if normalize is not None:
            normalize_embeddings = normalize
        single = isinstance(sentences, str)
        sentences = [sentences] if single else list(sentences)
        if device is not None:
            self.to(device)
        was_training = self.training
        self.eval()
        try:
            features = self.tokenize(sentences, max_seq_length)
            ids = features["input_ids"]
            order = np.argsort([-len(x) for x in ids], kind="stable")
            out: list[Tensor] = []
            starts = range(0, len(order), batch_size)
            show = show_progress_bar if show_progress_bar is not None else False
            for start in tqdm(starts, desc="Encoding", disable=not show):
                idx = order[start : start + batch_size]
                batch = self.tokenizer.pad({k: [features[k][i] for i in idx] for k in features}, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                out.append(self(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).float())
            if not out:
                emb = torch.empty(0, self.hidden_size)
            else:
                emb = torch.cat(out)
                emb = emb[torch.as_tensor(np.argsort(order), device=emb.device)]
            if normalize_embeddings:
                emb = torch.nn.functional.normalize(emb, dim=-1)
        finally:
            self.train(was_training)
        if convert_to_tensor or not convert_to_numpy:
            return emb[0] if single else emb
        arr = emb.cpu().numpy().astype(np.float32, copy=False)
        return arr[0] if single else arr


def _safetensors_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        shards = sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))
        return [os.path.join(path, s) for s in shards]
    single = os.path.join(path, WEIGHTS_NAME)
    return [single] if os.path.isfile(single) else []


def _read_tensors(files: list[str], keys: tuple[str, ...]) -> dict[str, Tensor]:
    found = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for key in keys:
                if key in f.keys():
                    found[key] = f.get_tensor(key)
    return found
