"""Corpus loading, hostile files, and the view collator."""
from __future__ import annotations

import logging

import pytest
import torch

from clusterns.training import text_corpus
from clusterns.training.data import ContrastiveCollator, CorpusError, check_text_corpus, load_corpus, tokenize_corpus


def write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_txt_blank_lines_skipped_and_counted(tmp_path, caplog, tiny_bert):
    from transformers import AutoTokenizer

    path = write(tmp_path, "c.txt", b"one sentence\n\n   \ntwo sentence\r\nthree\rfour\n")
    check_text_corpus(path)  # valid: returns
    corpus = load_corpus(path)
    assert corpus.column_names == ("sent0",)
    assert list(corpus.lines()) == ["one sentence", "", "   ", "two sentence", "three", "four"]
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    with caplog.at_level(logging.WARNING):
        ds = tokenize_corpus(corpus, tok, 16)
    assert "skipped 2 blank line(s); 4 sentences kept" in caplog.text
    assert ds["sent0_ids"] == tok(["one sentence", "two sentence", "three", "four"])["input_ids"]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "is empty"),
        (b"\n\n  \n", "all blank"),
        (b"fine\nbad \xff\xfe line\n", ":2: invalid UTF-8"),
        (b"fine\nstill fine\nnul\x00here\n", ":3: NUL byte"),
        (b"a\r\nb\rc\n\nbad \xc3(\n", ":5: invalid UTF-8"),  # \r\n, \r and \n each end a line
        (b"fine\ncut \xe2\x82", ":2: invalid UTF-8"),  # the file ends inside a character
        # A bad byte far past the first chunk of the streaming check, and a character split across two chunks
        (b"ok\n" * 2000 + b"late \xff\n", ":2001: invalid UTF-8"),
        (b"x" * 4095 + "\u00e9\n".encode() + b"nul\x00\n", ":2: NUL byte"),
    ],
)
def test_txt_bad_files_name_file_and_line(tmp_path, data, message, monkeypatch):
    monkeypatch.setattr(text_corpus, "SCAN_CHUNK_BYTES", 4096)  # several chunks even in a small file
    path = write(tmp_path, "bad.txt", data)
    with pytest.raises(CorpusError, match=message) as err:
        load_corpus(path)
    assert "bad.txt" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus(str(tmp_path / "missing.txt"))


def test_one_megabyte_line_is_truncated(tmp_path, tiny_bert):
    from transformers import AutoTokenizer

    path = write(tmp_path, "long.txt", ("word " * 200_000).encode() + b"\nshort line\n")
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    ds = tokenize_corpus(load_corpus(path), tok, max_seq_length=32)
    assert [len(x) for x in ds["sent0_ids"]][0] == 32


def test_csv_with_header_quotes_and_embedded_newlines(tmp_path):
    path = write(tmp_path, "nli.csv", b'sent0,sent1,hard_neg\n"a, quoted ""one""","multi\nline",neg\nx,y,z\n')
    ds = load_corpus(path)
    assert ds.column_names == ["sent0", "sent1", "hard_neg"]
    assert ds[0]["sent0"] == 'a, quoted "one"' and ds[0]["sent1"] == "multi\nline"


def test_tsv_positional_columns_and_named_columns(tmp_path):
    path = write(tmp_path, "pairs.tsv", b"premise\thypothesis\nA\tB\nC\tD\n")
    assert load_corpus(path).column_names == ["sent0", "sent1"]
    assert load_corpus(path, sentence_columns="hypothesis").column_names == ["sent0"]
    with pytest.raises(CorpusError, match=r"no column\(s\) \['anchor'\]"):
        load_corpus(path, sentence_columns="anchor,hypothesis")


def test_jsonl(tmp_path):
    path = write(tmp_path, "d.jsonl", b'{"sent0": "a", "sent1": "b"}\n{"sent0": "c", "sent1": "d"}\n')
    assert load_corpus(path)["sent1"] == ["b", "d"]


def test_collator_duplicates_unsupervised_rows_and_pads_dynamically():
    collate = ContrastiveCollator(pad_token_id=0, num_views=2)
    batch = collate([{"sent0_ids": [5, 6, 7]}, {"sent0_ids": [8]}])
    assert batch["input_ids"].shape == (2, 2, 3)
    assert torch.equal(batch["input_ids"][0, 0], batch["input_ids"][0, 1])
    assert batch["attention_mask"][1, 0].tolist() == [1, 0, 0]
    assert batch["input_ids"][1, 1].tolist() == [8, 0, 0]


def test_collator_three_views_and_pad_to_max_length():
    collate = ContrastiveCollator(pad_token_id=1, num_views=3, max_length=6)
    batch = collate([{"sent0_ids": [5], "sent1_ids": [6, 7], "hard_neg_ids": [9, 9, 9]}])
    assert batch["input_ids"].shape == (1, 3, 6)
    assert batch["input_ids"][0, 2].tolist() == [9, 9, 9, 1, 1, 1]
    assert batch["attention_mask"].sum().item() == 6
