"""Transfer tasks on CPU with the linear probe: loaders, per-mode settings, result layout.
Synthetic, separable data keeps these fast; the real sets run in evaluation.py."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "SentEval") not in sys.path:
    sys.path.insert(0, str(REPO / "SentEval"))

import senteval  # noqa: E402
from conftest import sentences  # noqa: E402
from senteval.toy import bow_batcher  # noqa: E402
from senteval.utils import DataFormatError, get_optimizer  # noqa: E402

FAST = {"kfold": 2, "device": "cpu",
        "classifier": {"nhid": 0, "optim": "rmsprop", "batch_size": 128, "tenacity": 3, "epoch_size": 2}}




@pytest.fixture(scope="module")
def downstream(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("downstream")
    (root / "MR").mkdir()
    (root / "MR" / "rt-polarity.pos").write_text("\n".join(sentences("great", 40, rng)) + "\n", encoding="latin-1")
    (root / "MR" / "rt-polarity.neg").write_text("\n".join(sentences("awful", 40, rng)) + "\n", encoding="latin-1")
    (root / "TREC").mkdir()
    classes = ["ABBR:exp", "DESC:def", "ENTY:other", "HUM:ind", "LOC:city", "NUM:date"]
    cue = ["abbr", "describe", "thing", "who", "where", "when"]
    for fname, n in (("train_5500.label", 60), ("TREC_10.label", 24)):
        lines = [f"{classes[i % 6]} {s}" for i in range(n) for s in sentences(cue[i % 6], 1, rng)]
        (root / "TREC" / fname).write_text("\n".join(lines) + "\n", encoding="latin-1")
    (root / "MRPC").mkdir()
    for fname, n in (("msr_paraphrase_train.txt", 60), ("msr_paraphrase_test.txt", 20)):
        rows = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for i in range(n):
            a = sentences("cat", 1, rng)[0]
            b = a if i % 2 else sentences("dog", 1, rng)[0] + " zebra quokka"
            rows.append(f"{i % 2}\t{i}\t{i + 1000}\t{a}\t{b}")
        (root / "MRPC" / fname).write_text("\n".join(rows) + "\n")
    (root / "SST" / "binary").mkdir(parents=True)
    for split, n in (("train", 60), ("dev", 20), ("test", 20)):
        rows = [f"{s} \t{i % 2}" for i in range(n) for s in sentences("great" if i % 2 else "awful", 1, rng)]
        (root / "SST" / "binary" / f"sentiment-{split}").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("task", ["MR", "TREC", "MRPC", "SST2"])
def test_transfer_task_runs_on_cpu(downstream, task):
    res = senteval.engine.SE(dict(FAST, task_path=str(downstream)), bow_batcher).eval(task)
    assert {"devacc", "acc", "ndev", "ntest"} <= set(res)
    assert 0 <= res["acc"] <= 100 and 0 <= res["devacc"] <= 100
    if task in ("MR", "SST2"):
        assert res["acc"] >= 70, res  # separable by one word (chance: 50)
    if task == "MRPC":
        assert "f1" in res and res["ntest"] == 20


def test_sklearn_fallback(downstream):
    res = senteval.engine.SE(dict(FAST, task_path=str(downstream), usepytorch=False), bow_batcher).eval("MR")
    assert res["acc"] >= 80


def test_get_optimizer():
    import torch

    fn, kw = get_optimizer("adam")
    assert fn is torch.optim.Adam and kw == {}
    fn, kw = get_optimizer("sgd,lr=0.1")
    assert fn is torch.optim.SGD and kw == {"lr": 0.1}
    with pytest.raises(ValueError):
        get_optimizer("sgd")
    with pytest.raises(ValueError):
        get_optimizer("adam,bogus=1")
    with pytest.raises(ValueError):
        get_optimizer("nope")


def test_trec_malformed_line(tmp_path):
    (tmp_path / "TREC").mkdir()
    (tmp_path / "TREC" / "train_5500.label").write_text("NUM:date When ?\nno colon here\n")
    (tmp_path / "TREC" / "TREC_10.label").write_text("NUM:date When ?\n")
    with pytest.raises(DataFormatError, match=r"train_5500.label:2"):
        senteval.engine.SE({"task_path": str(tmp_path)}, None).build("TREC")
