"""KorSTS (kakaobrain/KorNLUDatasets): the 8 metrics of KoDiffCSE (cosine, euclidean,
manhattan, dot x Pearson, Spearman), over the whole set (standard protocol) and,
behind ``params['korsts_per_batch']``, KoDiffCSE's per-batch protocol: correlations
per shuffled batch of 256, averaged over batches (diffcse.md section 16)."""
from __future__ import annotations

import logging
import os

import numpy as np
from scipy.stats import pearsonr, spearmanr

from senteval import utils
from senteval.sts_files import load_sts_pairs
from senteval.utils import require_files

log = logging.getLogger(__name__)

SIMILARITIES = ("cosine", "euclidean", "manhattan", "dot")
METRICS = tuple(f"{s}_{c}" for s in SIMILARITIES for c in ("pearson", "spearman"))


def paired_scores(emb1: np.ndarray, emb2: np.ndarray) -> dict[str, np.ndarray]:
    """KoDiffCSE's four similarity scores per pair (higher = more similar)."""
    from sklearn.metrics.pairwise import (paired_cosine_distances, paired_euclidean_distances,
                                          paired_manhattan_distances)
    return {
        "cosine": 1 - paired_cosine_distances(emb1, emb2),
        "euclidean": -paired_euclidean_distances(emb1, emb2),
        "manhattan": -paired_manhattan_distances(emb1, emb2),
        "dot": np.array([np.dot(a, b) for a, b in zip(emb1, emb2)]),
    }


def korsts_metrics(emb1: np.ndarray, emb2: np.ndarray, labels) -> dict[str, float]:
    """The 8 correlations over all pairs at once; 'average' = their mean."""
    labels = np.asarray(labels, dtype=np.float64)
    out = {}
    for name, sc in paired_scores(emb1, emb2).items():
        out[f"{name}_pearson"] = float(pearsonr(sc, labels)[0])
        out[f"{name}_spearman"] = float(spearmanr(sc, labels)[0])
    out["average"] = float(np.mean([out[m] for m in METRICS]))
    return out


def korsts_per_batch(emb1: np.ndarray, emb2: np.ndarray, labels, batch_size: int = 256,
                     seed: int = 42) -> dict[str, float]:
    """KoDiffCSE protocol: shuffle (torch.randperm, generator seeded with ``seed``), cut
    into batches, compute the 8 metrics per batch and average them over batches.
    'select' = mean over batches of the max of the 4 Spearman values (its model-selection
    value). The exact batches of the original depend on its global RNG state and cannot
    be reproduced; the protocol can."""
    import torch

    labels = np.asarray(labels, dtype=np.float64)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).numpy()
    per, select = [], []
    for start in range(0, len(perm), batch_size):
        idx = perm[start:start + batch_size]
        m = korsts_metrics(emb1[idx], emb2[idx], labels[idx])
        per.append(m)
        select.append(max(m[f"{s}_spearman"] for s in SIMILARITIES))
    out = {k: float(np.mean([m[k] for m in per])) for k in METRICS + ("average",)}
    out["select"] = float(np.mean(select))
    out["nbatches"] = len(per)
    return out


def load_korsts_file(fpath: str):
    """sts-*.tsv: header, then genre filename year id score sentence1 sentence2 (TAB): one STS file of the generic
    reader (senteval.sts_files), its columns named by the header."""
    return load_sts_pairs(fpath, ("sentence1", "sentence2", "score"))


class KorSTSEval:
    task_name = "KorSTS"
    files = {"dev": "sts-dev.tsv", "test": "sts-test.tsv"}

    def __init__(self, task_path, seed=1111):
        self.seed = seed
        require_files(self.task_name, task_path, list(self.files.values()))
        self.data = {k: load_korsts_file(os.path.join(task_path, f)) for k, f in self.files.items()}
        self.samples = [s for d in self.data.values() for s in d[0] + d[1]]

    def do_prepare(self, params, prepare):
        return prepare(params, self.samples)

    def run(self, params, batcher):
        splits = [s for s in self.files if not params.get("eval_splits") or s in params.eval_splits]
        if not splits:
            raise ValueError(f"KorSTS: eval_splits {params.eval_splits} selects none of dev/test")
        sentences = [s for sp in splits for s in self.data[sp][0] + self.data[sp][1]]
        matrix, index = utils.encode_unique(params, batcher, sentences, desc=self.task_name)
        results = {}
        for sp in splits:
            XA, XB, y = self.data[sp]
            e1, e2 = utils.gather(matrix, index, XA), utils.gather(matrix, index, XB)
            labels = np.asarray(y, dtype=np.float64) / 5.0  # KoDiffCSE's scaling; no effect on r/rho
            res = korsts_metrics(e1, e2, labels)
            res["nsamples"] = len(y)
            if params.get("korsts_per_batch"):
                res["per_batch"] = korsts_per_batch(e1, e2, labels,
                                                    params.get("korsts_batch_size") or 256,
                                                    params.get("korsts_seed", 42))
            results[sp] = res
            log.debug("KorSTS %s: cosine spearman %.4f", sp, res["cosine_spearman"])
        return results
