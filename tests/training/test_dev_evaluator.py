"""In-training evaluator: same numbers as the harness on the dev splits, the metric names of
SimCSE's CLTrainer.evaluate, and alignment / uniformity."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
for p in (REPO, REPO / "SentEval"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import senteval  # noqa: E402
from senteval.toy import bow_batcher, bow_embed  # noqa: E402

from clusterns.training.dev_evaluator import SentEvalDevEvaluator, alignment_uniformity  # noqa: E402


def mirror_root() -> Path:
    root = Path(os.environ.get("CLUSTERNS_DATA_MIRROR", REPO.parent / "shared" / "data"))
    if not (root / "senteval" / "STS").is_dir():
        pytest.skip(f"data mirror not found at {root}")
    return root


def test_alignment_uniformity_by_hand():
    e1 = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    e2 = np.array([[0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    scores = [4.01, 4.5, 3.99]  # the last pair is below the 4.0 threshold (not truncated to 3)
    align, unif = alignment_uniformity(e1, e2, scores)
    # pairs 0 and 1: squared distances 2 and 0
    assert align == pytest.approx(1.0)
    # A score of exactly 4 is not a positive pair (MixCSE's `label > 4.0`; the SimCSE paper's "higher than 4"):
    # only pair 1 (distance 0) is left.
    align_strict, _ = alignment_uniformity(e1, e2, [4.0, 4.5, 3.99])
    assert align_strict == pytest.approx(0.0)
    # distinct vectors: (1,0), (0,1), (-1,0): squared distances 2, 4, 2
    assert unif == pytest.approx(np.log(np.mean(np.exp(-2 * np.array([2.0, 4.0, 2.0])))))


def test_alignment_uses_normalised_vectors_and_validates():
    e1 = np.array([[3.0, 0.0], [0.0, 2.0]])
    e2 = np.array([[0.0, 5.0], [0.0, 7.0]])
    align, _ = alignment_uniformity(e1, e2, [5.0, 5.0])
    assert align == pytest.approx(1.0)
    align_raw, _ = alignment_uniformity(e1, e2, [5.0, 5.0], normalize=False)
    assert align_raw == pytest.approx((34 + 25) / 2)
    with pytest.raises(ValueError, match="no pair"):
        alignment_uniformity(e1, e2, [1.0, 2.0])
    with pytest.raises(ValueError):
        alignment_uniformity(e1, e2[:1], [5.0])


def test_uniformity_is_lower_for_spread_vectors():
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(200, 16))
    clumped = np.ones((200, 16)) + 0.05 * rng.normal(size=(200, 16))
    s = np.full(100, 5.0)
    _, u_spread = alignment_uniformity(spread[:100], spread[100:], s)
    _, u_clumped = alignment_uniformity(clumped[:100], clumped[100:], s)
    assert u_spread < u_clumped <= 0


def test_matches_harness_dev_numbers_on_real_data():
    root = mirror_root()
    ev = SentEvalDevEvaluator(str(root / "senteval"), transfer=False, korsts_dir=str(root / "korsts"),
                              align_uniform=True)
    calls = []

    def encode_fn(sentences):
        calls.append(len(sentences))
        return bow_embed(sentences)

    m = ev(encode_fn)
    res = senteval.engine.SE({"task_path": str(root / "senteval"), "eval_splits": ["dev"]}, bow_batcher).eval(
        ["STSBenchmark", "SICKRelatedness"])
    assert m["eval_stsb_spearman"] == pytest.approx(res["STSBenchmark"]["dev"]["spearman"][0], abs=1e-9)
    assert m["eval_stsb_spearman"] == pytest.approx(0.5346, abs=5e-5)  # spec section 11
    assert m["eval_sickr_spearman"] == pytest.approx(res["SICKRelatedness"]["dev"]["spearman"][0], abs=1e-9)
    assert m["eval_avg_sts"] == pytest.approx((m["eval_stsb_spearman"] + m["eval_sickr_spearman"]) / 2)
    assert -1 <= m["eval_korsts_spearman"] <= 1
    assert m["eval_alignment"] > 0 and m["eval_uniformity"] < 0
    # one call, each distinct dev sentence once (no train/test sentences)
    assert calls == [len(set(ev.sentences))] and len(ev.sentences) < 2 * (1500 + 500 + 1500)
    # no file is read again at evaluation time
    assert ev(encode_fn)["eval_stsb_spearman"] == m["eval_stsb_spearman"]


@pytest.mark.slow  # seven k-fold probes: minutes on a busy 2-core machine
def test_transfer_dev_metrics(tmp_path, monkeypatch):
    from conftest import sentences

    root = mirror_root()
    down = tmp_path / "downstream"
    down.mkdir()
    for name in ("STS", "SICK"):
        (down / name).symlink_to(root / "senteval" / name)
    rng = np.random.default_rng(0)
    # every transfer task as a tiny synthetic set with the real file names
    files = {"MR": ("rt-polarity.pos", "rt-polarity.neg"), "CR": ("custrev.pos", "custrev.neg"),
             "SUBJ": ("subj.objective", "subj.subjective"), "MPQA": ("mpqa.pos", "mpqa.neg")}
    for task, (pos, neg) in files.items():
        (down / task).mkdir()
        (down / task / pos).write_text("\n".join(sentences("great", 20, rng)) + "\n")
        (down / task / neg).write_text("\n".join(sentences("awful", 20, rng)) + "\n")
    (down / "TREC").mkdir()
    for fname in ("train_5500.label", "TREC_10.label"):
        (down / "TREC" / fname).write_text("\n".join(f"{c} {s}" for c in ("NUM:date", "HUM:ind") for s in sentences(c[:3], 10, rng)) + "\n")
    (down / "MRPC").mkdir()
    for fname in ("msr_paraphrase_train.txt", "msr_paraphrase_test.txt"):
        rows = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"] + [f"{i % 2}\t{i}\t{i}\tx y {i}\tx z {i}" for i in range(20)]
        (down / "MRPC" / fname).write_text("\n".join(rows) + "\n")
    (down / "SST" / "binary").mkdir(parents=True)
    for split in ("train", "dev", "test"):
        (down / "SST" / "binary" / f"sentiment-{split}").write_text(
            "\n".join(f"{s} \t{i % 2}" for i in range(20) for s in sentences("great" if i % 2 else "awful", 1, rng)) + "\n")
    import clusterns.training.dev_evaluator as de

    monkeypatch.setitem(de.FAST_PARAMS, "kfold", 2)
    ev = SentEvalDevEvaluator(str(down), transfer=True, device="cpu")
    m = ev(bow_embed)
    for task in ("MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC"):
        assert 0 <= m[f"eval_{task}"] <= 100
    assert m["eval_avg_transfer"] == pytest.approx(np.mean([m[f"eval_{t}"] for t in ("MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC")]))
