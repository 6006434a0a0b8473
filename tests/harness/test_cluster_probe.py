"""The clustering probe (SentEval/senteval/clustering.py; ClusterNS's cluster_eval.py, Table 6): hand-checked ACC,
NMI and the seeds' spread, the label<TAB>text reader's errors, the built-in TREC set, and evaluation.py
--task_set cluster / --cluster_file end to end on a tiny random BERT."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clusterns.cli import evaluate as evaluation
from clusterns.harness import DataFormatError, MissingDataError, clustering
from clusterns.modeling.encoder import SentenceEncoder
from harness.test_evaluation_cli import WORDS, tiny_downstream  # noqa: F401 - a fixture


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random BERT whose [CLS] states differ between sentences (initializer_range 0.5: at BERT's 0.02 a tiny
    random model gives nearly one vector for every input)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("probe-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast.from_pretrained(str(path), do_lower_case=True).save_pretrained(path)  # (vocab_file= is ignored on 5.x)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=64, initializer_range=0.5)).save_pretrained(path)
    return path


def test_clustering_accuracy_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert clustering.clustering_accuracy(labels, np.array([1, 1, 0, 0, 2, 2])) == 1.0  # a relabelling is perfect
    # cluster 0 = {0, 0, 1}, cluster 1 = {1, 2, 2}: best map 0 -> label 0 (2 items), 1 -> label 2 (2 items): 4 / 6
    assert clustering.clustering_accuracy(labels, np.array([0, 0, 0, 1, 1, 1])) == pytest.approx(4 / 6)
    assert clustering.clustering_accuracy(labels, np.zeros(6, dtype=int)) == pytest.approx(2 / 6)  # one cluster
    with pytest.raises(ValueError, match="one length"):
        clustering.clustering_accuracy(labels, np.array([0, 1]))


def test_probe_on_separated_points_and_the_spread():
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    labels = np.repeat([0, 1, 2], 20)
    points = centres[labels] + rng.normal(scale=0.1, size=(60, 2))
    out = clustering.cluster_probe(points, labels, seeds=(3, 4))
    assert out["k"] == 3 and out["n"] == 60 and out["seeds"] == [3, 4]
    assert out["acc"] == {"mean": 1.0, "std": 0.0, "min": 1.0, "max": 1.0}
    assert out["nmi"]["mean"] == pytest.approx(1.0)
    assert sorted(out["per_seed"][0]["cluster_sizes"]) == [20, 20, 20]
    assert clustering.spread([0.5, 0.7]) == pytest.approx({"mean": 0.6, "std": 0.02 ** 0.5, "min": 0.5, "max": 0.7})  # sample std
    assert clustering.spread([0.5])["std"] == 0.0
    # one point of label 0 placed among label 1: exactly 59 / 60 with every seed
    points[0] = centres[1]
    assert clustering.cluster_probe(points, labels, seeds=(0,))["acc"]["mean"] == pytest.approx(59 / 60)


def test_seeds_make_the_probe_reproducible_and_differ():
    rng = np.random.default_rng(1)
    points, labels = rng.normal(size=(80, 4)), rng.integers(0, 4, size=80)  # no structure: k-means depends on its seed
    a = clustering.cluster_probe(points, labels, seeds=(0, 1, 2, 3, 4), n_init=1)
    b = clustering.cluster_probe(points, labels, seeds=(0, 1, 2, 3, 4), n_init=1)
    assert a == b
    assert len({r["acc"] for r in a["per_seed"]}) > 1 and a["acc"]["std"] > 0


@pytest.mark.parametrize("content, message", [
    ("0\tgood\nbad line\n", ":2: expected 'label<TAB>text'"),
    ("0\tgood\n\tno label\n", ":2: empty label"),
    ("0\tgood\n1\t  \n", ":2: empty text"),
    ("\n\n", "no 'label<TAB>text' lines"),
    ("0\tone\n0\ttwo\n", "at least 2 distinct labels"),
])
def test_bad_files_name_the_line(content, message, tmp_path):
    path = tmp_path / "set.tsv"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=message):
        clustering.ClusteringEval.from_file("set", str(path))


def test_a_folder_or_a_missing_file_is_refused(tmp_path):
    with pytest.raises(DataFormatError, match="is a folder"):
        clustering.read_labelled_texts(str(tmp_path))
    with pytest.raises(MissingDataError, match="not found"):
        clustering.read_labelled_texts(str(tmp_path / "nope.tsv"))


def write_trec(folder):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{coarse}:x {' '.join(WORDS[i:i + 4])} ?" for i, coarse in enumerate(["DESC", "HUM", "LOC", "NUM"] * 3)]
    (folder / "train_5500.label").write_text("\n".join(lines[:8]) + "\n", encoding="latin-1")
    (folder / "TREC_10.label").write_text("\n".join(lines[8:]) + "\n", encoding="latin-1")


def test_builtin_trec_set_uses_both_files_and_the_coarse_labels(tmp_path):
    write_trec(tmp_path / "TREC")
    task = clustering.ClusteringEval.trec(str(tmp_path / "TREC"))
    assert len(task.texts) == 12 and np.unique(task.labels).size == 4
    assert task.texts[0] == WORDS[0:4] + ["?"]


def labelled_file(path):
    rng = np.random.default_rng(0)
    rows = [f"{label}\t{' '.join(rng.choice(WORDS, size=5))}" for label in ("sports", "music", "food") * 6]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_evaluation_cli_cluster_task_set_and_files(tiny_model, tiny_downstream, tmp_path, capsys):  # noqa: F811
    write_trec(tiny_downstream / "TREC")
    toy = labelled_file(tmp_path / "toy.tsv")
    out = tmp_path / "res.json"
    rc = evaluation.main(["--model_name_or_path", str(tiny_model), "--data_dir", str(tiny_downstream), "--task_set", "cluster",
                          "--cluster_file", f"toy={toy}", "--cluster_runs", "3", "--cluster_seed", "7", "--output_json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "clustering (k-means, K = the number of labels, 3 seeds 7..9)" in printed
    assert "TREC-cluster" in printed and "toy" in printed and " ± " in printed
    payload = json.loads(out.read_text())
    assert payload["tasks"] == ["TREC-cluster", "toy"] and payload["cluster_pooler"] == "cls_before_pooler"
    toy_result = payload["results"]["toy"]
    assert toy_result["k"] == 3 and toy_result["n"] == 18 and toy_result["seeds"] == [7, 8, 9]
    assert set(payload["tables"]["cluster"]) == {"TREC-cluster ACC", "TREC-cluster NMI", "toy ACC", "toy NMI"}
    # the original's representation: the raw last-layer [CLS], k-means on it with the same seeds
    encoder = SentenceEncoder.from_pretrained(str(tiny_model), pooler="cls_before_pooler")
    labels, texts = clustering.read_labelled_texts(str(toy))
    direct = clustering.cluster_probe(encoder.encode([" ".join(t) for t in texts]), clustering.label_ids(labels), seeds=(7, 8, 9))
    assert toy_result["acc"]["mean"] == pytest.approx(direct["acc"]["mean"]) and toy_result["nmi"] == pytest.approx(direct["nmi"])
    assert all(len([n for n in r["cluster_sizes"] if n]) == 3 for r in toy_result["per_seed"])  # vectors that cluster
    # --cluster_pooler avg: another representation, other vectors
    rc = evaluation.main(["--model_name_or_path", str(tiny_model), "--data_dir", str(tiny_downstream), "--task_set", "na",
                          "--tasks", "STSBenchmark", "--mode", "fasttest", "--cluster_file", f"toy={toy}", "--cluster_pooler", "avg",
                          "--output_json", str(out)])
    assert rc == 0
    payload = json.loads(out.read_text())
    assert "STSBenchmark" in payload["results"] and payload["cluster_pooler"] == "avg"
    avg = clustering.cluster_probe(SentenceEncoder.from_pretrained(str(tiny_model), pooler="avg").encode([" ".join(t) for t in texts]),
                                   clustering.label_ids(labels))
    assert payload["results"]["toy"]["nmi"] == pytest.approx(avg["nmi"])
    assert payload["results"]["toy"]["per_seed"] != toy_result["per_seed"]  # another representation, other clusters


@pytest.mark.parametrize("flags, message", [
    (["--cluster_file", "toy"], "--cluster_file expects NAME=PATH"),
    (["--cluster_file", "a={toy}", "--cluster_file", "a={toy}"], "the name 'a' is given twice"),
    (["--cluster_file", "a={missing}"], "clustering file not found"),
    (["--cluster_file", "a={folder}"], "is a folder"),
    (["--cluster_file", "a={toy}", "--cluster_runs", "0"], "--cluster_runs must be >= 1"),
])
def test_bad_cluster_flags_exit_2_with_one_line(flags, message, tiny_model, tiny_downstream, tmp_path, capsys):  # noqa: F811
    toy = labelled_file(tmp_path / "toy.tsv")
    flags = [f.format(toy=toy, missing=tmp_path / "nope.tsv", folder=tmp_path) for f in flags]
    rc = evaluation.main(["--model_name_or_path", str(tiny_model), "--data_dir", str(tiny_downstream), "--task_set", "na",
                          "--tasks", "STSBenchmark", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]
