"""sentence-transformers files beside a saved encoder, so `SentenceTransformer(output_dir)` loads it.

`export.folder.write_model_folder` calls `write_sentence_transformers_files` after writing the
weights, so every output_dir and checkpoint-N is also a sentence-transformers model folder that
gives the same vectors as `SentenceEncoder.encode` (evaluation.py's default pooler for the folder).
The layout comes from the pooler's `st_layout` (modeling/poolers.py); an unknown one is an error:

    pooler (eval)                  modules.json
    cls_before_pooler / cls        Transformer -> Pooling(cls)
    cls + SimCSE MLP at eval       Transformer -> Pooling(cls) -> Dense(tanh) holding pooler.dense.*
    avg                            Transformer -> Pooling(mean)
    avg_top2                       Transformer(hidden states) -> WeightedLayerPooling(last two, 1:1) -> Pooling(mean)
    avg_first_last                 Transformer(hidden states) -> WeightedLayerPooling(first, last; 1:0..0:1) -> Pooling(mean)
    mask (PromptBERT prompt)       clusterns.st_modules.ClusternsEncoder (template, mask pooler, template delta)
    DiffCSE BN-MLP at eval         clusterns.st_modules.ClusternsEncoder
    any other pooler of layout custom  clusterns.st_modules.ClusternsEncoder

The native layouts use only built-in sentence-transformers modules (written in the classic
format, `sentence_transformers.models.*` names, safetensors weights) and load without clusterns
installed. The two custom layouts need `pip install clusterns` (this repo) and, with
sentence-transformers >= 6, `SentenceTransformer(path, trust_remote_code=True)`: the class is
imported from the installed clusterns package, not from the model folder.
Any SimCSE-MLP-at-eval also adds the Dense module after a native pooler (e.g. avg + MLP).
"""
from __future__ import annotations

import logging
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
import transformers

from clusterns.io import MLP_KEYS, ST_MODULE_CONFIG_NAME, has_tensors, safetensors_files, save_tensors, write_json
from clusterns.modeling.backbones import max_positions, takes_pooling_layer
from clusterns.modeling.encoder import SentenceEncoder
from clusterns.modeling.pooling import ST_LAYOUTS
from clusterns.modeling.projectors import BNProjectionMLP, MLPProjector

logger = logging.getLogger(__name__)

MODULES_NAME = "modules.json"
ST_CONFIG_NAME = "sentence_bert_config.json"
ST_MODEL_CONFIG_NAME = "config_sentence_transformers.json"
CUSTOM_MODULE_TYPE = "clusterns.st_modules.ClusternsEncoder"
TANH = "torch.nn.modules.activation.Tanh"


def st_layout(encoder: SentenceEncoder) -> str:
    """The pooler's declared layout; `custom` also when the BatchNorm projector is used at evaluation."""
    layout = encoder.pooling.st_layout
    if layout not in ST_LAYOUTS:
        raise ValueError(f"pooler {encoder.config.pooler_type!r} declares st_layout {layout!r}: not one of {', '.join(ST_LAYOUTS)}")
    if encoder.config.projector_at_eval and isinstance(encoder.projector, BNProjectionMLP):
        return "custom"
    return layout


def _versions() -> dict[str, str]:
    versions = {"transformers": transformers.__version__, "pytorch": torch.__version__}
    try:
        versions = {"sentence_transformers": version("sentence-transformers"), **versions}
    except PackageNotFoundError:  # not installed: the files are still valid for any version >= 3
        pass
    return versions


def _module(idx: int, path: str, kind: str) -> dict[str, Any]:
    return {"idx": idx, "name": str(idx), "path": path, "type": kind}


def max_seq_length_of(encoder: SentenceEncoder) -> int:
    limit = max_positions(encoder.backbone.config, encoder.tokenizer)
    return int(min(encoder.config.max_seq_length or limit, limit))


def _pooler_weights_saved(folder: Path, encoder) -> bool | None:
    """Whether the folder's safetensors weights hold the HF pooler's weights (None: no safetensors to look at, or an
    architecture without an HF pooler)."""
    files = safetensors_files(folder)
    if not files or not takes_pooling_layer(encoder.backbone.config):
        return None
    return has_tensors(files, encoder.mlp_keys or MLP_KEYS)


def write_sentence_transformers_files(output_dir: str | os.PathLike, encoder, prompt_convention: str | None = None) -> list[str]:
    """Write modules.json and the module folders for `encoder` (already saved in output_dir).

    Returns the paths written (relative to output_dir). `prompt_convention` (prompt encoders):
    the evaluation convention the sentence-transformers model uses (default: the encoder's own,
    i.e. `test` as evaluation.py)."""
    out = Path(output_dir)
    config = encoder.config
    hidden = int(encoder.hidden_size)
    written: list[str] = []
    model_config = {
        "__version__": _versions(),
        "prompts": {},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
        "model_type": "SentenceTransformer",
    }
    layout = st_layout(encoder)
    if layout == "custom":
        options = {"prompt_convention": None, **encoder.pooling.st_module_options()}
        if prompt_convention is not None:
            options["prompt_convention"] = prompt_convention
        write_json(out / ST_MODULE_CONFIG_NAME, {"max_seq_length": max_seq_length_of(encoder), **options})
        write_json(out / MODULES_NAME, [_module(0, "", CUSTOM_MODULE_TYPE)])
        write_json(out / ST_MODEL_CONFIG_NAME, model_config)
        return [ST_MODULE_CONFIG_NAME, MODULES_NAME, ST_MODEL_CONFIG_NAME]

    num_layers = int(encoder.backbone.config.num_hidden_layers)
    mlp = isinstance(encoder.projector, MLPProjector) and config.projector_at_eval
    st_config: dict[str, Any] = {"max_seq_length": max_seq_length_of(encoder), "do_lower_case": False}
    if layout == "weighted_layers":
        st_config["config_args"] = {"output_hidden_states": True}
    elif _pooler_weights_saved(out, encoder) is False:
        # The saved weights hold no pooler.dense.*: do not build (and randomly initialise) HF's pooler.
        # Not for the hidden-states layouts: sentence-transformers 3.x only passes all_layer_embeddings on when
        # the model also returns a pooler_output (its random weights are unused; transformers reports them).
        st_config["model_args"] = {"add_pooling_layer": False}
    write_json(out / ST_CONFIG_NAME, st_config)
    written.append(ST_CONFIG_NAME)

    modules = [_module(0, "", "sentence_transformers.models.Transformer")]
    if layout == "weighted_layers":
        start, weights = encoder.pooling.layer_weights(num_layers, config.first_layer_index)
        path = f"{len(modules)}_WeightedLayerPooling"
        write_json(out / path / "config.json", {"word_embedding_dimension": hidden, "layer_start": start, "num_hidden_layers": num_layers})
        save_tensors({"layer_weights": torch.tensor(weights, dtype=torch.float32)}, out / path / "model.safetensors")
        modules.append(_module(len(modules), path, "sentence_transformers.models.WeightedLayerPooling"))
        written += [f"{path}/config.json", f"{path}/model.safetensors"]
    cls = layout == "cls"
    path = f"{len(modules)}_Pooling"
    write_json(out / path / "config.json", {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": cls,
        "pooling_mode_mean_tokens": not cls,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    })
    modules.append(_module(len(modules), path, "sentence_transformers.models.Pooling"))
    written.append(f"{path}/config.json")
    if mlp:
        path = f"{len(modules)}_Dense"
        dense = encoder.projector.dense
        write_json(out / path / "config.json", {"in_features": hidden, "out_features": hidden, "bias": True, "activation_function": TANH})
        save_tensors({"linear.weight": dense.weight, "linear.bias": dense.bias}, out / path / "model.safetensors")
        modules.append(_module(len(modules), path, "sentence_transformers.models.Dense"))
        written += [f"{path}/config.json", f"{path}/model.safetensors"]
    write_json(out / MODULES_NAME, modules)
    write_json(out / ST_MODEL_CONFIG_NAME, model_config)
    return written + [MODULES_NAME, ST_MODEL_CONFIG_NAME]
