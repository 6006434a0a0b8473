"""The bottom layer: names of the files in a model or checkpoint folder, and safetensors helpers.

Every other module takes these names from here, so the folder layout is written down once:

    config.json, model.safetensors[.index.json]   the backbone (plain AutoModel loads it; SimCSE's MLP
                                                   projector is stored as the HF pooler, MLP_KEYS)
    clusterns_config.json                          how to pool (modeling.encoder.EncoderConfig)
    projector.safetensors                          DiffCSE's BatchNorm projector
    objective.safetensors                          the objective's state (centroids, discriminator)
    training_args.json, trainer_state.json         what produced the folder
    modules.json, sentence_bert_config.json, ...   sentence-transformers (export.sentence_transformers)
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

HF_CONFIG_NAME = "config.json"
CONFIG_NAME = "clusterns_config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_WEIGHTS_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
PROJECTOR_WEIGHTS_NAME = "projector.safetensors"
OBJECTIVE_STATE_NAME = "objective.safetensors"
MASKED_LM_STATE_NAME = "masked_lm.safetensors"  # --do_mlm's LM head (training checkpoints only)
TRAINING_ARGS_NAME = "training_args.json"
TRAINER_STATE_NAME = "trainer_state.json"
MODEL_CARD_NAME = "README.md"
ST_MODULE_CONFIG_NAME = "clusterns_st_module.json"  # options of the custom sentence-transformers module
MLP_KEYS = ("pooler.dense.weight", "pooler.dense.bias")


def safetensors_files(path: str | os.PathLike) -> list[str]:
    """The folder's backbone weight files (the shards of an index, or model.safetensors); [] when none."""
    path = str(path)
    index = os.path.join(path, WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        shards = sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))
        return [os.path.join(path, s) for s in shards]
    single = os.path.join(path, WEIGHTS_NAME)
    return [single] if os.path.isfile(single) else []


def read_tensors(files: list[str], keys: tuple[str, ...]) -> dict[str, Tensor]:
    """The tensors named `keys` that the files hold (read lazily: nothing else is loaded)."""
    found = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            names = set(f.keys())
            for key in keys:
                if key in names:
                    found[key] = f.get_tensor(key)
    return found


def has_tensors(files: list[str], keys: tuple[str, ...]) -> bool:
    """Whether one of the files holds every key."""
    for file in files:
        with safe_open(file, framework="pt") as f:
            if all(k in f.keys() for k in keys):
                return True
    return False


def save_tensors(tensors: dict[str, Tensor], path: str | os.PathLike) -> None:
    """Detached, contiguous CPU copies in safetensors (the only weight format we write)."""
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def write_json(path: str | os.PathLike, data: Any, sort_keys: bool = False) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=sort_keys, default=str) + "\n")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, then rename it over `path`: a full disk or a kill
    leaves the previous file (or none), never a truncated one."""
    path = str(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: str | os.PathLike) -> Any | None:
    """The file's JSON, or None when it is absent or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
