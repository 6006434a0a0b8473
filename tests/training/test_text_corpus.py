"""One-sentence-a-line corpora read a block at a time (training/text_corpus.py): the lines equal a whole-file read at
any block size and line-end mix, shards partition the file at line starts, parallel tokenization equals one process,
the text file is never memory-mapped, the cache is complete or absent, and concurrent builds end with one cache."""
from __future__ import annotations

import json
import os
import random
import threading

import pytest
from transformers import AutoTokenizer

from clusterns.training import text_corpus
from clusterns.training.data import load_corpus, tokenize_corpus, tokenize_function
from clusterns.training.text_corpus import CorpusError, read_lines, shard_ranges, split_lines, text_lines

ENDINGS = [b"\n", b"\r\n", b"\r"]


def reference_lines(data: bytes) -> list[str]:
    """The line splitting every error message counts by (text_lines), decoded."""
    import io

    return [line.decode("utf-8") for line in text_lines(io.BytesIO(data))]


def random_corpus(seed: int, lines: int = 300) -> bytes:
    rng = random.Random(seed)
    words = ["a", "dog", "été", "naïve", "日本語", "", "  ", "\u200b", "x" * 50]
    out = b""
    for _ in range(lines):
        out += " ".join(rng.choice(words) for _ in range(rng.randint(0, 6))).encode() + rng.choice(ENDINGS)
    if rng.random() < 0.5:
        out += b"last line without an end"
    return out


def test_split_lines_hand_cases():
    assert split_lines("a\nb\r\nc\rd\n", final=False) == ["a", "b", "c", "d"]
    assert split_lines("a\n\n", final=False) == ["a", ""]
    assert split_lines("a\nb", final=True) == ["a", "b"]
    assert split_lines("a\n", final=True) == ["a"]
    assert split_lines("x\u2028y\x0cz", final=True) == ["x\u2028y\x0cz"]  # only \n, \r\n and \r end a line


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1 << 20])
def test_read_lines_equals_a_whole_file_read_at_any_block_size(tmp_path, seed, block):
    data = random_corpus(seed)
    path = tmp_path / "c.txt"
    path.write_bytes(data)
    assert list(read_lines(str(path), block_bytes=block)) == reference_lines(data)


def test_a_carriage_return_only_file_is_read_in_blocks(tmp_path):
    data = b"".join(f"line {i}\r".encode() for i in range(500))
    path = tmp_path / "mac.txt"
    path.write_bytes(data)
    assert list(read_lines(str(path), block_bytes=64)) == [f"line {i}" for i in range(500)]


@pytest.mark.parametrize("shards", [1, 2, 3, 8, 50])
def test_shards_partition_the_file_at_line_starts(tmp_path, shards):
    data = random_corpus(7, lines=200)
    path = tmp_path / "c.txt"
    path.write_bytes(data)
    ranges = shard_ranges(str(path), shards)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data) and len(ranges) <= shards
    assert all(end == start for (_, end), (start, _) in zip(ranges, ranges[1:]))  # contiguous
    assert all(data[start - 1:start] == b"\n" for start, _ in ranges[1:])  # each after a \n: no \r\n is split
    joined = [line for start, end in ranges for line in read_lines(str(path), start, end, block_bytes=5)]
    assert joined == reference_lines(data)


def test_parallel_tokenization_equals_one_process_and_keeps_the_order(tiny_bert, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    data = random_corpus(3, lines=2000)
    path = tmp_path / "c.txt"
    path.write_bytes(data)
    expected = tok([line for line in reference_lines(data) if line.translate(text_corpus.INVISIBLE).strip()],
                   truncation=True, max_length=16)["input_ids"]
    one = tokenize_corpus(load_corpus(str(path)), tok, 16)
    three = tokenize_corpus(load_corpus(str(path)), tok, 16, num_proc=3, overwrite_cache=True)
    assert one["sent0_ids"] == expected and three["sent0_ids"] == expected
    assert len(three.cache_files) == 3


def test_the_text_file_is_never_memory_mapped(tiny_bert, tmp_path):
    """The pass reads the corpus with plain reads: no page of it is ever counted in the process's RSS."""
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"sentence {i} of the corpus .\n" for i in range(30_000)))
    plain = tokenize_function(tok, 16)
    mapped_while_tokenizing = []

    def watching(examples):
        with open("/proc/self/maps") as f:
            mapped_while_tokenizing.append(str(path) in f.read())
        return plain(examples)

    ds = tokenize_corpus(load_corpus(str(path)), tok, 16, views_function=watching)
    assert len(ds) == 30_000 and len(mapped_while_tokenizing) == 3  # 10k-sentence batches
    assert not any(mapped_while_tokenizing)
    with open("/proc/self/maps") as f:
        assert str(path) not in f.read()


def test_an_interrupted_build_leaves_no_cache(tiny_bert, tmp_path, monkeypatch):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    path = tmp_path / "c.txt"
    path.write_text("".join(f"sentence {i}\n" for i in range(25_000)))
    cache = tmp_path / "cache"
    plain = tokenize_function(tok, 16)
    calls = []

    def dies_in_the_second_batch(examples):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return plain(examples)

    corpus = load_corpus(str(path), cache_dir=str(cache))
    with pytest.raises(KeyboardInterrupt):
        corpus.tokenize(dies_in_the_second_batch)
    assert not os.path.exists(corpus.cache_folder(dies_in_the_second_batch))
    assert os.listdir(cache / "clusterns_text_corpus") == []  # the half-written folder is removed
    ds = corpus.tokenize(plain)
    assert len(ds) == 25_000


def test_concurrent_builds_end_with_one_complete_cache(tiny_bert, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    path = tmp_path / "c.txt"
    path.write_text("".join(f"sentence {i}\n" for i in range(5_000)))
    corpus = load_corpus(str(path), cache_dir=str(tmp_path / "cache"))
    function = tokenize_function(tok, 16)
    results, errors = [], []

    def build():
        try:
            results.append(corpus.tokenize(function)["sent0_ids"])
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3 and results[0] == results[1] == results[2]
    folder = corpus.cache_folder(function)
    assert os.listdir(tmp_path / "cache" / "clusterns_text_corpus") == [os.path.basename(folder)]
    assert json.loads(open(os.path.join(folder, "corpus.json")).read())["rows"] == 5_000


def test_an_edited_file_is_tokenized_again(tiny_bert, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    path = tmp_path / "c.txt"
    path.write_text("first version\n")
    first = tokenize_corpus(load_corpus(str(path)), tok, 16)
    path.write_text("the second version\nof the file\n")
    second = tokenize_corpus(load_corpus(str(path)), tok, 16)
    assert len(first) == 1 and len(second) == 2


def test_a_non_list_tokenize_output_is_refused(tiny_bert, tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a sentence\n")
    with pytest.raises(TypeError, match="lists of token ids"):
        tokenize_corpus(load_corpus(str(path)), None, 16, views_function=lambda ex: {"sent0_ids": ["not", "ids"]})


def test_all_blank_after_the_check_is_still_refused(tmp_path, monkeypatch):
    """A file that passes the streaming check as visible but has no non-blank line (cannot happen with the same
    definition of blank; the build refuses it rather than writing an empty cache)."""
    path = tmp_path / "c.txt"
    path.write_text("   \n")
    corpus = text_corpus.TextCorpus(str(path), str(tmp_path / "cache"))
    with pytest.raises(CorpusError, match="all blank"):
        corpus.tokenize(lambda ex: {"sent0_ids": [[1]] * len(ex["sent0"])})


def token_file_rss_kb(path: str) -> int:
    """Resident kB of this process's mappings of `path` (/proc/self/smaps)."""
    total, current = 0, None
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and ":" not in parts[0]:
                current = parts[5] if len(parts) >= 6 else None
            elif line.startswith("Rss:") and current == path:
                total += int(parts[1])
    return total


def test_released_pages_leave_the_rss_and_the_data_intact(tiny_bert, tmp_path):
    import pickle

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    path = tmp_path / "c.txt"
    path.write_text("".join(f"sentence number {i} of a corpus with a few more words .\n" for i in range(60_000)))
    ds = tokenize_corpus(load_corpus(str(path)), tok, 16)
    token_file = ds.cache_files[0]["filename"]
    rows = random.Random(0).sample(range(len(ds)), 200)
    first = [ds[i]["sent0_ids"] for i in rows]
    assert token_file_rss_kb(token_file) > 64  # the reads mapped pages of the token file
    assert text_corpus.release_read_pages([token_file]) == os.path.getsize(token_file)
    assert token_file_rss_kb(token_file) == 0
    assert [ds[i]["sent0_ids"] for i in rows] == first  # read again from the page cache
    again = pickle.loads(pickle.dumps(ds))  # DataLoader workers / other processes map the file themselves
    assert again.cache_files == ds.cache_files and again[rows[0]]["sent0_ids"] == first[0]


def test_training_releases_the_read_pages_after_every_step(tiny_bert, tmp_path):
    from clusterns.training.run import build_run

    path = tmp_path / "c.txt"
    path.write_text("".join(f"sentence number {i} of a corpus with a few more words .\n" for i in range(20_000)))
    run = build_run(["--model_name_or_path", str(tiny_bert), "--train_file", str(path), "--output_dir", str(tmp_path / "run"),
                     "--use_cpu", "--do_train", "--max_steps", "3", "--per_device_train_batch_size", "64", "--report_to", "none",
                     "--save_strategy", "no"])
    token_file = run.train_dataset.cache_files[0]["filename"]
    releases = [c for c in run.trainer.callback_handler.callbacks if isinstance(c, text_corpus.ReleaseReadPages)]
    assert len(releases) == 1 and releases[0].paths == [token_file]
    run.trainer.train()
    assert token_file_rss_kb(token_file) == 0


def test_a_cache_folder_without_its_manifest_is_rebuilt(tiny_bert, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    path = tmp_path / "c.txt"
    path.write_text("one sentence\nanother one\n")
    corpus = load_corpus(str(path), cache_dir=str(tmp_path / "cache"))
    function = tokenize_function(tok, 16)
    folder = corpus.cache_folder(function)
    os.makedirs(folder)
    (tmp_path / "cache" / "clusterns_text_corpus" / os.path.basename(folder) / "junk.arrow").write_bytes(b"not arrow")
    assert corpus.tokenize(function)["sent0_ids"] == tok(["one sentence", "another one"])["input_ids"]
    assert sorted(os.listdir(folder)) == ["corpus.json", "tokens-00000-of-00001.arrow"]
