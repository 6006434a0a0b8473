"""Training data: corpus loading (txt / csv / tsv / json) with `datasets`, tokenization, the view collator.

Tokenization happens once, in `datasets.map` (cached on disk beside the datasets cache); the
collator only pads, so each batch is padded to its own longest sentence (dynamic padding).
"""
from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import pyarrow as pa
import torch
from datasets import load_dataset
from torch.nn.utils.rnn import pad_sequence

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".text"}
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
JSON_SUFFIXES = {".json", ".jsonl"}
ROLES = ("sent0", "sent1", "hard_neg")
SENTENCE_KEYS = "sentence_keys"  # the collator's batch key under --mask_duplicates  # anchor, positive, hard negative (SimCSE's nli csv header)


# Characters that print as nothing: zero-width space / non-joiner / joiner, word joiner, BOM. A line of only these
# (and whitespace, which includes the no-break space) is blank.
INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))


class CorpusError(ValueError):
    """A training file that cannot be used, with the file (and line) named in the message."""


def is_blank(text) -> bool:
    return not isinstance(text, str) or not text.translate(INVISIBLE).strip()


def check_corpus_path(path: str) -> None:
    if os.path.isdir(path):
        raise CorpusError(f"--train_file {path!r} is a folder; give the corpus file inside it (.txt, .csv, .tsv, .json, .jsonl)")
    try:
        os.stat(path)
    except OSError as err:
        if os.path.islink(path):
            problem = "is a symbolic link loop" if err.errno == errno.ELOOP else f"is a symbolic link to {os.readlink(path)!r}, which does not exist"
            raise CorpusError(f"--train_file {path!r} {problem}; give the corpus file itself") from None
        raise CorpusError(f"--train_file {path!r} does not exist") from None
    if not os.path.isfile(path):
        raise CorpusError(f"--train_file {path!r} is not a regular file")


# Rows per Arrow record batch of the cached files (the writer's batch, and for filter / map the function's batch,
# which is what they write as one record batch). Reading a cached file visits every batch's header through the
# memory map, and the kernel maps the pages around each visit: with datasets' default 1000-row batches a cached 5M-line
# corpus mapped 221 MB of its 921 MB token file and all of its 40 MB filter index into the process at every load;
# 10k-row and 100k-row batches map a tenth and a hundredth of that.
TEXT_WRITER_BATCH_ROWS = 100_000
TOKENIZED_WRITER_BATCH_ROWS = 10_000


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


SCAN_CHUNK_BYTES = 1 << 22  # the validation pass reads the file in 4 MB chunks: constant memory at any size


def check_text_corpus(path: str) -> None:
    """Check a one-sentence-a-line file before `datasets` reads it: not empty, valid UTF-8, no NUL byte.

    Streams the bytes in 4 MB chunks (constant memory: corpora larger than RAM pass), so that invalid UTF-8 and NUL bytes
    are reported with their line number instead of surfacing as a decoding error deep inside `datasets`;
    only a bad file is read a second time, line by line, to find the line."""
    check_corpus_path(path)
    if os.path.getsize(path) == 0:
        raise CorpusError(f"--train_file {path!r} is empty")
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        while chunk := f.read(SCAN_CHUNK_BYTES):
            try:
                decoder.decode(chunk, final=False)
            except UnicodeDecodeError:
                locate_bad_line(path)
            if b"\x00" in chunk:
                locate_bad_line(path)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:  # the file ends inside a multi-byte character
        locate_bad_line(path)


def text_lines(f) -> Iterator[bytes]:
    """The lines of a binary file as `datasets`' text loader counts them: \\n, \\r\\n and \\r end a line."""
    for raw in f:
        raw = raw.removesuffix(b"\n").removesuffix(b"\r")
        yield from raw.split(b"\r")


def locate_bad_line(path: str) -> None:
    """Raise CorpusError naming the first line of `path` with a NUL byte or invalid UTF-8."""
    with open(path, "rb") as f:
        for number, line in enumerate(text_lines(f), start=1):
            if b"\x00" in line:
                raise CorpusError(f"{path}:{number}: NUL byte in the line (is this a binary file?)")
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise CorpusError(f"{path}:{number}: invalid UTF-8 at byte {err.start} of the line ({err.reason})") from None
    raise CorpusError(f"{path}: invalid UTF-8 at the end of the file (a truncated multi-byte character)")


def drop_blank_lines(batch: dict) -> list[bool]:
    return [not is_blank(t) for t in batch["text"]]


def load_corpus(path: str, sentence_columns: str | None = None, cache_dir: str | None = None, num_proc: int | None = None):
    """Load a training file as a `datasets.Dataset` whose columns are a prefix of ROLES.

    One column: unsupervised (the sentence becomes both views). Two: positive pairs. Three:
    pairs with a hard negative (SimCSE's supervised format). num_proc: processes of the blank-line filter
    (--preprocessing_num_workers)."""

    if not path:
        raise CorpusError("--train_file is required (a .txt, .csv, .tsv, .json or .jsonl file)")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in TEXT_SUFFIXES:
        check_text_corpus(path)
        # `datasets` streams the file into its memory-mapped Arrow cache (reused by the next run of the same
        # file): the corpus is never held as Python objects.
        with system_arrow_allocator():
            ds = load_dataset("text", data_files={"train": path}, cache_dir=cache_dir, writer_batch_size=TEXT_WRITER_BATCH_ROWS)["train"]
            lines = len(ds)
            ds = ds.filter(drop_blank_lines, batched=True, batch_size=TEXT_WRITER_BATCH_ROWS, num_proc=num_proc,
                           writer_batch_size=TEXT_WRITER_BATCH_ROWS, desc="Dropping blank lines")
        if len(ds) == 0:
            raise CorpusError(f"--train_file {path!r} has {lines} lines, all blank (whitespace or invisible characters only)")
        if len(ds) < lines:
            logger.warning("%s: skipped %d blank line(s); %d sentences kept", path, lines - len(ds), len(ds))
        return ds.rename_column("text", "sent0")
    check_corpus_path(path)
    if os.path.getsize(path) == 0:
        raise CorpusError(f"--train_file {path!r} is empty")
    try:
        if suffix in CSV_SUFFIXES:
            # TSV has no quoting convention (a cell may start with a quote, as in STS-B): read quotes as text.
            quoting = {"quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
            ds = load_dataset("csv", data_files={"train": path}, delimiter=CSV_SUFFIXES[suffix], cache_dir=cache_dir,
                              writer_batch_size=TEXT_WRITER_BATCH_ROWS, **quoting)["train"]
        elif suffix in JSON_SUFFIXES:
            ds = load_dataset("json", data_files={"train": path}, cache_dir=cache_dir, writer_batch_size=TEXT_WRITER_BATCH_ROWS)["train"]
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


def tokenize_corpus(dataset, tokenizer, max_seq_length: int, num_proc: int | None = None, overwrite_cache: bool = False,
                    views_function: Callable[[dict], dict] | None = None):
    with system_arrow_allocator():
        return dataset.map(
            tokenize_function(tokenizer, max_seq_length, views_function),
            batched=True,
            batch_size=TOKENIZED_WRITER_BATCH_ROWS,
            num_proc=num_proc,
            remove_columns=dataset.column_names,
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
        if self.max_length is not None and input_ids.shape[1] < self.max_length:
            extra = input_ids.new_full((input_ids.shape[0], self.max_length - input_ids.shape[1]), self.pad_token_id)
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
        return batch
