"""Any STS set (SentEval/senteval/sts_files.py): TSV/CSV files by column name or index and local `datasets`
folders, errors naming file and line; KorSTS read as one such file; evaluation.py --sts_file and train.py --eval_sts
(eval_NAME_spearman, selectable) end to end on a tiny random BERT."""
from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import Dataset, DatasetDict
from scipy.stats import spearmanr

from clusterns.cli import evaluate as evaluation
from clusterns.cli.train import train_main
from clusterns.harness import DataFormatError, MissingDataError, sts, sts_files
from clusterns.modeling.encoder import SentenceEncoder
from clusterns.training.dev_evaluator import SentEvalDevEvaluator
from conftest import require_mirror
from harness.test_evaluation_cli import WORDS

PAIRS = [("a man plays guitar", "a man is playing a guitar", 4.8), ("two dogs run", "a cat sleeps", 0.4),
         ("the woman rides a horse", "a woman riding a horse", 4.2), ("people on the piano", "red blue", 1.0)]


def test_columns_spec():
    assert sts_files.parse_columns(None) == ("sentence1", "sentence2", "score")
    assert sts_files.parse_columns("a, b ,gold") == ("a", "b", "gold")
    assert sts_files.parse_columns("5,6,4") == (5, 6, 4)
    for bad in ("a,b", "a,1,2", "a,,b"):
        with pytest.raises(ValueError, match="STS columns"):
            sts_files.parse_columns(bad)


def test_tsv_by_name_by_index_with_and_without_header_and_csv(tmp_path):
    named = tmp_path / "named.tsv"
    named.write_text("id\tscore\tsentence2\tsentence1\n" + "".join(f"{i}\t{g}\t{b}\t{a}\n" for i, (a, b, g) in enumerate(PAIRS)))
    a, b, gold = sts_files.load_sts_pairs(str(named))
    assert a[0] == "a man plays guitar".split() and b[1] == "a cat sleeps".split() and gold == [4.8, 0.4, 4.2, 1.0]
    body = "".join(f"{a}\t{b}\t{g}\n" for a, b, g in PAIRS)
    for text in (body, "s1\ts2\tgold\n" + body):  # indices: a header line (non-numeric score) is skipped
        (tmp_path / "idx.tsv").write_text(text)
        assert sts_files.load_sts_pairs(str(tmp_path / "idx.tsv"), (0, 1, 2)) == (a, b, gold)
    quoted = tmp_path / "q.csv"  # csv: quoted fields may hold commas
    quoted.write_text("sentence1,sentence2,score\n" + "".join(f'"{a}, really","{b}",{g}\n' for a, b, g in PAIRS))
    qa, qb, qgold = sts_files.load_sts_pairs(str(quoted))
    assert qa[0] == "a man plays guitar, really".split() and qgold == gold


@pytest.mark.parametrize("text, columns, message", [
    ("s1\ts2\tscore\nx\ty\t1\n", None, r":1: no column 'sentence1', 'sentence2' in the header"),
    ("sentence1\tsentence2\tscore\nx\ty\n", None, r":2: 2 fields, the STS columns need 3"),
    ("sentence1\tsentence2\tscore\nx\ty\t1\nx\ty\tfive\n", None, r":3: .*gold score"),
    ("sentence1\tsentence2\tscore\nx\t \t1\n", None, r":2: an empty sentence"),
    ("sentence1\tsentence2\tscore\nx\ty\t1\nz\tw\t1\n", None, r"every gold score is 1.0, so a correlation with them is undefined"),
    ("sentence1\tsentence2\tscore\n", None, r"no sentence pairs"),
])
def test_bad_files_name_file_and_line(text, columns, message, tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(DataFormatError, match=message):
        sts_files.load_sts_pairs(str(path), columns or sts_files.DEFAULT_COLUMNS)


def test_missing_file(tmp_path):
    with pytest.raises(MissingDataError, match="STS file not found"):
        sts_files.load_sts_pairs(str(tmp_path / "nope.tsv"))


def test_datasets_folders(tmp_path):
    data = Dataset.from_dict({"sentence1": [p[0] for p in PAIRS], "sentence2": [p[1] for p in PAIRS], "score": [p[2] for p in PAIRS]})
    data.save_to_disk(str(tmp_path / "one"))
    a, b, gold = sts_files.load_sts_pairs(str(tmp_path / "one"))
    assert gold == [4.8, 0.4, 4.2, 1.0] and a[0] == PAIRS[0][0].split()
    DatasetDict({"validation": data, "test": data.select([0, 1, 2])}).save_to_disk(str(tmp_path / "dict"))
    path, split = sts_files.split_location(str(tmp_path / "dict") + "[test]")
    assert split == "test" and len(sts_files.load_sts_pairs(path, split=split)[2]) == 3
    with pytest.raises(DataFormatError, match=r"holds the splits validation, test: name one as PATH\[split\]"):
        sts_files.load_sts_pairs(str(tmp_path / "dict"))
    with pytest.raises(DataFormatError, match="no column 'gold'"):
        sts_files.load_sts_pairs(str(tmp_path / "one"), ("sentence1", "sentence2", "gold"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataFormatError, match="not a saved `datasets` dataset"):
        sts_files.load_sts_pairs(str(tmp_path / "plain"))


def test_korsts_is_one_sts_file():
    """The generic reader gives exactly the KorSTS files' pairs, read here independently (header, then TAB fields
    genre filename year id score sentence1 sentence2)."""
    folder = require_mirror("korsts")
    for split in ("dev", "test"):
        path = folder / f"sts-{split}.tsv"
        rows = [line.rstrip("\r\n").split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
        expected = ([r[5].split() for r in rows], [r[6].split() for r in rows], [float(r[4]) for r in rows])
        assert sts_files.load_sts_pairs(str(path)) == expected


def korsts_format(path, pairs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2\n"
                    + "".join(f"g\tf\t2012\t{i}\t{g}\t{a}\t{b}\n" for i, (a, b, g) in enumerate(pairs)))
    return path


def toy_pairs(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return [(" ".join(rng.choice(WORDS, size=5)), " ".join(rng.choice(WORDS, size=5)), float(rng.uniform(0, 5))) for _ in range(n)]


def test_dev_evaluator_korsts_equals_the_same_file_as_an_sts_set(tmp_path):
    korsts_dir = tmp_path / "KorSTS"
    korsts_format(korsts_dir / "sts-dev.tsv", toy_pairs())
    evaluator = SentEvalDevEvaluator(None, korsts_dir=str(korsts_dir), english=False,
                                     sts_sets={"mine": str(korsts_dir / "sts-dev.tsv")})
    assert evaluator.metric_names == ["korsts_spearman", "mine_spearman"]
    rng = np.random.default_rng(3)
    table = {}

    def encode(sentences):
        return np.stack([table.setdefault(s, rng.normal(size=8)) for s in sentences])

    metrics = evaluator(encode)
    assert metrics["eval_mine_spearman"] == pytest.approx(metrics["eval_korsts_spearman"], abs=1e-12)
    a, b, gold = sts_files.load_sts_pairs(str(korsts_dir / "sts-dev.tsv"))
    by_hand = spearmanr(sts.pair_similarities(encode([" ".join(x) for x in a]), encode([" ".join(x) for x in b])), gold)[0]
    assert metrics["eval_mine_spearman"] == pytest.approx(by_hand)


def test_evaluation_cli_sts_file(tiny_bert, tmp_path, capsys):
    path = korsts_format(tmp_path / "mine.tsv", toy_pairs(seed=1))
    csv_path = tmp_path / "other.csv"
    csv_path.write_text("a,b,gold\n" + "".join(f"{a},{b},{g}\n" for a, b, g in toy_pairs(seed=2)))
    out = tmp_path / "res.json"
    rc = evaluation.main(["--model_name_or_path", str(tiny_bert), "--task_set", "files", "--sts_file", f"mine={path}",
                          "--pooler", "avg", "--output_json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "STS files (cosine Spearman x100)" in printed and "mine" in printed
    result = json.loads(out.read_text())["results"]["mine"]
    a, b, gold = sts_files.load_sts_pairs(str(path))
    encoder = SentenceEncoder.from_pretrained(str(tiny_bert), pooler="avg")
    sims = sts.pair_similarities(encoder.encode([" ".join(x) for x in a]), encoder.encode([" ".join(x) for x in b]))
    assert result["spearman"] == pytest.approx(spearmanr(sims, gold)[0], abs=1e-6) and result["n"] == 24
    # --sts_columns for a file with other names (one spec for every --sts_file)
    rc = evaluation.main(["--model_name_or_path", str(tiny_bert), "--task_set", "files", "--sts_file", f"other={csv_path}",
                          "--sts_columns", "a,b,gold", "--output_json", str(out)])
    assert rc == 0 and json.loads(out.read_text())["results"]["other"]["n"] == 24


@pytest.mark.parametrize("flags, message", [
    (["--sts_file", "mine"], "--sts_file expects NAME=PATH"),
    (["--sts_file", "a={path}", "--sts_file", "a={path}"], "the name 'a' is given twice"),
    (["--sts_file", "a={missing}"], "STS file not found"),
    (["--sts_file", "a={path}", "--sts_columns", "x,y"], "STS columns must be three"),
    (["--sts_columns", "a,b,c"], "--sts_columns describes the --sts_file sets"),
    ([], "--task_set files evaluates only --sts_file / --cluster_file sets"),
])
def test_bad_sts_file_flags_exit_2(flags, message, tiny_bert, tmp_path, capsys):
    path = korsts_format(tmp_path / "mine.tsv", toy_pairs())
    flags = [f.format(path=path, missing=tmp_path / "nope.tsv") for f in flags]
    rc = evaluation.main(["--model_name_or_path", str(tiny_bert), "--task_set", "files", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]


def train_argv(model, corpus, out, *extra):
    return ["--model_name_or_path", str(model), "--train_file", str(corpus), "--output_dir", str(out), "--use_cpu",
            "--per_device_train_batch_size", "8", "--max_steps", "4", "--eval_strategy", "steps", "--eval_steps", "2",
            "--save_steps", "2", "--report_to", "none", "--disable_tqdm", "true", "--do_train", *extra]


def test_train_eval_sts_sets_are_logged_and_select(tiny_bert, tiny_corpus, tmp_path):
    """Two --eval_sts sets (given as two flags: both kept), no English data; selection on one of them."""
    first, second = korsts_format(tmp_path / "a.tsv", toy_pairs(seed=4)), korsts_format(tmp_path / "b.tsv", toy_pairs(seed=5))
    out = tmp_path / "run"
    train_main(train_argv(tiny_bert, tiny_corpus, out, "--eval_sts", f"ko={first}", "--no_eval_english_sts",
                          "--eval_sts", f"other={second}", "--metric_for_best_model", "other_spearman",
                          "--load_best_model_at_end"))
    state = json.loads((out / "trainer_state.json").read_text())
    evals = [h for h in state["log_history"] if "eval_other_spearman" in h]
    assert len(evals) == 2 and all("eval_ko_spearman" in h and "eval_stsb_spearman" not in h for h in evals)
    assert state["best_metric"] == max(h["eval_other_spearman"] for h in evals)


@pytest.mark.parametrize("flags, message", [
    (["--eval_sts", "bad name={path}"], "must be letters, digits"),
    (["--eval_sts", "stsb={path}"], "is a built-in dev set's name"),
    (["--eval_sts", "a={path}", "--eval_sts", "a={path}"], "the name 'a' is given twice"),
    (["--eval_sts", "a"], "--eval_sts expects NAME=PATH"),
    (["--eval_sts", "a={missing}"], "STS file not found"),
    (["--eval_sts_columns", "a,b,c", "--eval_korsts"], "--eval_sts_columns describes the --eval_sts sets"),
    (["--eval_sts", "a={path}", "--eval_strategy", "no"], "--eval_sts evaluates during training, but no evaluation runs"),
    (["--eval_sts_columns", "0,1,2", "--eval_strategy", "no"], "--eval_sts_columns evaluates during training, but no evaluation runs"),
])
def test_bad_eval_sts_flags_stop_at_start_up(flags, message, tiny_bert, tiny_corpus, tmp_path, capsys):
    path = korsts_format(tmp_path / "a.tsv", toy_pairs())
    flags = [f.format(path=path, missing=tmp_path / "nope.tsv") for f in flags]
    argv = train_argv(tiny_bert, tiny_corpus, tmp_path / "run", "--no_eval_english_sts", "--korsts_dir", str(tmp_path), *flags)
    with pytest.raises(SystemExit) as exit_info:
        train_main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_named_locations_is_the_one_parser_of_name_path_flags():
    assert sts_files.named_locations(["a=x.tsv", " b = y.csv "], "--f") == {"a": "x.tsv", "b": "y.csv"}
    assert sts_files.named_locations(None, "--f") == {}
    for items, message in ((["a"], "--f expects NAME=PATH"), (["=x"], "expects NAME=PATH"), (["a="], "expects NAME=PATH"),
                           (["a b=x"], "must be letters, digits"), (["a=x", "a=y"], "the name 'a' is given twice"),
                           (["stsb=x"], "'stsb' is a built-in set; choose another")):
        with pytest.raises(ValueError, match=message):
            sts_files.named_locations(items, "--f", reserved={"stsb"}, reserved_why="a built-in set")
