"""SentEval's PyTorch classifier (nhid=0: logistic regression; else a 1-hidden-layer MLP),
same training loop (epoch_size passes per epoch, early stopping with tenacity, best model
kept), on CPU or GPU."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from senteval import utils
from senteval.tools.device import resolve_device


class PyTorchClassifier:
    def __init__(self, inputdim, nclasses, l2reg=0.0, batch_size=64, seed=1111,
                 cudaEfficient=False, device=None):
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        self.inputdim = inputdim
        self.nclasses = nclasses
        self.l2reg = l2reg
        self.batch_size = batch_size
        self.cudaEfficient = cudaEfficient

    def _tensor(self, a, dtype):
        return torch.as_tensor(np.asarray(a), dtype=dtype, device=self.device)

    def prepare_split(self, X, y, validation_data=None, validation_split=None):
        assert validation_split or validation_data
        if validation_data is not None:
            trainX, trainy = X, y
            devX, devy = validation_data
        else:
            permutation = np.random.permutation(len(X))
            trainidx = permutation[int(validation_split * len(X)):]
            devidx = permutation[0:int(validation_split * len(X))]
            trainX, trainy = X[trainidx], y[trainidx]
            devX, devy = X[devidx], y[devidx]
        return (self._tensor(trainX, torch.float32), self._tensor(trainy, torch.long),
                self._tensor(devX, torch.float32), self._tensor(devy, torch.long))

    def fit(self, X, y, validation_data=None, validation_split=None, early_stop=True):
        self.nepoch = 0
        bestaccuracy = -1
        stop_train = False
        early_stop_count = 0
        trainX, trainy, devX, devy = self.prepare_split(X, y, validation_data, validation_split)
        bestmodel = copy.deepcopy(self.model)
        while not stop_train and self.nepoch <= self.max_epoch:
            self.trainepoch(trainX, trainy, epoch_size=self.epoch_size)
            accuracy = self.score(devX, devy)
            if accuracy > bestaccuracy:
                bestaccuracy = accuracy
                bestmodel = copy.deepcopy(self.model)
            elif early_stop:
                if early_stop_count >= self.tenacity:
                    stop_train = True
                early_stop_count += 1
        self.model = bestmodel
        return bestaccuracy

    def trainepoch(self, X, y, epoch_size=1):
        self.model.train()
        for _ in range(self.nepoch, self.nepoch + epoch_size):
            permutation = np.random.permutation(len(X))
            for i in range(0, len(X), self.batch_size):
                idx = torch.from_numpy(permutation[i:i + self.batch_size]).long().to(self.device)
                output = self.model(X.index_select(0, idx))
                loss = self.loss_fn(output, y.index_select(0, idx))
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
        self.nepoch += epoch_size

    def score(self, devX, devy):
        self.model.eval()
        devX = self._tensor(devX, torch.float32) if not torch.is_tensor(devX) else devX
        devy = self._tensor(devy, torch.long) if not torch.is_tensor(devy) else devy
        correct = 0
        with torch.no_grad():
            for i in range(0, len(devX), self.batch_size):
                pred = self.model(devX[i:i + self.batch_size]).argmax(1)
                correct += pred.eq(devy[i:i + self.batch_size]).sum().item()
        return 1.0 * correct / len(devX)

    def predict(self, devX):
        self.model.eval()
        devX = self._tensor(devX, torch.float32) if not torch.is_tensor(devX) else devX
        with torch.no_grad():
            yhat = [self.model(devX[i:i + self.batch_size]).argmax(1).cpu().numpy()
                    for i in range(0, len(devX), self.batch_size)]
        return np.vstack(np.concatenate(yhat).astype(np.float64))

    def predict_proba(self, devX):
        self.model.eval()
        devX = self._tensor(devX, torch.float32) if not torch.is_tensor(devX) else devX
        with torch.no_grad():
            out = [torch.softmax(self.model(devX[i:i + self.batch_size]), -1).cpu().numpy()
                   for i in range(0, len(devX), self.batch_size)]
        return np.concatenate(out, axis=0)


class MLP(PyTorchClassifier):
    """nhid=0 -> logistic regression. Params: nhid, optim, tenacity, epoch_size, max_epoch,
    dropout, batch_size (SentEval's defaults)."""

    def __init__(self, params, inputdim, nclasses, l2reg=0.0, batch_size=64, seed=1111,
                 cudaEfficient=False, device=None):
        super().__init__(inputdim, nclasses, l2reg, batch_size, seed, cudaEfficient, device)
        self.nhid = params.get("nhid", 0)
        self.optim = params.get("optim", "adam")
        self.tenacity = params.get("tenacity", 5)
        self.epoch_size = params.get("epoch_size", 4)
        self.max_epoch = params.get("max_epoch", 200)
        self.dropout = params.get("dropout", 0.0)
        self.batch_size = params.get("batch_size", 64)
        if self.nhid == 0:
            self.model = nn.Sequential(nn.Linear(self.inputdim, self.nclasses))
        else:
            self.model = nn.Sequential(nn.Linear(self.inputdim, self.nhid),
                                       nn.Dropout(p=self.dropout), nn.Sigmoid(),
                                       nn.Linear(self.nhid, self.nclasses))
        self.model.to(self.device)
        self.loss_fn = nn.CrossEntropyLoss()  # upstream's size_average=False is a no-op
        optim_fn, optim_params = utils.get_optimizer(self.optim)
        self.optimizer = optim_fn(self.model.parameters(), **optim_params)
        self.optimizer.param_groups[0]["weight_decay"] = self.l2reg
