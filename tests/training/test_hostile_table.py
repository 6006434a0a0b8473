"""Hostile inputs, table-driven: each case is a corpus (or model, or dev file) and flags that used to train with exit
code 0 on something else than the user meant, or to end in a traceback. Each must stop before training with exit
code 2, one line naming the file (and line) or the flag and what to do, and nothing written to --output_dir."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from clusterns.cli.train import train_main
from clusterns.training.run_lock import LOCK_NAME


@dataclass
class Case:
    files: dict[str, str | bytes]  # corpus files to write: name -> content (the first is --train_file)
    flags: list[str] = field(default_factory=list)
    needles: tuple[str, ...] = ()  # words the message must contain ({dir}: the case folder)
    prepare: Callable[[Path, Path], list[str]] | None = None  # (case folder, tiny_bert) -> extra flags


def symlink_loop(folder: Path, model: Path) -> list[str]:
    loop = folder / "loop.txt"
    os.symlink(loop, loop)
    return ["--train_file", str(loop)]


def model_without_tokenizer(folder: Path, model: Path) -> list[str]:
    bare = folder / "bare-model"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model / name, bare / name)
    return ["--model_name_or_path", str(bare)]


def dev_with_gold(scores: Callable[[int], str]):
    def prepare(folder: Path, model: Path) -> list[str]:
        dev = folder / "downstream"
        for sub, name in (("STS/STSBenchmark", "sts-dev.csv"), ("SICK", "SICK_trial.txt")):
            (dev / sub).mkdir(parents=True)
        def rows(score):
            return "\n".join(f"main-captions\tMSRvid\t2012test\t{i:04d}\t{score(i)}\ta man plays a guitar {i} .\ta dog runs {i} ."
                             for i in range(10)) + "\n"

        for split in ("train", "test"):
            (dev / f"STS/STSBenchmark/sts-{split}.csv").write_text(rows(lambda i: f"{i % 5}.0"))
        (dev / "STS/STSBenchmark/sts-dev.csv").write_text(rows(scores))
        sick = ["pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"]
        sick += [f"{i}\ta man plays {i}\ta dog {i}\t{1 + i % 4}\tNEUTRAL" for i in range(10)]
        for name in ("SICK_train.txt", "SICK_trial.txt", "SICK_test_annotated.txt"):
            (dev / "SICK" / name).write_text("\n".join(sick) + "\n")
        return ["--eval_data_dir", str(dev), "--eval_strategy", "steps", "--eval_steps", "1"]

    return prepare


SENTENCES = "a man is playing a guitar .\na dog runs in the park .\ntwo children are eating food .\na girl rides a horse .\n"
CASES = {
    "csv with 4 unnamed columns": Case({"nli.csv": "id,premise,hypothesis,label\n1,a man sleeps,a person rests,0\n2,a dog runs,an animal moves,0\n"},
                                       needles=("has 4 columns", "--sentence_columns premise,hypothesis")),
    "jsonl integers": Case({"c.jsonl": '{"text": 5}\n{"text": 7}\n'}, needles=("column 'text' holds int64 values",)),
    "jsonl lists": Case({"c.jsonl": '{"text": ["a", "b"]}\n{"text": ["c"]}\n'}, needles=("column 'text' holds",)),
    "jsonl null": Case({"c.jsonl": '{"text": "a dog runs"}\n{"text": null}\n{"text": "a cat"}\n'},
                       needles=("c.jsonl:2: column 'text' is missing (null)",)),
    "csv blank cell": Case({"p.csv": "sent0,sent1\na dog runs,an animal moves\na cat sleeps,   \n"},
                           needles=("p.csv:3: column 'sent1' is blank",)),
    "repeated --sentence_columns": Case({"p.csv": "a,b\nx y,z w\nu v,s t\n"}, ["--sentence_columns", "a,a"], ("names ['a'] more than once",)),
    "zero-width and BOM lines": Case({"z.txt": "\u200b\u200b\n\ufeff\n\u2060 \u200d\n".encode()}, needles=("all blank",)),
    "no-break-space lines": Case({"n.txt": "\u00a0\u00a0\n\u00a0\n".encode()}, needles=("all blank",)),
    "one-sentence corpus": Case({"one.txt": "a single sentence .\n"}, needles=("holds 1 sentence(s)", "at least 2")),
    "batch of one": Case({"c.txt": SENTENCES}, ["--per_device_train_batch_size", "1"], ("the global batch is 1 sentence(s)",)),
    "batch size 0": Case({"c.txt": SENTENCES}, ["--per_device_train_batch_size", "0"], ("--per_device_train_batch_size must be >= 1",)),
    "max_seq_length 0": Case({"c.txt": SENTENCES}, ["--max_seq_length", "0"], ("--max_seq_length must be at least 1",)),
    "max_seq_length 1 and a 400-token line": Case({"c.txt": SENTENCES + "dog " * 400 + "\n"}, ["--max_seq_length", "1"],
                                                  ("--max_seq_length 1 leaves no room", "2 special tokens")),
    "temp 0": Case({"c.txt": SENTENCES}, ["--temp", "0"], ("--temp must be a positive number",)),
    "temp negative": Case({"c.txt": SENTENCES}, ["--temp", "-0.05"], ("--temp must be a positive number",)),
    "hard_negative_weight on 1-column data": Case({"c.txt": SENTENCES}, ["--hard_negative_weight", "1.0"],
                                                  ("--hard_negative_weight 1.0 applies to a hard-negative column",)),
    "folder as --train_file": Case({"c.txt": SENTENCES}, needles=("is a folder",),
                                   prepare=lambda folder, model: ["--train_file", str(folder)]),
    "symlink loop": Case({"c.txt": SENTENCES}, needles=("is a symbolic link loop",), prepare=symlink_loop),
    "model folder without tokenizer files": Case({"c.txt": SENTENCES}, needles=("has 5 tokens but the model's vocabulary", "--tokenizer_name"),
                                                 prepare=model_without_tokenizer),
    "nan gold score in the dev set": Case({"c.txt": SENTENCES}, needles=("sts-dev.csv:4: gold score 'nan' is not a finite number",),
                                          prepare=dev_with_gold(lambda i: "nan" if i == 3 else f"{i % 5}.0")),
    "constant gold scores in the dev set": Case({"c.txt": SENTENCES}, needles=("sts-dev.csv: every gold score is 3.0",),
                                                prepare=dev_with_gold(lambda i: "3.0")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_stops_before_training(name, tiny_bert, tmp_path, capsys):
    case = CASES[name]
    folder = tmp_path / "case"
    folder.mkdir()
    for file, content in case.files.items():
        (folder / file).write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(tiny_bert), "--train_file", str(folder / next(iter(case.files))), "--output_dir", str(out),
            "--per_device_train_batch_size", "2", "--max_steps", "2", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true",
            *case.flags, *(case.prepare(folder, tiny_bert) if case.prepare else [])]
    with pytest.raises(SystemExit) as info:
        train_main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    for needle in case.needles:
        assert needle in errors[0], errors[0]
    assert not out.exists(), sorted(p.name for p in out.iterdir())  # nothing written (not even the lock)


def test_tsv_cell_opening_a_quote_is_text(tiny_bert, tmp_path):
    """TSV has no quoting convention: a cell starting with a quote is a sentence, not the start of a quoted field
    swallowing the next lines (pandas' default)."""
    corpus = tmp_path / "pairs.tsv"
    corpus.write_text('sent0\tsent1\n"a man plays\ta person plays\na dog runs\tan animal "moves"\ntwo kids eat\tchildren eat\n')
    from clusterns.training.data import load_corpus

    ds = load_corpus(str(corpus))
    assert ds["sent0"] == ['"a man plays', "a dog runs", "two kids eat"] and ds["sent1"][1] == 'an animal "moves"'
    out = tmp_path / "run"
    train_main(["--model_name_or_path", str(tiny_bert), "--train_file", str(corpus), "--output_dir", str(out),
                "--per_device_train_batch_size", "3", "--max_steps", "1", "--use_cpu", "--report_to", "none"])
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 1
    assert (out / LOCK_NAME).read_text() == ""
