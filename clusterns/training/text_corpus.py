"""One-sentence-a-line training files of any size: checked in one streaming pass, then tokenized line by line into
an Arrow cache that training memory-maps.

The text is read with ordinary buffered reads, a block at a time, never as a whole and never through a memory map:
a pass over a memory-mapped file counts every page it touches in the process's RSS, and reading the corpus through
`datasets`' text loader, its blank-line filter and `map` mapped the whole text file (a 5M-line corpus: 1493 MB peak
RSS against 612 MB at 100k lines). Here the peak is one block of text and one batch of token ids, at any corpus size.

The tokenized rows are written in `datasets`' Arrow format (ArrowWriter, a record batch at a time) and memory-mapped
for training, so a second run with the same file (path, size, modification time), the same tokenize function
(tokenizer and length, fingerprinted by `datasets`' Hasher as `Dataset.map` does) reuses them: no pass over the text.

Training reads rows at random, and every read leaves the pages the kernel mapped around it (about 170 kB a row here)
counted in the process's RSS until the whole token file is: 20 steps on a 5M-line corpus held 185 MB more than on
100k lines, though those pages are page cache the kernel can drop at any time. RSS is what the OOM killer and batch
schedulers' accounting read, so the map is this module's own (`mmap`, not pyarrow's), and ReleaseReadPages tells
the kernel after each step that the pages read are no longer needed (madvise MADV_DONTNEED on that mapping alone: the
data stays in the page cache and is read again on the next access).
"""
from __future__ import annotations

import codecs
import errno
import json
import logging
import mmap
import multiprocessing
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterator

import pyarrow as pa
from datasets import Dataset, concatenate_datasets
from datasets import config as datasets_config
from datasets.arrow_writer import ArrowWriter
from datasets.fingerprint import Hasher
from datasets.table import MemoryMappedTable
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

# Characters that print as nothing: zero-width space / non-joiner / joiner, word joiner, BOM. A line of only these
# (and whitespace, which includes the no-break space) is blank.
INVISIBLE_CHARACTERS = "\u200b\u200c\u200d\u2060\ufeff"
INVISIBLE = dict.fromkeys(map(ord, INVISIBLE_CHARACTERS))
VISIBLE = re.compile(rf"[^\s{INVISIBLE_CHARACTERS}]")  # \s: the characters str.strip() removes
LINE_END = re.compile(r"\r\n|\r|\n")  # \n, \r\n and \r end a line (not str.splitlines' \u2028, \x0c, ...)

SCAN_CHUNK_BYTES = 1 << 22  # the checking pass and the tokenizing pass read 4 MB at a time
TOKENIZED_WRITER_BATCH_ROWS = 10_000  # sentences per tokenizer call and per Arrow record batch
CACHE_FORMAT = "clusterns-text-corpus-1"  # part of every cache key: bump when the cached layout changes


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


# ---- the checking pass --------------------------------------------------------------------------
def check_text_corpus(path: str) -> None:
    """Check a one-sentence-a-line file: not empty, valid UTF-8, no NUL byte, not only blank lines.

    Streams the bytes in 4 MB chunks (constant memory: corpora larger than RAM pass), so that invalid UTF-8 and NUL
    bytes are reported with their line number; only a bad file is read a second time, line by line, to find the line."""
    check_corpus_path(path)
    if os.path.getsize(path) == 0:
        raise CorpusError(f"--train_file {path!r} is empty")
    decoder = codecs.getincrementaldecoder("utf-8")()
    visible = False
    with open(path, "rb") as f:
        while chunk := f.read(SCAN_CHUNK_BYTES):
            try:
                text = decoder.decode(chunk, final=False)
            except UnicodeDecodeError:
                locate_bad_line(path)
            if b"\x00" in chunk:
                locate_bad_line(path)
            visible = visible or VISIBLE.search(text) is not None
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:  # the file ends inside a multi-byte character
        locate_bad_line(path)
    if not visible:
        with open(path, "rb") as f:
            lines = sum(1 for _ in text_lines(f))
        raise all_blank(path, lines)


def all_blank(path: str, lines: int) -> CorpusError:
    return CorpusError(f"--train_file {path!r} has {lines} lines, all blank (whitespace or invisible characters only)")


def text_lines(f) -> Iterator[bytes]:
    """The lines of a binary file: \\n, \\r\\n and \\r end a line."""
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


# ---- reading lines a block at a time ------------------------------------------------------------
def split_lines(text: str, final: bool) -> list[str]:
    """`text` cut at \\n, \\r\\n and \\r. Not final: `text` ends with a line end, after which nothing is a line."""
    parts = LINE_END.split(text)
    if parts[-1] == "" and (not final or len(parts) > 1):
        parts.pop()
    return parts


def read_lines(path: str, start: int = 0, end: int | None = None, block_bytes: int = SCAN_CHUNK_BYTES) -> Iterator[str]:
    """The lines of the bytes [start, end) of `path` (both at line starts), a block of `block_bytes` at a time.

    A block is cut after its last \\n (so a \\r\\n is never split), else after a \\r that is not its last byte; a line
    longer than a block is carried into the next."""
    end = os.path.getsize(path) if end is None else end
    with open(path, "rb") as f:
        f.seek(start)
        remaining, carry = end - start, b""
        while remaining > 0:
            chunk = f.read(min(block_bytes, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            buf = carry + chunk
            cut = buf.rfind(b"\n") + 1 or buf.rfind(b"\r", 0, len(buf) - 1) + 1
            if remaining <= 0:
                cut = len(buf)
            carry = buf[cut:]
            if cut:
                yield from split_lines(buf[:cut].decode("utf-8"), final=remaining <= 0)
        if carry:
            yield from split_lines(carry.decode("utf-8"), final=True)


def shard_ranges(path: str, shards: int) -> list[tuple[int, int]]:
    """[start, end) byte ranges of about equal size covering `path`, each starting right after a \\n."""
    size = os.path.getsize(path)
    starts = [0]
    with open(path, "rb") as f:
        for k in range(1, shards):
            f.seek(max(size * k // shards, starts[-1]))
            while True:  # the next line start: after the next \n
                block = f.read(1 << 16)
                if not block:
                    position = size
                    break
                newline = block.find(b"\n")
                if newline >= 0:
                    position = f.tell() - len(block) + newline + 1
                    break
            if position < size and position > starts[-1]:
                starts.append(position)
    return list(zip(starts, starts[1:] + [size]))


# ---- tokenizing into the cache ------------------------------------------------------------------
def token_table(columns: dict) -> pa.Table:
    """A tokenize function's output (every column a list of token-id lists) as int32 lists: half of int64's pages."""
    try:
        return pa.table({name: pa.array(values, type=pa.list_(pa.int32())) for name, values in columns.items()})
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as err:
        raise TypeError(f"a tokenize function must return lists of token ids per column, got {sorted(columns)}: {err}") from None


@dataclass(frozen=True)
class ShardJob:
    path: str
    start: int
    end: int
    function: Callable[[dict], dict]
    output: str


def tokenize_shard(job: ShardJob) -> dict:
    """Tokenize the lines of one byte range into one Arrow file (none when every line is blank); count the lines."""
    lines = blank = rows = 0
    writer = None
    batch: list[str] = []

    def flush() -> None:
        nonlocal writer, rows
        table = token_table(job.function({"sent0": batch}))
        if writer is None:
            writer = ArrowWriter(path=job.output, writer_batch_size=TOKENIZED_WRITER_BATCH_ROWS)
        writer.write_table(table)
        rows += len(batch)
        batch.clear()

    for line in read_lines(job.path, job.start, job.end):
        lines += 1
        if is_blank(line):
            blank += 1
            continue
        batch.append(line)
        if len(batch) == TOKENIZED_WRITER_BATCH_ROWS:
            flush()
    if batch:
        flush()
    if writer is not None:
        writer.finalize()
        writer.close()
    return {"lines": lines, "blank": blank, "rows": rows, "file": os.path.basename(job.output) if writer else None}


@dataclass(frozen=True)
class TextCorpus:
    """A checked one-sentence-a-line training file (load_corpus): one column, `sent0`; read when tokenized."""

    path: str
    cache_dir: str | None = None

    column_names = ("sent0",)

    def lines(self) -> Iterator[str]:
        """Every line, blank ones included (tests and tools; training reads the tokenized cache)."""
        return read_lines(self.path)

    def cache_key(self, function: Callable[[dict], dict]) -> str:
        stat = os.stat(self.path)
        return Hasher.hash([CACHE_FORMAT, os.path.realpath(self.path), stat.st_size, stat.st_mtime_ns, Hasher.hash(function)])

    def cache_folder(self, function: Callable[[dict], dict]) -> str:
        root = self.cache_dir or datasets_config.HF_DATASETS_CACHE
        return os.path.join(os.path.expanduser(str(root)), "clusterns_text_corpus", self.cache_key(function))

    def tokenize(self, function: Callable[[dict], dict], num_proc: int | None = None, overwrite_cache: bool = False) -> Dataset:
        """The tokenized rows (blank lines dropped) as a memory-mapped Dataset, from the cache when it has them."""
        folder = self.cache_folder(function)
        manifest = os.path.join(folder, "corpus.json")
        if overwrite_cache or not os.path.isfile(manifest):
            build_cache(self.path, function, folder, num_proc or 1, overwrite_cache)
        with open(manifest) as f:
            record = json.load(f)
        if record["blank"]:
            logger.warning("%s: skipped %d blank line(s); %d sentences kept", self.path, record["blank"], record["rows"])
        shards = [open_token_file(os.path.join(folder, name)) for name in record["files"]]
        return shards[0] if len(shards) == 1 else concatenate_datasets(shards)


# The token files this process has mapped (the newest mapping of each path): what ReleaseReadPages advises.
MAPPED_TOKEN_FILES: dict[str, mmap.mmap] = {}


def open_token_file(path: str) -> Dataset:
    """A cached token file as a Dataset over this module's own read-only memory map (datasets' MemoryMappedTable: it
    pickles as its path, so DataLoader workers and other processes map the file themselves)."""
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    table = pa.ipc.open_stream(pa.py_buffer(mapped)).read_all()
    MAPPED_TOKEN_FILES[path] = mapped
    return Dataset(MemoryMappedTable(table, path))


def release_read_pages(paths) -> int:
    """Drop this process's mapped pages of the given token files (MADV_DONTNEED on the file's own mapping: the pages
    stay in the page cache, the data is read again when next accessed). Returns the bytes advised."""
    released = 0
    if not hasattr(mmap, "MADV_DONTNEED"):  # no madvise on this platform (Windows): the pages stay mapped
        return released
    for path in paths:
        mapped = MAPPED_TOKEN_FILES.get(path)
        if mapped is not None and len(mapped):
            mapped.madvise(mmap.MADV_DONTNEED)
            released += len(mapped)
    return released


class ReleaseReadPages(TrainerCallback):
    """After every optimizer step, release the pages the step's random row reads mapped (see the module doc); the
    training process's RSS then stays flat in the corpus size. Reads made in DataLoader worker processes
    (--dataloader_num_workers > 0) are theirs to keep."""

    def __init__(self, paths):
        self.paths = [p for p in paths if p in MAPPED_TOKEN_FILES]

    def on_step_end(self, args, state, control, **kwargs):
        release_read_pages(self.paths)


FORKED_JOBS: list[ShardJob] = []  # what forked workers read: the tokenize function (a closure) need not pickle


def run_forked_job(index: int) -> dict:
    return tokenize_shard(FORKED_JOBS[index])


def run_jobs(jobs: list[ShardJob]) -> list[dict]:
    """One job here; several in forked worker processes (as datasets' map(num_proc=...)), results in job order."""
    if len(jobs) == 1:
        return [tokenize_shard(jobs[0])]
    FORKED_JOBS[:] = jobs
    try:
        with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
            return pool.map(run_forked_job, range(len(jobs)))
    finally:
        FORKED_JOBS.clear()


def build_cache(path: str, function: Callable[[dict], dict], folder: str, num_proc: int, overwrite: bool = False) -> None:
    """Tokenize `path` into `folder` (shard files + corpus.json): written beside it, then renamed into place, so a
    killed run leaves no half cache and concurrent runs each end with a complete one."""
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".building-", dir=parent)
    try:
        ranges = shard_ranges(path, num_proc)
        jobs = [ShardJob(path, start, end, function, os.path.join(work, f"tokens-{i:05d}-of-{len(ranges):05d}.arrow"))
                for i, (start, end) in enumerate(ranges)]
        results = run_jobs(jobs)
        record = {"source": os.path.realpath(path), "lines": sum(r["lines"] for r in results),
                  "blank": sum(r["blank"] for r in results), "rows": sum(r["rows"] for r in results),
                  "files": [r["file"] for r in results if r["file"]]}
        if not record["files"]:
            raise all_blank(path, record["lines"])
        with open(os.path.join(work, "corpus.json"), "w") as f:
            json.dump(record, f)
        if overwrite:  # --overwrite_cache: this build replaces the cache
            shutil.rmtree(folder, ignore_errors=True)
        for attempt in range(2):
            try:
                os.rename(work, folder)  # atomic: a cache folder is complete from the moment it exists
                return
            except OSError:
                if os.path.isfile(os.path.join(folder, "corpus.json")):
                    return  # another run put its complete cache in place first: keep that one
                if attempt:
                    raise
                shutil.rmtree(folder, ignore_errors=True)  # a folder without its manifest (not made by this code)
    finally:
        shutil.rmtree(work, ignore_errors=True)


__all__ = ["CorpusError", "ReleaseReadPages", "TextCorpus", "check_corpus_path", "open_token_file", "release_read_pages", "check_text_corpus", "is_blank", "read_lines", "shard_ranges",
           "split_lines", "text_lines"]
