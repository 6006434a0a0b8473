"""`clusterns-export-st` / scripts/export_sentence_transformers.py: add the sentence-transformers files to
saved folders (ours, or plain HF checkpoints) and check that SentenceTransformer(folder) reproduces encode()."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import transformers

from clusterns.export.model_card import write_model_card
from clusterns.export.folder import write_model_folder
from clusterns.export.st_module import load_sentence_transformer
from clusterns.modeling.encoder import SentenceEncoder


def export_folder(path: str | os.PathLike, pooler: str | None = None, prompt_convention: str | None = None,
                  trust_pickle: bool = False) -> list[str]:
    """Add the sentence-transformers files to an existing checkpoint folder (ours, or a plain HF BERT/RoBERTa).

    Only the sentence-transformers files are written: the weights, config.json and
    clusterns_config.json are left as they are. A folder without safetensors weights (old
    pytorch_model.bin) is refused unless trust_pickle."""
    encoder = SentenceEncoder.from_pretrained(path, pooler=pooler, trust_pickle=trust_pickle, prompt_convention=prompt_convention)
    return write_model_folder(encoder, path, weights=False, prompt_convention=prompt_convention)


CHECK_SENTENCES = [
    "A man is playing a guitar.",
    "Two dogs run across the snowy field",
    "the quick brown fox jumps over the lazy dog while the children watch from the old wooden bridge",
    "hello",
]


def check_folder(path: str | os.PathLike, sentences: list[str] | None = None, pooler: str | None = None, **st_kwargs: Any) -> float:
    """Lowest per-sentence cosine between SentenceTransformer(path).encode and SentenceEncoder.encode (with `pooler`)."""
    sentences = sentences or CHECK_SENTENCES
    prompt_convention = st_kwargs.get("prompt_convention")
    reference = SentenceEncoder.from_pretrained(path, pooler=pooler, prompt_convention=prompt_convention).encode(sentences)
    model = load_sentence_transformer(str(path), device="cpu", **st_kwargs)
    ours = model.encode(sentences)
    cos = (reference * ours).sum(1) / np.maximum(np.linalg.norm(reference, axis=1) * np.linalg.norm(ours, axis=1), 1e-12)
    return float(cos.min())


def main(argv: list[str] | None = None) -> int:
    """scripts/export_sentence_transformers.py (and `clusterns-export-st`)."""
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
                transformers.AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(folder)
            written = export_folder(folder, pooler=args.pooler, prompt_convention=args.prompt_convention, trust_pickle=args.trust_pickle)
            print(f"{folder}: wrote {', '.join(written)}")
            if args.model_card or (not Path(folder, "README.md").exists() and Path(folder, "training_args.json").exists()):
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
