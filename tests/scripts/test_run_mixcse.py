"""scripts/run_mixcse.sh: every configuration's dry run against the spec's published values (mixcse.md §6-§7, §12)."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "run_mixcse.sh"

# The published script (run_unsup_example.sh) and its history / corrected variants.
BASE = {
    "model_name_or_path": "bert-base-uncased",
    "train_file": "data/wiki1m_for_simcse.txt",
    "objective": "mixcse",
    "lambdas": "0.2",
    "mixcse_mode": "repo",
    "mask_fill": "zero",
    "num_train_epochs": "1",
    "per_device_train_batch_size": "64",
    "learning_rate": "3e-5",
    "max_seq_length": "32",
    "eval_strategy": "steps",
    "eval_steps": "125",
    "metric_for_best_model": "stsb_spearman",
    "load_best_model_at_end": True,
    "pooler_type": "cls",
    "first_layer_index": "0",
    "temp": "0.05",
    "seed": "42",
    "overwrite_output_dir": True,
    "do_train": True,
    "do_eval": True,
    "eval_align_uniform": True,
}
EXPECTED = {
    "bert-base": ({}, {"global_batch_size": "64", "test_pooler": "cls_before_pooler", "fp16": "0"}),
    "bert-base-lambda0.6": ({"lambdas": "0.6"}, {"global_batch_size": "64", "test_pooler": "cls_before_pooler"}),
    "bert-base-corrected": (
        {"mask_fill": "neginf", "mlp_only_train": True, "fp16": True},
        {"global_batch_size": "64", "test_pooler": "cls_before_pooler", "fp16": "1"},
    ),
    "bert-base-paper": ({"mixcse_mode": "paper"}, {"global_batch_size": "64", "test_pooler": "cls_before_pooler"}),
    "bert-base-sup": (
        {"train_file": "data/nli_for_simcse.csv", "lambdas": "0.3", "per_device_train_batch_size": "512",
         "learning_rate": "5e-5", "num_train_epochs": "3", "fp16": True},
        {"global_batch_size": "512", "test_pooler": "cls"},
    ),
}


def dry_run(*args: str, **env: str) -> tuple[dict[str, str], dict, dict, list[str]]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("MODEL", "TRAIN_FILE", "OUTPUT_DIR", "NUM_GPU", "EVAL_DATA_DIR", "TEST_DATA_DIR", "TASK_SET", "SEED")}
    full_env.update(env)
    proc = subprocess.run(["bash", str(SCRIPT), *args, "--dry_run"], capture_output=True, text=True, env=full_env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    train_at = next(i for i, l in enumerate(lines) if l.endswith("train.py"))
    eval_at = lines.index("python evaluation.py")
    resolved = dict(l.split("=", 1) for l in lines[:train_at])

    def flags(block):
        out = {}
        for line in block:
            parts = shlex.split(line)
            assert parts[0].startswith("--"), line
            out[parts[0][2:]] = parts[1] if len(parts) > 1 else True
        return out

    return resolved, flags(lines[train_at + 1 : eval_at]), flags(lines[eval_at + 1 :]), lines[train_at].split()


@pytest.mark.parametrize("config", sorted(EXPECTED))
def test_dry_run_matches_the_published_table(config):
    changes, resolved_expected = EXPECTED[config]
    resolved, train, evaluation, launch = dry_run(config)
    expected = {**BASE, **changes, "output_dir": f"result/mixcse-{config}"}
    assert train == expected
    for key, value in resolved_expected.items():
        assert resolved[key] == value, key
    assert resolved["config"] == config and resolved["train_pooler"] == "cls"
    assert resolved["select_pooler"].startswith("cls_before_pooler" if "mlp_only_train" in train else "cls (")
    assert launch == ["python", "train.py"]
    # As the original run_unsup_example.sh and trainer: the full test set (STS + transfer) and align/uniform logged.
    assert train["eval_align_uniform"] is True and resolved["align_uniform"] == "True"
    assert evaluation == {"model_name_or_path": f"result/mixcse-{config}", "pooler": resolved["test_pooler"], "task_set": "full", "mode": "test",
                          "output_json": f"result/mixcse-{config}/eval_test.json"}


def test_default_configuration_is_bert_base():
    assert dry_run()[1] == dry_run("bert-base")[1]


def test_env_overrides_and_multi_gpu_keeps_the_global_batch():
    resolved, train, evaluation, launch = dry_run(
        "bert-base-sup", MODEL="/m/bert", TRAIN_FILE="/d/nli.csv", OUTPUT_DIR="/o/run", NUM_GPU="4",
        EVAL_DATA_DIR="/d/downstream", TEST_DATA_DIR="/d/SentEval", TASK_SET="sts", SEED="7",
    )
    assert launch == ["torchrun", "--nproc_per_node", "4", "train.py"]
    assert (resolved["global_batch_size"], resolved["per_device_train_batch_size"]) == ("512", "128")
    assert train["per_device_train_batch_size"] == "128"
    assert (train["model_name_or_path"], train["train_file"], train["output_dir"]) == ("/m/bert", "/d/nli.csv", "/o/run")
    assert train["eval_data_dir"] == "/d/downstream" and train["seed"] == "7"
    assert evaluation["model_name_or_path"] == "/o/run" and evaluation["data_dir"] == "/d/SentEval"
    assert evaluation["task_set"] == "sts"


def test_cpu_and_extra_flags():
    _, train, _, launch = dry_run("bert-base-corrected", "--max_steps", "10", NUM_GPU="0")
    assert launch == ["python", "train.py"]
    assert train["use_cpu"] is True and "fp16" not in train and train["max_steps"] == "10"


def test_bad_configuration_and_indivisible_gpu_count():
    proc = subprocess.run(["bash", str(SCRIPT), "bert-huge", "--dry_run"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "unknown configuration" in proc.stderr
    env = {**os.environ, "NUM_GPU": "3"}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry_run"], capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 2 and "not divisible" in proc.stderr


@pytest.mark.parametrize("config", sorted(EXPECTED))
def test_train_command_parses(config):
    """The exact command is accepted by train.py's parser and resolves to the recipe's values."""
    from clusterns.training.run import parse_args
    from clusterns.objectives.mixcse import MixCSEArguments

    _, train, _, _ = dry_run(config)
    argv = []
    for key, value in train.items():
        argv += [f"--{key}"] + ([] if value is True else [value])
    model_args, data_args, by_class, training_args = parse_args(argv)
    mix = by_class[MixCSEArguments]
    assert model_args.objective == "mixcse" and model_args.pooler_type == "cls" and model_args.temp == 0.05
    assert model_args.mlp_only_train is (config == "bert-base-corrected")
    assert mix.lambdas == float(train["lambdas"]) and mix.mask_fill == train["mask_fill"] and mix.mixcse_mode == train["mixcse_mode"]
    assert data_args.max_seq_length == 32
    assert training_args.eval_steps == 125 and training_args.learning_rate == float(train["learning_rate"])
    assert training_args.metric_for_best_model == "stsb_spearman" and training_args.load_best_model_at_end
    assert training_args.fp16 is ("fp16" in train)
