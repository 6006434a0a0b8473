"""--mini_batch_size under DDP: two gloo ranks (batch 4 each, chunks of 3: 3 + 1) equal one uncached process with
batch 8, step for step (the loss) and in the parameter update (SGD, constant LR, dropout 0), for infonce (unsupervised
and with hard negatives), clusterns
(clustering active from the second step), mixcse, diffcse (its rank-local RTD part, run in chunks, included; the deterministic
masking of test_ddp_equivalence.py) and the prompt encoder with denoising; the ranks end with identical weights. The cached step bypasses
DDP's reducer and averages the gradients once per optimizer step (trainer.training_step)."""
from __future__ import annotations


import pytest
import torch

from backbones.test_backbone_ddp import argv, one_token_corpus
from tiny_backbones import build_tiny
from training.test_ddp_equivalence import assert_same_update, float_items, rank_records, run_recorded, run_under_torchrun

pytestmark = pytest.mark.multiprocess
OBJECTIVES = {
    "infonce": [],
    # supervised, with a hard-negative column (the sup_corpus below): the negatives of every rank are gathered too
    "infonce-sup": ["--hard_negative_weight", "0.5"],
    "clusterns": ["--objective", "clusterns", "--kmeans", "4", "--kmean_cosine", "1.0", "--kmeans_lr", "0.1",
                  "--bml_weight", "0.1", "--max_steps", "3"],
    "mixcse": ["--objective", "mixcse"],
    # the RTD part is rank-local (not scaled by the gather): its gradient reaches the cached vectors too
    "diffcse": ["--objective", "diffcse", "--generator_name", "{model}", "--masking_scheme", "kodiffcse", "--masking_ratio",
                "0.3", "--no_generator_dropout", "--lambda_weight", "1.0", "--pooler_type", "cls"],
    "prompt": ["--objective", "infonce", "--mask_embedding_sentence", "--mask_embedding_sentence_delta", "--pooler_type", "mask"],
}


def with_model(flags: list[str], model) -> list[str]:
    return [f.format(model=model) for f in flags]


def sup_corpus(corpus, out):
    """The corpus's lines as (sent0, sent1, hard_neg) rows: a line, the next, the one after (one length throughout)."""
    lines = corpus.read_text().splitlines()
    rows = ["sent0,sent1,hard_neg"] + [f"{a},{b},{c}" for a, b, c in zip(lines, lines[1:] + lines[:1], lines[2:] + lines[:2])]
    out.write_text("\n".join(rows) + "\n")
    return out


def corpus_for(name, corpora):
    return corpora[1] if name.endswith("-sup") else corpora[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("grad-cache-ddp")
    model = build_tiny("bert", root / "model", dropout=0.0, initializer_range=0.2)
    corpus = one_token_corpus(model, root / "corpus.txt")
    corpora = (corpus, sup_corpus(corpus, root / "nli.csv"))
    spec = []
    for name, flags in OBJECTIVES.items():
        (root / name).mkdir()
        spec.append({"argv": argv(model, corpus_for(name, corpora), root / name / "ddp", 4, True) + with_model(flags, model)
                     + ["--mini_batch_size", "3"], "out": str(root / name)})
    run_under_torchrun(spec, root)
    return model, corpora, {name: rank_records(root / name) for name in OBJECTIVES}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_cached_two_ranks_equal_one_uncached_process(name, runs, tmp_path):
    model, corpora, all_ranks = runs
    ranks = all_ranks[name]
    single = run_recorded(argv(model, corpus_for(name, corpora), tmp_path / "single", 8, False) + with_model(OBJECTIVES[name], model))
    steps = len(single["loss"])
    assert steps >= 2 and all(len(rec["loss"]) == steps for rec in ranks)
    for step in range(steps):
        torch.testing.assert_close(torch.cat([rec["ids"][step] for rec in ranks]), single["ids"][step], rtol=0, atol=0)
        if name == "diffcse":  # contrastive part global; RTD a per-rank mean whose average is the global mean
            assert sum(rec["loss"][step] for rec in ranks) / 2 == pytest.approx(single["loss"][step], rel=1e-5)
            continue
        for rec in ranks:
            assert rec["loss"][step] == pytest.approx(single["loss"][step], rel=1e-5), f"step {step + 1}"
    if name == "clusterns":
        assert [log["cluster/active"] for log in single["logs"]][-1] == 1.0
    assert_same_update(ranks, single, name)
    for key, value in float_items(ranks[0]["final"]).items():
        torch.testing.assert_close(float_items(ranks[1]["final"])[key], value, rtol=0, atol=0)
