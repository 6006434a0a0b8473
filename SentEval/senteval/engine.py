"""Generic evaluation wrapper, API-compatible with SentEval as SimCSE uses it:

    se = senteval.engine.SE(params, batcher, prepare)
    results = se.eval('STS12')            # or a list of task names -> {task: result}

params (SentEval's, with SimCSE's defaults): task_path, usepytorch, seed (1111),
batch_size (128, the encoding batch), kfold (5), classifier ({'nhid': 0, 'optim',
'batch_size', 'tenacity', 'epoch_size'}), similarity (optional custom function).
Additions of this harness:
  eval_splits       e.g. ['test'] or ['dev']: STS-B/SICK-R/KorSTS encode and score only
                    these splits (default: all, like SentEval)
  device            torch device for the transfer/regression classifiers (default: CUDA
                    when available, else CPU)
  progress_bar      True/False forces tqdm bars on/off (default: terminal only)
  korsts_path       KorSTS folder (default <downstream>/KorSTS)
  korsts_per_batch  also compute KoDiffCSE's per-batch protocol (korsts_batch_size 256,
                    korsts_seed 42)
task_path may be the folder holding ``downstream/`` (SentEval's convention) or the
``downstream`` folder itself.
"""
from __future__ import annotations

import os

from senteval import utils
from senteval.utils import MissingDataError

STS_YEARS = ["STS12", "STS13", "STS14", "STS15", "STS16"]


def resolve_downstream(task_path: str) -> str:
    """Accept both `<data>` (holding downstream/) and `<data>/downstream`."""
    if task_path is None:
        raise MissingDataError("params['task_path'] is not set.\n" + utils.DOWNLOAD_HINT)
    sub = os.path.join(task_path, "downstream")
    if os.path.isdir(sub):
        return sub
    if any(os.path.isdir(os.path.join(task_path, d)) for d in ("STS", "SICK", "MR", "CR", "SUBJ", "MPQA", "SST", "TREC", "MRPC", "KorSTS")):
        return task_path
    raise MissingDataError(
        f"SentEval data folder not found: neither {sub} nor a downstream folder at {task_path}.\n"
        + utils.DOWNLOAD_HINT)


class SE:
    def __init__(self, params, batcher, prepare=None):
        params = utils.dotdict(params)
        params.usepytorch = True if "usepytorch" not in params else params.usepytorch
        params.seed = 1111 if "seed" not in params else params.seed
        params.batch_size = 128 if "batch_size" not in params else params.batch_size
        params.nhid = 0 if "nhid" not in params else params.nhid
        params.kfold = 5 if "kfold" not in params else params.kfold
        if "classifier" not in params or not params["classifier"]:
            params.classifier = {"nhid": 0}
        if "nhid" not in params.classifier:
            raise ValueError("Set number of hidden units in classifier config (params['classifier']['nhid'])")
        self.params = params
        self.batcher = batcher
        self.prepare = prepare if prepare else (lambda x, y: None)
        self.list_tasks = ["CR", "MR", "MPQA", "SUBJ", "SST2", "SST5", "TREC", "MRPC",
                           "SICKRelatedness", "SICKRelatedness-finetune", "STSBenchmark",
                           "STSBenchmark-fix", "STSBenchmark-finetune",
                           *STS_YEARS, "KorSTS"]

    def build(self, name: str):
        """Construct (and load the data of) the evaluation object of a task."""
        from senteval import korsts, sts, transfer

        if name not in self.list_tasks:
            raise ValueError(f"{name!r} is not a task; known tasks: {', '.join(self.list_tasks)}")
        p = self.params
        seed = p.seed
        if name == "KorSTS":
            kpath = p.get("korsts_path") or os.path.join(resolve_downstream(p.task_path), "KorSTS")
            return korsts.KorSTSEval(kpath, seed=seed)
        down = resolve_downstream(p.task_path)
        j = lambda *a: os.path.join(down, *a)  # noqa: E731
        if name in STS_YEARS:
            return getattr(sts, name + "Eval")(j("STS", name + "-en-test"), seed=seed)
        table = {
            "CR": lambda: transfer.CREval(j("CR"), seed=seed),
            "MR": lambda: transfer.MREval(j("MR"), seed=seed),
            "MPQA": lambda: transfer.MPQAEval(j("MPQA"), seed=seed),
            "SUBJ": lambda: transfer.SUBJEval(j("SUBJ"), seed=seed),
            "SST2": lambda: transfer.SSTEval(j("SST", "binary"), nclasses=2, seed=seed),
            "SST5": lambda: transfer.SSTEval(j("SST", "fine"), nclasses=5, seed=seed),
            "TREC": lambda: transfer.TRECEval(j("TREC"), seed=seed),
            "MRPC": lambda: transfer.MRPCEval(j("MRPC"), seed=seed),
            "SICKRelatedness": lambda: sts.SICKRelatednessEval(j("SICK"), seed=seed, splits=p.get("eval_splits")),
            "SICKRelatedness-finetune": lambda: sts.SICKEval(j("SICK"), seed=seed),
            "STSBenchmark": lambda: sts.STSBenchmarkEval(j("STS", "STSBenchmark"), seed=seed, splits=p.get("eval_splits")),
            "STSBenchmark-fix": lambda: sts.STSBenchmarkEval(j("STS", "STSBenchmark-fix"), seed=seed),
            "STSBenchmark-finetune": lambda: sts.STSBenchmarkFinetune(j("STS", "STSBenchmark"), seed=seed),
        }
        return table[name]()

    def eval(self, name):
        # a list evaluates each task in turn and returns {task: result}
        if isinstance(name, list):
            self.results = {x: self.eval(x) for x in name}
            return self.results
        self.evaluation = self.build(name)
        self.params.current_task = name
        self.evaluation.do_prepare(self.params, self.prepare)
        self.results = self.evaluation.run(self.params, self.batcher)
        return self.results
