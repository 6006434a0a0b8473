"""Corpora through `datasets`' Arrow cache: a second run (a new process) with the same file and tokenizer reuses the
tokenized cache; --overwrite_cache rebuilds it; parallel tokenization (--preprocessing_num_workers) gives the same
rows as one process; the flag's range is checked at start-up."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clusterns.cli.train import train_main
from clusterns.training.data import load_corpus, tokenize_corpus

REPO = Path(__file__).resolve().parents[2]
LOADER = """
import json, sys
from transformers import AutoTokenizer
from clusterns.training.data import load_corpus, tokenize_corpus
corpus, model, overwrite = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
ds = tokenize_corpus(load_corpus(corpus), AutoTokenizer.from_pretrained(model), 16, overwrite_cache=overwrite)
print(json.dumps({"files": [c["filename"] for c in ds.cache_files], "rows": len(ds), "first": ds[0]["sent0_ids"]}))
"""


def load_in_new_process(corpus, model, cache, overwrite=False) -> dict:
    env = dict(os.environ, HF_DATASETS_CACHE=str(cache), PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", LOADER, str(corpus), str(model), "1" if overwrite else "0"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_second_run_reuses_the_tokenized_cache(tiny_bert, tiny_corpus, tmp_path):
    cache = tmp_path / "hf-cache"
    first = load_in_new_process(tiny_corpus, tiny_bert, cache)
    assert first["rows"] == 200 and len(first["files"]) == 1
    tokenized = Path(first["files"][0])
    written = tokenized.stat().st_mtime_ns
    second = load_in_new_process(tiny_corpus, tiny_bert, cache)
    assert second == first  # the same cache file, the same rows
    assert tokenized.stat().st_mtime_ns == written, "the second run tokenized again instead of reading the cache"
    rebuilt = load_in_new_process(tiny_corpus, tiny_bert, cache, overwrite=True)
    assert rebuilt["first"] == first["first"] and Path(rebuilt["files"][0]).stat().st_mtime_ns != written


def test_parallel_tokenization_equals_one_process(tiny_bert, tmp_path):
    from transformers import AutoTokenizer

    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"sentence number {i} with a few words .\n" + ("\n" if i % 7 == 0 else "") for i in range(300)))
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    one = tokenize_corpus(load_corpus(str(corpus)), tok, 16)
    two = tokenize_corpus(load_corpus(str(corpus)), tok, 16, num_proc=2, overwrite_cache=True)
    assert len(one) == len(two) == 300  # the blank lines dropped by both
    assert one["sent0_ids"] == two["sent0_ids"]


@pytest.mark.parametrize("value", ["0", "-2"])
def test_preprocessing_num_workers_range_is_checked(value, tiny_bert, tiny_corpus, tmp_path, capsys):
    argv = ["--model_name_or_path", str(tiny_bert), "--train_file", str(tiny_corpus), "--output_dir", str(tmp_path / "run"),
            "--use_cpu", "--do_train", "--max_steps", "1", "--report_to", "none", "--preprocessing_num_workers", value]
    with pytest.raises(SystemExit) as exit_info:
        train_main(argv)
    assert exit_info.value.code == 2 and "--preprocessing_num_workers must be >= 1" in capsys.readouterr().err


def test_cached_files_have_large_record_batches(tiny_bert, tmp_path):
    """Every record batch header of a cached file is visited (through the memory map) when it is loaded; datasets'
    1000-row default made a cached corpus map a large share of its pages at each load. 25k lines -> a few batches;
    the token ids are int32 (half the pages of int64)."""
    import pyarrow as pa
    from transformers import AutoTokenizer

    from clusterns.training import text_corpus

    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"sentence {i} .\n" + ("\n" if i % 1000 == 0 else "") for i in range(25_000)))
    tokenized = tokenize_corpus(load_corpus(str(corpus)), AutoTokenizer.from_pretrained(tiny_bert), 16)
    files = [c["filename"] for c in tokenized.cache_files]
    assert len(files) == 1 and len(tokenized) == 25_000
    table = pa.ipc.open_stream(pa.memory_map(files[0])).read_all()
    assert table.schema.field("sent0_ids").type == pa.list_(pa.int32())
    assert len(table.to_batches()) <= 25_000 // text_corpus.TOKENIZED_WRITER_BATCH_ROWS + 1
