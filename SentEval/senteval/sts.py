"""STS tasks: STS12-16 (pooled "all" Spearman), STS-Benchmark and SICK-R zero-shot cosine,
and the supervised ``-finetune`` regressor variants of upstream SentEval.

Numbers equal SimCSE's SentEval copy given the same embeddings: same files, same
filtering of unlabelled pairs, same per-pair cosine (float32 numpy, nan_to_num), same
scipy correlations and aggregates. What differs is only cost: each distinct sentence of
a task is encoded once, in length-sorted batches, and only the requested splits of
STS-B/SICK are encoded (``params['eval_splits']``).
"""
from __future__ import annotations

import io
import logging
import os

import numpy as np
from scipy.stats import pearsonr, spearmanr

from senteval import utils
from senteval.utils import DataFormatError, check_gold_varies, parse_float, require_files, split_fields

log = logging.getLogger(__name__)

# Labelled pairs per task in the standard release; a mismatch is logged, not fatal,
# so that small or translated copies still run.
EXPECTED_PAIRS = {
    "STS12": 3108, "STS13": 1500, "STS14": 3750, "STS15": 3000, "STS16": 1186,
    "STSBenchmark": {"train": 5749, "dev": 1500, "test": 1379},
    "SICKRelatedness": {"train": 4500, "dev": 500, "test": 4927},
}


def pair_similarities(emb1: np.ndarray, emb2: np.ndarray, similarity=None) -> list:
    """Row-by-row similarity exactly as SimCSE computes it (a python loop over pairs:
    vectorised reductions round differently and can break exact ties in Spearman)."""
    sim = similarity or utils.default_similarity
    return [sim(emb1[k], emb2[k]) for k in range(emb1.shape[0])]


def correlations(sys_scores, gs_scores) -> dict:
    return {"pearson": pearsonr(sys_scores, gs_scores),
            "spearman": spearmanr(sys_scores, gs_scores),
            "nsamples": len(sys_scores)}


def aggregate(results: dict, all_sys: list, all_gs: list) -> dict:
    """SentEval's mean / wmean over subsets plus SimCSE's pooled 'all'."""
    names = list(results)
    weights = [results[d]["nsamples"] for d in names]
    prs = np.array([results[d]["pearson"][0] for d in names])
    sprs = np.array([results[d]["spearman"][0] for d in names])
    return {
        "pearson": {"all": pearsonr(all_sys, all_gs)[0],
                    "mean": np.average(prs), "wmean": np.average(prs, weights=weights)},
        "spearman": {"all": spearmanr(all_sys, all_gs)[0],
                     "mean": np.average(sprs), "wmean": np.average(sprs, weights=weights)},
    }


def _read_lines(fpath: str) -> list[str]:
    # str.splitlines() like the original (also splits on \r, \x0b, \x1c-\x1e, \u2028 ...).
    with io.open(fpath, encoding="utf8") as f:
        return f.read().splitlines()


class STSEval:
    task_name = "STS"
    datasets: list[str] = []
    # splits that must all be scored together (the pooled 'all' needs every subset)
    splits_selectable = False

    def __init__(self, taskpath, seed=1111):
        self.seed = seed
        self.loadFile(taskpath)

    # -- loading ---------------------------------------------------------------------
    def loadFile(self, fpath):
        files = [f"STS.{kind}.{d}.txt" for d in self.datasets for kind in ("input", "gs")]
        require_files(self.task_name, fpath, files)
        self.data, self.samples = {}, []
        for dataset in self.datasets:
            in_path = os.path.join(fpath, f"STS.input.{dataset}.txt")
            gs_path = os.path.join(fpath, f"STS.gs.{dataset}.txt")
            lines = _read_lines(in_path)
            raw_scores = _read_lines(gs_path)
            if len(lines) != len(raw_scores):
                raise DataFormatError(
                    f"{gs_path} has {len(raw_scores)} lines but {in_path} has {len(lines)}: "
                    "gold scores must align line by line with the input pairs")
            sent1, sent2, gs = [], [], []
            for i, (line, raw) in enumerate(zip(lines, raw_scores), start=1):
                if raw == "":  # unlabelled pair (most of STS16)
                    continue
                fields = line.split("\t")
                if len(fields) != 2:
                    raise DataFormatError(
                        f"{in_path}:{i}: expected 2 tab-separated sentences, got "
                        f"{len(fields)} field(s): {line[:120]!r}")
                score = parse_float(raw, gs_path, i, "gold score")
                sent1.append(fields[0].split())
                sent2.append(fields[1].split())
                gs.append(score)
            if not gs:
                raise DataFormatError(f"{gs_path}: no labelled pairs (empty file?)")
            check_gold_varies(gs, gs_path)
            # Same stable sort as SentEval (only changes batch composition).
            sorted_data = sorted(zip(sent1, sent2, gs),
                                 key=lambda z: (len(z[0]), len(z[1]), z[2]))
            sent1, sent2, gs = (list(x) for x in zip(*sorted_data)) if sorted_data else ([], [], [])
            self.data[dataset] = (sent1, sent2, gs)
            self.samples += sent1 + sent2
        expected = EXPECTED_PAIRS.get(self.task_name)
        total = sum(len(v[2]) for v in self.data.values())
        if isinstance(expected, int) and total != expected:
            log.warning("%s: %d labelled pairs, the standard release has %d",
                        self.task_name, total, expected)

    def do_prepare(self, params, prepare):
        self.similarity = params.similarity if "similarity" in params else None
        return prepare(params, self.samples)

    # -- scoring ---------------------------------------------------------------------
    def selected_datasets(self, params) -> list[str]:
        if not self.splits_selectable or not params.get("eval_splits"):
            return list(self.datasets)
        wanted = [d for d in self.datasets if d in params.eval_splits]
        if not wanted:
            raise ValueError(f"{self.task_name}: eval_splits {params.eval_splits} selects "
                             f"none of {self.datasets}")
        return wanted

    def run(self, params, batcher):
        datasets = self.selected_datasets(params)
        sentences = []
        for d in datasets:
            sentences += self.data[d][0] + self.data[d][1]
        matrix, index = utils.encode_unique(params, batcher, sentences, desc=self.task_name)
        similarity = getattr(self, "similarity", None)

        results, all_sys, all_gs = {}, [], []
        for dataset in datasets:
            input1, input2, gs_scores = self.data[dataset]
            if not gs_scores:
                raise DataFormatError(f"{self.task_name}/{dataset}: no labelled pairs")
            sys_scores = pair_similarities(utils.gather(matrix, index, input1),
                                           utils.gather(matrix, index, input2), similarity)
            all_sys.extend(sys_scores)
            all_gs.extend(gs_scores)
            results[dataset] = correlations(sys_scores, gs_scores)
            log.debug("%s : pearson = %.4f, spearman = %.4f", dataset,
                      results[dataset]["pearson"][0], results[dataset]["spearman"][0])
        results["all"] = aggregate(results, all_sys, all_gs)
        a = results["all"]
        log.debug("ALL : Pearson = %.4f, Spearman = %.4f", a["pearson"]["all"], a["spearman"]["all"])
        log.debug("ALL (weighted average) : Pearson = %.4f, Spearman = %.4f",
                  a["pearson"]["wmean"], a["spearman"]["wmean"])
        log.debug("ALL (average) : Pearson = %.4f, Spearman = %.4f\n",
                  a["pearson"]["mean"], a["spearman"]["mean"])
        return results


class STS12Eval(STSEval):
    task_name = "STS12"
    datasets = ["MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"]


class STS13Eval(STSEval):
    # STS13's SMT subset is licensed (no input file is distributed): excluded, as upstream.
    task_name = "STS13"
    datasets = ["FNWN", "headlines", "OnWN"]


class STS14Eval(STSEval):
    task_name = "STS14"
    datasets = ["deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"]


class STS15Eval(STSEval):
    task_name = "STS15"
    datasets = ["answers-forums", "answers-students", "belief", "headlines", "images"]


class STS16Eval(STSEval):
    task_name = "STS16"
    datasets = ["answer-answer", "headlines", "plagiarism", "postediting", "question-question"]


def load_stsb_file(fpath: str):
    """sts-{train,dev,test}.csv: TAB-separated, no header, no CSV quoting; score = field 4,
    sentences = fields 5 and 6; extra trailing columns ignored."""
    X_A, X_B, y = [], [], []
    with io.open(fpath, "r", encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            text = split_fields(line.strip(), fpath, i, 7)
            X_A.append(text[5].split())
            X_B.append(text[6].split())
            y.append(parse_float(text[4], fpath, i, "gold score"))
    if not y:
        raise DataFormatError(f"{fpath}: no sentence pairs (empty file)")
    check_gold_varies(y, fpath)
    return X_A, X_B, y


def load_sick_file(fpath: str, label_field: int = 3):
    """SICK_*.txt: one header line, then pair_ID, sentence_A, sentence_B, relatedness, entailment."""
    X_A, X_B, y = [], [], []
    with io.open(fpath, "r", encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if i == 1:
                continue
            text = split_fields(line.strip(), fpath, i, max(4, label_field + 1))
            X_A.append(text[1].split())
            X_B.append(text[2].split())
            y.append(parse_float(text[label_field], fpath, i, "relatedness score")
                     if label_field == 3 else text[label_field])
    if not y:
        raise DataFormatError(f"{fpath}: no sentence pairs (empty file, or a header only)")
    if label_field == 3:
        check_gold_varies(y, fpath, "relatedness score")
    return X_A, X_B, y


class _SplitSTSEval(STSEval):
    """Zero-shot cosine on train/dev/test (SimCSE's STSBenchmarkEval / SICKRelatednessEval)."""
    datasets = ["train", "dev", "test"]
    splits_selectable = True
    files: dict[str, str] = {}

    def __init__(self, task_path, seed=1111, splits=None):
        """splits: the splits to load (default all; evaluation reads only the reported one, so a folder holding just
        sts-dev.csv / SICK_trial.txt serves a dev evaluation)."""
        self.seed = seed
        files = {s: f for s, f in self.files.items() if splits is None or s in splits}
        require_files(self.task_name, task_path, list(files.values()))
        self.samples, self.data = [], {}
        for split, fname in files.items():
            X_A, X_B, y = self.load(os.path.join(task_path, fname))
            self.data[split] = (X_A, X_B, y)
            self.samples += X_A + X_B
            expected = EXPECTED_PAIRS.get(self.task_name, {}).get(split)
            if expected is not None and len(y) != expected:
                log.warning("%s %s: %d pairs, the standard release has %d",
                            self.task_name, split, len(y), expected)


class STSBenchmarkEval(_SplitSTSEval):
    task_name = "STSBenchmark"
    files = {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"}
    load = staticmethod(load_stsb_file)


class SICKRelatednessEval(_SplitSTSEval):
    task_name = "SICKRelatedness"
    files = {"train": "SICK_train.txt", "dev": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}
    load = staticmethod(load_sick_file)


# ---- supervised regressor variants (upstream SentEval behaviour) -------------------------

def encode_labels(labels, nclass=5):
    """Soft 5-class target of Tai, Socher & Manning (as upstream SentEval)."""
    Y = np.zeros((len(labels), nclass)).astype("float32")
    for j, y in enumerate(labels):
        for i in range(nclass):
            if i + 1 == np.floor(y) + 1:
                Y[j, i] = y - np.floor(y)
            if i + 1 == np.floor(y):
                Y[j, i] = np.floor(y) - y + 1
    return Y


class SICKEval:
    """Supervised relatedness (SimCSE's sick.SICKEval): features [|u-v|, u*v], a 5-class
    softmax regressor, model selection on dev Spearman. Runs on CPU or GPU."""
    task_name = "SICKRelatedness-finetune"
    files = {"train": "SICK_train.txt", "dev": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}
    load = staticmethod(load_sick_file)

    def __init__(self, task_path, seed=1111):
        self.seed = seed
        require_files(self.task_name, task_path, list(self.files.values()))
        self.sick_data = {}
        for split, fname in self.files.items():
            X_A, X_B, y = self.load(os.path.join(task_path, fname))
            self.sick_data[split] = {"X_A": X_A, "X_B": X_B, "y": y}

    def do_prepare(self, params, prepare):
        samples = []
        for split in ("train", "dev", "test"):
            samples += self.sick_data[split]["X_A"] + self.sick_data[split]["X_B"]
        return prepare(params, samples)

    def run(self, params, batcher):
        from sklearn.metrics import mean_squared_error

        from senteval.tools.relatedness import RelatednessPytorch

        sorted_data = {}
        sentences = []
        for key in ("train", "dev", "test"):
            d = self.sick_data[key]
            rows = sorted(zip(d["X_A"], d["X_B"], d["y"]), key=lambda z: (len(z[0]), len(z[1]), z[2]))
            sorted_data[key] = [list(x) for x in zip(*rows)]
            sentences += sorted_data[key][0] + sorted_data[key][1]
        matrix, index = utils.encode_unique(params, batcher, sentences, desc=self.task_name)
        feats, labels = {}, {}
        for key, (XA, XB, y) in sorted_data.items():
            A, B = utils.gather(matrix, index, XA), utils.gather(matrix, index, XB)
            feats[key] = np.c_[np.abs(A - B), A * B]
            labels[key] = encode_labels(y)
        clf = RelatednessPytorch(train={"X": feats["train"], "y": labels["train"]},
                                 valid={"X": feats["dev"], "y": labels["dev"]},
                                 test={"X": feats["test"], "y": labels["test"]},
                                 devscores=sorted_data["dev"][2],
                                 config={"seed": self.seed, "nclasses": 5,
                                         "device": params.get("device")})
        devspr, yhat = clf.run()
        gold = sorted_data["test"][2]
        pr = pearsonr(yhat, gold)[0]
        sr = spearmanr(yhat, gold)[0]
        pr = 0 if pr != pr else pr
        sr = 0 if sr != sr else sr
        se = mean_squared_error(yhat, gold)
        log.debug("Dev : Spearman %s; Test : Pearson %s Spearman %s MSE %s", devspr, pr, sr, se)
        return {"devspearman": devspr, "pearson": pr, "spearman": sr, "mse": se,
                "yhat": yhat, "ndev": len(feats["dev"]), "ntest": len(feats["test"])}


class STSBenchmarkFinetune(SICKEval):
    task_name = "STSBenchmark-finetune"
    files = {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"}
    load = staticmethod(load_stsb_file)
