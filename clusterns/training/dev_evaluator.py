"""In-training SentEval evaluation (SimCSE's CLTrainer.evaluate, senteval.md section 9),
plus alignment / uniformity (Wang & Isola, 2020).

    evaluator = SentEvalDevEvaluator("SentEval/data/downstream", transfer=False)
    metrics = evaluator(encode_fn)   # encode_fn(list[str]) -> float32 [N, H]

Returns fractions (not x100): eval_stsb_spearman (STS-B dev, 1500 pairs), eval_sickr_spearman
(SICK trial, 500 pairs), eval_avg_sts; with transfer=True eval_<TASK> dev accuracies (%) and
eval_avg_transfer; with korsts_dir eval_korsts_spearman (KorSTS dev, cosine Spearman over the
whole set); with sts_sets {NAME: file} eval_NAME_spearman (any STS set, any language: cosine Spearman over
the whole set, as STS-B's; harness sts_files.py); with align_uniform=True eval_alignment / eval_uniformity on
STS-B dev. english=False evaluates KorSTS dev and the sts_sets alone (no English data needed).

Only the dev splits are encoded (SimCSE encodes every split and reads dev: identical metrics
at ~1/9 of the cost), each distinct sentence once; the files are read once, at construction.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
from scipy.special import logsumexp
from scipy.stats import spearmanr

from clusterns.harness import SE, resolve_downstream, to_numpy
from clusterns.harness import korsts as _korsts
from clusterns.harness import sts as _sts
from clusterns.harness import sts_files as _sts_files

TRANSFER_TASKS = ["MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC"]
# SimCSE evaluates in training with the fast classifier settings.
FAST_PARAMS = {"usepytorch": True, "kfold": 5, "batch_size": 128,
               "classifier": {"nhid": 0, "optim": "rmsprop", "batch_size": 128, "tenacity": 3, "epoch_size": 2}}


def alignment_uniformity(emb1: np.ndarray, emb2: np.ndarray, scores: Sequence[float],
                         threshold: float = 4.0, t: float = 2.0, alpha: float = 2.0,
                         normalize: bool = True) -> tuple[float, float]:
    """(alignment, uniformity) of paired embeddings.

    alignment  = mean ||f(x) - f(y)||^alpha over the pairs whose gold score is > threshold (strictly: the
                 SimCSE paper's "score higher than 4" and MixCSE's cal_align_uniform `label > 4.0`; STS-B's
                 0-5 scale, scores not truncated to int as MixCSE's LongTensor labels were)
    uniformity = log mean exp(-t ||f(x) - f(y)||^2) over all pairs of distinct vectors among
                 emb1 and emb2 (identical rows, i.e. repeated sentences, count once)
    f is L2-normalised first unless normalize=False. Computed in float64.
    """
    a = np.asarray(emb1, dtype=np.float64)
    b = np.asarray(emb2, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or len(s) != len(a):
        raise ValueError(f"emb1 {a.shape}, emb2 {b.shape} and scores ({len(s)}) must be paired [N, H], [N]")
    if normalize:
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    pos = s > threshold
    if not pos.any():
        raise ValueError(f"no pair has a gold score > {threshold}")
    alignment = float(np.mean(np.linalg.norm(a[pos] - b[pos], axis=1) ** alpha))
    x = np.unique(np.concatenate([a, b]), axis=0)
    if len(x) < 2:
        raise ValueError("uniformity needs at least two distinct vectors")
    sq = np.sum(x * x, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    iu = np.triu_indices(len(x), k=1)
    uniformity = float(logsumexp(-t * d2[iu]) - np.log(len(iu[0])))
    return alignment, uniformity


def _joined(tokens_list) -> list[str]:
    return [" ".join(t) for t in tokens_list]


class SentEvalDevEvaluator:
    def __init__(self, data_dir: str | None, transfer: bool = False, korsts_dir: str | None = None,
                 align_uniform: bool = False, korsts_per_batch: bool = False,
                 batch_size: int = 128, device: str | None = None, english: bool = True,
                 sts_sets: dict[str, str] | None = None, sts_columns: tuple = _sts_files.DEFAULT_COLUMNS):
        """english=False: KorSTS dev and the sts_sets only; the English SentEval data is neither needed nor read.
        sts_sets: {NAME: file or datasets folder (folder[split])}, read with sts_columns (names or indices)."""
        sts_sets = dict(sts_sets or {})
        if not english and (transfer or align_uniform):
            raise ValueError("the transfer tasks and alignment/uniformity are evaluated on the English dev sets (english=True)")
        if not english and not korsts_dir and not sts_sets:
            raise ValueError("a dev evaluation without the English sets needs korsts_dir (KorSTS dev) or an STS set (--eval_sts)")
        self.english = english
        self.transfer = transfer
        self.align_uniform = align_uniform
        self.korsts_per_batch = korsts_per_batch
        self.batch_size = batch_size
        # name -> (sentences A, sentences B, gold); tokens re-joined as SimCSE's batcher does
        self.pairs = {}
        down = resolve_downstream(data_dir) if english else None
        if english:
            # the dev splits only: a folder holding just sts-dev.csv and SICK_trial.txt serves
            stsb = _sts.STSBenchmarkEval(os.path.join(down, "STS", "STSBenchmark"), splits=["dev"]).data["dev"]
            sick = _sts.SICKRelatednessEval(os.path.join(down, "SICK"), splits=["dev"]).data["dev"]
            self.pairs["stsb"] = (_joined(stsb[0]), _joined(stsb[1]), list(stsb[2]))
            self.pairs["sickr"] = (_joined(sick[0]), _joined(sick[1]), list(sick[2]))
        if korsts_dir:  # one STS file of the generic reader, with KorSTS's own metrics below
            kdev = _korsts.load_korsts_file(os.path.join(korsts_dir, "sts-dev.tsv"))
            self.pairs["korsts"] = (_joined(kdev[0]), _joined(kdev[1]), list(kdev[2]))
        self.sts_sets = list(sts_sets)
        for name, location in sts_sets.items():
            if name in self.pairs:
                raise ValueError(f"--eval_sts {name}: the name is taken by a built-in dev set; choose another")
            path, split = _sts_files.split_location(location)
            a, b, gold = _sts_files.load_sts_pairs(path, sts_columns, split)
            self.pairs[name] = (_joined(a), _joined(b), list(gold))
        uniq = dict.fromkeys(s for a, b, _ in self.pairs.values() for s in a + b)
        # length-sorted once, so encode_fn batches with little padding
        self.sentences = sorted(uniq, key=len)
        self.index = {s: i for i, s in enumerate(self.sentences)}
        self.params = dict(FAST_PARAMS, task_path=down, batch_size=batch_size)
        if device:
            self.params["device"] = device
        self.transfer_evals = {}
        if transfer:  # (english=True here, so `down` is the SentEval folder)
            se = SE(self.params, None)
            self.transfer_evals = {t: se.build(t) for t in TRANSFER_TASKS}

    @property
    def metric_names(self) -> list[str]:
        """The metrics __call__ returns, without the eval_ prefix (what --metric_for_best_model may name)."""
        names = ["stsb_spearman", "sickr_spearman", "avg_sts"] if self.english else []
        if "korsts" in self.pairs:
            names += ["korsts_spearman"] + (["korsts_select"] if self.korsts_per_batch else [])
        names += [f"{name}_spearman" for name in self.sts_sets]
        if self.align_uniform:
            names += ["alignment", "uniformity"]
        if self.transfer:
            names += [*TRANSFER_TASKS, "avg_transfer"]
        return names

    # The Trainer's eval_dataset: the distinct dev sentences that __call__ encodes.
    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, index: int) -> str:
        return self.sentences[index]

    def _pair_embeddings(self, emb: np.ndarray, name: str):
        a, b, gold = self.pairs[name]
        return emb[[self.index[s] for s in a]], emb[[self.index[s] for s in b]], gold

    def __call__(self, encode_fn: Callable[[list[str]], np.ndarray]) -> dict[str, float]:
        emb = to_numpy(encode_fn(list(self.sentences)))
        if emb.shape[0] != len(self.sentences):
            raise ValueError(f"encode_fn returned {emb.shape[0]} rows for {len(self.sentences)} sentences")
        metrics: dict[str, float] = {}
        if self.english:
            for name, key in (("stsb", "eval_stsb_spearman"), ("sickr", "eval_sickr_spearman")):
                e1, e2, gold = self._pair_embeddings(emb, name)
                metrics[key] = float(spearmanr(_sts.pair_similarities(e1, e2), gold)[0])
            metrics["eval_avg_sts"] = (metrics["eval_stsb_spearman"] + metrics["eval_sickr_spearman"]) / 2
        if "korsts" in self.pairs:
            e1, e2, gold = self._pair_embeddings(emb, "korsts")
            labels = np.asarray(gold, dtype=np.float64) / 5.0
            metrics["eval_korsts_spearman"] = _korsts.korsts_metrics(e1, e2, labels)["cosine_spearman"]
            if self.korsts_per_batch:
                metrics["eval_korsts_select"] = _korsts.korsts_per_batch(e1, e2, labels)["select"]
        for name in self.sts_sets:
            e1, e2, gold = self._pair_embeddings(emb, name)
            metrics[f"eval_{name}_spearman"] = float(spearmanr(_sts.pair_similarities(e1, e2), gold)[0])
        if self.align_uniform:
            e1, e2, gold = self._pair_embeddings(emb, "stsb")
            metrics["eval_alignment"], metrics["eval_uniformity"] = alignment_uniformity(e1, e2, gold)
        if self.transfer_evals:
            def batcher(params, batch):
                return to_numpy(encode_fn([" ".join(s) for s in batch]))

            batcher.batches_itself = True  # encode_fn length-sorts and batches any number of sentences

            params = SE(self.params, batcher).params
            accs = []
            for task, evaluation in self.transfer_evals.items():
                res = evaluation.run(params, batcher)
                metrics[f"eval_{task}"] = float(res["devacc"])
                accs.append(float(res["devacc"]))
            metrics["eval_avg_transfer"] = float(np.mean(accs))
        return metrics
