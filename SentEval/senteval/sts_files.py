"""Any STS set, in any language: a TSV/CSV file (or a local `datasets` folder) with two sentence columns and a gold
score column, scored as SentEval scores STS-B: the cosine similarity of each pair, Spearman (and Pearson) correlation
with the gold scores over the whole set. KorSTS is one such file (sentence1, sentence2, score in its header).

Columns: names (the first line is then the header) or 0-based indices (a first line whose score cell is not a number
is then taken as a header and skipped: it cannot be a pair). Default: sentence1, sentence2, score (the names of
KorSTS, of MTEB's and HF's STS sets). `.csv` files are read with Python's csv module (quoted fields), others as
tab-separated without quoting (as SentEval reads STS-B and KorSTS, whose sentences hold quotes).
"""
from __future__ import annotations

import csv
import io
import os
import re

import datasets
import numpy as np
from scipy.stats import pearsonr, spearmanr

from senteval import utils
from senteval.sts import pair_similarities
from senteval.utils import DataFormatError, MissingDataError, check_gold_varies

DEFAULT_COLUMNS = ("sentence1", "sentence2", "score")

# A set's name becomes a task name and a metric key (eval_NAME_spearman): no spaces, no '=' or '/'.
SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def named_locations(items: list[str] | None, flag: str, reserved=(), reserved_why: str = "another task's name") -> dict[str, str]:
    """NAME=PATH items of a repeatable flag -> {NAME: PATH}, in order; a malformed, repeated or reserved name raises
    ValueError naming the flag and the item."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ValueError(f"{flag} expects NAME=PATH (e.g. mysts=data/my-sts.tsv), got {item!r}")
        if not SET_NAME.match(name):
            raise ValueError(f"{flag} {item}: the name {name!r} must be letters, digits, '_' or '-' "
                             "(it becomes a task name and a metric key)")
        if name in reserved:
            raise ValueError(f"{flag} {item}: {name!r} is {reserved_why}; choose another")
        if name in out:
            raise ValueError(f"{flag}: the name {name!r} is given twice; give each set its own name")
        out[name] = path
    return out


def parse_columns(spec: str | None) -> tuple:
    """"s1,s2,score" or "5,6,4" -> a 3-tuple of names or ints (default: DEFAULT_COLUMNS)."""
    if spec is None:
        return DEFAULT_COLUMNS
    parts = [p.strip() for p in str(spec).split(",")]
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"STS columns must be three comma-separated names or indices (sentence 1, sentence 2, score), got {spec!r}")
    indices = [p.isdigit() for p in parts]
    if any(indices) and not all(indices):
        raise ValueError(f"STS columns must be all names or all 0-based indices, got {spec!r}")
    return tuple(int(p) for p in parts) if all(indices) else tuple(parts)


def _rows(path: str):
    """(line number, fields) of a delimited file."""
    with io.open(path, "r", encoding="utf-8", newline="" if path.lower().endswith(".csv") else None) as f:
        if path.lower().endswith(".csv"):
            yield from enumerate(csv.reader(f), start=1)
        else:
            for lineno, line in enumerate(f, start=1):
                yield lineno, line.rstrip("\r\n").split("\t")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def load_sts_pairs(path: str, columns=DEFAULT_COLUMNS, split: str | None = None):
    """(sentences A as token lists, sentences B, gold scores) of an STS file or `datasets` folder; errors name the
    file and line (or the dataset and row)."""
    if os.path.isdir(path):
        return _load_dataset_folder(path, columns, split)
    if not os.path.isfile(path):
        raise MissingDataError(f"STS file not found: {path}")
    rows = _rows(path)
    positions = columns
    a, b, gold = [], [], []
    first = True
    for lineno, fields in rows:
        if not any(f.strip() for f in fields):
            continue
        if first:
            first = False
            if isinstance(columns[0], str):  # names: this line is the header
                missing = [c for c in columns if c not in fields]
                if missing:
                    raise DataFormatError(f"{path}:{lineno}: no column {', '.join(map(repr, missing))} in the header "
                                          f"({', '.join(fields)}); name the columns (sentence 1, sentence 2, score)")
                positions = tuple(fields.index(c) for c in columns)
                continue
            if len(fields) > max(columns) and not _is_number(fields[columns[2]].strip()):
                continue  # a header: its score cell is not a number
        if len(fields) <= max(positions):
            raise DataFormatError(f"{path}:{lineno}: {len(fields)} fields, the STS columns need {max(positions) + 1}")
        s1, s2, score = (fields[p].strip() for p in positions)
        if not s1 or not s2:
            raise DataFormatError(f"{path}:{lineno}: an empty sentence")
        a.append(s1.split())
        b.append(s2.split())
        gold.append(utils.parse_float(score, path, lineno, "gold score"))
    if not gold:
        raise DataFormatError(f"{path}: no sentence pairs (empty file, or a header only)")
    check_gold_varies(gold, path)
    return a, b, gold


def _load_dataset_folder(path: str, columns, split: str | None):
    try:
        data = datasets.load_from_disk(path)
    except FileNotFoundError as err:
        raise DataFormatError(f"{path} is a folder but not a saved `datasets` dataset ({err}); give a TSV/CSV file "
                              "or a folder written by Dataset.save_to_disk") from None
    if isinstance(data, datasets.DatasetDict):
        if split is None and len(data) == 1:
            split = next(iter(data))
        if split not in data:
            raise DataFormatError(f"{path} holds the splits {', '.join(data)}: name one as PATH[split]")
        data = data[split]
    names = data.column_names
    wanted = [names[c] if isinstance(c, int) and c < len(names) else c for c in columns]
    missing = [str(c) for c in wanted if c not in names]
    if missing:
        raise DataFormatError(f"{path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(names)})")
    a, b, gold = [], [], []
    for row, (s1, s2, score) in enumerate(zip(*(data[c] for c in wanted))):
        if not str(s1).strip() or not str(s2).strip():
            raise DataFormatError(f"{path}: row {row}: an empty sentence")
        try:
            gold.append(float(score))
        except (TypeError, ValueError):
            raise DataFormatError(f"{path}: row {row}: the gold score {score!r} is not a number") from None
        a.append(str(s1).split())
        b.append(str(s2).split())
    if not gold:
        raise DataFormatError(f"{path}: no sentence pairs")
    check_gold_varies(gold, path)
    return a, b, gold


def split_location(location: str) -> tuple[str, str | None]:
    """"folder[validation]" -> ("folder", "validation"); a path that exists is never split."""
    if location.endswith("]") and "[" in location and not os.path.exists(location):
        path, _, split = location[:-1].rpartition("[")
        return path, split
    return location, None


def sts_correlations(emb1: np.ndarray, emb2: np.ndarray, gold) -> dict[str, float]:
    sims = pair_similarities(emb1, emb2)
    return {"spearman": float(spearmanr(sims, gold)[0]), "pearson": float(pearsonr(sims, gold)[0]), "n": int(len(gold))}


class STSFileEval:
    """One STS set from a file, for the harness (evaluation.py --sts_file NAME=PATH)."""

    def __init__(self, name: str, location: str, columns=DEFAULT_COLUMNS):
        path, split = split_location(location)
        self.task_name = name
        self.data = load_sts_pairs(path, columns, split)

    def do_prepare(self, params, prepare):
        return prepare(params, self.data[0] + self.data[1])

    def run(self, params, batcher) -> dict:
        a, b, gold = self.data
        matrix, index = utils.encode_unique(params, batcher, a + b, desc=self.task_name)
        return sts_correlations(utils.gather(matrix, index, a), utils.gather(matrix, index, b), gold)
