"""sentence-transformers files beside a saved encoder, so `SentenceTransformer(output_dir)` loads it.

`SentenceEncoder.save_pretrained` calls `write_sentence_transformers_files` after writing the
weights, so every output_dir and checkpoint-N is also a sentence-transformers model folder that
gives the same vectors as `SentenceEncoder.encode` (evaluation.py's default pooler for the folder):

    pooler (eval)                  modules.json
    cls_before_pooler / cls        Transformer -> Pooling(cls)
    cls + SimCSE MLP at eval       Transformer -> Pooling(cls) -> Dense(tanh) holding pooler.dense.*
    avg                            Transformer -> Pooling(mean)
    avg_top2                       Transformer(hidden states) -> WeightedLayerPooling(last two, 1:1) -> Pooling(mean)
    avg_first_last                 Transformer(hidden states) -> WeightedLayerPooling(first, last; 1:0..0:1) -> Pooling(mean)
    mask (PromptBERT prompt)       clusterns.export.st_module.ClusternsEncoder (template, mask pooler, template delta)
    DiffCSE BN-MLP at eval         clusterns.export.st_module.ClusternsEncoder

The native layouts use only built-in sentence-transformers modules (written in the classic
format, `sentence_transformers.models.*` names, safetensors weights) and load without clusterns
installed. The two custom layouts need `pip install clusterns` (this repo) and, with
sentence-transformers >= 6, `SentenceTransformer(path, trust_remote_code=True)`: the class is
imported from the installed clusterns package, not from the model folder.
Any SimCSE-MLP-at-eval also adds the Dense module after a native pooler (e.g. avg + MLP).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

MODULES_NAME = "modules.json"
ST_CONFIG_NAME = "sentence_bert_config.json"
ST_MODEL_CONFIG_NAME = "config_sentence_transformers.json"
CUSTOM_MODULE_TYPE = "clusterns.st_modules.ClusternsEncoder"
TANH = "torch.nn.modules.activation.Tanh"


def st_layout(encoder) -> str:
    """`native` when built-in sentence-transformers modules reproduce encode(), else `custom`."""
    from clusterns.modeling.projectors import BNProjectionMLP

    config = encoder.config
    if config.pooler_type == "mask":
        return "custom"
    if config.projector_at_eval and isinstance(encoder.projector, BNProjectionMLP):
        return "custom"
    return "native"


def _versions() -> dict[str, str]:
    import transformers

    versions = {"transformers": transformers.__version__, "pytorch": torch.__version__}
    try:
        from importlib.metadata import version

        versions = {"sentence_transformers": version("sentence-transformers"), **versions}
    except Exception:  # not installed: the files are still valid for any version >= 3
        pass
    return versions


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _module(idx: int, path: str, kind: str) -> dict[str, Any]:
    return {"idx": idx, "name": str(idx), "path": path, "type": kind}


def max_seq_length_of(encoder) -> int:
    from clusterns.modeling.encoder import max_positions

    limit = max_positions(encoder.backbone.config, encoder.tokenizer)
    return int(min(encoder.config.max_seq_length or limit, limit))


def _layer_weights(pooler_type: str, num_layers: int, first_layer_index: int) -> tuple[int, list[float]]:
    """(layer_start, weights) of WeightedLayerPooling over hidden_states[0..num_layers] reproducing SimCSE's pooler."""
    if pooler_type == "avg_top2":
        start = num_layers - 1
    else:  # avg_first_last
        start = first_layer_index
    weights = [0.0] * (num_layers + 1 - start)
    weights[0] += 1.0
    weights[-1] += 1.0  # the same layer twice when first == last: (h + h) / 2 = h, as pool()
    return start, weights


def _pooler_weights_saved(folder: Path) -> bool | None:
    """Whether the folder's safetensors weights hold pooler.dense.* (None: no safetensors to look at)."""
    from safetensors import safe_open

    from clusterns.modeling.encoder import MLP_KEYS, _safetensors_files

    files = _safetensors_files(str(folder))
    if not files:
        return None
    for file in files:
        with safe_open(file, framework="pt") as f:
            if all(k in f.keys() for k in MLP_KEYS):
                return True
    return False


def write_sentence_transformers_files(output_dir: str | os.PathLike, encoder, prompt_convention: str | None = None) -> list[str]:
    """Write modules.json and the module folders for `encoder` (already saved in output_dir).

    Returns the paths written (relative to output_dir). `prompt_convention` (prompt encoders):
    the evaluation convention the sentence-transformers model uses (default: the encoder's own,
    i.e. `test` as evaluation.py)."""
    from clusterns.modeling.projectors import MLPProjector

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
    if st_layout(encoder) == "custom":
        from clusterns.export.st_module import MODULE_CONFIG_NAME

        convention = prompt_convention or getattr(encoder, "prompt_convention", None)
        if config.pooler_type == "mask" and convention is None:
            convention = "test"
        _write_json(out / MODULE_CONFIG_NAME, {"max_seq_length": max_seq_length_of(encoder), "prompt_convention": convention})
        _write_json(out / MODULES_NAME, [_module(0, "", CUSTOM_MODULE_TYPE)])
        _write_json(out / ST_MODEL_CONFIG_NAME, model_config)
        return [MODULE_CONFIG_NAME, MODULES_NAME, ST_MODEL_CONFIG_NAME]

    pooler = config.pooler_type
    num_layers = int(encoder.backbone.config.num_hidden_layers)
    mlp = isinstance(encoder.projector, MLPProjector) and config.projector_at_eval
    st_config: dict[str, Any] = {"max_seq_length": max_seq_length_of(encoder), "do_lower_case": False}
    if pooler in ("avg_top2", "avg_first_last"):
        st_config["config_args"] = {"output_hidden_states": True}
    elif _pooler_weights_saved(out) is False:
        # The saved weights hold no pooler.dense.*: do not build (and randomly initialise) HF's pooler.
        # Not for the hidden-states layouts: sentence-transformers 3.x only passes all_layer_embeddings on when
        # the model also returns a pooler_output (its random weights are unused; transformers reports them).
        st_config["model_args"] = {"add_pooling_layer": False}
    _write_json(out / ST_CONFIG_NAME, st_config)
    written.append(ST_CONFIG_NAME)

    modules = [_module(0, "", "sentence_transformers.models.Transformer")]
    if pooler in ("avg_top2", "avg_first_last"):
        start, weights = _layer_weights(pooler, num_layers, config.first_layer_index)
        path = f"{len(modules)}_WeightedLayerPooling"
        _write_json(out / path / "config.json", {"word_embedding_dimension": hidden, "layer_start": start, "num_hidden_layers": num_layers})
        save_file({"layer_weights": torch.tensor(weights, dtype=torch.float32)}, str(out / path / "model.safetensors"), metadata={"format": "pt"})
        modules.append(_module(len(modules), path, "sentence_transformers.models.WeightedLayerPooling"))
        written += [f"{path}/config.json", f"{path}/model.safetensors"]
    cls = pooler in ("cls", "cls_before_pooler")
    path = f"{len(modules)}_Pooling"
    _write_json(out / path / "config.json", {
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
        _write_json(out / path / "config.json", {"in_features": hidden, "out_features": hidden, "bias": True, "activation_function": TANH})
        state = {"linear.weight": dense.weight.detach().contiguous().cpu(), "linear.bias": dense.bias.detach().contiguous().cpu()}
        save_file(state, str(out / path / "model.safetensors"), metadata={"format": "pt"})
        modules.append(_module(len(modules), path, "sentence_transformers.models.Dense"))
        written += [f"{path}/config.json", f"{path}/model.safetensors"]
    _write_json(out / MODULES_NAME, modules)
    _write_json(out / ST_MODEL_CONFIG_NAME, model_config)
    return written + [MODULES_NAME, ST_MODEL_CONFIG_NAME]


def export_folder(path: str | os.PathLike, pooler: str | None = None, prompt_convention: str | None = None,
                  trust_pickle: bool = False) -> list[str]:
    """Add the sentence-transformers files to an existing checkpoint folder (ours, or a plain HF BERT/RoBERTa).

    Only the sentence-transformers files are written: the weights, config.json and
    clusterns_config.json are left as they are. A folder without safetensors weights (old
    pytorch_model.bin) is refused unless trust_pickle."""
    from clusterns.modeling.encoder import SentenceEncoder

    encoder = SentenceEncoder.from_pretrained(path, pooler=pooler, trust_pickle=trust_pickle, prompt_convention=prompt_convention)
    return write_sentence_transformers_files(path, encoder, prompt_convention)


CHECK_SENTENCES = [
    "A man is playing a guitar.",
    "Two dogs run across the snowy field",
    "the quick brown fox jumps over the lazy dog while the children watch from the old wooden bridge",
    "hello",
]


def check_folder(path: str | os.PathLike, sentences: list[str] | None = None, pooler: str | None = None, **st_kwargs: Any) -> float:
    """Lowest per-sentence cosine between SentenceTransformer(path).encode and SentenceEncoder.encode (with `pooler`)."""
    import numpy as np

    from clusterns.modeling.encoder import SentenceEncoder
    from clusterns.export.st_module import load_sentence_transformer

    sentences = sentences or CHECK_SENTENCES
    prompt_convention = st_kwargs.get("prompt_convention")
    reference = SentenceEncoder.from_pretrained(path, pooler=pooler, prompt_convention=prompt_convention).encode(sentences)
    model = load_sentence_transformer(str(path), device="cpu", **st_kwargs)
    ours = model.encode(sentences)
    cos = (reference * ours).sum(1) / np.maximum(np.linalg.norm(reference, axis=1) * np.linalg.norm(ours, axis=1), 1e-12)
    return float(cos.min())


def main(argv: list[str] | None = None) -> int:
    """scripts/export_sentence_transformers.py (and `clusterns-export-st`)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        description="Add the sentence-transformers files (modules.json, sentence_bert_config.json, "
                    "config_sentence_transformers.json, 1_Pooling/, 2_Dense/, ...) to saved encoders, e.g. outputs "
                    "written before the export existed, so that SentenceTransformer(DIR) loads them. Weights are not rewritten.")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="checkpoint / output folders (ours, or plain HF BERT/RoBERTa)")
    parser.add_argument("--pooler", default=None,
                        help="override the saved pooler (evaluation.py names: cls, cls_before_pooler, avg, avg_top2, "
                             "avg_first_last); required for the right vectors of a plain HF folder (default there: cls_before_pooler)")
    parser.add_argument("--prompt_convention", default=None, help="prompt encoders: test (default), dev, consistent, original")
    parser.add_argument("--tokenizer", default=None, help="copy this tokenizer into folders that lack one")
    parser.add_argument("--checkpoints", action="store_true", help="also export every checkpoint-*/ inside each DIR")
    parser.add_argument("--model_card", action="store_true",
                        help="(re)write README.md from training_args.json (default: only when the folder has none)")
    parser.add_argument("--no_check", action="store_true", help="skip loading each folder with SentenceTransformer to compare vectors")
    parser.add_argument("--trust_pickle", action="store_true", help="allow folders whose weights are pytorch_model.bin (pickle)")
    args = parser.parse_args(argv)

    folders: list[str] = []
    for d in args.dirs:
        if not os.path.isdir(d):
            print(f"error: {d!r} is not a folder", file=sys.stderr)
            return 2
        folders.append(d)
        if args.checkpoints:
            folders += sorted((str(p) for p in Path(d).glob("checkpoint-*") if p.is_dir()), key=lambda p: int(p.rsplit("-", 1)[-1]) if p.rsplit("-", 1)[-1].isdigit() else 0)
    status = 0
    for folder in folders:
        try:
            if args.tokenizer and not any(Path(folder, f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
                from transformers import AutoTokenizer

                AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(folder)
            written = export_folder(folder, pooler=args.pooler, prompt_convention=args.prompt_convention, trust_pickle=args.trust_pickle)
            print(f"{folder}: wrote {', '.join(written)}")
            if args.model_card or (not Path(folder, "README.md").exists() and Path(folder, "training_args.json").exists()):
                from clusterns.export.model_card import write_model_card

                print(f"{folder}: wrote {write_model_card(folder)}")
            if not args.no_check:
                kwargs = {} if args.prompt_convention is None else {"prompt_convention": args.prompt_convention}
                cos = check_folder(folder, pooler=args.pooler, **kwargs)
                print(f"{folder}: SentenceTransformer vs SentenceEncoder.encode, lowest cosine {cos:.6f}")
                if cos < 0.9999:
                    print(f"error: {folder}: the sentence-transformers model does not reproduce encode()", file=sys.stderr)
                    status = 1
        except (OSError, ValueError) as err:
            print(f"error: {folder}: {err}", file=sys.stderr)
            status = 2
    return status
