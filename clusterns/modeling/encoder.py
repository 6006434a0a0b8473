"""SentenceEncoder: backbone (AutoModel, no pooling layer) + pooler + projector, with encode() and checkpoints.

A saved encoder folder loads with plain `transformers.AutoModel.from_pretrained(dir)`: the
backbone weights are stored with the HF key names, and SimCSE's MLP projector is stored as
the HF pooler where the architecture has one (`pooler.dense.*`; ALBERT `pooler.*`), so
`pooler_output` is the MLP output exactly as after SimCSE's conversion script; architectures
without a pooler (DeBERTa, ModernBERT, ELECTRA, DistilBERT) keep it in projector.safetensors
beside the weights. `clusterns_config.json` records how to pool.
"""
from __future__ import annotations

import json
import logging
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer

from clusterns.io import (
    CONFIG_NAME,
    HF_CONFIG_NAME,
    MLP_KEYS,
    PROJECTOR_WEIGHTS_NAME,
    WEIGHTS_NAME,
    read_tensors,
    safetensors_files,
    save_tensors,
    write_json,
)
from clusterns.precision import inference_autocast, resolve_precision
from clusterns.modeling.cpu_linear import fast_linears
from clusterns.modeling.backbones import pooler_slot, pooling_layer_kwargs, quiet_transformers, set_dropout, takes_token_type_ids
from clusterns.modeling.poolers import get_pooler
from clusterns.modeling.projectors import BNProjectionMLP, MLPProjector, build_projector

logger = logging.getLogger(__name__)


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
        get_pooler(self.pooler_type)  # raises, naming the flag and the registered poolers
        if self.first_layer_index not in (0, 1):
            raise ValueError(f"--first_layer_index must be 0 (embedding output) or 1 (first layer), got {self.first_layer_index}")

    @property
    def projector_at_eval(self) -> bool:
        """SimCSE: the projector is used for evaluation unless --mlp_only_train."""
        return self.projector != "none" and not self.mlp_only_train

    @property
    def eval_pooler(self) -> str:
        """The evaluation.py --pooler name that reproduces encode() on this checkpoint."""
        return get_pooler(self.pooler_type).eval_name(self.projector_at_eval)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EncoderConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "EncoderConfig | None":
        """The folder's clusterns_config.json, or None for a folder without one (a plain HF checkpoint)."""
        file = Path(folder, CONFIG_NAME)
        return cls.from_dict(json.loads(file.read_text())) if file.is_file() else None

    def save(self, folder: str | os.PathLike) -> None:
        write_json(Path(folder, CONFIG_NAME), self.to_dict(), sort_keys=True)


# encode() on the CPU: padded tokens per forward pass. The layers' activations of a larger pass spill out of the CPU's
# caches: MiniLM on the 2-core machine encoded 1000 sentences of 50-100 tokens in 8.3 s in passes of 32 sentences
# (~2,300 tokens) and 10.2 s in passes of 128 (scripts/bench_encode.py measures the default).
CPU_TOKENS_PER_FORWARD = 2048
# encode() reorders each weight for oneDNN (0.2 ms a matrix, modeling/cpu_linear.py) from this many tokens on: below,
# a call's few forwards would not pay it back.
REORDER_MIN_TOKENS = 1024


def forward_bounds(lengths: list[int], batch_size: int, tokens_per_forward: int | None = None) -> list[tuple[int, int]]:
    """[start, end) of each forward pass over sentences sorted longest first (`lengths`): at most batch_size
    sentences, and at most tokens_per_forward padded tokens (the first sentence's length times the rows; at least
    one sentence)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if tokens_per_forward is not None and tokens_per_forward < 1:
        raise ValueError(f"tokens_per_forward must be at least 1 (None: the device's default), got {tokens_per_forward}")
    bounds, start = [], 0
    while start < len(lengths):
        rows = batch_size
        if tokens_per_forward is not None:
            rows = max(1, min(batch_size, tokens_per_forward // max(1, lengths[start])))
        bounds.append((start, min(len(lengths), start + rows)))
        start += rows
    return bounds


class SentenceEncoder(nn.Module):
    def __init__(self, backbone: nn.Module, tokenizer, config: EncoderConfig):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config
        self.hidden_size = backbone.config.hidden_size
        self.projector = build_projector(config.projector, self.hidden_size, getattr(backbone.config, "initializer_range", 0.02))
        # Where SimCSE's MLP is stored: the HF pooler's keys (None: projector.safetensors). backbones.py
        self.mlp_keys = pooler_slot(backbone.config)
        if not takes_token_type_ids(backbone):  # DistilBERT, ModernBERT, MPNet: the tokenizer must not make them
            tokenizer.model_input_names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]
        # The pooler for this encoder (modeling/poolers.py): pooling, encode() inputs, training inputs.
        self.pooling = get_pooler(config.pooler_type).bind(config)

    def configure(self, **changes: Any) -> None:
        """Change EncoderConfig fields that do not touch weights (e.g. `prompt`) and rebind the pooler."""
        for key, value in changes.items():
            if key not in {f.name for f in fields(EncoderConfig)} or key == "projector":
                raise ValueError(f"EncoderConfig has no field {key!r} that can be changed after construction")
            setattr(self.config, key, value)
        self.config.__post_init__()
        self.pooling = get_pooler(self.config.pooler_type).bind(self.config)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls,
        model_name_or_path: str,
        config: EncoderConfig,
        tokenizer_name: str | None = None,
        dropout_prob: float | None = None,
        config_name: str | None = None,
        use_fast_tokenizer: bool = True,
        trust_pickle: bool = False,
        cache_dir: str | None = None,
        revision: str = "main",
    ) -> "SentenceEncoder":
        """Start training from a pretrained Hugging Face checkpoint (the pooling layer is not built)."""
        if os.path.isdir(model_name_or_path) and not trust_pickle and not safetensors_files(model_name_or_path):
            raise FileNotFoundError(
                f"--model_name_or_path {model_name_or_path!r} holds no safetensors weights; .bin/pickle files are refused "
                "unless you pass --trust_pickle (unpickling can run arbitrary code)"
            )
        source = str(config_name or model_name_or_path)
        if not os.path.exists(source) and (os.path.isabs(source) or source.startswith(".") or os.sep + os.sep in source):
            flag = "--config_name" if config_name else "--model_name_or_path"
            raise FileNotFoundError(f"{flag} {source!r} does not exist (give a model folder or a hub name)")
        try:
            hf_config = AutoConfig.from_pretrained(source, cache_dir=cache_dir, revision=revision)
        except OSError as err:  # not a folder, not reachable on the hub: one line naming the flag
            flag = "--config_name" if config_name else "--model_name_or_path"
            raise FileNotFoundError(f"{flag} {source!r} cannot be loaded: {str(err).splitlines()[0]}") from None
        if dropout_prob is not None:  # every dropout of the architecture, whatever its config calls them
            set_dropout(hf_config, dropout_prob)
        pretrained_pooler = config.projector == "hf_pooler"  # the projector starts from the checkpoint's pooler
        slot = pooler_slot(hf_config)
        if pretrained_pooler and slot is None:
            raise ValueError(f"--projector hf_pooler needs the checkpoint's pretrained pooler, but {hf_config.model_type} models "
                             "have none; use --projector simcse_mlp (a fresh MLP)")
        with quiet_transformers():
            backbone, info = AutoModel.from_pretrained(
                model_name_or_path, config=hf_config, **pooling_layer_kwargs(hf_config, pretrained_pooler),
                use_safetensors=None if trust_pickle else True, cache_dir=cache_dir, revision=revision, output_loading_info=True,
            )
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name or model_name_or_path, cache_dir=cache_dir, revision=revision,
                                                  use_fast=use_fast_tokenizer)
        config.base_model = config.base_model or str(model_name_or_path)
        pooler_weights = None
        if pretrained_pooler:
            missing = [k for k in info.get("missing_keys", []) if k in slot]
            if missing:
                raise ValueError(
                    f"--projector hf_pooler needs the checkpoint's pretrained pooler ({slot[0].rsplit('.', 1)[0]}), but "
                    f"{model_name_or_path!r} does not hold its weights; use --projector simcse_mlp (a fresh MLP)"
                )
            state = backbone.state_dict()
            pooler_weights = [state[k].detach().clone() for k in slot]
            backbone.pooler = None  # the encoder pools itself; the weights move to the projector
        encoder = cls(backbone, tokenizer, config)
        if pooler_weights is not None:
            with torch.no_grad():
                encoder.projector.dense.weight.copy_(pooler_weights[0])
                encoder.projector.dense.bias.copy_(pooler_weights[1])
        return encoder

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
        [CLS] state, `avg`, `avg_top2`, `avg_first_last` as in training (modeling/poolers.py).
        Prompt checkpoints (pooler `mask`): `prompt_convention` = test (default: the recorded final-test
        convention), original, dev / consistent (modeling/prompt/settings.py); a plain checkpoint takes
        `pooler="mask", prompt=clusterns.modeling.prompt.prompt_config(template)`.
        """
        path = str(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"model folder {path!r} does not exist (give a checkpoint folder saved by train.py or a HF model folder)")
        if not os.path.isfile(os.path.join(path, HF_CONFIG_NAME)):
            raise FileNotFoundError(f"{path!r} has no config.json: it is not a complete checkpoint")
        config = EncoderConfig.load(path)
        saved = config is not None
        if config is None:
            config = EncoderConfig(pooler_type="cls", projector="none", base_model=path)
        if pooler is not None and pooler != config.eval_pooler:
            chosen = get_pooler(pooler, flag="--pooler")
            # The pooler is chosen explicitly: `cls` means CLS + the checkpoint's dense+tanh pooler.
            config.pooler_type = pooler
            config.projector = "simcse_mlp" if chosen.uses_checkpoint_pooler else "none"
            config.mlp_only_train = False
        elif not saved and pooler is None:
            config.pooler_type, config.projector = "cls_before_pooler", "none"
        for key, value in overrides.items():
            setattr(config, key, value)
        weights = safetensors_files(path)
        if not weights and not trust_pickle:
            raise FileNotFoundError(
                f"{path!r} holds no safetensors weights; .bin/pickle files are refused unless you pass --trust_pickle "
                "(unpickling can run arbitrary code)"
            )
        with quiet_transformers():
            hf_config = AutoConfig.from_pretrained(path)  # read once: the pooler keyword depends on the architecture
            backbone = AutoModel.from_pretrained(path, config=hf_config, **pooling_layer_kwargs(hf_config, False),
                                                 use_safetensors=None if trust_pickle else True)
        tokenizer = AutoTokenizer.from_pretrained(path)
        encoder = cls(backbone, tokenizer, config)
        encoder._load_projector(path, weights)
        # A loaded prompt encoder evaluates with the final-test convention unless asked otherwise; other
        # poolers refuse the option (it would be silently ignored).
        encoder.pooling.configure_loaded(encoder, prompt_convention=prompt_convention)
        if device is not None:
            encoder.to(device)
        encoder.eval()
        return encoder

    def take_projector_tensors(self, state: dict[str, Tensor]) -> bool:
        """Load SimCSE's MLP from a backbone state dict holding it under the HF pooler's keys, removing them (any
        pooler tensors are removed: the backbone is built without its pooler). False: the MLP is not there."""
        keys = self.mlp_keys or MLP_KEYS
        found = [state.pop(k, None) for k in keys]
        for k in MLP_KEYS:
            state.pop(k, None)
        if not isinstance(self.projector, MLPProjector) or any(t is None for t in found):
            return False
        self.projector.dense.weight.data.copy_(found[0])
        self.projector.dense.bias.data.copy_(found[1])
        return True

    def _load_projector(self, path: str, weights: list[str]) -> None:
        file = os.path.join(path, PROJECTOR_WEIGHTS_NAME)
        if isinstance(self.projector, MLPProjector):
            keys = self.mlp_keys or MLP_KEYS
            tensors = read_tensors(weights, keys)
            if len(tensors) == 2:
                self.projector.dense.weight.data.copy_(tensors[keys[0]])
                self.projector.dense.bias.data.copy_(tensors[keys[1]])
            elif os.path.isfile(file):  # an architecture without an HF pooler: the MLP beside the weights
                self.projector.load_state_dict(load_file(file))
            else:
                raise ValueError(
                    f"{path!r} has no pooler weights ({keys[0].rsplit('.', 1)[0]}.* or {PROJECTOR_WEIGHTS_NAME}), so "
                    "--pooler cls cannot be applied; use --pooler cls_before_pooler"
                )
        elif isinstance(self.projector, BNProjectionMLP):
            if not os.path.isfile(file):
                raise FileNotFoundError(f"{file!r} is missing: this checkpoint's projector cannot be restored")
            self.projector.load_state_dict(load_file(file))

    # ---- saving -------------------------------------------------------------------------------
    def save_pretrained(self, output_dir: str | os.PathLike) -> None:
        """The encoder only: config, safetensors weights, tokenizer, clusterns_config.json (AutoModel loads it).
        export/folder.py's write_model_folder adds the sentence-transformers files and the model card."""
        output_dir = str(output_dir)
        os.makedirs(output_dir, exist_ok=True)
        state = dict(self.backbone.state_dict())
        if isinstance(self.projector, MLPProjector) and self.mlp_keys is not None:
            state[self.mlp_keys[0]] = self.projector.dense.weight
            state[self.mlp_keys[1]] = self.projector.dense.bias
        elif isinstance(self.projector, (MLPProjector, BNProjectionMLP)):
            save_tensors(self.projector.state_dict(), os.path.join(output_dir, PROJECTOR_WEIGHTS_NAME))
        hf_config = self.backbone.config
        hf_config.architectures = [type(self.backbone).__name__]
        hf_config.save_pretrained(output_dir)
        save_tensors(state, os.path.join(output_dir, WEIGHTS_NAME))
        self.tokenizer.save_pretrained(output_dir)
        self.config.save(output_dir)

    # ---- forward ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def pooled(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
               num_views: int | None = None) -> Tensor:
        """Pooler output before the projector, [N, H]. `num_views`: rows are flattened [B, V] views (prompts)."""
        return self.pooling.pooled(self, input_ids, attention_mask, token_type_ids, num_views)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """The evaluation embedding: pooled, then the projector unless --mlp_only_train."""
        z = self.pooled(input_ids, attention_mask, token_type_ids)
        return self.projector(z) if self.config.projector_at_eval else z

    # ---- encode -------------------------------------------------------------------------------
    def tokenize(self, sentences: list[str], max_seq_length: int | None = None) -> dict[str, list[list[int]]]:
        """Token ids without padding; truncated to max_seq_length (default: the model's limit)."""
        return self.pooling.tokenize(self, sentences, max_seq_length)

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
        autocast_precision: str = "fp32",
        precision: str = "float32",
        tokens_per_forward: int | None = None,
        fast_linear: bool = True,
        **kwargs: Any,
    ) -> np.ndarray | Tensor:
        """Embed sentences in input order, sentence-transformers' signature (MTEB can call it).

        Batches are formed over length-sorted inputs so padding is minimal; the model is put in
        eval mode for the call and restored afterwards. autocast_precision: `fp32` (default), `bf16`, `fp16` (CUDA)
        or `auto` (bf16 / fp16 on a CUDA GPU, fp32 on the CPU): the encoder runs under autocast, the returned
        vectors are fp32. precision: sentence-transformers' output quantization; only `float32` (what MTEB passes).
        tokens_per_forward: at most this many padded tokens per forward pass (a batch of long sentences is split;
        each sentence's vector is the same whatever its batch): default CPU_TOKENS_PER_FORWARD on the CPU, whose
        caches hold a smaller batch's activations (bench_encode.py), none on a GPU. fast_linear: on the CPU in fp32,
        the linear layers through oneDNN (modeling/cpu_linear.py: the same product to float rounding, ~1.1x
        faster); False: torch's F.linear."""
        if normalize is not None:
            normalize_embeddings = normalize
        single = isinstance(sentences, str)
        sentences = [sentences] if single else list(sentences)
        if device is not None:
            self.to(device)
        if precision != "float32":
            raise ValueError(f"precision={precision!r}: quantized embeddings are not produced here; encode in float32 and "
                             "use sentence_transformers.quantize_embeddings (autocast_precision= sets the compute precision)")
        autocast_precision = resolve_precision(autocast_precision, self.device.type, flag="autocast_precision")
        was_training = self.training
        self.eval()
        try:
            features = self.tokenize(sentences, max_seq_length)
            ids = features["input_ids"]
            order = np.argsort([-len(x) for x in ids], kind="stable")
            out: list[Tensor] = []
            budget = tokens_per_forward if tokens_per_forward is not None else (
                CPU_TOKENS_PER_FORWARD if self.device.type == "cpu" else None)
            bounds = forward_bounds([len(ids[i]) for i in order], batch_size, budget)
            show = show_progress_bar if show_progress_bar is not None else False
            linears = fast_linears(self, reorder=sum(map(len, ids)) >= REORDER_MIN_TOKENS) if fast_linear else nullcontext()
            with linears:
                for start, end in tqdm(bounds, desc="Encoding", disable=not show):
                    idx = order[start:end]
                    batch = self.tokenizer.pad({k: [features[k][i] for i in idx] for k in features}, return_tensors="pt")
                    batch = {k: v.to(self.device) for k, v in batch.items()}
                    with inference_autocast(autocast_precision, self.device.type):
                        pooled = self(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
                    out.append(pooled.float())
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

