"""The short-text clustering probe of ClusterNS (Deng et al., "Clustering-Aware Negative Sampling for Unsupervised
Sentence Representation", ACL Findings 2023, Table 6; upstream `cluster_eval.py`).

Each sentence of a labelled set is encoded, k-means with K = the number of distinct labels clusters the vectors,
and the clusters are scored against the labels:

* ACC: clustering accuracy, the best one-to-one matching of clusters to labels (Hungarian algorithm on the
  contingency table, scipy's linear_sum_assignment), matched sentences / all sentences;
* NMI: normalised mutual information (sklearn's normalized_mutual_info_score, arithmetic normalisation).

The original ran sklearn's KMeans(K) once with k-means++ and no fixed seed, so its numbers changed from run to
run; here k-means runs once per seed (`seeds`, default 5 consecutive seeds), n_init=10 (sklearn's default when the
original was written), and the mean, standard deviation, minimum and maximum over the seeds are reported.

Data: `label<TAB>text` lines (the format of the original's SCCL-style files; any label strings), or the built-in
TREC set (the SentEval TREC files, train and test together, their 6 coarse labels).
"""
from __future__ import annotations

import io
import os

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from senteval import utils
from senteval.transfer import read_trec_file
from senteval.utils import DataFormatError, require_files

DEFAULT_SEEDS = (0, 1, 2, 3, 4)


def clustering_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """The fraction of items whose cluster maps to their label under the best one-to-one map of clusters to
    labels (Hungarian matching on the contingency table). labels and clusters: int arrays of the same length."""
    labels, clusters = np.asarray(labels, dtype=np.int64), np.asarray(clusters, dtype=np.int64)
    if labels.shape != clusters.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and clusters {clusters.shape} must be 1-D arrays of one length")
    if labels.size == 0:
        raise ValueError("no items to score")
    size = int(max(labels.max(), clusters.max())) + 1
    contingency = np.zeros((size, size), dtype=np.int64)
    np.add.at(contingency, (clusters, labels), 1)
    rows, cols = linear_sum_assignment(-contingency)  # maximise the matched count
    return float(contingency[rows, cols].sum() / labels.size)


def spread(values: list[float]) -> dict[str, float]:
    """mean, std (the sample standard deviation, n - 1; 0 for one value), min and max of values."""
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "min": float(array.min()), "max": float(array.max())}


def cluster_probe(embeddings: np.ndarray, labels: np.ndarray, seeds=DEFAULT_SEEDS, n_init: int = 10) -> dict:
    """k-means with K = the number of distinct labels, once per seed: ACC and NMI per seed and their spread."""
    labels = np.asarray(labels, dtype=np.int64)
    k = int(np.unique(labels).size)
    if k < 2:
        raise ValueError(f"the clustering probe needs at least 2 distinct labels, got {k}")
    if len(embeddings) < k:
        raise ValueError(f"{len(embeddings)} sentences cannot form {k} clusters")
    per_seed = []
    for seed in seeds:
        clusters = KMeans(n_clusters=k, n_init=n_init, random_state=int(seed)).fit_predict(np.asarray(embeddings, dtype=np.float64))
        per_seed.append({"seed": int(seed), "acc": clustering_accuracy(labels, clusters),
                         "nmi": float(normalized_mutual_info_score(labels, clusters)),
                         "cluster_sizes": np.bincount(clusters, minlength=k).tolist()})
    return {"n": int(labels.size), "k": k, "seeds": [int(s) for s in seeds],
            "acc": spread([r["acc"] for r in per_seed]), "nmi": spread([r["nmi"] for r in per_seed]), "per_seed": per_seed}


def read_labelled_texts(path: str) -> tuple[list[str], list[list[str]]]:
    """(labels, token lists) of a `label<TAB>text` file; errors name the file and line."""
    if os.path.isdir(path):
        raise DataFormatError(f"{path} is a folder; the clustering probe reads a label<TAB>text file")
    if not os.path.isfile(path):
        raise utils.MissingDataError(f"clustering file not found: {path}")
    labels, texts = [], []
    with io.open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if "\t" not in line:
                raise DataFormatError(f"{path}:{lineno}: expected 'label<TAB>text', got {line[:120]!r}")
            label, text = line.split("\t", 1)
            if not label.strip() or not text.strip():
                raise DataFormatError(f"{path}:{lineno}: empty {'label' if not label.strip() else 'text'} in {line[:120]!r}")
            labels.append(label.strip())
            texts.append(text.split())
    if not texts:
        raise DataFormatError(f"{path}: no 'label<TAB>text' lines")
    return labels, texts


def label_ids(labels: list[str]) -> np.ndarray:
    """Label strings -> ids in order of first appearance."""
    ids: dict[str, int] = {}
    return np.asarray([ids.setdefault(label, len(ids)) for label in labels], dtype=np.int64)


class ClusteringEval:
    """A clustering task for the harness: do_prepare / run(params, batcher) as every SentEval task."""

    def __init__(self, name: str, labels: list[str], texts: list[list[str]], seeds=DEFAULT_SEEDS, n_init: int = 10):
        self.task_name, self.texts, self.labels = name, texts, label_ids(labels)
        self.seeds, self.n_init = tuple(seeds), int(n_init)
        if np.unique(self.labels).size < 2:
            raise DataFormatError(f"{name}: the clustering probe needs at least 2 distinct labels")

    @classmethod
    def from_file(cls, name: str, path: str, **kwargs) -> "ClusteringEval":
        return cls(name, *read_labelled_texts(path), **kwargs)

    @classmethod
    def trec(cls, trec_dir: str, **kwargs) -> "ClusteringEval":
        """SentEval's TREC questions (train_5500.label + TREC_10.label) with their 6 coarse labels."""
        require_files("TREC", trec_dir, ["train_5500.label", "TREC_10.label"])
        data = [read_trec_file(os.path.join(trec_dir, name)) for name in ("train_5500.label", "TREC_10.label")]
        return cls("TREC-cluster", [str(y) for d in data for y in d["y"]], [x for d in data for x in d["X"]], **kwargs)

    def do_prepare(self, params, prepare):
        return prepare(params, self.texts)

    def run(self, params, batcher) -> dict:
        matrix, index = utils.encode_unique(params, batcher, self.texts, desc=self.task_name)
        return cluster_probe(utils.gather(matrix, index, self.texts), self.labels, self.seeds, self.n_init)
