"""Training data: corpus loading (txt / csv / tsv / json), tokenization, the view collator.

Tokenization happens once and is cached on disk: one-sentence-a-line files line by line (text_corpus.py), tables
with `datasets.map` beside the datasets cache. The collator only pads, so each batch is padded to its own longest
sentence (dynamic padding).
"""
from __future__ import annotations

import contextlib
import csv
import logging
import os
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import torch
from datasets import Dataset, load_dataset
from torch.nn.utils.rnn import pad_sequence

from clusterns.modeling.packing import host_token_layout
from clusterns.objectives.masked_lm import IGNORE_INDEX, MLM_LABELS
from clusterns.training.text_corpus import (TOKENIZED_WRITER_BATCH_ROWS, CorpusError, TextCorpus, check_corpus_path,
                                            check_text_corpus, is_blank)

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".text"}
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
JSON_SUFFIXES = {".json", ".jsonl"}
ROLES = ("sent0", "sent1", "hard_neg")  # anchor, positive, hard negative (SimCSE's nli csv header)
SENTENCE_KEYS = "sentence_keys"  # the collator's batch key under --mask_duplicates
# The collator's host-computed layouts (packing_layout): {batch key: (flat ids [T], cumulative counts per row)}; the
# ids move to the device with the batch, the counts (a list of ints) stay on the host.
TOKEN_LAYOUTS = "token_layouts"


# Rows per Arrow record batch of the cached csv/json files (the writer's batch, and for `map` the function's batch,
# which is what it writes as one record batch). Reading a cached file visits every batch's header through the memory
# map, and the kernel maps the pages around each visit: datasets' 1000-row default mapped a large share of a cached
# corpus at every load; 10k-row and 100k-row batches map a tenth and a hundredth of that.
TABLE_WRITER_BATCH_ROWS = 100_000


@contextlib.contextmanager
def system_arrow_allocator():
    """pyarrow's system allocator while a corpus is read and tokenized: it returns freed memory at once, where the
    default (mimalloc) kept it and grew with the corpus (anonymous RSS 450 -> 612 MB from 100k to 5M lines)."""
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def load_corpus(path: str, sentence_columns: str | None = None, cache_dir: str | None = None) -> TextCorpus | Dataset:
    """Load a training file, with columns a prefix of ROLES: a `TextCorpus` (one sentence a line, tokenized as it is
    read) or a `datasets.Dataset` (csv / tsv / json / jsonl, in datasets' Arrow cache).

    One column: unsupervised (the sentence becomes both views). Two: positive pairs. Three:
    pairs with a hard negative (SimCSE's supervised format)."""

    if not path:
        raise CorpusError("--train_file is required (a .txt, .csv, .tsv, .json or .jsonl file)")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in TEXT_SUFFIXES:
        # Checked in one streaming pass; read line by line when tokenized (text_corpus.py): never held in memory
        # nor memory-mapped, whatever its size.
        check_text_corpus(path)
        return TextCorpus(path, cache_dir)
    check_corpus_path(path)
    if os.path.getsize(path) == 0:
        raise CorpusError(f"--train_file {path!r} is empty")
    try:
        if suffix in CSV_SUFFIXES:
            # TSV has no quoting convention (a cell may start with a quote, as in STS-B): read quotes as text.
            quoting = {"quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
            ds = load_dataset("csv", data_files={"train": path}, delimiter=CSV_SUFFIXES[suffix], cache_dir=cache_dir,
                              writer_batch_size=TABLE_WRITER_BATCH_ROWS, **quoting)["train"]
        elif suffix in JSON_SUFFIXES:
            ds = load_dataset("json", data_files={"train": path}, cache_dir=cache_dir, writer_batch_size=TABLE_WRITER_BATCH_ROWS)["train"]
        else:
            raise CorpusError(f"--train_file {path!r}: unsupported extension {suffix!r} (use .txt, .csv, .tsv, .json, .jsonl)")
    except CorpusError:
        raise
    except Exception as err:  # pandas / pyarrow parse errors: name the file and the parser's own reason
        raise CorpusError(f"--train_file {path!r} could not be parsed: {root_cause(err)}") from None
    columns = select_columns(ds.column_names, sentence_columns, path)
    ds = ds.select_columns(columns)
    if len(ds) == 0:
        raise CorpusError(f"--train_file {path!r} has a header but no rows")
    check_sentence_columns(ds, columns, path, first_line=1 if suffix in JSON_SUFFIXES else 2)
    ds = ds.rename_columns({old: new for old, new in zip(columns, ROLES) if old != new})
    return ds


def root_cause(err: BaseException) -> str:
    """The innermost exception's message (datasets wraps parser errors in 'An error occurred while generating')."""
    while err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__):
        err = err.__cause__ or err.__context__
    return f"{type(err).__name__}: {err}".splitlines()[0]


CHECK_BATCH_ROWS = 10_000


def check_sentence_columns(ds, columns: list[str], path: str, first_line: int) -> None:
    """Every selected cell must be a non-blank string: numbers, lists, nulls and blank cells would otherwise be
    trained on as ' ' or as their digits. `first_line`: the file line of row 0 (csv/tsv: 2, after the header;
    jsonl: 1)."""
    for column in columns:
        dtype = getattr(ds.features[column], "dtype", type(ds.features[column]).__name__)
        if dtype not in ("string", "large_string"):
            raise CorpusError(
                f"--train_file {path!r}: column {column!r} holds {dtype} values, not sentences (first: {ds[0][column]!r}); "
                "name the sentence columns with --sentence_columns"
            )
        row = 0
        for batch in ds.select_columns([column]).iter(batch_size=CHECK_BATCH_ROWS):  # a slice at a time: constant memory
            for text in batch[column]:
                if is_blank(text):
                    what = "missing (null)" if text is None else "blank"
                    raise CorpusError(f"{path}:{row + first_line}: column {column!r} is {what}; every row needs a sentence there")
                row += 1


def select_columns(available: list[str], requested: str | None, path: str) -> list[str]:
    if requested:
        wanted = [c.strip() for c in requested.split(",") if c.strip()]
        missing = [c for c in wanted if c not in available]
        if missing:
            raise CorpusError(f"--train_file {path!r} has no column(s) {missing} (--sentence_columns); it has {available}")
        repeated = sorted({c for c in wanted if wanted.count(c) > 1})
        if repeated:
            raise CorpusError(f"--sentence_columns {requested!r} names {repeated} more than once; give each column once")
    elif "sent0" in available:
        wanted = [c for c in ROLES if c in available]
    elif len(available) <= 3:
        wanted = list(available)  # SimCSE: 1-3 columns are anchor[, positive[, hard negative]] in order
    else:
        raise CorpusError(
            f"--train_file {path!r} has {len(available)} columns {available}: say which hold the sentences, in the order "
            f"anchor[,positive[,hard_negative]], with --sentence_columns (e.g. --sentence_columns {','.join(available[1:3])})"
        )
    if not 1 <= len(wanted) <= 3:
        raise CorpusError(f"--train_file {path!r}: expected 1-3 sentence columns, found {available}")
    return wanted


def tokenize_function(tokenizer, max_seq_length: int, views_function: Callable[[dict], dict] | None = None) -> Callable[[dict], dict]:
    """Batched map: each sentence column -> `<role>_ids` (truncated, unpadded). None becomes ' ' as in SimCSE.

    `views_function`: the pooler's own training inputs instead (Pooler.training_tokenize_function, e.g.
    PromptBERT's template 1 / template 2 views)."""
    if views_function is not None:
        return views_function

    def tokenize(examples: dict) -> dict:
        out = {}
        for role in ROLES:
            if role in examples:
                texts = [t if isinstance(t, str) and t else " " for t in examples[role]]
                out[f"{role}_ids"] = tokenizer(texts, truncation=True, max_length=max_seq_length, padding=False)["input_ids"]
        return out

    return tokenize


def tokenize_corpus(corpus: TextCorpus | Dataset, tokenizer, max_seq_length: int, num_proc: int | None = None,
                    overwrite_cache: bool = False, views_function: Callable[[dict], dict] | None = None) -> Dataset:
    """`<role>_ids` rows of a loaded corpus, cached on disk; num_proc: --preprocessing_num_workers."""
    function = tokenize_function(tokenizer, max_seq_length, views_function)
    if isinstance(corpus, TextCorpus):
        return corpus.tokenize(function, num_proc, overwrite_cache)
    with system_arrow_allocator():
        return corpus.map(
            function,
            batched=True,
            batch_size=TOKENIZED_WRITER_BATCH_ROWS,
            num_proc=num_proc,
            remove_columns=corpus.column_names,
            load_from_cache_file=not overwrite_cache,
            writer_batch_size=TOKENIZED_WRITER_BATCH_ROWS,
            desc="Tokenizing",
        )


@dataclass
class ContrastiveCollator:
    """Pads every view of a batch to the batch's longest sentence: input_ids/attention_mask [B, V, L].

    Unsupervised rows carry one sentence; it becomes both views (the two dropout views)."""

    pad_token_id: int
    num_views: int = 2
    max_length: int | None = None  # --pad_to_max_length
    # Applied in order to each padded batch (the objective's, e.g. DiffCSE's masking, then --do_mlm's).
    batch_transform: Callable[[dict], dict] | None = None
    extra_transforms: tuple[Callable[[dict], dict], ...] = ()
    # --mask_duplicates: batch["sentence_keys"] [B, V], one integer per view's token ids (equal = identical text)
    sentence_keys: bool = False
    # Packed linear layers: batch[TOKEN_LAYOUTS], the non-pad tokens (and --do_mlm's selected ones) found here on the
    # host (modeling/packing.py host_token_layout), so that the device never runs nonzero() (a host sync on a GPU).
    packing_layout: bool = False
    # Pad the length to a multiple of this (8 on CUDA: the tensor-core tile), for objectives whose numbers do not
    # depend on the number of pad positions (Objective.padding_invariant); None: the longest sentence's length.
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        views = []
        for f in features:
            anchor = f["sent0_ids"]
            row = [anchor, f.get("sent1_ids") or anchor]
            if self.num_views > 2:
                row.append(f["hard_neg_ids"])
            views.extend(row[: self.num_views])
        seqs = [torch.as_tensor(v, dtype=torch.long) for v in views]
        input_ids = pad_sequence(seqs, batch_first=True, padding_value=self.pad_token_id)
        lengths = torch.as_tensor([len(v) for v in views])
        target = self.max_length if self.max_length is not None else input_ids.shape[1]
        if self.pad_to_multiple_of:
            target = -(-max(target, input_ids.shape[1]) // self.pad_to_multiple_of) * self.pad_to_multiple_of
        if input_ids.shape[1] < target:
            extra = input_ids.new_full((input_ids.shape[0], target - input_ids.shape[1]), self.pad_token_id)
            input_ids = torch.cat([input_ids, extra], dim=1)
        attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
        batch_size = len(features)
        batch = {
            "input_ids": input_ids.view(batch_size, self.num_views, -1),
            "attention_mask": attention_mask.view(batch_size, self.num_views, -1),
        }
        if self.sentence_keys:  # hash() of a tuple of ints: the same on every rank and process (no hash seed)
            batch[SENTENCE_KEYS] = torch.as_tensor([hash(tuple(v)) for v in views], dtype=torch.long).view(batch_size, self.num_views)
        if self.batch_transform is not None:
            batch = self.batch_transform(batch)
        for transform in self.extra_transforms:
            batch = transform(batch)
        if self.packing_layout:
            layouts = {"attention_mask": host_token_layout(batch["attention_mask"])}
            if MLM_LABELS in batch:
                layouts[MLM_LABELS] = host_token_layout(batch[MLM_LABELS] != IGNORE_INDEX)
            batch[TOKEN_LAYOUTS] = layouts
        return batch
