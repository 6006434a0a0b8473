"""scripts/run_non_prompt.sh: every configuration's dry run against the published table (spec clusterns.md §11)."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "run_non_prompt.sh"

# README "Hyperparameters" table, non-prompt columns (`a*b` = per-device a x b GPUs).
PUBLISHED = {
    #                model                 per-dev gpus  lr     K    kmeans_lr kmean_cos bml_w  alpha   beta
    "bert-base":     ("bert-base-uncased", 256, 1, "5e-5", 128, "1e-3", "0.4", "1e-3", "0", "0.3"),
    "bert-large":    ("bert-large-uncased", 128, 4, "5e-5", 128, "1e-3", "0.5", "5e-5", "0.25", "0.3"),
    "roberta-base":  ("roberta-base", 256, 2, "5e-5", 128, "1e-3", "0.4", "1e-4", "0.2", "0.5"),
    "roberta-large": ("roberta-large", 128, 4, "5e-5", 128, "5e-4", "0.4", "0", None, None),
}
# run_non_prompt.sh settings shared by every configuration (§11 "Scripts").
SHARED = {
    "train_file": "data/wiki1m_for_simcse.txt", "objective": "clusterns", "kmeans_optim": "momentum",
    "enable_hardneg": True, "num_train_epochs": "1", "max_seq_length": "32", "eval_strategy": "steps",
    "logging_steps": "25", "eval_steps": "125", "save_steps": "125", "save_total_limit": "1", "metric_for_best_model": "stsb_spearman",
    "load_best_model_at_end": True, "early_stop": "3", "pooler_type": "cls", "mlp_only_train": True, "temp": "0.05",
    "seed": "42", "overwrite_output_dir": True, "do_train": True, "fp16": True,
}
ENV_KEYS = ("MODEL", "TRAIN_FILE", "OUTPUT_DIR", "NUM_GPU", "EVAL_DATA_DIR", "TEST_DATA_DIR", "TASK_SET", "SEED")


def dry_run(*args: str, **env: str):
    full_env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    full_env.update(env)
    proc = subprocess.run(["bash", str(SCRIPT), *args, "--dry_run"], capture_output=True, text=True, env=full_env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    train_at = next(i for i, l in enumerate(lines) if l.endswith("train.py"))
    eval_at = next(i for i, l in enumerate(lines) if l.startswith("python evaluation.py"))
    config = dict(l.split("=", 1) for l in lines[:train_at])

    def flags(block):
        out, argv = {}, []
        for line in block:
            parts = shlex.split(line.strip())
            argv += parts
            out[parts[0][2:]] = parts[1] if len(parts) > 1 else True
        return out, argv

    train, argv = flags(lines[train_at + 1 : eval_at])
    test, _ = flags(lines[eval_at + 1 :])
    return config, lines[train_at], train, test, argv


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_every_configuration_matches_the_published_table(name):
    model, per_dev, gpus, lr, k, kmeans_lr, kmean_cos, bml_w, alpha, beta = PUBLISHED[name]
    config, launch, train, test, _ = dry_run(name)
    assert config["config"] == name
    assert config["global_batch_size"] == str(per_dev * gpus)
    assert config["num_gpu"] == str(gpus)
    assert train["model_name_or_path"] == model
    assert train["per_device_train_batch_size"] == str(per_dev)
    assert train["learning_rate"] == lr and train["kmeans"] == str(k)
    assert train["kmeans_lr"] == kmeans_lr and train["kmean_cosine"] == kmean_cos
    assert float(train["bml_weight"]) == float(bml_w)
    if alpha is not None:
        assert float(train["bml_alpha"]) == float(alpha) and float(train["bml_beta"]) == float(beta)
    for key, value in SHARED.items():
        assert train.get(key) == value, (key, train.get(key))
    assert launch == (f"torchrun --nproc_per_node {gpus} train.py" if gpus > 1 else "python train.py")
    assert test == {"model_name_or_path": f"result/clusterns-{name}", "pooler": "cls_before_pooler", "task_set": "sts", "mode": "test",
                    "output_json": f"result/clusterns-{name}/eval_test.json"}


def test_default_is_the_shipped_script_roberta_base():
    config, _, train, _, _ = dry_run()
    assert config["config"] == "roberta-base" and train["model_name_or_path"] == "roberta-base"


def test_overrides_keep_the_global_batch():
    config, launch, train, test, _ = dry_run(
        "bert-large", MODEL="/m/bert", TRAIN_FILE="/d/wiki.txt", OUTPUT_DIR="/o/run", NUM_GPU="8",
        EVAL_DATA_DIR="/e", TEST_DATA_DIR="/t",
    )
    assert config["global_batch_size"] == "512" and train["per_device_train_batch_size"] == "64"
    assert launch == "torchrun --nproc_per_node 8 train.py"
    assert (train["model_name_or_path"], train["train_file"], train["output_dir"]) == ("/m/bert", "/d/wiki.txt", "/o/run")
    assert train["eval_data_dir"] == "/e" and test["data_dir"] == "/t" and test["model_name_or_path"] == "/o/run"
    config, launch, train, _, _ = dry_run("roberta-base", NUM_GPU="1")
    assert launch == "python train.py" and train["per_device_train_batch_size"] == "512"
    config, launch, train, _, _ = dry_run("bert-base", NUM_GPU="0")
    assert "fp16" not in train and train["use_cpu"] is True and config["fp16"] == "0"


def test_extra_flags_pass_through():
    _, _, train, _, _ = dry_run("roberta-base", "--fn_handling", "mask_denominator", "--logging_steps", "10")
    assert train["fn_handling"] == "mask_denominator" and train["logging_steps"] == "10"


def test_bad_configuration_and_gpu_count():
    proc = subprocess.run(["bash", str(SCRIPT), "bert-huge", "--dry_run"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "bert-huge" in proc.stderr
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    proc = subprocess.run(["bash", str(SCRIPT), "bert-base", "--dry_run"], capture_output=True, text=True, cwd=REPO, env=dict(env, NUM_GPU="3"))
    assert proc.returncode == 2 and "not divisible" in proc.stderr


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_command_lines_parse_with_train_py(name):
    from clusterns.training.run import parse_args
    from clusterns.objectives.clusterns.objective import ClusterNSArguments

    _, _, train, _, argv = dry_run(name, NUM_GPU="0")  # CPU: no --fp16 (needs a GPU to validate)
    model_args, data_args, by_class, training_args = parse_args(argv)
    args = by_class[ClusterNSArguments]
    assert model_args.objective == "clusterns" and args.enable_hardneg is True
    assert args.kmeans == 128 and args.kmean_cosine == float(train["kmean_cosine"])
    assert training_args.load_best_model_at_end and training_args.early_stop == 3
