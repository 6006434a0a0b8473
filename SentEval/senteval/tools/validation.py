"""Validation schemes of SentEval:
(train)             InnerKFoldClassifier  (MR, CR, SUBJ, MPQA)
(train, test)       KFoldClassifier       (TREC, MRPC)
(train, dev, test)  SplitClassifier       (SST2)
Same folds (StratifiedKFold, shuffle, seed 1111), same l2 grids, same rounding."""
from __future__ import annotations

import logging

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from tqdm.auto import tqdm

from senteval.tools.classifier import MLP

log = logging.getLogger(__name__)


def get_classif_name(classifier_config, usepytorch):
    if not usepytorch:
        return "sklearn-LogReg"
    nhid = classifier_config["nhid"]
    optim = classifier_config.get("optim", "adam")
    bs = classifier_config.get("batch_size", 64)
    return "pytorch-MLP-nhid%s-%s-bs%s" % (nhid, optim, bs)


class _Base:
    def __init__(self, config):
        self.nclasses = config["nclasses"]
        self.seed = config["seed"]
        self.usepytorch = config["usepytorch"]
        self.classifier_config = config["classifier"]
        self.device = config.get("device")
        self.modelname = get_classif_name(self.classifier_config, self.usepytorch)
        self.k = config.get("kfold") or 5
        self.progress = config.get("progress_bar")

    def make(self, reg, featdim, cudaEfficient=False):
        if self.usepytorch:
            return MLP(self.classifier_config, inputdim=featdim, nclasses=self.nclasses,
                       l2reg=reg, seed=self.seed, cudaEfficient=cudaEfficient,
                       device=self.device)
        return LogisticRegression(C=reg, random_state=self.seed)

    def bar(self, it, desc, total=None):
        return tqdm(it, desc=desc, total=total, leave=False,
                    disable=None if self.progress is None else not self.progress)


class InnerKFoldClassifier(_Base):
    def __init__(self, X, y, config):
        super().__init__(config)
        self.X, self.y = X, y
        self.featdim = X.shape[1]
        self.devresults, self.testresults = [], []

    def run(self):
        log.info("Training %s with (inner) %d-fold cross-validation", self.modelname, self.k)
        regs = [10 ** t for t in range(-5, -1)] if self.usepytorch else [2 ** t for t in range(-2, 4, 1)]
        skf = StratifiedKFold(n_splits=self.k, shuffle=True, random_state=1111)
        innerskf = StratifiedKFold(n_splits=self.k, shuffle=True, random_state=1111)
        for count, (train_idx, test_idx) in enumerate(
                self.bar(skf.split(self.X, self.y), "outer folds", self.k), start=1):
            X_train, X_test = self.X[train_idx], self.X[test_idx]
            y_train, y_test = self.y[train_idx], self.y[test_idx]
            scores = []
            for reg in regs:
                regscores = []
                for in_tr, in_te in innerskf.split(X_train, y_train):
                    clf = self.make(reg, self.featdim)
                    if self.usepytorch:
                        clf.fit(X_train[in_tr], y_train[in_tr],
                                validation_data=(X_train[in_te], y_train[in_te]))
                    else:
                        clf.fit(X_train[in_tr], y_train[in_tr])
                    regscores.append(clf.score(X_train[in_te], y_train[in_te]))
                scores.append(round(100 * np.mean(regscores), 2))
            optreg = regs[int(np.argmax(scores))]
            log.info("Best param found at split %d: l2reg = %s with score %s",
                     count, optreg, np.max(scores))
            self.devresults.append(np.max(scores))
            clf = self.make(optreg, self.featdim)
            if self.usepytorch:
                clf.fit(X_train, y_train, validation_split=0.05)
            else:
                clf.fit(X_train, y_train)
            self.testresults.append(round(100 * clf.score(X_test, y_test), 2))
        devaccuracy = round(float(np.mean(self.devresults)), 2)
        testaccuracy = round(float(np.mean(self.testresults)), 2)
        return devaccuracy, testaccuracy


class KFoldClassifier(_Base):
    def __init__(self, train, test, config):
        super().__init__(config)
        self.train, self.test = train, test
        self.featdim = self.train["X"].shape[1]

    def run(self):
        log.info("Training %s with %d-fold cross-validation", self.modelname, self.k)
        regs = [10 ** t for t in range(-5, -1)] if self.usepytorch else [2 ** t for t in range(-1, 6, 1)]
        skf = StratifiedKFold(n_splits=self.k, shuffle=True, random_state=self.seed)
        scores = []
        for reg in self.bar(regs, "l2 grid"):
            scanscores = []
            for train_idx, test_idx in skf.split(self.train["X"], self.train["y"]):
                X_train, y_train = self.train["X"][train_idx], self.train["y"][train_idx]
                X_test, y_test = self.train["X"][test_idx], self.train["y"][test_idx]
                clf = self.make(reg, self.featdim)
                if self.usepytorch:
                    clf.fit(X_train, y_train, validation_data=(X_test, y_test))
                else:
                    clf.fit(X_train, y_train)
                scanscores.append(clf.score(X_test, y_test))
            scores.append(round(100 * np.mean(scanscores), 2))
        optreg = regs[int(np.argmax(scores))]
        devaccuracy = float(np.max(scores))
        log.info("Cross-validation : best param found is reg = %s with score %s", optreg, devaccuracy)
        clf = self.make(optreg, self.featdim)
        if self.usepytorch:
            clf.fit(self.train["X"], self.train["y"], validation_split=0.05)
        else:
            clf.fit(self.train["X"], self.train["y"])
        yhat = clf.predict(self.test["X"])
        testaccuracy = round(100 * clf.score(self.test["X"], self.test["y"]), 2)
        return devaccuracy, testaccuracy, yhat


class SplitClassifier(_Base):
    def __init__(self, X, y, config):
        super().__init__(config)
        self.X, self.y = X, y
        self.featdim = self.X["train"].shape[1]
        self.cudaEfficient = config.get("cudaEfficient", False)
        self.noreg = config.get("noreg", False)

    def run(self):
        log.info("Training %s with standard validation..", self.modelname)
        regs = [10 ** t for t in range(-5, -1)] if self.usepytorch else [2 ** t for t in range(-2, 4, 1)]
        if self.noreg:
            regs = [1e-9 if self.usepytorch else 1e9]
        scores = []
        for reg in self.bar(regs, "l2 grid"):
            clf = self.make(reg, self.featdim, self.cudaEfficient)
            if self.usepytorch:
                clf.fit(self.X["train"], self.y["train"],
                        validation_data=(self.X["valid"], self.y["valid"]))
            else:
                clf.fit(self.X["train"], self.y["train"])
            scores.append(round(100 * clf.score(self.X["valid"], self.y["valid"]), 2))
        optreg = regs[int(np.argmax(scores))]
        devaccuracy = float(np.max(scores))
        log.info("Validation : best param found is reg = %s with score %s", optreg, devaccuracy)
        clf = self.make(optreg, self.featdim, self.cudaEfficient)
        if self.usepytorch:
            clf.fit(self.X["train"], self.y["train"],
                    validation_data=(self.X["valid"], self.y["valid"]))
        else:
            clf.fit(self.X["train"], self.y["train"])
        testaccuracy = round(100 * clf.score(self.X["test"], self.y["test"]), 2)
        return devaccuracy, testaccuracy
