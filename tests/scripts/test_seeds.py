"""Multi-seed runs (SEEDS= in every recipe; export/seeds.py; clusterns.cli.seed_summary): per-task mean, std, min and
max over the seeds beside the published figure, a failed seed reported (never dropped), --dry_run showing every
seed's commands; a real 3-seed recipe run on a tiny BERT with one seed made to fail."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clusterns.cli import seed_summary
from clusterns.cli.model_card import results_table_main
from clusterns.export import seeds
from harness.test_evaluation_cli import tiny_downstream  # noqa: F401 - a fixture (every STS test set, tiny)

REPO = Path(__file__).resolve().parents[2]
RECIPES = {"run_simcse.sh": "unsup-bert-base", "run_non_prompt.sh": "bert-large", "run_prompt.sh": "prompt-roberta-base",
           "run_mixcse.sh": "bert-base", "run_diffcse.sh": "bert-base-transfer", "run_kodiffcse.sh": "roberta-base"}
SCRIPT_ENV = ("MODEL", "GENERATOR", "TRAIN_FILE", "OUTPUT_DIR", "NUM_GPU", "EVAL_DATA_DIR", "TEST_DATA_DIR", "TASK_SET", "SEED",
              "SEEDS", "KORSTS_DIR", "MINI_BATCH_SIZE")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    env.update(extra)
    return env


def test_spread_and_published_parsing():
    assert seeds.spread([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 3}  # sample std
    assert seeds.spread([5.0])["std"] == 0.0
    published = seeds.parse_published("STS12=68.40,STS-B=76.85,Avg.=76.25,transfer:MR=82.69,korsts_test_per_batch:Cos S=76.96")
    assert published["korsts_test_per_batch:Cos S"] == 76.96
    assert seeds.published_figure(published, "sts", "STSBenchmark") == 76.85  # the paper's column name
    assert seeds.published_figure(published, "sts", "Avg.") == 76.25
    assert seeds.published_figure(published, "transfer", "MR") == 82.69
    assert seeds.published_figure(published, "transfer", "Avg.") is None  # not the STS average
    with pytest.raises(ValueError, match="is not COLUMN=NUMBER"):
        seeds.parse_published("STS12=high")


def write_seed(out: Path, seed: str, sts: dict | None, failed: str | None = None):
    folder = out / f"seed-{seed}"
    folder.mkdir(parents=True)
    if failed:
        (folder / "FAILED").write_text(failed)
    if sts is not None:
        (folder / "eval_test.json").write_text(json.dumps({"tables": {"sts": sts}, "results": {}, "mode": "test"}))


def test_summary_by_hand_with_a_failed_and_an_unfinished_seed(tmp_path, capsys):
    write_seed(tmp_path, "42", {"STS12": 70.0, "Avg.": 75.0})
    write_seed(tmp_path, "1", {"STS12": 72.0, "Avg.": 77.0})
    write_seed(tmp_path, "2", None, failed="training or test exited with code 3")
    write_seed(tmp_path, "3", None)  # no test JSON: did not finish
    code = seed_summary.main([str(tmp_path), "--seeds", "42 1 2 3", "--published", "STS12=68.40,Avg.=76.25", "--config", "toy"])
    assert code == 1  # a seed failed: the exit code says so, the summary is still written
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["succeeded"] == ["42", "1"] and summary["failed"] == ["2", "3"]
    assert [r["reason"] for r in summary["runs"] if r["status"] == "failed"] == [
        "training or test exited with code 3", f"no eval_test.json in {tmp_path / 'seed-3'} (the run did not finish)"]
    avg = summary["tables"]["sts"]["Avg."]
    assert avg["mean"] == 76.0 and avg["std"] == pytest.approx(2 ** 0.5) and avg["min"] == 75.0 and avg["max"] == 77.0
    assert avg["published"] == 76.25 and avg["difference"] == pytest.approx(-0.25)
    assert avg["per_seed"] == {"42": 75.0, "1": 77.0}
    md = (tmp_path / "summary.md").read_text()
    assert "2 succeeded, **2 failed** (2, 3)" in md and "| mean ± std | 71.00 ± 1.41 | 76.00 ± 1.41 |" in md
    assert "| mean − published | +2.60 | -0.25 |" in md and "- seed 2: failed: training or test exited with code 3" in md
    assert md in capsys.readouterr().out
    assert seed_summary.main([str(tmp_path / "nope"), "--seeds", "1"]) == 2


@pytest.mark.parametrize("script", RECIPES)
def test_every_recipe_dry_runs_every_seed(script, tmp_path):
    proc = subprocess.run(["bash", str(REPO / "scripts" / script), RECIPES[script], "--dry_run"], capture_output=True, text=True, cwd=REPO,
                          env=clean_env(SEEDS="42 1 2", NUM_GPU="0", OUTPUT_DIR=str(tmp_path / "out")))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "seeds=42 1 2" in out and "python -m clusterns.cli.seed_summary" in out
    for seed in ("42", "1", "2"):
        assert f"# seed {seed}" in out
        assert f"--output_dir {tmp_path / 'out'}/seed-{seed}" in out and f"--seed {seed}\n" in out
        assert f"--output_json {tmp_path / 'out'}/seed-{seed}/eval_test.json" in out


@pytest.mark.parametrize("env, flags, message", [
    ({"SEEDS": "42 x"}, [], "SEEDS must be non-negative integers"),
    ({"SEEDS": "1 1"}, [], "repeats a seed"),
    ({"SEEDS": "1 2"}, ["--seed", "3"], "SEEDS sets each run's --seed"),
    ({"SEEDS": "1 2"}, ["--output_dir=/x"], "SEEDS sets each run's --output_dir"),
    ({"SEEDS": "1 2", "SEED": "7"}, [], "SEED=7 and SEEDS='1 2' are both set"),
])
def test_bad_seeds_are_refused(env, flags, message):
    proc = subprocess.run(["bash", str(REPO / "scripts" / "run_simcse.sh"), "unsup-bert-base", *flags, "--dry_run"],
                          capture_output=True, text=True, cwd=REPO, env=clean_env(NUM_GPU="0", **env))
    assert proc.returncode == 2 and message in proc.stderr


def test_three_seeds_of_a_recipe_with_one_failing(tiny_bert, tiny_corpus, tiny_downstream, tmp_path):  # noqa: F811
    """SEEDS="42 1 2" of run_simcse.sh on a tiny BERT (2 steps, the tiny STS sets); seed 1's training is made to fail
    (a `python` wrapper exits 3 for it): the other two train and test, seed 1 is marked failed, the summary holds the
    mean and spread of seeds 42 and 2 beside the paper's figures, and the recipe exits 1."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "python"
    wrapper.write_text("#!/bin/sh\ncase \" $* \" in *' train.py '*'--seed 1 '*) echo 'injected failure' >&2; exit 3 ;; esac\n"
                       f"exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    out = tmp_path / "run"
    env = clean_env(SEEDS="42 1 2", NUM_GPU="0", MODEL=str(tiny_bert), TRAIN_FILE=str(tiny_corpus), OUTPUT_DIR=str(out),
                    EVAL_DATA_DIR=str(tiny_downstream), TEST_DATA_DIR=str(tiny_downstream),
                    PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", "scripts/run_simcse.sh", "unsup-bert-base", "--max_steps", "2", "--eval_steps", "1",
                           "--per_device_train_batch_size", "8", "--report_to", "none", "--disable_tqdm", "true"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "warning: seed 1 failed (exit code 3); the other seeds go on" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["succeeded"] == ["42", "2"] and summary["failed"] == ["1"] and summary["config"] == "unsup-bert-base"
    per_seed = {s: json.loads((out / f"seed-{s}" / "eval_test.json").read_text())["tables"]["sts"] for s in ("42", "2")}
    assert json.loads((out / "seed-42" / "training_args.json").read_text())["training"]["seed"] == 42
    assert json.loads((out / "seed-2" / "training_args.json").read_text())["training"]["seed"] == 2
    for column in ("STS12", "STSBenchmark", "Avg."):
        entry = summary["tables"]["sts"][column]
        assert entry["per_seed"] == {s: per_seed[s][column] for s in ("42", "2")}
        assert entry["mean"] == pytest.approx((per_seed["42"][column] + per_seed["2"][column]) / 2)
    assert summary["tables"]["sts"]["Avg."]["published"] == 76.25  # SimCSE unsup-bert-base
    assert summary["tables"]["sts"]["STSBenchmark"]["published"] == 76.85
    md = (out / "summary.md").read_text()
    assert "**1 failed** (1)" in md and "| published |" in md and "SimCSE (Gao et al., EMNLP 2021)" in md
    assert not (out / "seed-1" / "eval_test.json").exists() and (out / "seed-1" / "FAILED").exists()
    # results_table.py reads the summary (the recipe's OUTPUT_DIR): mean ± std and the paper's figures
    table = tmp_path / "table.md"
    assert results_table_main([str(out), "--output", str(table)]) == 0
    text = table.read_text()
    avg = summary["tables"]["sts"]["Avg."]
    assert "| unsup-bert-base (mean ± std, 2 runs) |" in text and f"{avg['mean']:.2f} ± {avg['std']:.2f} |" in text
    assert "| unsup-bert-base: published | 68.40 | 82.41 | 74.38 | 80.91 | 78.56 | 76.85 | 72.23 | 76.25 |" in text
    assert f"{avg['difference']:+.2f} |" in text
    shutil.rmtree(out)


def eval_json(path: Path, sts: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model_name_or_path": str(path.parent), "mode": "test", "tables": {"sts": sts},
                                "results": {task: {} for task in sts if task != "Avg."}}))
    return path


def test_results_table_aggregates_runs_of_one_configuration(tmp_path, capsys):
    cells = {"STS12": 70.0, "STS13": 80.0, "STS14": 75.0, "STS15": 80.0, "STS16": 78.0, "STSBenchmark": 77.0,
             "SICKRelatedness": 72.0, "Avg.": 76.0}
    a = eval_json(tmp_path / "a" / "eval_test.json", cells)
    b = eval_json(tmp_path / "b" / "eval_test.json", {k: v + 2.0 for k, v in cells.items()})
    assert results_table_main([str(a), str(b), "--aggregate", "mine", "--published", "Avg.=76.25"]) == 0
    printed = capsys.readouterr().out
    assert "| mine (mean ± std, 2 runs) | 71.00 ± 1.41 | 81.00 ± 1.41 |" in printed
    assert "| mine: published | – | – | – | – | – | – | – | 76.25 |" in printed
    assert "| mine: mean − published | – | – | – | – | – | – | – | +0.75 |" in printed
    # without --aggregate: one row per run, as before
    assert results_table_main([str(a), str(b)]) == 0
    printed = capsys.readouterr().out
    assert "| a | 70.00 |" in printed and "| b | 72.00 |" in printed
    assert results_table_main([str(a), "--published", "Avg.=1"]) == 2
    assert "--published goes with --aggregate" in capsys.readouterr().err
