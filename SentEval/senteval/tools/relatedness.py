"""Supervised semantic relatedness regressor (SentEval's RelatednessPytorch, SimCSE
variant: model selection and early stopping on dev Spearman). CPU or GPU."""
from __future__ import annotations

import copy

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from senteval.tools.device import resolve_device


class RelatednessPytorch:
    def __init__(self, train, valid, test, devscores, config):
        np.random.seed(config["seed"])
        torch.manual_seed(config["seed"])
        self.device = resolve_device(config.get("device"))
        if self.device.type == "cuda":
            torch.cuda.manual_seed(config["seed"])
        self.train, self.valid, self.test = train, valid, test
        self.devscores = devscores
        self.inputdim = train["X"].shape[1]
        self.nclasses = config["nclasses"]
        self.seed = config["seed"]
        self.l2reg = 0.0
        self.batch_size = 64
        self.maxepoch = 1000
        self.early_stop = True
        self.model = nn.Sequential(nn.Linear(self.inputdim, self.nclasses),
                                   nn.Softmax(dim=-1)).to(self.device)
        # upstream sets size_average=False afterwards, a no-op: the mean reduction is kept
        self.loss_fn = nn.MSELoss()
        self.optimizer = torch.optim.Adam(self.model.parameters(), weight_decay=self.l2reg)

    def run(self):
        self.nepoch = 0
        bestpr = -1
        early_stop_count = 0
        r = np.arange(1, 6)
        stop_train = False
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32), device=self.device)  # noqa: E731
        trainX, trainy = t(self.train["X"]), t(self.train["y"])
        devX, testX = t(self.valid["X"]), t(self.test["X"])
        bestmodel = copy.deepcopy(self.model)
        while not stop_train and self.nepoch <= self.maxepoch:
            self.trainepoch(trainX, trainy, nepoches=50)
            yhat = np.dot(self.predict_proba(devX), r)
            pr = spearmanr(yhat, self.devscores)[0]
            pr = 0 if pr != pr else pr
            if pr > bestpr:
                bestpr = pr
                bestmodel = copy.deepcopy(self.model)
            elif self.early_stop:
                if early_stop_count >= 3:
                    stop_train = True
                early_stop_count += 1
        self.model = bestmodel
        yhat = np.dot(self.predict_proba(testX), r)
        return bestpr, yhat

    def trainepoch(self, X, y, nepoches=1):
        self.model.train()
        for _ in range(self.nepoch, self.nepoch + nepoches):
            permutation = np.random.permutation(len(X))
            for i in range(0, len(X), self.batch_size):
                idx = torch.from_numpy(permutation[i:i + self.batch_size]).long().to(self.device)
                loss = self.loss_fn(self.model(X[idx]), y[idx])
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
        self.nepoch += nepoches

    def predict_proba(self, devX):
        self.model.eval()
        with torch.no_grad():
            out = [self.model(devX[i:i + self.batch_size]).cpu().numpy()
                   for i in range(0, len(devX), self.batch_size)]
        return np.concatenate(out, axis=0)
