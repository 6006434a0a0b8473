"""DDP on every architecture of tests/tiny_backbones.py: two gloo ranks with batch 4 each equal one process with
batch 8, step for step (the loss) and in the parameter update (SGD, constant LR, no clipping, dropout 0), through
the real training path. The torchrun driver and the comparison are tests/training/test_ddp_equivalence.py's."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from tiny_backbones import ARCHITECTURES, VOCAB_WORDS, build_tiny
from training.test_ddp_equivalence import assert_same_update, float_items, rank_records, run_recorded, run_under_torchrun

pytestmark = pytest.mark.multiprocess
ARCHS = list(ARCHITECTURES)


def one_token_corpus(model: Path, out: Path) -> Path:
    """48 lines of 6 words that are one token each for this tokenizer: every batch has the same length, so each
    rank's padding equals the single process's and the gathered ids are comparable row for row."""
    tok = AutoTokenizer.from_pretrained(model)
    base = len(tok("a", add_special_tokens=False)["input_ids"])
    words = [w for w in VOCAB_WORDS if w.isalpha() and len(tok(f"a {w}", add_special_tokens=False)["input_ids"]) == base + 1]
    assert len(words) >= 4, (model, words)
    rng = random.Random(0)
    candidates = [" ".join(rng.choices(words, k=6)) for _ in range(600)]
    lengths = [len(tok(line)["input_ids"]) for line in candidates]
    common = max(set(lengths), key=lengths.count)  # the first word has no leading space: keep one length
    lines = [line for line, n in zip(candidates, lengths) if n == common][:48]
    assert len(lines) == 48, model
    assert len({len(tok(line)["input_ids"]) for line in lines}) == 1, model
    out.write_text("\n".join(lines) + "\n")
    return out


def argv(model: Path, corpus: Path, out: Path, batch: int, ddp: bool) -> list[str]:
    return [str(a) for a in (*(["--ddp_backend", "gloo"] if ddp else []), "--model_name_or_path", model, "--train_file", corpus,
            "--output_dir", out, "--overwrite_output_dir", "--per_device_train_batch_size", batch, "--use_cpu",
            "--report_to", "none", "--dropout_prob", "0", "--pooler_type", "avg", "--max_seq_length", "16", "--seed", "42",
            "--optim", "sgd", "--learning_rate", "0.1", "--lr_scheduler_type", "constant", "--max_grad_norm", "0",
            "--weight_decay", "0", "--logging_steps", "1", "--disable_tqdm", "true", "--dataloader_num_workers", "0",
            "--objective", "infonce", "--max_steps", "2")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbone-ddp")
    assets, spec = {}, []
    for name in ARCHS:
        model = build_tiny(name, root / name / "model", dropout=0.0, initializer_range=0.2)
        corpus = one_token_corpus(model, root / name / "corpus.txt")
        assets[name] = (model, corpus)
        spec.append({"argv": argv(model, corpus, root / name / "ddp", 4, True), "out": str(root / name)})
    run_under_torchrun(spec, root)
    return {name: (assets[name], rank_records(root / name)) for name in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_two_ranks_equal_one_process(arch, runs, tmp_path):
    (model, corpus), ranks = runs[arch]
    single = run_recorded(argv(model, corpus, tmp_path / "single", 8, False))
    assert len(single["loss"]) == 2 and all(len(rec["loss"]) == 2 for rec in ranks)
    for step in range(2):
        torch.testing.assert_close(torch.cat([rec["ids"][step] for rec in ranks]), single["ids"][step], rtol=0, atol=0)
        for rec in ranks:
            assert rec["loss"][step] == pytest.approx(single["loss"][step], rel=1e-5), f"step {step + 1}"
    assert_same_update(ranks, single, arch)
    for key, value in float_items(ranks[0]["final"]).items():
        torch.testing.assert_close(float_items(ranks[1]["final"])[key], value, rtol=0, atol=0)
