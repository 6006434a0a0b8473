"""Shared helpers: params dict, cosine, optimizer parsing, data checks, and the
deduplicating, length-sorted encoder used by every task."""
from __future__ import annotations

import inspect
import math
import os
import re
from collections.abc import Callable, Sequence

import numpy as np

DOWNLOAD_HINT = (
    "Get the data with `bash SentEval/data/downstream/download_dataset.sh` (online), or "
    "`bash SentEval/data/downstream/download_dataset.sh --from DIR` for a local mirror in "
    "SentEval layout; or point the harness at an existing `downstream` folder "
    "(params['task_path'], evaluation.py --data_dir)."
)


class MissingDataError(FileNotFoundError):
    """A task's data folder or file is absent."""


class DataFormatError(ValueError):
    """A data file is malformed (the message names file and line)."""


class dotdict(dict):
    """dot.notation access to dictionary attributes (SentEval's params object)."""

    __getattr__ = dict.get
    __setattr__ = dict.__setitem__
    __delattr__ = dict.__delitem__


def cosine(u, v):
    return np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))


def default_similarity(s1, s2):
    # SimCSE's default: a zero vector scores 0 instead of nan.
    return np.nan_to_num(cosine(np.nan_to_num(s1), np.nan_to_num(s2)))


def require_files(task: str, folder: str, files: Sequence[str]) -> None:
    """Raise MissingDataError listing every missing path of a task at once."""
    if not os.path.isdir(folder):
        raise MissingDataError(
            f"{task}: data folder not found: {folder}\n{DOWNLOAD_HINT}")
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise MissingDataError(
            f"{task}: {len(missing)} file(s) missing in {folder}: {', '.join(missing)}\n"
            f"{DOWNLOAD_HINT}")


def parse_float(text: str, fpath: str, lineno: int, what: str = "score") -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataFormatError(
            f"{fpath}:{lineno}: non-numeric {what} {text!r}") from None
    if not math.isfinite(value):  # float() accepts 'nan' and 'inf': they would give nan correlations
        raise DataFormatError(f"{fpath}:{lineno}: {what} {text!r} is not a finite number")
    return value


def check_gold_varies(scores, fpath: str, what: str = "gold score") -> None:
    """A correlation with constant gold scores is undefined (nan): refuse the file."""
    if len(scores) > 1 and min(scores) == max(scores):
        raise DataFormatError(f"{fpath}: every {what} is {scores[0]!r}, so a correlation with them is undefined")


def split_fields(line: str, fpath: str, lineno: int, min_fields: int) -> list[str]:
    fields = line.split("\t")
    if len(fields) < min_fields:
        raise DataFormatError(
            f"{fpath}:{lineno}: expected at least {min_fields} tab-separated fields, "
            f"got {len(fields)}: {line[:120]!r}")
    return fields


def to_numpy(emb) -> np.ndarray:
    """Accept numpy arrays and torch tensors (SimCSE's batcher returns CPU tensors)."""
    if isinstance(emb, np.ndarray):
        return emb
    if hasattr(emb, "detach"):
        emb = emb.detach()
        if str(getattr(emb, "dtype", "")) in ("torch.bfloat16", "torch.float16"):
            emb = emb.float()
        return emb.cpu().numpy()
    return np.asarray(emb)


def progress_bar_disabled(params):
    """tqdm's `disable` for params['progress_bar']: None (not set) = a bar on a terminal only."""
    flag = params.get("progress_bar", None)
    return None if flag is None else not flag


def sentence_key(tokens) -> tuple:
    return tuple(tokens)


def encode_unique(params, batcher: Callable, sentences: Sequence[Sequence[str]],
                  desc: str = "encoding") -> tuple[np.ndarray, dict]:
    """Encode each distinct token list once, in length-sorted batches of params.batch_size (or all at once
    when the batcher has ``batches_itself = True`` and sorts by its own subword lengths).

    Returns (matrix [U, H], {token tuple: row}). Repeated sentences (STS reuses many,
    SICK most) cost nothing, and sorting by length keeps padding small.
    """
    from tqdm.auto import tqdm

    index: dict[tuple, int] = {}
    uniq: list[list[str]] = []
    for s in sentences:
        k = sentence_key(s)
        if k not in index:
            index[k] = len(uniq)
            uniq.append(list(s))
    if getattr(batcher, "batches_itself", False):
        # The batcher forms its own batches, sorted by its tokenizer's subword lengths (which the harness
        # cannot see; sorting by characters here leaves ~45% more padding on the STS suite): hand it every
        # distinct sentence at once.
        matrix = to_numpy(batcher(params, uniq))
        if matrix.ndim != 2 or matrix.shape[0] != len(uniq):
            raise ValueError(
                f"batcher returned shape {tuple(matrix.shape)} for {len(uniq)} sentences; expected [sentences, hidden]")
        return matrix, index
    # Length in characters tracks subword length better than the token count.
    order = sorted(range(len(uniq)), key=lambda i: (sum(len(t) + 1 for t in uniq[i]), len(uniq[i])))
    bs = int(params.batch_size or 128)
    chunks = []
    for start in tqdm(range(0, len(order), bs), desc=desc, leave=False,
                      disable=progress_bar_disabled(params)):
        batch = [uniq[i] for i in order[start:start + bs]]
        emb = to_numpy(batcher(params, batch))
        if emb.ndim != 2 or emb.shape[0] != len(batch):
            raise ValueError(
                f"batcher returned shape {tuple(emb.shape)} for a batch of {len(batch)} "
                "sentences; expected [batch, hidden]")
        chunks.append(emb)
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32), {}
    sorted_emb = np.concatenate(chunks, axis=0)
    matrix = np.empty_like(sorted_emb)
    matrix[np.asarray(order)] = sorted_emb
    return matrix, index


def gather(matrix: np.ndarray, index: dict, sentences: Sequence[Sequence[str]]) -> np.ndarray:
    rows = np.fromiter((index[sentence_key(s)] for s in sentences), dtype=np.int64,
                       count=len(sentences))
    return matrix[rows]


def get_optimizer(s: str):
    """Parse "adam", "rmsprop", "sgd,lr=0.1" into (optimizer class, kwargs).

    Same grammar as SentEval's; uses inspect.signature (getargspec is gone in 3.11).
    """
    import torch.optim as optim

    if "," in s:
        method = s[:s.find(",")]
        optim_params = {}
        for x in s[s.find(",") + 1:].split(","):
            split = x.split("=")
            if len(split) != 2 or re.match(r"^[+-]?(\d+(\.\d*)?|\.\d+)$", split[1]) is None:
                raise ValueError(f"bad optimizer parameter {x!r} in {s!r}")
            optim_params[split[0]] = float(split[1])
    else:
        method, optim_params = s, {}
    table = {"adadelta": optim.Adadelta, "adagrad": optim.Adagrad, "adam": optim.Adam,
             "adamax": optim.Adamax, "asgd": optim.ASGD, "rmsprop": optim.RMSprop,
             "rprop": optim.Rprop, "sgd": optim.SGD}
    if method not in table:
        raise ValueError(f'Unknown optimization method: "{method}"')
    optim_fn = table[method]
    if method == "sgd" and "lr" not in optim_params:
        raise ValueError("sgd needs an explicit lr, e.g. 'sgd,lr=0.1'")
    expected = list(inspect.signature(optim_fn.__init__).parameters)[2:]
    unknown = [k for k in optim_params if k not in expected]
    if unknown:
        raise ValueError(f"Unexpected optimizer parameters {unknown}; expected {expected}")
    return optim_fn, optim_params
