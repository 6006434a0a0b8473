"""Transfer tasks of upstream SentEval with a linear probe: MR, CR, SUBJ, MPQA
(inner k-fold), TREC, MRPC (k-fold on train), SST2/SST5 (train/dev/test split).

Same loaders, label maps, sorting (classifier input order feeds the seeded folds), and
classifiers as upstream; sentences are encoded once each through utils.encode_unique.
"""
from __future__ import annotations

import io
import logging
import os

import numpy as np

from senteval import utils
from senteval.tools.validation import InnerKFoldClassifier, KFoldClassifier, SplitClassifier
from senteval.utils import DataFormatError, require_files

log = logging.getLogger(__name__)


def _config(params, nclasses, seed, kfold=True):
    cfg = {"nclasses": nclasses, "seed": seed, "usepytorch": params.usepytorch,
           "classifier": params.classifier, "nhid": params.nhid,
           "device": params.get("device"), "progress_bar": params.get("progress_bar")}
    if kfold:
        cfg["kfold"] = params.kfold
    return cfg


class BinaryClassifierEval:
    task_name = "binary"
    files = ("", "")

    def __init__(self, task_path, seed=1111):
        require_files(self.task_name, task_path, list(self.files))
        pos = self.loadFile(os.path.join(task_path, self.files[0]))
        neg = self.loadFile(os.path.join(task_path, self.files[1]))
        self.seed = seed
        self.samples, self.labels = pos + neg, [1] * len(pos) + [0] * len(neg)
        self.n_samples = len(self.samples)

    def do_prepare(self, params, prepare):
        return prepare(params, self.samples)

    @staticmethod
    def loadFile(fpath):
        with io.open(fpath, "r", encoding="latin-1") as f:
            return [line.split() for line in f.read().splitlines()]

    def run(self, params, batcher):
        sorted_corpus = sorted(zip(self.samples, self.labels), key=lambda z: (len(z[0]), z[1]))
        samples = [x for (x, y) in sorted_corpus]
        labels = [y for (x, y) in sorted_corpus]
        matrix, index = utils.encode_unique(params, batcher, samples, desc=self.task_name)
        enc_input = utils.gather(matrix, index, samples)
        clf = InnerKFoldClassifier(enc_input, np.array(labels), _config(params, 2, self.seed))
        devacc, testacc = clf.run()
        log.debug("Dev acc : %s Test acc : %s", devacc, testacc)
        return {"devacc": devacc, "acc": testacc, "ndev": self.n_samples, "ntest": self.n_samples}


class CREval(BinaryClassifierEval):
    task_name = "CR"
    files = ("custrev.pos", "custrev.neg")


class MREval(BinaryClassifierEval):
    task_name = "MR"
    files = ("rt-polarity.pos", "rt-polarity.neg")


class SUBJEval(BinaryClassifierEval):
    # upstream passes the objective sentences as the label-1 class
    task_name = "SUBJ"
    files = ("subj.objective", "subj.subjective")


class MPQAEval(BinaryClassifierEval):
    task_name = "MPQA"
    files = ("mpqa.pos", "mpqa.neg")


TREC_COARSE = {"ABBR": 0, "DESC": 1, "ENTY": 2, "HUM": 3, "LOC": 4, "NUM": 5}


def read_trec_file(fpath):
    """{"X": token lists, "y": coarse label ids} of a TREC `COARSE:fine question` file (SentEval's reader)."""
    data = {"X": [], "y": []}
    with io.open(fpath, "r", encoding="latin-1") as f:
        for i, line in enumerate(f, start=1):
            try:
                target, sample = line.strip().split(":", 1)
                sample = sample.split(" ", 1)[1].split()
            except ValueError:
                raise DataFormatError(f"{fpath}:{i}: expected 'COARSE:fine question', "
                                      f"got {line[:120]!r}") from None
            except IndexError:
                raise DataFormatError(f"{fpath}:{i}: no question text: {line[:120]!r}") from None
            if target not in TREC_COARSE:
                raise DataFormatError(f"{fpath}:{i}: unknown TREC class {target!r}")
            data["X"].append(sample)
            data["y"].append(TREC_COARSE[target])
    return data


class TRECEval:
    task_name = "TREC"
    tgt2idx = TREC_COARSE

    def __init__(self, task_path, seed=1111):
        self.seed = seed
        require_files(self.task_name, task_path, ["train_5500.label", "TREC_10.label"])
        self.train = self.loadFile(os.path.join(task_path, "train_5500.label"))
        self.test = self.loadFile(os.path.join(task_path, "TREC_10.label"))

    def do_prepare(self, params, prepare):
        return prepare(params, self.train["X"] + self.test["X"])

    def loadFile(self, fpath):
        return read_trec_file(fpath)

    def run(self, params, batcher):
        tr = sorted(zip(self.train["X"], self.train["y"]), key=lambda z: (len(z[0]), z[1]))
        te = sorted(zip(self.test["X"], self.test["y"]), key=lambda z: (len(z[0]), z[1]))
        trX, trY = [x for x, _ in tr], [y for _, y in tr]
        teX, teY = [x for x, _ in te], [y for _, y in te]
        matrix, index = utils.encode_unique(params, batcher, trX + teX, desc=self.task_name)
        clf = KFoldClassifier({"X": utils.gather(matrix, index, trX), "y": np.array(trY)},
                              {"X": utils.gather(matrix, index, teX), "y": np.array(teY)},
                              _config(params, 6, self.seed))
        devacc, testacc, _ = clf.run()
        log.debug("Dev acc : %s Test acc : %s for TREC", devacc, testacc)
        return {"devacc": devacc, "acc": testacc,
                "ndev": len(self.train["X"]), "ntest": len(self.test["X"])}


class MRPCEval:
    task_name = "MRPC"

    def __init__(self, task_path, seed=1111):
        self.seed = seed
        files = ["msr_paraphrase_train.txt", "msr_paraphrase_test.txt"]
        require_files(self.task_name, task_path, files)
        self.mrpc_data = {"train": self.loadFile(os.path.join(task_path, files[0])),
                          "test": self.loadFile(os.path.join(task_path, files[1]))}

    def do_prepare(self, params, prepare):
        d = self.mrpc_data
        return prepare(params, d["train"]["X_A"] + d["train"]["X_B"] + d["test"]["X_A"] + d["test"]["X_B"])

    @staticmethod
    def loadFile(fpath):
        data = {"X_A": [], "X_B": [], "y": []}
        with io.open(fpath, "r", encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if i == 1:  # header
                    continue
                text = utils.split_fields(line.strip(), fpath, i, 5)
                data["X_A"].append(text[3].split())
                data["X_B"].append(text[4].split())
                try:
                    data["y"].append(int(text[0]))
                except ValueError:
                    raise DataFormatError(f"{fpath}:{i}: non-integer label {text[0]!r}") from None
        return data

    def run(self, params, batcher):
        from sklearn.metrics import f1_score

        sorted_data, sentences = {}, []
        for key in ("train", "test"):
            d = self.mrpc_data[key]
            rows = sorted(zip(d["X_A"], d["X_B"], d["y"]), key=lambda z: (len(z[0]), len(z[1]), z[2]))
            sorted_data[key] = [list(x) for x in zip(*rows)]
            sentences += sorted_data[key][0] + sorted_data[key][1]
        matrix, index = utils.encode_unique(params, batcher, sentences, desc=self.task_name)
        feats = {}
        for key, (XA, XB, y) in sorted_data.items():
            A, B = utils.gather(matrix, index, XA), utils.gather(matrix, index, XB)
            feats[key] = (np.c_[np.abs(A - B), A * B], np.array(y))
        clf = KFoldClassifier(train={"X": feats["train"][0], "y": feats["train"][1]},
                              test={"X": feats["test"][0], "y": feats["test"][1]},
                              config=_config(params, 2, self.seed))
        devacc, testacc, yhat = clf.run()
        testf1 = round(100 * f1_score(feats["test"][1], yhat), 2)
        log.debug("Dev acc : %s Test acc %s; Test F1 %s for MRPC.", devacc, testacc, testf1)
        return {"devacc": devacc, "acc": testacc, "f1": testf1,
                "ndev": len(feats["train"][0]), "ntest": len(feats["test"][0])}


class SSTEval:
    def __init__(self, task_path, nclasses=2, seed=1111):
        self.seed = seed
        assert nclasses in (2, 3, 5)
        self.nclasses = nclasses
        self.task_name = "SST2" if nclasses == 2 else f"SST{nclasses}"
        files = ["sentiment-train", "sentiment-dev", "sentiment-test"]
        require_files(self.task_name, task_path, files)
        self.sst_data = {k: self.loadFile(os.path.join(task_path, f))
                         for k, f in zip(("train", "dev", "test"), files)}

    def do_prepare(self, params, prepare):
        d = self.sst_data
        return prepare(params, d["train"]["X"] + d["dev"]["X"] + d["test"]["X"])

    def loadFile(self, fpath):
        data = {"X": [], "y": []}
        with io.open(fpath, "r", encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                try:
                    if self.nclasses == 2:
                        sample = line.strip().split("\t")
                        data["y"].append(int(sample[1]))
                        data["X"].append(sample[0].split())
                    else:
                        sample = line.strip().split(" ", 1)
                        data["y"].append(int(sample[0]))
                        data["X"].append(sample[1].split())
                except (ValueError, IndexError):
                    raise DataFormatError(f"{fpath}:{i}: malformed SST line {line[:120]!r}") from None
        if max(data["y"]) != self.nclasses - 1:
            raise DataFormatError(f"{fpath}: labels go up to {max(data['y'])}, expected "
                                  f"{self.nclasses - 1} for {self.nclasses} classes")
        return data

    def run(self, params, batcher):
        sorted_data, sentences = {}, []
        for key in ("train", "dev", "test"):
            rows = sorted(zip(self.sst_data[key]["X"], self.sst_data[key]["y"]),
                          key=lambda z: (len(z[0]), z[1]))
            sorted_data[key] = ([x for x, _ in rows], np.array([y for _, y in rows]))
            sentences += sorted_data[key][0]
        matrix, index = utils.encode_unique(params, batcher, sentences, desc=self.task_name)
        X = {k if k != "dev" else "valid": utils.gather(matrix, index, v[0]) for k, v in sorted_data.items()}
        y = {k if k != "dev" else "valid": v[1] for k, v in sorted_data.items()}
        clf = SplitClassifier(X=X, y=y, config=_config(params, self.nclasses, self.seed, kfold=False))
        devacc, testacc = clf.run()
        log.debug("Dev acc : %s Test acc : %s for %s", devacc, testacc, self.task_name)
        return {"devacc": devacc, "acc": testacc, "ndev": len(X["valid"]), "ntest": len(X["test"])}
